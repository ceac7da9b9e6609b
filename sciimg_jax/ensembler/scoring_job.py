"""Scores a folder of translated NIfTI volumes against BraTS-layout ground truth, in file
space (job `ensembler_score`).

  python main.py --config=configs/ensembler/score.py --workdir=runs/sr/score \
      --config.evaluate.predictions=runs/sr/eval/outputs \
      --config.evaluate.methods='("cubic","average","fused")' \
      --config.evaluate.ground_truth=/data/held-out

Cases are the folders of `evaluate.ground_truth` that hold `<case>-<data.target>.nii.gz`
(FLAIR, `t2f`, by default). The prediction of case C is `PRED/C/C-<target>.nii.gz` or
`PRED/C-<target>.nii.gz` (also `.nii`), where PRED is `evaluate.predictions` itself
(`evaluate.methods=()`: one method, named after the folder) or each of its subfolders
`evaluate.methods` (the `outputs/` folder of an `ensembler_evaluate` run: a row per method).
Our outputs and another tool's are scored alike.

The scores are Diff-Ensembler's (`evaluation.scores`) on the files as they are: both whole
volumes min-max normalised by the ground truth's range, PSNR, 3D SSIM (data_range=1) and the
texture ratio in the brain (the ground truth's non-zero voxels). They are the evaluation
job's `psnr_file` and `ssim_file`, not its `psnr` and `ssim`, which are taken on the
prepared grid (docs/diff_ensembler.md, "Scores in two spaces").

A case that cannot be scored (missing prediction, other shape or affine, NaN, unreadable
file, a ground-truth folder without the target) is listed in the summary and the others
go on. Writes, atomically:

  workdir/scores.csv    one row per scored case and method: case, method, psnr, ssim, texture
  workdir/summary.json  predictions, ground_truth, target, and per method: count (scored),
                        total, `means_cover`, the mean, std (`reports.mean_std`: ddof=1, null
                        for one case) and count of the finite values of each metric (a
                        perfect case's inf PSNR is in scores.csv, not in the mean), and
                        `failed`: [{case, error}]
The job raises InputError (main.py exits non-zero) when a method has no scorable case.
Several processes split the cases by name and process 0 writes the merged files.
"""

import pathlib

import jax
import numpy as np
from absl import logging

from data_pipelines import brats_layout
from sciimg_jax.core import atomic_files
from sciimg_jax.core import distributed
from sciimg_jax.core import nifti
from sciimg_jax.core import reports
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluation

METRICS = ("psnr", "ssim", "texture")
CASE_COLUMNS = tuple(reports.Column(k, k) for k in ("case", "method") + METRICS)
SUMMARY_TABLE = (reports.Column("method", "method"), reports.Column("scored", "means_cover"),
                 reports.Column.mean_std("PSNR (dB)", "psnr", 2),
                 reports.Column.mean_std("SSIM", "ssim", 3),
                 reports.Column.mean_std("texture", "texture", 2))


def prediction_path(folder, case, target):
  """`folder/case/case-<target>.nii.gz`, else `folder/case-<target>.nii.gz` (or `.nii`).

  Raises InputError naming both paths if neither exists.
  """
  folder = pathlib.Path(folder)
  name = f"{case}-{target}.nii.gz"
  for path in (folder / case / name, folder / name):
    for candidate in (path, path.with_suffix("")):
      if candidate.is_file():
        return candidate
  raise InputError(case, f"no prediction: looked for {folder / case / name} and {folder / name}")


def score_file(pred_path, truth_path, truth=None):
  """{psnr, ssim, texture} of a NIfTI prediction against its ground-truth file.

  The whole volumes of both files through `evaluation.scores`; the brain is where the
  ground truth is non-zero. `truth`: the (volume, image) of `truth_path`
  (`nifti.load_volume`) when already loaded. Raises InputError naming the file when the
  prediction is missing, unreadable, NaN or on another grid (shape or affine).
  """
  gt, gt_img = truth if truth is not None else nifti.load_volume(truth_path)
  pred, pred_img = nifti.load_volume(pred_path, allow_all_zero=True)
  nifti.check_same_grid(truth_path, gt_img, pred_path, pred_img)
  return evaluation.scores(pred, gt, gt != 0)


def method_folders(cfg):
  """{method: folder} to score: `evaluate.predictions`, or its subfolders `evaluate.methods`."""
  for key in ("predictions", "ground_truth"):
    if not cfg[key]:
      raise InputError(f"evaluate.{key}", f"not set; pass --config.evaluate.{key}=FOLDER")
  predictions = pathlib.Path(cfg.predictions)
  if not predictions.is_dir():
    raise InputError(predictions, "predictions folder not found")
  if not cfg.methods:
    return {predictions.resolve().name: predictions}
  folders = {m: predictions / m for m in cfg.methods}
  missing = [m for m, f in folders.items() if not f.is_dir()]
  if missing:
    found = sorted(p.name for p in predictions.iterdir() if p.is_dir())
    raise InputError(predictions, f"no subfolder for method(s) {', '.join(missing)} named by "
                     f"evaluate.methods; it holds {', '.join(found) or 'no folder'}")
  return folders


def summarize(rows, failed):
  """One method's summary: count, total, mean/std/count of each metric, failed cases."""
  stats = {}
  for name in METRICS:
    values = [r[name] for r in rows if r.get(name) is not None and np.isfinite(r[name])]
    mean, std = reports.mean_std(values)
    stats[name] = dict(mean=mean, std=std, count=len(values))
  total = len(rows) + len(failed)
  return dict(count=len(rows), total=total,
              means_cover=f"{len(rows)} of {total} cases ({len(failed)} failed, listed below)",
              metrics=stats, failed=failed)


def format_table(summary):
  """Each method's means and stds as a Markdown table, then the failed cases."""
  rows = [dict(method=m, **s["metrics"], means_cover=f"{s['count']} of {s['total']}")
          for m, s in summary["methods"].items()]
  lines = [reports.format_markdown(rows, SUMMARY_TABLE),
           f"file space: {summary['predictions']} against {summary['ground_truth']} "
           f"({summary['target']}); the means cover the scored cases only"]
  lines += [f"  failed {m}/{f['case']}: {f['error']}" for m, s in summary["methods"].items()
            for f in s["failed"]]
  return "\n".join(lines)


def evaluate_folder(config, workdir):
  """The `ensembler_score` job; returns the summary dict (also `workdir/summary.json`)."""
  cfg, target = config.evaluate, config.data.target
  if target not in brats_layout.IMAGE_KEYS:
    raise InputError("data.target", f"{target!r} is not an image key; known: "
                     f"{', '.join(brats_layout.IMAGE_KEYS)}")
  folders = method_folders(cfg)
  cases, incomplete = brats_layout.scan_cases(cfg.ground_truth, (target,))
  if not cases:
    raise InputError(cfg.ground_truth, f"no case folders found (each needs "
                     f"<case>/<case>-{target}.nii.gz)")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  rows = []
  failed = {m: [dict(case=name, error=f"ground truth: {reason}")
                for name, reason in incomplete.items()] if jax.process_index() == 0 else []
            for m in folders}
  mine = distributed.process_share(cases, key=lambda case_dir: case_dir.name)
  for case_dir, _ in reports.each_case(mine, desc="score", progress=cfg.progress_bar):
    truth_path = brats_layout.case_file(case_dir, target)
    try:
      truth, truth_error = nifti.load_volume(truth_path), None
    except InputError as e:
      truth_error = str(e)
    for method, folder in folders.items():
      error = truth_error
      if error is None:
        try:
          scores = score_file(prediction_path(folder, case_dir.name, target), truth_path, truth)
        except InputError as e:
          error = str(e)
      if error:
        logging.warning("%s/%s not scored: %s", method, case_dir.name, error)
        failed[method].append(dict(case=case_dir.name, error=error))
        continue
      rows.append(dict(case=case_dir.name, method=method, **scores))

  names = [case_dir.name for case_dir in cases]
  rows, *failed_lists = distributed.merge_lists(
      distributed.gather([rows, *failed.values()]), names, key="case")
  failed = dict(zip(failed, failed_lists))  # rows: by case, then method (each case's in order)
  summary = dict(predictions=str(cfg.predictions), ground_truth=str(cfg.ground_truth),
                 target=target,
                 methods={m: summarize([r for r in rows if r["method"] == m], failed[m])
                          for m in folders})
  if jax.process_index() == 0:
    reports.write_table(workdir / "scores.csv", rows, CASE_COLUMNS)
    atomic_files.write_json(workdir / "summary.json", summary)
    print(format_table(summary))
  empty = [m for m, s in summary["methods"].items() if not s["count"]]
  if empty:
    raise InputError(cfg.predictions, f"no case could be scored for {', '.join(empty)} (in "
                     f"{', '.join(str(folders[m]) for m in empty)}); see "
                     f"{workdir / 'summary.json'}")
  return summary
