"""Clean Ctrl-C and SIGTERM: jobs stop at their next safe point instead of dying mid-write.

`main.py` calls `install()` first thing, before JAX is imported (a Ctrl-C while JAX loads
used to be swallowed by a garbage-collection callback, or end in a traceback). Until
`started()` (the job is running) a Ctrl-C stops at once: nothing was written yet. Then the
first SIGINT only sets a flag and says so, on a line the final message completes (one
line in all); jobs call `check()` at safe points (between cases, between training steps),
which raises `Interrupted` so they can finish what is in flight (an orbax checkpoint) and
keep what is done. A second SIGINT, or a SIGTERM (a scheduler's stop), stops at once with
exit status 130 (143): the temporaries of atomic writes in flight are removed first. Without
`install()` (tests, notebooks), the signals keep Python's default behaviour.
"""

import os
import signal
import sys

from sciimg_jax.core import atomic_files

EXIT_STATUS = 130  # 128 + SIGINT, what shells expect from an interrupted program
TERM_STATUS = 143  # 128 + SIGTERM


class Interrupted(Exception):
  """Raised by `check()` once Ctrl-C was pressed."""


_requested = False
_running = False


def request():
  """Asks the running job to stop at its next safe point (what the first Ctrl-C does)."""
  global _requested
  _requested = True


def clear():
  global _requested
  _requested = False


def check():
  """Raises Interrupted if a stop was requested."""
  if _requested:
    raise Interrupted("interrupted")


def started():
  """Marks the job as running: from now on the first Ctrl-C waits for a safe point."""
  global _running
  _running = True


def stop_now(message, status):
  """Removes the temporaries in flight, writes `message` and ends the process at once."""
  atomic_files.remove_temporaries()
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def _on_sigint(signum, frame):
  del signum, frame
  if not _running:
    stop_now("\nstopped: interrupted while starting (nothing was written)", EXIT_STATUS)
  if _requested:
    stop_now("interrupted again: stopped now", EXIT_STATUS)
  request()
  # No newline: main.py's "stopped: ..." (or the second Ctrl-C's) completes this line.
  sys.stderr.write("\nCtrl-C: stopping at the next safe point (again: stop now)... ")
  sys.stderr.flush()


def _on_sigterm(signum, frame):
  del signum, frame
  stop_now("\nstopped: terminated (SIGTERM); unfinished outputs were removed", TERM_STATUS)


def install():
  signal.signal(signal.SIGINT, _on_sigint)
  signal.signal(signal.SIGTERM, _on_sigterm)
