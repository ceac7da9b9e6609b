"""Atomic file writes: write to a temporary file in the destination folder, then rename.

A crash or an exception while writing never leaves a half-written file under the
final name, and the temporary file is removed. The file gets the mode a plain
`open()` would give it (0666 less the umask), not `mkstemp`'s private 0600.

A signal that ends the process skips `finally`: `interrupts.install()` handles SIGTERM and a
second Ctrl-C by calling `remove_temporaries()` (the temporaries in flight) before it exits.
A SIGKILL still leaves one; writing the same file again removes the temporaries of that
file older than this process (`.<name>.<8 random characters><suffixes>`).
"""

import contextlib
import json
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time

from sciimg_jax.core.errors import InputError


_STARTED = time.time()
_in_flight = set()
_lock = threading.RLock()  # a signal handler may run while its own thread holds it


def remove_temporaries():
  """Removes the temporaries of the writes in flight (a signal handler's last act)."""
  with _lock:
    paths = list(_in_flight)
  for tmp in paths:
    try:
      os.unlink(tmp)
    except OSError:
      pass


def remove_stale_temporaries(path):
  """Removes the temporaries of `path` that a killed earlier run left (older than this process)."""
  path = pathlib.Path(path)
  suffix = "".join(path.suffixes)
  pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}" + re.escape(suffix) + "$")
  try:
    candidates = [p for p in path.parent.iterdir() if pattern.match(p.name)]
  except OSError:
    return
  for p in candidates:
    try:
      if p.stat().st_mtime < _STARTED:
        p.unlink()
    except OSError:
      pass


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path next to `path` (same suffixes); renames it to `path` on success."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_temporaries(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes),
                             dir=path.parent)
  os.close(fd)
  with _lock:
    _in_flight.add(tmp)
  os.chmod(tmp, plain_mode())
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
    with _lock:
      _in_flight.discard(tmp)


def plain_mode(folder=False):
  """The mode `open()` (or `mkdir`, for a folder) would give a new file: 0666/0777 less the umask."""
  mask = os.umask(0)  # the only way to read it is to set it
  os.umask(mask)
  return (0o777 if folder else 0o666) & ~mask


def write_text(path, text):
  with atomic_path(path) as tmp:
    pathlib.Path(tmp).write_text(text)
  return pathlib.Path(path)


def write_json(path, obj, **dump_kwargs):
  return write_text(path, json.dumps(obj, indent=2, **dump_kwargs) + "\n")


@contextlib.contextmanager
def atomic_folder(final, prefix):
  """Yields a new temporary folder beside `final` (named `prefix`..., plain modes, not
  mkdtemp's private 0700) to fill; on success it replaces `final` by a rename, on any
  failure it is removed, so `final` is never half-written."""
  final = pathlib.Path(final)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
  try:
    os.chmod(tmp, plain_mode(folder=True))
    yield tmp
    if final.exists():
      shutil.rmtree(final)
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


@contextlib.contextmanager
def job_folder(path):
  """`writable_folder(path)` for the length of a job: if the job fails (a config refused
  before any work, say), the folders this call created are removed again when they hold no
  file, so a refused run leaves no empty workdir behind. Folders that existed are kept."""
  path = pathlib.Path(path)
  created = None  # the outermost folder of `path` that does not exist yet
  for folder in (path, *path.parents):
    if folder.exists():
      break
    created = folder
  writable_folder(path)
  try:
    yield path
  except BaseException:
    if created is not None:
      remove_empty_folders(created)
    raise


def remove_empty_folders(root):
  """Removes `root` and the folders under it that hold no file (never a file)."""
  for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):  # the deepest first
    try:
      os.rmdir(folder)
    except OSError:  # not empty, or gone
      pass


def writable_folder(path):
  """Creates `path` if needed; raises InputError unless it is a folder this process can write.

  Jobs call it before any work, so a bad output folder fails at once, not after the
  first result was computed.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise InputError(path, "exists and is not a folder; pass a folder for the outputs")
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise InputError(path, f"cannot write outputs here ({e.strerror or e})") from None
  return path
