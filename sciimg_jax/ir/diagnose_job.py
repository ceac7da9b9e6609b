"""The collapse diagnostics of trained classifiers, from their checkpoints, with plots.

For every run folder in `config.runs` (a classifier's training workdir), the EMA
parameters of its latest checkpoint are restored into the network of the config saved with
it, and the held-out patches of that config are scored (`classifier_task.evaluate_classifier`:
accuracy, balanced accuracy, macro F1, effective ranks, PC1 shares, the logits' collapse
index, gradient rank, probe).
Writes to the job's workdir `diagnose.json` and `diagnose.png`: the normalised singular-value
spectra of penultimate features and of (class-centred) logits, and the feature effective rank
and logit PC1 share over training (from each run's metrics.jsonl), runs side by side (IR against RGB).

  python main.py --config=configs/ir/diagnose.py --workdir=runs/diagnose \\
      --config.runs='("runs/ir","runs/rgb")'
"""

import json
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from sciimg_jax.core import atomic_files
from sciimg_jax.core import checkpoint
from sciimg_jax.core import figures
from sciimg_jax.core import models
from sciimg_jax.core import precision
from sciimg_jax.core import sharding
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import diagnostics


def load_run(run_dir):
  """(task, net, EMA params, step) of the latest checkpoint in a classifier's workdir."""
  run_dir = pathlib.Path(run_dir)
  ckpt_dir = run_dir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise InputError(run_dir, "no checkpoints/ folder: train a classifier there first "
                     "(python main.py --config=configs/ir/classifier.py:ir --workdir=...)")
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise InputError(ckpt_dir, "holds no checkpoint")
    config = ml_collections.ConfigDict(ckpt.restore_config())
    if config.get("job") != "ir_train":
      raise InputError(run_dir, f"holds a {config.get('job')!r} run, not a classifier (ir_train)")
    task = classifier_task.PatchClassifierTask(config, run_dir)
    net, params = models.Network.split(
        task.create_model(nnx.Rngs(0), precision.compute_dtype(config)))
    params = ckpt.restore_ema(checkpoint.abstract_like(params,
                                                       sharding.replicated(sharding.make_mesh())))
  finally:
    ckpt.close()
  return task, net, params, step


def spectrum(x, centre_classes=False):
  s = diagnostics.singular_values(x, centre_classes)
  s = s[s > 0]  # class-centred logits have one zero singular value
  return (s / s.sum()).tolist()


def diagnose_run(run_dir):
  task, net, params, step = load_run(run_dir)
  embed = jax.jit(lambda p, x: classifier_task.logits_and_features(net, p, x))
  scores = classifier_task.evaluate_classifier(task, net, params, embed)
  logits, features = classifier_task.batched(embed, params, task.held_out()[0][0])
  history = []
  metrics_file = pathlib.Path(run_dir) / "metrics.jsonl"
  if metrics_file.is_file():
    for line in metrics_file.read_text().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a stop
      if "features_effective_rank" in row:
        history.append(row)
  return {"run": str(run_dir), "step": int(step), "modality": task.config.data.modality,
          "model": task.config.model.name, **scores,
          "feature_spectrum": spectrum(features),
          "logit_spectrum": spectrum(logits, centre_classes=True),
          "history": history}


def save_plot(results, path):
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  for r in results:
    label = f"{pathlib.Path(r['run']).name} ({r['modality']})"
    axes[0].semilogy(np.arange(1, len(r["feature_spectrum"]) + 1), r["feature_spectrum"], "o-",
                     ms=3, label=label)
    axes[1].semilogy(np.arange(1, len(r["logit_spectrum"]) + 1), r["logit_spectrum"], "o-",
                     ms=3, label=label)
    steps = [h["step"] for h in r["history"]]
    axes[2].plot(steps, [h["features_effective_rank"] for h in r["history"]], "o-", label=label)
    axes[3].plot(steps, [h["logits_pc1_share"] for h in r["history"]], "o-", label=label)
  titles = ("penultimate features: singular values / sum", "logits: singular values / sum",
            "feature effective rank over training", "logit PC1 share over training")
  for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
  for ax in axes[2:]:
    ax.set_xlabel("training step")
  figures.save_figure(fig, path)


def run_diagnose(config, workdir):
  """The `ir_diagnose` job (module docstring); returns the per-run results."""
  if not config.runs:
    raise InputError("runs", "name at least one classifier run folder")
  results = [diagnose_run(r) for r in config.runs]
  workdir = pathlib.Path(workdir)
  atomic_files.write_json(workdir / "diagnose.json", results)
  save_plot(results, workdir / "diagnose.png")
  keys = ("accuracy", "features_effective_rank", "logits_effective_rank", "logits_pc1_share",
          "logits_collapse_index", "gradient_effective_rank", "probe_accuracy")
  print(f"{'run':<28}" + "".join(f"{k:>26}" for k in keys))
  for r in results:
    print(f"{pathlib.Path(r['run']).name:<28}"
          + "".join(f"{r.get(k, np.nan):>26.3f}" for k in keys))
  return results
