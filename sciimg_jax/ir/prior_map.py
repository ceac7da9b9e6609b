"""The `ir_prior_map` job: where, over the prior of the embedded data, deep IR models fall below
RGB and collapse.

At every point of a grid of two knobs of the generator's prior (`grid.x` x `grid.y`, knobs of
`synthetic_ir.PRIOR_KNOBS`; the other knobs fixed at `prior`), the runs of `order` (the IR
patch CNN, the RGB patch CNN, the per-pixel MLP: classifier configs in `runs`) are trained
once per seed by the IR study's machinery (`study.train_or_reuse`: a finished run is read,
not trained again) on the embedded data of that prior, in `<workdir>/<point>/<run>-seed<k>`,
and the baselines (`baselines`, PCA-LDA) are fitted on the centre pixels' spectra of the same
training patches. All runs of a point share one dataset (`<workdir>/data`, a folder per prior).
Each point also measures the statistics of its prior (`prior_stats.measure`, on a table of
pixel spectra of its training images). A finished point is written as `<point>/point.json`
and read back on a rerun (if it was made with the same prior, runs and seeds), and its runs
as the IR study's table, `<point>/study.{md,csv}` (every run of `order`: accuracy, collapse
index; the variant `remedies` runs the study's strategies and remedies at chosen points).

Before the grid, the named settings `named` (synthetic_ir.PRIORS) and the real table
`real_table` (if given and present) are measured by the same function: `prior_stats.md`,
`prior_stats.json`.

Writes `prior_map.json` (every point: prior, statistics, every run), `prior_map.md` and
`prior_map.csv` (a row a point: accuracy and collapse index of each model, IR minus RGB
accuracy, the measured statistics) and `prior_map.png`: heat maps over the grid of the IR
CNN's accuracy minus the RGB CNN's, and of the IR CNN's collapse index.
"""

import json
import pathlib

import ml_collections
import numpy as np

from data_pipelines import ir_spectra
from data_pipelines import synthetic_ir
from sciimg_jax.core import atomic_files
from sciimg_jax.core import figures
from sciimg_jax.core import reports
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import baselines
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import diagnostics
from sciimg_jax.ir import prior_stats
from sciimg_jax.ir import study


def say(text):
  print(text, flush=True)


def check_config(config):
  """(fixed prior, x knob, y knob, x values, y values); InputError for a bad key."""
  g = config.grid
  prior = synthetic_ir.resolve_prior(config.prior)
  for axis in ("x", "y"):
    if g[axis] not in synthetic_ir.PRIOR_KNOBS:
      raise InputError(f"grid.{axis}", f"unknown knob {g[axis]!r}; known: "
                       f"{', '.join(synthetic_ir.PRIOR_KNOBS)}")
    values = tuple(g[f"{axis}_values"])
    if not values or len(set(values)) != len(values):
      raise InputError(f"grid.{axis}_values", f"must be distinct values, got {values!r}")
    for v in values:  # the same checks as the generator's
      synthetic_ir.resolve_prior({**prior, g[axis]: v})
  if g.x == g.y:
    raise InputError("grid.y", f"the same knob as grid.x ({g.x!r})")
  missing = [n for n in config.order if n not in config.runs]
  if missing:
    raise InputError("order", f"names {missing}, which are not among runs")
  for name in ("ir", "rgb"):
    if name not in config.order:
      raise InputError("order", f"needs the run {name!r}: the map is IR against RGB")
  unknown = [b for b in config.baselines if b not in baselines.NAMES]
  if unknown:
    raise InputError("baselines", f"unknown {unknown}; known: {', '.join(baselines.NAMES)}")
  unknown = [n for n in config.named if n not in synthetic_ir.PRIORS]
  if unknown:
    raise InputError("named", f"unknown {unknown}; known: {', '.join(synthetic_ir.PRIORS)}")
  return prior, g.x, g.y, tuple(g.x_values), tuple(g.y_values)


def measure_prior(prior, stats, seed=0):
  """`prior_stats.measure` of a table of the prior's pixel spectra (`config.stats`)."""
  x, labels, wn = synthetic_ir.sample_table(prior, num_images=stats.num_images,
                                            per_class=stats.per_class, size=stats.size,
                                            seed=seed)
  return prior_stats.measure(x, labels, wn, folds=stats.folds)


def measure_named(config, workdir):
  """{name: statistics} of the real table (if any) and the named settings; written as
  `prior_stats.{json,md}`."""
  named = {}
  if config.real_table:
    try:
      table = ir_spectra.load(config.real_table, config.real_label_column,
                              config.real_pip_package)
    except InputError as e:
      say(f"The real table is not measured: {e}")
    else:
      named["real"] = prior_stats.measure(table.spectra, table.labels, table.wavenumbers,
                                          folds=config.stats.folds)
      named["real"]["table"] = table.path
  for name in config.named:
    named[name] = measure_prior(name, config.stats)
    named[name]["prior"] = synthetic_ir.resolve_prior(name)
  if not named:  # nothing to measure (the `remedies` variant)
    return named
  rows, columns = prior_stats.table_rows(named)
  text = reports.format_markdown(rows, columns)
  atomic_files.write_json(workdir / "prior_stats.json", named)
  atomic_files.write_text(workdir / "prior_stats.md", text + "\n")
  say(f"Statistics of the tables (sciimg_jax/ir/prior_stats.py):\n{text}")
  return named


def point_name(x, xv, y, yv):
  return f"{x}{xv:g}-{y}{yv:g}"


def run_point(config, workdir, prior):
  """{'prior', 'runs', 'summary', 'stats'} of one grid point: trained, or read back."""
  workdir = pathlib.Path(workdir)
  done = workdir / "point.json"
  key = {"prior": prior, "order": list(config.order), "seeds": [int(s) for s in config.seeds],
         "baselines": list(config.baselines)}
  if done.is_file():
    point = json.loads(done.read_text())
    if all(point.get(k) == v for k, v in key.items()):
      say(f"{workdir.name}: finished, read back from {done}")
      return point
  cache = str(workdir.parent / "data")  # one folder per prior inside (synthetic_ir.prior_tag)
  results = {}
  for name in config.order:
    rows = []
    for seed in config.seeds:
      c = ml_collections.ConfigDict(config.runs[name].to_dict())
      c.seed = int(seed)
      c.data.synthetic.prior = ml_collections.ConfigDict(prior)
      c.data.cache_dir = cache
      rows.append(study.train_or_reuse(c, workdir / f"{name}-seed{seed}"))
    results[name] = rows
  if config.baselines:
    first = ml_collections.ConfigDict(config.runs[config.order[0]].to_dict())
    first.data.synthetic.prior = ml_collections.ConfigDict(prior)
    first.data.cache_dir = cache
    first.data.modality, first.data.spectral_transform = "ir", "none"
    task = classifier_task.PatchClassifierTask(first, workdir / "baselines")
    (tx, ty), (vx, vy) = task.arrays("train", raw=True), task.arrays("test", raw=True)
    for name in config.baselines:
      results[name] = [baselines.evaluate(name, tx, ty, vx, vy, seed=s) for s in config.seeds]
    results["labels"] = [diagnostics.labels_reference(vy, len(first.data.classes))]
  point = {**key, "runs": results,
           "summary": {n: study.mean_std(rows) for n, rows in results.items()},
           "stats": measure_prior(prior, config.stats)}
  atomic_files.write_json(done, point)
  write_study_table(point, workdir)
  return point


def write_study_table(point, workdir):
  """`<point>/study.{md,csv}`: the IR study's table (every run, accuracy, collapse index)."""
  rows = study.table_rows(point["summary"])
  for suffix in (".md", ".csv"):
    reports.write_table(pathlib.Path(workdir) / f"study{suffix}", rows, study.TABLE)
  say(f"{pathlib.Path(workdir).name}, mean ± std over seeds {tuple(point['seeds'])}:\n"
      f"{study.format_table(point['summary'])}")


MODELS = (("ir", "IR CNN"), ("rgb", "RGB CNN"), ("pixel", "pixel MLP"), ("pca_lda", "PCA-LDA"))


def columns(x, y, names):
  cols = [reports.Column(x, "x", "g"), reports.Column(y, "y", "g")]
  for key, title in MODELS:
    if key in names:
      cols.append(reports.Column.mean_std(f"{title} acc", f"{key}_accuracy", 3))
  cols.append(reports.Column.mean_std("IR - RGB acc", "ir_minus_rgb", 3))
  for key, title in MODELS:
    if key in names:
      cols.append(reports.Column.mean_std(f"{title} CI", f"{key}_collapse", 3))
  cols += [reports.Column("separability", "separability", ".3f"),
           reports.Column("between-class share", "between_class_share", ".2f"),
           reports.Column("cos(PC1, mean)", "pc1_mean_cos", ".2f"),
           reports.Column("SNR", "snr", ".0f")]
  return tuple(cols)


def point_row(xv, yv, point):
  s, runs = point["summary"], point["runs"]
  row = {"x": xv, "y": yv}
  pair = lambda v: None if v is None else tuple(v)  # (mean, std); a list when read back
  for key, _ in MODELS:
    if key in s:
      row[f"{key}_accuracy"] = pair(s[key].get("accuracy"))
      row[f"{key}_collapse"] = pair(s[key].get("logits_collapse_index"))
  diff = [a["accuracy"] - b["accuracy"] for a, b in zip(runs["ir"], runs["rgb"])]
  row["ir_minus_rgb"] = reports.mean_std(diff)
  row.update({k: point["stats"][k] for k in ("separability", "between_class_share",
                                               "pc1_mean_cos", "snr")})
  return row


def save_plot(rows, x, y, xs, ys, path, real=None):
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  grid = lambda key: np.array([[next(r[key][0] for r in rows if r["x"] == xv and r["y"] == yv)
                                for xv in xs] for yv in ys], np.float64)
  panels = (("ir_minus_rgb", "IR CNN accuracy - RGB CNN accuracy", "RdBu", None),
            ("ir_collapse", "IR CNN collapse index (0 = labels, 1 = rank one)", "viridis",
             (0.0, 1.0)))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, (key, title, cmap, limits) in zip(axes, panels):
    values = grid(key)
    if limits is None:
      bound = max(np.nanmax(np.abs(values)), 1e-3)
      limits = (-bound, bound)
    im = ax.imshow(values, origin="lower", cmap=cmap, vmin=limits[0], vmax=limits[1],
                   aspect="auto")
    for i in range(len(ys)):
      for j in range(len(xs)):
        ax.text(j, i, f"{values[i, j]:+.3f}" if key == "ir_minus_rgb" else f"{values[i, j]:.3f}",
                ha="center", va="center", fontsize=9,
                color="white" if (abs(values[i, j]) > 0.6 * limits[1]) == (cmap == "RdBu")
                else "black")
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(f"prior: {x}")
    ax.set_ylabel(f"prior: {y}")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax)
    if real is not None:  # the real-like setting's point, where it lies on the grid
      if real[0] in xs and real[1] in ys:
        ax.plot(xs.index(real[0]), ys.index(real[1]), "s", mfc="none", mec="black", ms=34,
                mew=1.5)
  fig.suptitle("Held-out patches over the prior (others at the real-like setting; square: "
               "the real-like point)", fontsize=10)
  figures.save_figure(fig, path)


def run_map(config, workdir):
  """The `ir_prior_map` job (module docstring). Returns the table's rows."""
  workdir = pathlib.Path(workdir)
  prior, x, y, xs, ys = check_config(config)
  named = measure_named(config, workdir)
  points, rows = {}, []
  for yv in ys:
    for xv in xs:
      name = point_name(x, xv, y, yv)
      p = {**prior, x: float(xv), y: float(yv)}
      say(f"Point {name}: prior {p}")
      points[name] = run_point(config, workdir / name, p)
      rows.append(point_row(xv, yv, points[name]))
  cols = columns(x, y, set(config.order) | set(config.baselines))
  table = reports.format_markdown(rows, cols)
  atomic_files.write_json(workdir / "prior_map.json", {
      "grid": {"x": x, "x_values": list(xs), "y": y, "y_values": list(ys)}, "fixed": prior,
      "seeds": [int(s) for s in config.seeds], "named": named, "points": points})
  for suffix in (".md", ".csv"):
    reports.write_table(workdir / f"prior_map{suffix}", rows, cols)
  save_plot(rows, x, y, list(xs), list(ys), workdir / "prior_map.png",
            real=(prior[x], prior[y]))
  say(f"\nHeld-out patches over the prior ({x} x {y}; the other knobs {prior}); "
      f"acc = accuracy, CI = collapse index, mean ± std over seeds {tuple(config.seeds)}:\n"
      f"{table}")
  return rows
