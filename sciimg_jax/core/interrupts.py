"""Clean Ctrl-C: jobs stop at their next safe point instead of dying mid-write.

`main.py` calls `install()`. The first SIGINT only sets a flag and says so; jobs call
`check()` at safe points (between cases, between training steps), which raises
`Interrupted` so they can finish what is in flight (an orbax checkpoint) and keep what is
done. A second SIGINT stops at once with exit status 130. Without `install()` (tests,
notebooks), SIGINT keeps Python's default behaviour.
"""

import os
import signal
import sys

EXIT_STATUS = 130  # 128 + SIGINT, what shells expect from an interrupted program


class Interrupted(Exception):
  """Raised by `check()` once Ctrl-C was pressed."""


_requested = False


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


def _on_sigint(signum, frame):
  del signum, frame
  if _requested:
    sys.stderr.write("interrupted again: stopping now\n")
    sys.stderr.flush()
    os._exit(EXIT_STATUS)  # pylint: disable=protected-access
  request()
  sys.stderr.write("\nCtrl-C: stopping at the next safe point (press it again to stop now)\n")
  sys.stderr.flush()


def install():
  signal.signal(signal.SIGINT, _on_sigint)
