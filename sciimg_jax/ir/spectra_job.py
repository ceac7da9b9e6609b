"""The `ir_spectra` job: per-spectrum classifiers and chemometric baselines on a table of
spectra, with stratified k-fold cross-validation.

The table (`data.table`: CSV, Orange .tab/.csv, or .npz; `data_pipelines.ir_spectra`) is
split into `data.folds` stratified folds drawn from `seed`, saved as `folds.csv`; every run
and every baseline is trained on the same k-1 folds and scored on the held-out one. With
`data.test_table`, there are no folds: everything is trained on `table` and scored on
`test_table`. Each run of `runs` is a network of `models` (the per-spectrum MLP
`spectral_pixel`, the 1D CNN `spectral_cnn`), optionally with a spectral transform
(`mlp-snv`: `data.spectral_transform=snv`), trained with the shared trainer's step in
`<workdir>/<run>/<fold>` as a classifier of 1x1 patches (`classifier_task.ClassifierTask`:
per-band standardisation with the training fold's statistics, the `train.robust`
strategies, the collapse diagnostics) for `train.num_epochs` epochs of the largest fold's
training spectra (the same steps for every fold; or `train.num_steps` steps); a finished
fold of the same steps is reused, not trained again. Each network (model block and input
width) is compiled once for every fold, run and shuffled reference
(`spectra_training.SpectraNetwork`), and the seconds of every fold are printed and saved.
The baselines (`baselines.NAMES`) are fitted on the raw spectra of the same folds.

Every diagnostic is reported beside three references, computed on the same held-out fold:
(a) the row `labels`, the diagnostics of the one-hot labels themselves; (b) the row
`logistic`, a linear model fitted on the same training spectra (`baselines.diagnose`); (c)
with `shuffled_reference`, a row `<run>-shuffled` for every run: the same network, trained by
the same code for the same steps on the same spectra, with the training labels of each fold
permuted (`shuffled_labels`, from `seed`), and scored against the true held-out labels.

Every count of spectra per class (in the table, and used for training and testing in each
fold) is printed, logged and saved; `data.per_class` > 0 keeps at most that many training
spectra of each class in each fold, and says so. Bad input (a missing table or label
column, one class, a class with fewer spectra than folds, a NaN in a spectrum, a test table
with other bands) stops with one line before anything is written.

Writes `folds.csv`, `results.json` (every fold of every run, the counts), `results.md` (the
table, mean ± std over folds, and the counts) and `results.csv`.

  python main.py --config=configs/ir/spectra.py:collagen --workdir=runs/collagen
"""

import hashlib
import json
import logging
import pathlib
import time

import ml_collections
import numpy as np
import threadpoolctl  # scikit-learn's dependency
import tqdm

from data_pipelines import ir_spectra
from sciimg_jax.core import atomic_files
from sciimg_jax.core import models
from sciimg_jax.core import reports
from sciimg_jax.core import trainer
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import baselines
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import classifiers  # noqa: F401  (registers the classifiers)
from sciimg_jax.ir import diagnostics
from sciimg_jax.ir import robustness
from sciimg_jax.ir import spectra_training
from sciimg_jax.ir import study


def say(text):
  """Printed and logged."""
  tqdm.tqdm.write(text)
  logging.info(text)


def check_config(config):
  """[(run, model block, spectral transform)] of `config.runs`; InputError for a bad key."""
  d = config.data
  if not d.table:
    raise InputError("data.table", "no table of spectra given: pass "
                     "--config.data.table=FILE (.csv, .tab or .npz)")
  if not d.test_table and (not isinstance(d.folds, int) or d.folds < 2):
    raise InputError("data.folds", f"must be an integer of 2 or more, got {d.folds!r}")
  if not isinstance(d.per_class, int) or d.per_class < 0:
    raise InputError("data.per_class", f"must be 0 (every spectrum) or more, got {d.per_class!r}")
  if not isinstance(config.shuffled_reference, bool):
    raise InputError("shuffled_reference", f"must be True or False, got "
                     f"{config.shuffled_reference!r}")
  unknown = [b for b in config.baselines if b not in baselines.NAMES]
  if unknown:
    raise InputError("baselines", f"unknown {unknown}; known: {', '.join(baselines.NAMES)}")
  runs = []
  for name in config.runs:
    model, _, transform = name.partition("-")
    transform = transform or d.spectral_transform
    if model not in config.models:
      raise InputError("runs", f"{name!r}: no model {model!r} in models "
                       f"({', '.join(config.models)})")
    if transform not in robustness.SPECTRAL_TRANSFORMS:
      raise InputError("runs" if "-" in name else "data.spectral_transform",
                       f"unknown spectral transform {transform!r} (in {name!r}); known: "
                       f"{', '.join(robustness.SPECTRAL_TRANSFORMS)}")
    if config.models[model].get("name") not in models.MODELS:
      raise InputError(f"models.{model}.name", f"unknown model "
                       f"{config.models[model].get('name')!r}; known: {sorted(models.MODELS)}")
    runs.append((name, config.models[model], transform))
  if not runs and not config.baselines:
    raise InputError("runs", "no run and no baseline: nothing to do")
  check_length(config.train)
  checked = ml_collections.ConfigDict(config.to_dict())  # the trainer's checks, steps aside
  checked.train.num_steps = 1
  trainer.check_config(checked)
  return runs


def check_length(train):
  """InputError unless exactly one of `train.num_epochs` and `train.num_steps` is set."""
  epochs = train.num_epochs
  if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
    raise InputError("train.num_epochs", f"must be a whole number of epochs >= 0, got {epochs!r}")
  if train.num_steps != 0:
    trainer.check_steps(train)
    if epochs:
      raise InputError("train.num_steps", f"{train.num_steps} steps and train.num_epochs="
                       f"{epochs} are both set; set one, the other 0")
  elif not epochs:
    raise InputError("train.num_epochs", "and train.num_steps are both 0; set one")


def num_steps(config, splits):
  """The training steps of every fold: `train.num_steps`, or `train.num_epochs` epochs of the
  largest split's training spectra in batches of `data.batch_size` (rounded up)."""
  t = config.train
  if t.num_steps:
    return int(t.num_steps)
  return -(-t.num_epochs * max(len(s[1]) for s in splits) // config.data.batch_size)


def schedule(optim, steps):
  """(warmup steps, EMA decay) of a run of `steps`: `optim.warmup_steps` capped at a tenth of
  the steps and the EMA's horizon 1 / (1 - `optim.ema_decay`) at a fifth, so that a short run
  (a small table) warms up and averages over the same share of its steps as a long one
  (collagen's 595 steps keep 50 and 0.99; 49 steps get 4 and 0.898)."""
  warmup = min(optim.warmup_steps, steps // 10)
  decay = min(optim.ema_decay, max(0.0, 1.0 - 5.0 / steps))
  return warmup, decay


def run_config(config, model, transform, steps):
  """The training config of one run: the shared keys, its model block and transform, and its
  steps, warmup and EMA decay (`schedule`)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model = ml_collections.ConfigDict(model.to_dict())
  c.data.spectral_transform = transform
  c.train.num_steps = steps
  c.optim.warmup_steps, c.optim.ema_decay = schedule(config.optim, steps)
  return c


def make_splits(config, table, test):
  """(folds or None, [(name, training rows, test rows)]) over the rows of `table`, then `test`.

  Training rows are subsampled to `data.per_class` of each class when it is set.
  """
  d = config.data
  if test is None:
    fold = ir_spectra.stratified_folds(table.labels, d.folds, config.seed)
    splits = [(f"fold{k}", np.flatnonzero(fold != k), np.flatnonzero(fold == k))
              for k in range(d.folds)]
  else:
    fold, n = None, len(table.labels)
    splits = [("test", np.arange(n), n + np.arange(len(test.labels)))]
  labels = table.labels if test is None else np.concatenate([table.labels, test.labels])
  splits = [(name, ir_spectra.subsample(train, labels, d.per_class, config.seed + k), held)
            for k, (name, train, held) in enumerate(splits)]
  return fold, splits


def digest(train, held):
  """A short fingerprint of a split's rows: every run and baseline of a fold records it."""
  rows = np.concatenate([np.sort(train), [-1], np.sort(held)]).astype(np.int64)
  return hashlib.sha1(rows.tobytes()).hexdigest()[:12]


def count_table(classes, labels, splits, table_labels):
  """Rows {class, table, train, test} of spectra per class: in the table, and per split."""
  per_split = lambda rows, c: " ".join(str(int(np.sum(labels[r] == c))) for r in rows)
  rows = [{"class": c, "table": int(np.sum(table_labels == c)),
           "train": per_split([s[1] for s in splits], c),
           "test": per_split([s[2] for s in splits], c)} for c in classes]
  rows.append({"class": "all", "table": len(table_labels),
               "train": " ".join(str(len(s[1])) for s in splits),
               "test": " ".join(str(len(s[2])) for s in splits)})
  return rows


REFERENCES = (
    "References of the diagnostics, on the same held-out spectra: `labels`, the one-hot labels "
    "(collapse index 0 by definition); `logistic`, a linear model on the same training "
    "spectra; `<run>-shuffled`, the same network trained on permuted labels. Collapse index: "
    "0 = as spread as the labels, 1 = a rank-one prediction (sciimg_jax/ir/diagnostics.py).")

COUNTS = (reports.Column("class", "class"), reports.Column("in the table", "table"),
          reports.Column("training (per fold)", "train"), reports.Column("test (per fold)", "test"))


def shuffled_labels(y, split, seed):
  """The labels of a split's training rows, permuted among them (reference (c)): the same
  class counts, no relation to the spectra. Drawn from `seed` and the split's name."""
  name, train, _ = split
  rng = np.random.default_rng([seed, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)])
  return y[train][rng.permutation(len(train))]


def train_network(networks, c, workdir, x, y, split, num_classes, shuffle=False):
  """(A run's metrics on one split, whether it was trained now): trained, or a finished run's
  (checked to be this split's, and reused when it has the same steps).

  With `shuffle`, the training labels are `shuffled_labels` (the held-out ones are not).
  `networks` holds the `SpectraNetwork` of each network and input width, compiled once and
  trained on every split (and its shuffled labels).
  """
  name, train, held = split
  rows = digest(train, held)
  labels = f"shuffled (seed {c.seed})" if shuffle else "true"
  done = workdir / "final_metrics.json"
  if done.is_file():
    result = json.loads(done.read_text())
    if result.get("rows") != rows or result.get("labels", "true") != labels:
      raise InputError(done, f"was trained on other rows or labels than {name} of this table; "
                       "use a fresh workdir")
    if result.get("step") == c.train.num_steps:
      return result, False
  start = time.perf_counter()
  train_y = shuffled_labels(y, split, c.seed) if shuffle else y[train]
  sources = {"train": ir_spectra.SpectraSource(x[train], train_y),
             "test": ir_spectra.SpectraSource(x[held], y[held])}
  task = classifier_task.ClassifierTask(c, workdir, sources, num_classes=num_classes,
                                        patch_size=1)
  key = (c.model.to_json(), task.in_channels)  # every run's loss and schedule are the same
  if key not in networks:
    networks[key] = spectra_training.SpectraNetwork(c, task, eval_rows=len(held))
  return networks[key].train(task, workdir, start=start, desc=f"{workdir.parent.name} {name}",
                             split=name, rows=rows, labels=labels), True


def run_spectra(config, workdir):
  """The `ir_spectra` job (module docstring). Returns {run: {column: (mean, std)}}.

  Numpy's and scikit-learn's linear algebra (PCA whitening, the diagnostics' SVDs, the
  baselines) runs on one BLAS thread: on a table's small matrices OpenBLAS's threads cost more
  than they bring, and far more on busy cores (PCA-LDA and logistic regression on collagen's
  5 folds: 0.1 and 0.2 s on one thread, 1.2-7.4 s and 1.1-5.8 s on two, measured on 2 busy
  cores). XLA's threads, which train the networks, are not BLAS's.
  """
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    return _run_spectra(config, workdir)


def _run_spectra(config, workdir):
  workdir = pathlib.Path(workdir)
  runs = check_config(config)
  d = config.data
  table = ir_spectra.load(d.table, d.label_column, d.pip_package)
  test = ir_spectra.load(d.test_table, d.label_column, d.pip_package) if d.test_table else None
  classes = ir_spectra.check_classes(table, None if test else d.folds)
  if test is not None:
    ir_spectra.check_test_table(table, test, classes)
  fold, splits = make_splits(config, table, test)
  if fold is not None:
    ir_spectra.check_folds(workdir / "folds.csv", table.labels, fold)
  x = table.spectra if test is None else np.concatenate([table.spectra, test.spectra])
  labels = table.labels if test is None else np.concatenate([table.labels, test.labels])
  y = np.searchsorted(np.array(classes), labels).astype(np.int32)

  say(f"Table {table.describe()}; classes {', '.join(classes)}.")
  if test is not None:
    say(f"Test table {test.describe()}: every model is trained on the table and scored on it.")
  else:
    say(f"{d.folds} stratified folds from seed {config.seed}: {workdir / 'folds.csv'}.")
  if d.per_class:
    say(f"Subsampling (data.per_class={d.per_class}): at most {d.per_class} training spectra "
        "of each class in every fold; the counts below are those used.")
  counts = count_table(classes, labels, splits, table.labels)
  say("Spectra per class:\n" + reports.format_markdown(counts, COUNTS))
  if fold is not None:
    ir_spectra.write_folds(workdir / "folds.csv", table.labels, fold)

  results, networks = {}, {}
  if runs:
    steps = num_steps(config, splits)
    warmup, decay = schedule(config.optim, steps)
    length = (f"{config.train.num_epochs} epochs of up to {max(len(s[1]) for s in splits)} "
              "training spectra" if config.train.num_epochs else "train.num_steps")
    say(f"Networks: {steps} steps of {d.batch_size} spectra a fold ({length}), warmup "
        f"{warmup} steps, EMA decay {decay:.3g}; each compiled once for every fold.")
  for shuffle in (False, True) if config.shuffled_reference else (False,):
    for name, model, transform in runs:
      c, name = run_config(config, model, transform, steps), name + ("-shuffled" if shuffle else "")
      start, results[name] = time.perf_counter(), []
      for s in splits:
        r, trained = train_network(networks, c, workdir / name / s[0], x, y, s, len(classes),
                                   shuffle)
        results[name].append(r)
        compiling = f" ({r['compile_seconds']:.1f} s of it compiling the step)" if r.get(
            "compile_seconds") else ""
        say(f"{name} {s[0]}: " + (f"{r['seconds']:.1f} s{compiling}" if trained else
                                  "finished before, reused") + f"; accuracy {r['accuracy']:.3f}.")
      say(f"{name}: {len(splits)} folds in {time.perf_counter() - start:.1f} s.")
  for name in config.baselines:
    results[name] = [dict(split=s, rows=digest(train, held), **baselines.evaluate(
        name, x[train][:, None, None], y[train], x[held][:, None, None], y[held],
        seed=config.seed)) for s, train, held in splits]
  results["labels"] = [dict(split=s, rows=digest(train, held),
                            **diagnostics.labels_reference(y[held], len(classes)))
                       for s, train, held in splits]
  summary = {name: study.mean_std(rows) for name, rows in results.items()}

  over = f"the {len(splits)} folds" if fold is not None else f"the test table {test.path}"
  table_md = reports.format_markdown(study.table_rows(summary), study.TABLE)
  atomic_files.write_json(workdir / "results.json", {
      "table": table.path, "test_table": test.path if test else None, "classes": classes,
      "folds": None if test else d.folds, "seed": config.seed, "per_class": d.per_class,
      "counts": counts, "runs": results, "summary": summary})
  reports.write_table(workdir / "results.csv", study.table_rows(summary), study.TABLE)
  atomic_files.write_text(workdir / "results.md", (
      f"{table.describe()}; mean ± std over {over}.\n\n{table_md}\n\n{REFERENCES}\n\n"
      "Spectra per class:\n\n"
      f"{reports.format_markdown(counts, COUNTS)}\n"))
  say(f"\nMean ± std over {over}:\n{table_md}\n{REFERENCES}")
  return summary
