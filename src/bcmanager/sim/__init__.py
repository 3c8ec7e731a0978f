"""Simulated sequencer and basecaller, so the whole flow runs without a flow cell or a GPU.

Everything here writes and reads real POD5 files with the ``pod5`` package, because the
manager's completeness rule (docs/design.md, invariant 3) and the agents' basecaller command
must meet the same bytes a sequencer writes.

``pod5.Writer`` creates its destination at once, empty, with hidden scratch files beside it, and
fills it only on ``close()``. So files are built in a private scratch folder and their bytes are
then placed where they belong: atomically for test fixtures, in timed chunks for the sequencer,
which thereby leaves a half-written file under its final name for a while, as MinKNOW does.

The basecaller can also lose or change reads the ways Dorado does (a file it cannot open, split

Its modules: ``sequencer`` (POD5 files, and writing them over time), ``basecaller`` (Dorado's
stand-in on one job), ``reads`` (what the basecaller writes) and ``cli`` (``bcmanager
simulate``). The sequencer is a coroutine and the basecaller a plain function, so the demo can
run them in-process.
"""
