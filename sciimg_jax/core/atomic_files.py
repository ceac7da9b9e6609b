"""Atomic file writes: write to a temporary file in the destination folder, then rename.

A crash or an exception while writing never leaves a half-written file under the
final name, and the temporary file is removed. The file gets the mode a plain
`open()` would give it (0666 less the umask), not `mkstemp`'s private 0600.
"""

import contextlib
import json
import os
import pathlib
import tempfile

from sciimg_jax.core.errors import InputError


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path next to `path` (same suffixes); renames it to `path` on success."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes),
                             dir=path.parent)
  os.close(fd)
  os.chmod(tmp, plain_mode())
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


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
