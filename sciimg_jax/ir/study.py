"""The IR-versus-RGB study: runs x seeds through the classifier job, one table.

`config.runs` maps a run name to a complete classifier config (configs/ir/study.py builds
them: the IR, RGB and per-pixel models, and the IR model with one robustness strategy or
remedy switched on). Each is trained once per seed of `config.seeds` in
`<workdir>/<run>-seed<k>` (a finished run, `reports.run_is_finished`, is not trained again:
its `final_metrics.json` is read), and the chemometric baselines (`config.baselines`, from
`baselines.NAMES`) are fitted on the centre pixels of the same training patches (every run
draws the same patches, `data.patch_seed`), once for each of `config.baseline_modalities`: IR
spectra (rows named after the baseline) and RGB colours (rows `<baseline>-rgb`). The
baselines carry the same collapse diagnostics as the networks (`baselines.diagnose`), and the
row `labels` those of the held-out patches' one-hot labels: the references a diagnostic is
read against. Writes `study.json` (every run), `study.md` and `study.csv` (mean ± std over
seeds, `reports.mean_std`: ddof=1, no std for one seed) and `study.png` (accuracy against
feature effective rank and logit PC1 share).
"""

import json
import pathlib

import ml_collections

from data_pipelines import sources as data_sources
from sciimg_jax.core import atomic_files
from sciimg_jax.core import figures
from sciimg_jax.core import reports
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import baselines
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import diagnostics

COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "features_effective_rank",
           "logits_effective_rank", "logits_pc1_share", "logits_collapse_index",
           "gradient_effective_rank")
TABLE = (reports.Column("run", "run"),) + tuple(reports.Column.mean_std(k, k, 3) for k in COLUMNS)


def train_or_reuse(c, workdir, make_task=None, **extra):
  """The run's final metrics: a finished run's `final_metrics.json`, else it is trained.

  A finished run without the file (stopped after its last checkpoint) resumes there: the
  trainer has no step left, and `train_classifier` evaluates it and writes the file. With
  `make_task`, the task it returns is trained (`classifier_task.train_task`, with `extra`).
  """
  done = workdir / "final_metrics.json"
  if reports.run_is_finished(workdir, c.train.num_steps) and done.is_file():
    return json.loads(done.read_text())
  if make_task is None:
    return classifier_task.train_classifier(c, workdir)
  return classifier_task.train_task(make_task(), c, workdir, **extra)


def mean_std(rows):
  """{column: (mean, std)} over the seeds' rows (`reports.mean_std`: ddof=1, None for one)."""
  return {k: reports.mean_std(r[k] for r in rows) for k in COLUMNS if all(k in r for r in rows)}


def format_table(summary):
  """The summary as a Markdown table (mean ± std, 3 decimals)."""
  return reports.format_markdown(table_rows(summary), TABLE)


def table_rows(summary):
  return [{"run": name, **stats} for name, stats in summary.items()]


def save_plot(summary, path):
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, key in zip(axes, ("features_effective_rank", "logits_pc1_share")):
    for name, s in summary.items():
      if key in s and "accuracy" in s:
        ax.errorbar(s[key][0], s["accuracy"][0], xerr=s[key][1], yerr=s["accuracy"][1], fmt="o",
                    color="tab:red" if name.startswith("rgb") else "tab:blue")
        ax.annotate(name, (s[key][0], s["accuracy"][0]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel("held-out accuracy")
  fig.suptitle("IR (blue) and RGB (red) classifiers: accuracy against collapse")
  figures.save_figure(fig, path)


def run_study(config, workdir):
  """The `ir_study` job (module docstring). Returns the summary {run: {column: (mean, std)}}."""
  workdir = pathlib.Path(workdir)
  unknown = [b for b in config.baselines if b not in baselines.NAMES]
  if unknown:
    raise InputError("baselines", f"unknown {unknown}; known: {', '.join(baselines.NAMES)}")
  baseline_modalities = tuple(config.get("baseline_modalities", ("ir",)))
  unknown = [m for m in baseline_modalities if m not in classifier_task.MODALITIES]
  if unknown:
    raise InputError("baseline_modalities",
                     f"unknown {unknown}; known: {', '.join(classifier_task.MODALITIES)}")
  order = tuple(config.get("order") or config.runs.keys())  # a ConfigDict iterates sorted
  missing = [n for n in order if n not in config.runs]
  if missing:
    raise InputError("order", f"names {missing}, which are not among runs")
  results, summary = {}, {}
  for name in order:
    run = config.runs[name]
    rows = []
    for seed in config.seeds:
      c = ml_collections.ConfigDict(run.to_dict())
      c.seed = int(seed)
      c.data.cache_dir = str(data_sources.cache_dir(c.data, workdir))  # one dataset for all runs
      rows.append(train_or_reuse(c, workdir / f"{name}-seed{seed}"))
    results[name], summary[name] = rows, mean_std(rows)
  for modality in baseline_modalities if config.baselines else ():
    first = ml_collections.ConfigDict(next(iter(config.runs.values())).to_dict())
    first.data.cache_dir = str(data_sources.cache_dir(first.data, workdir))
    first.data.modality, first.data.spectral_transform = modality, "none"
    task = classifier_task.PatchClassifierTask(first, workdir / "baselines")
    (tx, ty), (vx, vy) = task.arrays("train", raw=True), task.arrays("test", raw=True)
    labels = [diagnostics.labels_reference(vy, len(first.data.classes))]  # same in each loop
    for name in config.baselines:
      row = name if modality == "ir" else f"{name}-{modality}"
      rows = [baselines.evaluate(name, tx, ty, vx, vy, seed=s) for s in config.seeds]
      results[row], summary[row] = rows, mean_std(rows)
  if config.baselines and baseline_modalities:
    results["labels"], summary["labels"] = labels, mean_std(labels)
  atomic_files.write_json(workdir / "study.json", {"runs": results, "summary": summary})
  table = format_table(summary)
  for suffix in (".md", ".csv"):
    reports.write_table(workdir / f"study{suffix}", table_rows(summary), TABLE)
  save_plot(summary, workdir / "study.png")
  print(f"\nHeld-out patches, mean ± std over seeds {tuple(config.seeds)}:\n{table}")
  return summary
