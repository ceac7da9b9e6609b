"""The watchdog and the error path of sciimg_jax/core/distributed.py in one process, with a
stand-in for the coordination service's key-value store (the real one, with 2 processes, is
in test_multiprocess.py)."""

import threading
import time

import pytest

from sciimg_jax.core import distributed

TIMEOUT_S = 4.0  # the watchdog: stale after 1 s, a beat every 0.1 s


class Store:
  """The two calls of XLA's distributed client that the watchdog uses."""

  def __init__(self):
    self.values = {}

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite or key not in self.values
    self.values[key] = value

  def key_value_try_get(self, key):
    return self.values[key]


@pytest.fixture
def exits(monkeypatch):
  """os._exit recorded; it ends the calling thread: the watchdog's (its loop stops), or the
  test's (SystemExit)."""
  statuses = []

  def fake_exit(status):
    statuses.append(status)
    if threading.current_thread().name == "sciimg-watchdog":
      distributed._watchdog._stop.set()  # pylint: disable=protected-access
      return
    raise SystemExit(status)

  monkeypatch.setattr(distributed.os, "_exit", fake_exit)
  return statuses


def start_watchdog(monkeypatch, store):
  dog = distributed.Watchdog(store, 0, 2, TIMEOUT_S)
  monkeypatch.setattr(distributed, "_watchdog", dog)
  dog.start()
  return dog


def test_one_process_leaves_the_error_to_the_caller(monkeypatch):
  monkeypatch.setattr(distributed, "_watchdog", None)
  assert distributed.failed(RuntimeError("boom")) is None  # main.py raises it again


def test_an_error_after_a_peer_died_gets_the_watchdogs_line(monkeypatch, exits, capsys):
  """A collective that fails because its peer was killed: the watchdog's line and status,
  once the peer's count has stood still for `stale_s`, not the collective's error."""
  store = Store()
  store.key_value_set("sciimg_jax/alive/1", "7")  # process 1 beat, then died
  dog = start_watchdog(monkeypatch, store)
  started = time.monotonic()
  with pytest.raises(SystemExit):
    distributed.failed(RuntimeError("gloo: Connection closed by peer"))
  assert time.monotonic() - started >= dog.stale_s
  # A real os._exit ends the process at the first status; the stand-in lets it go on.
  assert exits[0] == distributed.PEER_FAILED_STATUS
  err = capsys.readouterr().err
  assert err.strip().splitlines()[0].startswith(
      "error: process 0: process 1 gave no sign of life for 1 s")


def test_an_error_with_live_peers_is_reported_and_the_others_are_told(
    monkeypatch, exits, capsys):
  """A bug in this process, the others alive: its traceback, one line naming the process,
  status 1, and this process marked as exited (so the others stop with their line)."""
  store = Store()
  store.key_value_set("sciimg_jax/alive/1", "0")
  beating = threading.Event()

  def peer():  # process 1's watchdog
    beat = 0
    while not beating.wait(dog.interval_s / 2):
      beat += 1
      store.key_value_set("sciimg_jax/alive/1", str(beat), allow_overwrite=True)

  dog = start_watchdog(monkeypatch, store)
  thread = threading.Thread(target=peer)
  thread.start()
  try:
    try:
      raise ValueError("boom\nsecond line")
    except ValueError as e:
      with pytest.raises(SystemExit):
        distributed.failed(e)
  finally:
    beating.set()
    thread.join()
  assert exits == [1]
  err = capsys.readouterr().err
  assert "Traceback (most recent call last)" in err and "ValueError: boom" in err
  assert err.strip().splitlines()[-1] == "error: process 0: the job failed: ValueError: boom"
  assert store.values["sciimg_jax/alive/0"] == distributed.EXITED


def test_a_peer_that_exited_early_stops_this_process(monkeypatch, exits, capsys):
  store = Store()
  store.key_value_set("sciimg_jax/alive/1", distributed.EXITED)
  dog = start_watchdog(monkeypatch, store)
  dog.wait_for_verdict()
  assert exits == [distributed.PEER_FAILED_STATUS]
  assert "process 1 exited before the job finished" in capsys.readouterr().err
  dog.stop()
