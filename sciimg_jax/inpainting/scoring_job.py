"""Scores a folder of inpainted volumes against BraTS-layout ground truth.

  python main.py --config=configs/inpainting/evaluate.py --workdir=runs/eval \
      --config.evaluate.predictions=runs/infer/predictions \
      --config.evaluate.ground_truth=/data/BraTS-inpainting/val

Cases are the folders of `evaluate.ground_truth` that hold `-t1n`, `-t1n-voided` and
`-mask-healthy`. The prediction of case C is `PRED/C/C-t1n-inference.nii.gz` or
`PRED/C-t1n-inference.nii.gz`. A case that cannot be scored (missing prediction,
other shape or affine, NaN, empty healthy mask, unreadable file) is listed in the
summary and the others go on. Writes, atomically:

  workdir/scores.csv    one row per scored case: case, ssim, psnr, mse (the challenge's
                        scores, `brats_metrics.official_scores`), ssim_3d,
                        discontinuity_x/y/z/mean, texture (`image_metrics.texture_ratio`
                        in the healthy mask), and seconds when the prediction folder
                        has `evaluate.timings` (a JSON object {case: seconds}); with
                        `evaluate.num_samples` N >= 2 (predictions that are the mean of
                        N samples, with `-t1n-inference-std` beside them) also spread and
                        calibration (`brats_metrics.sample_spread`)
  workdir/summary.json  count (scored), total, `means_cover`, mean and std (`reports.mean_std`:
                        ddof=1, as the challenge's pandas summary; null for one case) of
                        each metric, and `failed`: [{case, error}].
                        A perfect case has psnr inf, written as `Infinity`.
The job raises InputError (main.py exits non-zero) when no case could be scored. Several
processes split the cases by name and process 0 writes the merged files.
"""

import json
import pathlib

import jax
from absl import logging

from data_pipelines import brats_layout
from sciimg_jax.core import atomic_files
from sciimg_jax.core import distributed
from sciimg_jax.core import image_metrics
from sciimg_jax.core import reports
from sciimg_jax.inpainting import brats_metrics
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError

GROUND_TRUTH_KEYS = ("t1n", "t1n-voided", "mask-healthy")
METRICS = ("ssim", "psnr", "mse", "ssim_3d", "discontinuity_x", "discontinuity_y",
           "discontinuity_z", "discontinuity_mean", "texture")
SUMMARY_TABLE = (reports.Column("metric", "metric"), reports.Column("mean", "mean", ".4f"),
                 reports.Column("std", "std", ".4f"))


def prediction_path(folder, case, key="t1n-inference"):
  """`folder/case/case-<key>.nii.gz`, else `folder/case-<key>.nii.gz`.

  `key` is one of `brats_layout.OUTPUT_KEYS` ('t1n-sample' scores sample 0 of a
  mean-of-N run). Raises InputError naming both paths if neither exists.
  """
  folder = pathlib.Path(folder)
  nested = brats_layout.case_file(folder / case, key)
  for path in (nested, folder / nested.name):
    if path.is_file():
      return path
  raise InputError(case, f"no prediction: looked for {nested} and {folder / nested.name}")


SPREAD_METRICS = ("spread", "calibration")


def check_num_samples(num_samples, key="evaluate.num_samples"):
  """Stops unless `num_samples` is 0 (no spread columns) or N >= 2."""
  if num_samples == 1 or num_samples < 0:
    raise InputError(key, f"is {num_samples}: the spread of samples (their std) needs "
                     "N >= 2 samples (inpaint with sampling.num_samples >= 2), or 0 for none")


def score_case(case_dir, pred_path, dilation, num_samples=0):
  """All metrics of one case as a dict; raises InputError if it cannot be scored. With
  `num_samples` N >= 2 the prediction is the mean of N samples and their std file
  (`-t1n-inference-std` beside it) gives the spread metrics."""
  case = brats_layout.load_case(case_dir, keys=GROUND_TRUTH_KEYS)
  gt, voided, mask = (case.volumes[k] for k in GROUND_TRUTH_KEYS)
  pred, pred_img = nifti.load_volume(pred_path, allow_all_zero=True)
  ref_path = brats_layout.case_file(case_dir, "t1n")
  nifti.check_same_grid(ref_path, nifti.load_image(ref_path), pred_path, pred_img)
  if not mask.any():
    raise InputError(brats_layout.case_file(case_dir, "mask-healthy"), "healthy mask is empty")
  scores = brats_metrics.case_scores(pred, gt, voided, mask, where=case.name)
  seams = brats_metrics.discontinuity(pred, gt, mask, dilation=dilation)
  scores.update({f"discontinuity_{k}": v for k, v in seams.items()})
  scores["texture"] = image_metrics.texture_ratio(pred, gt, mask)
  if num_samples:
    std_path = pred_path.with_name(pred_path.name.replace("t1n-inference", "t1n-inference-std"))
    if not std_path.is_file():
      raise InputError(std_path, f"missing: evaluate.num_samples={num_samples} scores the "
                       "spread of samples from the std the inpainting job writes")
    std, std_img = nifti.load_volume(std_path, allow_all_zero=True)
    nifti.check_same_grid(ref_path, nifti.load_image(ref_path), std_path, std_img)
    scores.update(brats_metrics.sample_spread(std, pred, gt, voided, mask, num_samples,
                                              where=case.name))
  return scores


def _load_timings(folder, name):
  path = pathlib.Path(folder) / name if name else None
  if path is None or not path.is_file():
    return None
  try:
    timings = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise InputError(path, f"not valid JSON ({e})") from None
  if not isinstance(timings, dict):
    raise InputError(path, "expected a JSON object {case: seconds}")
  return timings


def summarize(rows, failed, columns):
  """The summary.json content: count, mean/std of each column, failed cases."""
  stats = {}
  for name in columns:
    mean, std = reports.mean_std(r[name] for r in rows if r.get(name) is not None)
    stats[name] = dict(mean=mean, std=std)
  total = len(rows) + len(failed)
  return dict(count=len(rows), total=total,
              means_cover=f"{len(rows)} of {total} cases ({len(failed)} failed, listed below)",
              metrics=stats, failed=failed)


def format_table(summary):
  """The metrics' mean and std as a Markdown table, then the count and the failed cases."""
  rows = [dict(metric=name, **s) for name, s in summary["metrics"].items()]
  lines = [reports.format_markdown(rows, SUMMARY_TABLE)]
  lines.append(f"{summary['count']} of {summary['total']} cases scored (the means cover "
               f"these only), {len(summary['failed'])} failed")
  lines += [f"  failed {f['case']}: {f['error']}" for f in summary["failed"]]
  return "\n".join(lines)


def evaluate_folder(config, workdir):
  """Scores `config.evaluate.predictions` against `config.evaluate.ground_truth`.

  Returns the summary dict (also written to `workdir/summary.json`).
  """
  cfg = config.evaluate
  for key in ("predictions", "ground_truth"):
    if not cfg[key]:
      raise InputError(f"evaluate.{key}", f"not set; pass --config.evaluate.{key}=FOLDER")
  if cfg.prediction_key not in ("t1n-inference", "t1n-sample"):
    raise InputError("evaluate.prediction_key", f"must be t1n-inference or t1n-sample, got "
                     f"{cfg.prediction_key!r}")
  num_samples = int(cfg.get("num_samples", 0))
  check_num_samples(num_samples)
  if num_samples and cfg.prediction_key != "t1n-inference":
    raise InputError("evaluate.num_samples", "the spread of samples belongs to the mean "
                     "(evaluate.prediction_key=t1n-inference)")
  predictions = pathlib.Path(cfg.predictions)
  if not predictions.is_dir():
    raise InputError(predictions, "predictions folder not found")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cases = brats_layout.find_cases(cfg.ground_truth, required=GROUND_TRUTH_KEYS)
  timings = _load_timings(predictions, cfg.timings)

  rows, failed = [], []
  mine = distributed.process_share(cases, key=lambda case_dir: case_dir.name)
  for case_dir, _ in reports.each_case(mine, desc="evaluate", progress=cfg.progress_bar):
    error = None
    try:
      scores = score_case(case_dir, prediction_path(predictions, case_dir.name, cfg.prediction_key),
                          cfg.dilation, num_samples)
    except InputError as e:
      error = str(e)
    if error:
      logging.warning("%s not scored: %s", case_dir.name, error)
      failed.append(dict(case=case_dir.name, error=error))
      continue
    row = dict(case=case_dir.name, **scores)
    if timings is not None:
      row["seconds"] = timings.get(case_dir.name)
    rows.append(row)

  rows, failed = distributed.merge_lists(distributed.gather([rows, failed]),
                                         [case_dir.name for case_dir in cases], key="case")
  columns = (METRICS + (SPREAD_METRICS if num_samples else ())
             + (("seconds",) if timings is not None else ()))
  summary = summarize(rows, failed, columns)
  summary.update(predictions=str(predictions), ground_truth=str(cfg.ground_truth))
  if jax.process_index() == 0:
    reports.write_table(workdir / "scores.csv", rows,
                        [reports.Column(k, k) for k in ("case",) + columns])
    atomic_files.write_json(workdir / "summary.json", summary)
    print(format_table(summary))
  if not rows:
    raise InputError(predictions, f"no case could be scored ({len(failed)} failed); see "
                     f"{workdir / 'summary.json'}")
  return summary
