"""Every run under INPUT_DIR: finding them (``discovery.py``), their settings (``rules.py``, what
``pod5facts.py`` reads), who goes next (``scheduler.py``), their end (``runrecord.py``), their
yield and report (``yieldledger.py``, ``report.py``, ``runreport.py``) and the word sent out
(``notify.py``); ``facility.py`` holds them together.
"""
