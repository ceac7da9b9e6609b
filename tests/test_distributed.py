"""The watchdog, the error path and the config check of sciimg_jax/core/distributed.py in
one process, with a stand-in for the coordination service's key-value store (the real one,
with 2 processes, is in test_multiprocess.py), and a coordinator started alone."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from ml_collections import config_dict

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

  def blocking_key_value_get(self, key, timeout_in_ms):
    deadline = time.monotonic() + timeout_in_ms / 1000
    while key not in self.values:
      if time.monotonic() > deadline:
        raise RuntimeError(f"DEADLINE_EXCEEDED: {key}")
      time.sleep(0.005)
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


# --- processes given different configs -----------------------------------------------------

def config(**optim):
  return config_dict.ConfigDict({"data": {"shape": (4, 4), "root": "/data"}, "seed": 0,
                                 "optim": {"learning_rate": 1e-3, "b1": 0.9, **optim}})


def agree(configs, timeout_s=5.0):
  """Each process's `agree_on_config` verdict, the processes as threads on one store."""
  store, verdicts = Store(), [None] * len(configs)

  def process(i):
    verdicts[i] = distributed.agree_on_config(store, i, len(configs),
                                              distributed.config_text(configs[i]), timeout_s)

  threads = [threading.Thread(target=process, args=(i,)) for i in range(len(configs))]
  for t in threads[::-1]:  # process 0 last: the others wait for its verdict
    t.start()
  for t in threads:
    t.join()
  return verdicts


def test_processes_given_different_configs_all_stop_naming_the_first_differing_key():
  """Process 1 given --config.optim.learning_rate=0.5 used to run with process 0's value,
  silently: now every process gets one line with the key and both values, before any work
  (process 2 agrees with process 0, and stops too: nobody is left waiting)."""
  assert agree([config(), config(), config()]) == [None, None, None]
  verdicts = agree([config(), config(learning_rate=0.5), config()])
  line = ("optim.learning_rate: process 0 has 0.001, process 1 has 0.5; every process needs "
          "the same config (file, variant and --config overrides)")
  assert [str(v) for v in verdicts] == [line] * 3
  assert all(isinstance(v, distributed.InputError) for v in verdicts)
  # a key that one of them lacks, the keys in sorted order: data.* before optim.*
  other = config(eps=1e-8)
  other.data.shape = (4, 8)
  parsed = [json.loads(distributed.config_text(c)) for c in (config(), other)]
  assert distributed.first_difference(*parsed) == ("data.shape", "[4, 4]", "[4, 8]")
  assert distributed.first_difference({"a": {"b": 1}}, {"a": {"b": 1, "c": "x"}}) == (
      "a.c", "absent", '"x"')


def test_a_process_whose_peer_never_sends_its_config_stops_with_one_line():
  store = Store()
  verdict = distributed.agree_on_config(store, 1, 2, distributed.config_text(config()), 0.2)
  assert str(verdict).startswith("process 0: gave no verdict on the configs within 0.2 s")


# --- a coordinator started alone -----------------------------------------------------------

def test_a_coordinator_started_alone_stops_with_one_line_naming_the_missing_process(tmp_path):
  """Process 0 of 2 with no process 1: one line and exit status 75 after the timeout, not
  XLA's abort (SIGABRT, a C++ stack trace and "another task died"), which our timer forestalls
  by giving XLA 30 s more. One real process (XLA's client must release the GIL for the timer):
  about 4 s, 2 of them the timeout."""
  with socket.socket() as s:  # a free port
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  code = ("from sciimg_jax.core import distributed\n"
          f"distributed.initialize('127.0.0.1:{port}', 2, 0, timeout_s=2, heartbeat_s=2)\n"
          "print('joined')")
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == distributed.PEER_FAILED_STATUS, proc.stderr[-3000:]
  assert proc.stderr.strip() == (f"error: 127.0.0.1:{port}: process 1 never joined within 2 s; "
                                 "start it with the same command and --process_id=1")
  assert proc.stdout == "" and time.monotonic() - start < 30
  assert distributed.never_joined(None, None, None, 9).startswith(
      "error: --multihost: not every process joined within 9 s; start the missing ones")
