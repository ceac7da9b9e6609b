"""The quickstart job: train both slice models, inpaint held-out subjects, compare methods.

  1. trains the axial and the coronal (x_t, voided, mask) -> epsilon models on the
     embedded MNI152 subjects (`config.axial`, `config.coronal`: training configs);
  2. inpaints the held-out subjects with each method of `config.compare`
     (e.g. the hierarchical sampler, the axial-only baseline and the classical
     biharmonic and harmonic fills);
  3. scores them with the BraTS metrics and prints and writes a table
     (`comparison.json`, mean and std over subjects): SSIM, PSNR, MSE in the healthy
     mask, through-plane discontinuity, texture ratio and seconds per volume.

An entry of `config.compare` is 'method/resampling' (one sample) or
'method/resampling/meanN': N samples in one batched call, scored twice, as their
mean (row 'method/resampling/meanN': the accuracy columns, and the samples' spread and
its calibration against the mean's error, `brats_metrics.sample_spread`) and as sample 0
alone ('method/resampling/sample': its texture and seams are those of one realistic
sample, which a mean smooths).

`config.compare_families` (names of `data_pipelines.mask_families.FAMILIES`) repeats the
comparison on the same held-out cases with new healthy masks of each family (rows
'<entry> [<family>]'): mask shapes the models may never have seen in training.

A rerun reuses the trained models: a finished one (`reports.run_is_finished`) is not
trained again, a stopped one resumes from its last checkpoint; inpainting and scoring are
done again.
"""

import pathlib

import ml_collections

from data_pipelines import mask_families
from data_pipelines import sources
from sciimg_jax.core import atomic_files
from sciimg_jax.core import reports
from sciimg_jax.core import sharding
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import inpaint_job
from sciimg_jax.inpainting import scoring_job
from sciimg_jax.inpainting import slice_inputs
from sciimg_jax.inpainting import volume_inpainter

COLUMNS = (("ssim", "SSIM"), ("psnr", "PSNR"), ("mse", "MSE"), ("discontinuity_mean", "discont."),
           ("texture", "texture"), ("spread", "spread"), ("calibration", "calib."),
           ("seconds", "s/volume"))
TABLE = (reports.Column("method", "method"),) + tuple(
    reports.Column.mean_std(title, key, 4) for key, title in COLUMNS)


def parse_entry(entry):
  """'method/resampling' or 'method/resampling/meanN' -> (method, resampling, N)."""
  parts = entry.split("/")
  num = 1
  if len(parts) == 3 and parts[2].startswith("mean") and parts[2][4:].isdigit():
    num = int(parts[2][4:])
  if len(parts) not in (2, 3) or num < 1 or (len(parts) == 3 and num == 1):
    raise InputError("compare", f"entry {entry!r} is not 'method/resampling' or "
                     "'method/resampling/meanN' with N >= 2")
  return parts[0], parts[1], num


def format_table(rows):
  """One Markdown line per method: the mean (± std over subjects) of each column."""
  return reports.format_markdown([{"method": name, **stats} for name, stats in rows.items()],
                                 TABLE)


def compare(config, workdir, models, mesh, entries, eval_dir, family=None):
  """{row: metrics} of every `compare` entry inpainted and scored on the cases of `eval_dir`
  (with a mask `family`: rows '<row> [family]', files under `workdir/inpaint/<entry>-family`)."""
  suffix = f" [{family}]" if family else ""
  rows = {}
  for entry, method, mode, num in entries:
    c = ml_collections.ConfigDict(config.to_dict())
    c.pipeline.method, c.pipeline.resampling.mode = method, mode
    c.sampling.num_samples, c.inpaint.write_sample = num, num > 1
    run_dir = workdir / "inpaint" / "-".join(filter(None, (entry.replace("/", "-"), family)))
    c.inpaint.input_dir = str(eval_dir)
    c.inpaint.output_dir = str(run_dir / "predictions")
    inpaint_job.inpaint_cases(c, run_dir, inpaint_job.build_inpainter(c, models, mesh))
    c.evaluate.predictions, c.evaluate.ground_truth = c.inpaint.output_dir, str(eval_dir)
    scored = {entry: ("t1n-inference", run_dir / "scores")}
    if num > 1:  # sample 0 of the same run: the one-sample row (its time is the N-sample run's)
      scored[f"{method}/{mode}/sample"] = ("t1n-sample", run_dir / "scores-sample")
    for row, (key, score_dir) in scored.items():
      c.evaluate.prediction_key = key
      c.evaluate.num_samples = num if key == "t1n-inference" and num > 1 else 0
      rows[row + suffix] = scoring_job.evaluate_folder(c, score_dir)["metrics"]
      if key == "t1n-sample":  # its seconds are the N-sample run's, shown in the mean's row
        rows[row + suffix].pop("seconds", None)
  return rows


def run_quickstart(config, workdir):
  workdir = pathlib.Path(workdir)
  entries = [(entry, *parse_entry(entry)) for entry in config.compare]  # checked before training
  families = tuple(config.get("compare_families", ()))
  if families:
    mask_families.check_families(families, key="compare_families")
  for name in ("axial", "coronal"):
    if reports.run_is_finished(workdir / name, config[name].train.num_steps):
      print(f"== {name} model: finished already in {workdir / name}")
    else:
      slice_inputs.train_slice_model(config[name], workdir / name)
  eval_dir = sources.source_dirs(config.axial.data, workdir / "axial")["eval"]

  mesh = sharding.make_mesh()
  models = {name: volume_inpainter.load_slice_model(workdir / name, name, mesh)
            for name in ("axial", "coronal")}
  rows = compare(config, workdir, models, mesh, entries, eval_dir)
  for family in families:  # the same cases with healthy masks of another shape family
    remasked = mask_families.remask_cases(eval_dir, workdir / f"eval-{family}", family,
                                          seed=config.seed)
    rows.update(compare(config, workdir, models, mesh, entries, remasked, family))

  print("\nHeld-out embedded subjects, inpainted and scored as in BraTS "
        "(mean ± std over subjects):\n" + format_table(rows))
  atomic_files.write_json(workdir / "comparison.json", rows)
  return rows
