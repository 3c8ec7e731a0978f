"""The reference GPU-node agent: asks the manager for batches and runs the site's basecaller.

The successor of the original BCProcessor. It speaks the four routes of docs/protocol.md, so it also
works against the original manager, which does not tell where its folders are: give
``--input-dir`` and ``--output-dir`` then.

One job at a time: ask /assignwork, run the command template on the batch, keep the lease alive
with /keepalive every half ``report_back_interval`` while the basecaller runs, write the record of
the attempt (``paths.ATTEMPT_FILE``: exit code, signal, run time, the tail of stderr) at the top of
the job's output folder, and after a basecaller that succeeded the job's read statistics
(``paths.STATS_FILE``, ``readstats``, keeping the lease meanwhile), report /completed DONE or
FAILED by its exit code, ask again. What it does when things go wrong:

- a failed call (connection error, timeout, 5xx) is retried with capped, jittered exponential
  backoff, so a manager restart or a network blip shorter than the lease costs nothing; the
  basecaller carries on meanwhile;
- ``{"late": true}``, or the lease running out with no keepalive getting through, means the work
  is someone else's now: the basecaller's whole process group is stopped and the job is dropped
  without /completed;
- a 409 on /completed means the same, found out later: logged, and the agent moves on;
- SIGTERM or SIGINT (Slurm preemption) stops the basecaller, gives the batch back with
  /completed STOPPED and exits 0; a second signal exits at once;
- a command this node cannot run (it cannot start, or exits 126 or 127, the shell's "cannot
  execute" and "not found") says nothing about the batch: it is given back with STOPPED and the
  agent exits 3, so that a misconfigured node fails no file;
- ``max_failures_in_a_row`` FAILED jobs in a row (a DONE resets the count) make the agent stop
  asking for work and exit 4: a node that fails everything should not fail the whole run.

The basecaller is a command template split like a POSIX shell would (shlex) and run without a
shell; see ``cli.TEMPLATE_HELP``.

Its modules: ``settings`` (what it is given), ``client`` (the calls to the manager), ``basecaller``
(running it and recording each attempt), ``loop`` (one job after another), ``cli`` (the
command), with ``errors`` (why it stops, and its exit codes) and ``events`` (its log lines).
"""
