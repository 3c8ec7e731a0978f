from bcmanager.cli import main

raise SystemExit(main())
