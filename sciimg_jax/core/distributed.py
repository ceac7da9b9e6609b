"""Starting JAX on several processes (hosts, or CPU processes on one machine).

`initialize` wraps `jax.distributed.initialize`:
  * with no address it lets JAX find the cluster (SLURM's `srun`, a TPU pod slice, or the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables);
  * CPU devices talk over gloo (`jax_cpu_collectives_implementation`), so that 2 local CPU
    processes can try a multi-host run; the setting touches only the CPU backend;
  * a coordinator that cannot be reached fails after `timeout_s` with one line (checked
    before XLA's client, which aborts with a stack trace); processes that do not all
    arrive make the others stop after `timeout_s` with one line naming the missing one
    (a timer of ours: XLA's client, given 30 s more, would abort with a stack trace), and
    one that dies later makes the others stop within `heartbeat_s` (XLA's coordination
    service), never a hang;
  * before any work, process 0 compares a hash of every process's config with its own
    (`agree_on_config`, through the coordination service's key-value store), and every
    process stops with one line naming the first key that differs and both values;
  * that stop is one line and exit status `PEER_FAILED_STATUS`, from a `Watchdog` (below)
    that notices a dead process before XLA's heartbeat does. (XLA's own stop aborts the
    process from C++ with a stack trace, Python's fault handler and orbax's timed-out
    barrier: 100-170 lines. Its client takes a `missed_heartbeat_callback`, but jaxlib
    0.10 cannot pass it XLA's status: a Python callback ends in `std::bad_cast`.) A job
    that fails in one process ends it through `stop`, which tells the others; an
    unexpected error (`failed`) first gives the watchdog the time it needs to notice a dead
    process, since a collective can fail, rather than hang, when its peer is killed;
  * jobs over a folder of cases split it by name (`process_share`) and merge what each
    process found at the end (`gather`, `gather_arrays`): every case on exactly one
    process, its random key from its name, so the outputs are those of one process.
"""

import atexit
import hashlib
import json
import os
import socket
import sys
import threading
import time
import traceback

import jax
import numpy as np
from jax.experimental import multihost_utils

from sciimg_jax.core import atomic_files
from sciimg_jax.core.errors import InputError

PEER_FAILED_STATUS = 75  # EX_TEMPFAIL: rerunning every process resumes the run
JOIN_MARGIN_S = 30  # XLA's client aborts this long after our join timer has stopped the process
_KEY = "sciimg_jax/alive/"
_CONFIG_KEY = "sciimg_jax/config/"
DONE, EXITED = "done", "exited"


class Watchdog:
  """Each process counts up a key in the coordination service's key-value store every
  `interval_s`; a thread reads the others' keys. A count that stands still for `stale_s`
  (a process killed or stuck), a process that exited without finishing its job, or a
  coordinator that no longer answers, stops this process with one line.

  `stale_s` is a quarter of the XLA heartbeat timeout, so the line comes well before XLA's
  abort (measured at the timeout, 9.5 s for 10 s). The thread needs the GIL: a C extension
  that holds it for longer than `stale_s` in one call would look like a stuck process; the
  default timeout (300 s) leaves 75 s.
  """

  def __init__(self, client, index, count, timeout_s):
    self.client, self.index, self.count = client, index, count
    self.interval_s, self.stale_s = max(timeout_s / 40, 0.05), timeout_s / 4
    self.finished = False
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="sciimg-watchdog", daemon=True)

  def start(self):
    self._beat(0)
    self._thread.start()
    atexit.register(self.stop)  # after JAX's own atexit shutdown was registered: runs first

  def _beat(self, value):
    self.client.key_value_set(f"{_KEY}{self.index}", str(value), allow_overwrite=True)

  def _run(self):
    seen = {}  # process -> (value, when it last changed)
    beat = 0
    while not self._stop.wait(self.interval_s):
      try:
        beat += 1
        self._beat(beat)
        now = time.monotonic()
        for other in range(self.count):
          if other == self.index:
            continue
          value = self.client.key_value_try_get(f"{_KEY}{other}")
          if value == DONE:
            continue
          if value == EXITED:
            self._fail(f"process {other} exited before the job finished (see its log)")
          last = seen.get(other)
          if last is None or last[0] != value:
            seen[other] = (value, now)
          elif now - last[1] > self.stale_s:
            self._fail(f"process {other} gave no sign of life for {self.stale_s:.0f} s "
                       "(killed, crashed or stuck)")
      except Exception as e:  # pylint: disable=broad-except  # the coordinator is gone
        if self._stop.is_set():
          return
        self._fail(f"the coordinator (process 0) no longer answers: {_first_line(e, 120)}")

  def _fail(self, reason):
    if self._stop.is_set():
      return
    atomic_files.remove_temporaries()
    sys.stderr.write(f"\nerror: process {self.index}: {reason}; stopping. Rerun every process "
                     "with the same command to resume from the last complete checkpoint.\n")
    sys.stderr.flush()
    os._exit(PEER_FAILED_STATUS)  # pylint: disable=protected-access

  def wait_for_verdict(self):
    """Blocks until the watchdog would have noticed a process that died just now (then
    this process has ended with its line), or returns after that time."""
    self._thread.join(timeout=self.stale_s + 3 * self.interval_s)

  def finish(self):
    """The job ended well: peers stop watching this process."""
    self.finished = True
    self.stop()

  def stop(self):
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    try:
      self._beat(DONE if self.finished else EXITED)
    except Exception:  # pylint: disable=broad-except  # the coordinator left first
      pass


_watchdog = None


def process_share(items, key):
  """This process's share of `items`: sorted by `key` (a case's name), every
  `process_count`-th from `process_index`. Each item lands on exactly one process, decided
  by the names alone (not by a listing's order); the shares differ by one item at most."""
  return sorted(items, key=key)[jax.process_index()::jax.process_count()]


def gather(obj):
  """[obj of process 0, obj of process 1, ...] on every process; `obj` is JSON-able (NaN
  and inf included). Every process must call it (a collective over the devices)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  everyone = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(everyone[i, :n].tobytes()) for i, n in enumerate(sizes)]


def gather_arrays(arrays):
  """[arrays of process 0, arrays of process 1, ...] on every process, bit for bit (any
  dtype: sent as bytes); every process passes arrays of the same shapes and dtypes."""
  arrays = [np.ascontiguousarray(a) for a in arrays]
  if jax.process_count() == 1 or not arrays:
    return [arrays] * jax.process_count()
  flat = np.concatenate([a.view(np.uint8).reshape(-1) for a in arrays])
  everyone = np.asarray(multihost_utils.process_allgather(flat))
  bounds = np.cumsum([0] + [a.nbytes for a in arrays])
  return [[row[lo:hi].view(a.dtype).reshape(a.shape)
           for a, lo, hi in zip(arrays, bounds[:-1], bounds[1:])] for row in everyone]


def merge_lists(parts, names, key):
  """Per-process tuples of lists of records (dicts with a `key` field naming their case) as
  one tuple of lists, each in the order of `names` (the order of one process)."""
  rank = {name: i for i, name in enumerate(names)}  # records of other names (-1) go first
  return tuple(sorted((r for part in parts for r in part[i]), key=lambda r: rank.get(r[key], -1))
               for i in range(len(parts[0])))


def finished():
  """Tells the other processes that this one's job ended well (main.py, after the job)."""
  if _watchdog is not None:
    _watchdog.finish()


def abandon():
  """Tells the other processes that this one leaves before its job is done (they stop with
  one line); nothing with one process."""
  if _watchdog is not None:
    _watchdog.stop()


def stop(message, status=1):
  """Ends the program with `message` (one line): with several processes, tells the others
  first and skips JAX's shutdown barrier, which would abort with XLA's stack trace once
  the others have stopped; with one, `sys.exit`."""
  if _watchdog is None:
    sys.exit(message)
  abandon()
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access


def failed(error):
  """The job raised `error`, which is not bad input. One process: returns (the caller raises
  it again). Several: does not return. If another process died (a collective can fail when
  its peer is killed, instead of hanging), the watchdog stops this one with its line first;
  otherwise the traceback and a line naming this process, and the others are told (no
  hang, no XLA abort at JAX's shutdown barrier). The wait is the watchdog's `stale_s`: a
  quarter of `--multihost_timeout`."""
  if _watchdog is None:
    return
  _watchdog.wait_for_verdict()
  traceback.print_exception(error)
  summary = traceback.format_exception_only(error)[0].splitlines()[0][:200]  # "Type: message"
  stop(f"error: process {_watchdog.index}: the job failed: {summary}")


def _first_line(error, limit):
  """The first line of `error`'s message (its type's name if it has none), cut at `limit`."""
  text = str(error).strip()
  return text.splitlines()[0][:limit] if text else type(error).__name__


def _host_port(address):
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise InputError("--coordinator_address", f"expected host:port, got {address!r}")
  return host.strip("[]"), int(port)


def wait_for_coordinator(address, timeout_s):
  """Returns once `address` accepts a connection; stops with one line after `timeout_s`.

  (XLA's own client aborts the process with a C++ stack trace when it cannot register.)
  """
  host, port = _host_port(address)
  deadline, reason = time.monotonic() + timeout_s, "no answer"
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
        return
    except OSError as e:
      reason = e.strerror or type(e).__name__
      time.sleep(0.5)
  raise InputError(address, f"the coordinator cannot be reached ({reason}) after {timeout_s} s; "
                   "start process 0 there first, or check the address and port")


def never_joined(coordinator_address, num_processes, process_id, timeout_s):
  """The line for processes that did not all join within `timeout_s`."""
  where = coordinator_address or "--multihost"
  if process_id == 0 and num_processes == 2:
    return (f"error: {where}: process 1 never joined within {timeout_s} s; start it with the "
            "same command and --process_id=1")
  if process_id == 0:
    return (f"error: {where}: not every process joined within {timeout_s} s; start each of "
            f"processes 1 to {num_processes - 1} with the same command and its --process_id")
  up = " (process 0 is up)" if coordinator_address else ""
  return (f"error: {where}: not every process joined within {timeout_s} s{up}; start the "
          "missing ones with the same command and their --process_id")


class JoinTimer:
  """Ends this process with `message` (one line, exit status `PEER_FAILED_STATUS`) unless
  `cancel` comes within `timeout_s`. XLA's client, left to its own timeout while the others
  do not all connect, aborts the process from C++ (`client.h`: "another task died", a stack
  trace, exit status 134); its `connect` releases the GIL, so this thread runs meanwhile."""

  def __init__(self, timeout_s, message):
    self.timeout_s, self.message = timeout_s, message
    self._done, self._lock = threading.Event(), threading.Lock()
    self._thread = threading.Thread(target=self._run, name="sciimg-join-timer", daemon=True)

  def start(self):
    self._thread.start()
    return self

  def _run(self):
    if self._done.wait(self.timeout_s):
      return
    with self._lock:
      if self._done.is_set():  # joined at the last moment
        return
      sys.stderr.write(self.message + "\n")
      sys.stderr.flush()
      os._exit(PEER_FAILED_STATUS)  # pylint: disable=protected-access

  def cancel(self):
    with self._lock:
      self._done.set()


def config_text(config):
  """A config as canonical JSON (keys sorted): what the processes compare."""
  return config.to_json_best_effort(sort_keys=True)


def _flatten(tree, prefix=""):
  """{dotted key: value} of nested dicts (an empty dict is a value)."""
  if not isinstance(tree, dict) or not tree:
    return {prefix.rstrip("."): tree}
  out = {}
  for key, value in tree.items():
    out.update(_flatten(value, f"{prefix}{key}."))
  return out


def first_difference(mine, theirs):
  """(key, my value, their value) of the first dotted key (sorted) where two configs (parsed
  JSON) differ, the values as JSON text ('absent' for a key one lacks); None if equal."""
  a, b = _flatten(mine), _flatten(theirs)
  show = lambda d, k: json.dumps(d[k])[:80] if k in d else "absent"
  for key in sorted(set(a) | set(b)):
    if key not in a or key not in b or a[key] != b[key]:
      return key, show(a, key), show(b, key)
  return None


def agree_on_config(client, index, count, text, timeout_s):
  """Every process publishes its config (`config_text`) and its hash in the coordination
  service's key-value store; process 0 compares every other's hash with its own and
  publishes its verdict, which every process returns: None when all agree, else one
  InputError naming the first key where a process differs from process 0 and both values
  (the same line on every process, so all of them stop, none left waiting for the others)."""
  digest = hashlib.sha256(text.encode()).hexdigest()
  client.key_value_set(f"{_CONFIG_KEY}text/{index}", text, allow_overwrite=True)
  # the hash second: a process that sees it finds the text there too
  client.key_value_set(f"{_CONFIG_KEY}hash/{index}", digest, allow_overwrite=True)
  get = lambda key: client.blocking_key_value_get(f"{_CONFIG_KEY}{key}", int(timeout_s * 1000))
  if index:
    try:
      verdict = json.loads(get("verdict"))
    except Exception as e:  # pylint: disable=broad-except  # XLA's timeout: a RuntimeError
      return InputError("process 0", f"gave no verdict on the configs within {timeout_s} s "
                        f"({_first_line(e, 120)})")
    return InputError(*verdict) if verdict else None
  verdict = None
  for other in range(1, count):
    try:
      if get(f"hash/{other}") == digest:
        continue
      theirs = get(f"text/{other}")
    except Exception as e:  # pylint: disable=broad-except
      verdict = (f"process {other}", f"sent no config within {timeout_s} s "
                 f"({_first_line(e, 120)})")
      break
    key, mine, their = first_difference(json.loads(text), json.loads(theirs)) or (
        "config", "one text", "another")
    verdict = (key, f"process 0 has {mine}, process {other} has {their}; every process needs "
               "the same config (file, variant and --config overrides)")
    break
  client.key_value_set(f"{_CONFIG_KEY}verdict", json.dumps(verdict), allow_overwrite=True)
  return InputError(*verdict) if verdict else None


def initialize(coordinator_address=None, num_processes=None, process_id=None, *,
               timeout_s=300, heartbeat_s=100, config=None):
  """Joins this process to the others; returns (process_index, process_count).

  InputError (one line) when the processes do not agree on `config` (`agree_on_config`):
  raised before the watchdog starts, so every process stops with it through JAX's
  shutdown barrier, before any work.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise InputError("--coordinator_address/--num_processes/--process_id",
                     "give all three, or none to let JAX read them from the cluster")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise InputError("--process_id", f"{process_id} is not in [0, {num_processes})")
  if coordinator_address is not None and process_id != 0:
    wait_for_coordinator(coordinator_address, timeout_s)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timer = JoinTimer(timeout_s, never_joined(coordinator_address, num_processes, process_id,
                                            timeout_s)).start()
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s) + JOIN_MARGIN_S,
                               heartbeat_timeout_seconds=int(heartbeat_s))
  except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
    where = coordinator_address or "the cluster's coordinator"
    raise InputError(where, f"could not start process {process_id} of {num_processes} "
                     f"within {timeout_s} s: {_first_line(e, 200)}") from e
  finally:
    timer.cancel()
  if jax.process_count() > 1:
    global _watchdog
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    client = jax_distributed.global_state.client
    if config is not None:
      error = agree_on_config(client, jax.process_index(), jax.process_count(),
                              config_text(config), timeout_s)
      if error is not None:
        raise error
    _watchdog = Watchdog(client, jax.process_index(), jax.process_count(), heartbeat_s)
    _watchdog.start()
  return jax.process_index(), jax.process_count()
