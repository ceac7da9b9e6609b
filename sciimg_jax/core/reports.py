"""What the studies and evaluation jobs share to key, summarise, tabulate and skip their runs.

  case_key(base_key, name)      a case's random key: `fold_in(base_key, crc32(name))`, so a
                                case gets the same samples in any folder, order or subset.
  each_case(cases, ...)         the per-case loop of the jobs over a folder: a progress bar,
                                Ctrl-C honoured between cases, each case with its key.
  mean_std(values)              (mean, std) of per-case or per-seed scores. The one convention
                                of every report: the sample standard deviation (ddof=1, as the
                                BraTS challenge's pandas summary), None for one value.
  Column, format_markdown(rows, columns), write_table(path, rows, columns)
                                one table writer. A row is a dict; a `Column` names its header,
                                the row key it shows and how: a value with a format spec
                                ('.2e'), or mean ± std with a number of decimals (the row holds
                                (mean, std), [mean, std] or {'mean', 'std'}). `write_table`
                                writes by the path's suffix, atomically: `.md` (Markdown, the
                                formats applied), `.csv` and `.json` (raw values; a mean ± std
                                column is `<key>_mean`, `<key>_std` in CSV and
                                {'mean', 'std'} in JSON). A missing or None value is '-' in
                                Markdown, empty in CSV and null in JSON.
  run_is_finished(workdir, n)   the one rule for skipping a training run: its `checkpoints/`
                                folder holds a checkpoint at step n or later. A stopped run
                                is not finished; training it again resumes it.
"""

import csv
import dataclasses
import io
import json
import pathlib
import zlib

import jax
import numpy as np
import tqdm

from sciimg_jax.core import atomic_files
from sciimg_jax.core import interrupts


def case_key(base_key, name):
  """The case's random key: from its name, never from its place in a listing."""
  return jax.random.fold_in(base_key, zlib.crc32(name.encode()))


def each_case(cases, *, desc="cases", progress=True, base_key=None, name=lambda case: case.name):
  """Yields (case, key) for every case in order, with a progress bar (`progress`).

  Between cases a Ctrl-C stops the loop (`interrupts.check` raises `Interrupted`), so a job
  keeps every case it finished. `key` is `case_key(base_key, name(case))`, or None without
  a `base_key`.
  """
  for case in tqdm.tqdm(cases, desc=desc, unit="case", disable=not progress):
    interrupts.check()
    yield case, (None if base_key is None else case_key(base_key, name(case)))


def mean_std(values):
  """(mean, std) as floats: std with ddof=1 (the sample std), None for one value.

  (None, None) when there is no value. Callers drop missing or non-finite scores first.
  """
  a = np.asarray(list(values), np.float64)
  if not len(a):
    return None, None
  return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


@dataclasses.dataclass(frozen=True)
class Column:
  """One table column: Markdown `header`, the row `key` and the format spec `fmt` of a value.

  `spread` columns hold (mean, std) and read 'mean ± std', both with `fmt`
  (`Column.mean_std`); the mean alone when std is None.
  """
  header: str
  key: str
  fmt: str = ""
  spread: bool = False

  @classmethod
  def mean_std(cls, header, key, decimals):
    return cls(header, key, f".{decimals}f", spread=True)


def _split(value):
  """(mean, std) of a spread cell: (m, s), [m, s], {'mean', 'std'} or a bare mean."""
  if value is None:
    return None, None
  if isinstance(value, dict):
    return value.get("mean"), value.get("std")
  if isinstance(value, (list, tuple)):
    return value[0], (value[1] if len(value) > 1 else None)
  return value, None


def format_cell(row, column):
  """The Markdown text of `row[column.key]` ('-' when missing)."""
  value = row.get(column.key)
  if column.spread:
    mean, std = _split(value)
    if mean is None:
      return "-"
    return f"{mean:{column.fmt}}" + ("" if std is None else f" ± {std:{column.fmt}}")
  return "-" if value is None else f"{value:{column.fmt}}"


def format_markdown(rows, columns):
  """The rows as a Markdown table (no trailing newline)."""
  esc = lambda text: str(text).replace("|", "\\|")
  lines = ["| " + " | ".join(esc(c.header) for c in columns) + " |",
           "|" + " --- |" * len(columns)]
  lines += ["| " + " | ".join(esc(format_cell(r, c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _plain(value):
  return value.item() if isinstance(value, np.generic) else value


def format_csv(rows, columns):
  """The rows as CSV: raw values, `<key>_mean` and `<key>_std` for a spread column."""
  fields = [f for c in columns for f in ((f"{c.key}_mean", f"{c.key}_std") if c.spread
                                          else (c.key,))]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(fields)
  for r in rows:
    cells = []
    for c in columns:
      cells += _split(r.get(c.key)) if c.spread else (r.get(c.key),)
    writer.writerow(["" if v is None else _plain(v) for v in cells])
  return out.getvalue()


def format_json(rows, columns):
  """The rows as a JSON list of {key: value}; a spread column's value is {'mean', 'std'}."""
  def cell(r, c):
    if not c.spread:
      return _plain(r.get(c.key))
    mean, std = _split(r.get(c.key))
    return None if mean is None else {"mean": _plain(mean), "std": _plain(std)}
  return json.dumps([{c.key: cell(r, c) for c in columns} for r in rows], indent=2) + "\n"


FORMATS = {".md": lambda rows, columns: format_markdown(rows, columns) + "\n",
           ".csv": format_csv, ".json": format_json}


def write_table(path, rows, columns):
  """Writes the table to `path` atomically, as its suffix says (.md, .csv, .json)."""
  path = pathlib.Path(path)
  if path.suffix not in FORMATS:
    raise ValueError(f"{path}: a table is written as {', '.join(FORMATS)}")
  return atomic_files.write_text(path, FORMATS[path.suffix](list(rows), columns))


def run_is_finished(workdir, num_steps):
  """Whether the training run in `workdir` has a checkpoint at step `num_steps` or later.

  Reads `<workdir>/checkpoints` (the trainer's `checkpoint.Checkpointer`, which lists only
  completed checkpoints) and creates nothing when it is absent.
  """
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return False
  from sciimg_jax.core import checkpoint  # noqa: PLC0415  (orbax, only where there are checkpoints)
  ckpt = checkpoint.Checkpointer(folder)
  try:
    step = ckpt.latest_step()
  finally:
    ckpt.close()
  return step is not None and step >= num_steps
