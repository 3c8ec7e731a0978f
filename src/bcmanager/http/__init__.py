"""The HTTP face: the routes (``app.py``), who may call them (``access.py``), and the metrics
(``metrics.py``). Routes only translate to facility calls."""
