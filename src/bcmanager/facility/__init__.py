"""Every run under INPUT_DIR, one concern a module: the runs (``runs.py``), finding and serving
them (``discovery.py``, ``serving.py``, ``moves.py``, ``watching.py``), their settings
(``rules.py``, what ``pod5facts.py`` reads), the protocol's calls and who goes next
(``routing.py``, ``scheduler.py``), their end (``completion.py``, ``command.py``,
``runrecord.py``), an operator's changes (``operator.py``), what people ask (``views.py``),
their yield and report (``yieldledger.py``, ``report.py``, ``runreport.py``), what changed of a
run (``events.py``) and the word sent out (``notify.py``); ``facility.py`` holds them together.
"""
