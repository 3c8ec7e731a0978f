"""One raw folder's core: its state machine, its folders on disk, their recovery, its progress.

A core knows nothing of other raw folders or runs. ``state.py`` decides, ``events.py`` says what
changed, ``progress.py`` keeps the motion, ``folders.py`` and ``scan.py`` touch the disk,
``benching.py`` judges engines, and ``manager.py`` wires them to the clock.
"""
