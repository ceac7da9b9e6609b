"""The quickstart job: train both slice models, inpaint held-out subjects, compare methods.

  1. trains the axial and the coronal (x_t, voided, mask) -> epsilon models on the
     embedded MNI152 subjects (`config.axial`, `config.coronal`: training configs);
  2. inpaints the held-out subjects with each method of `config.compare`
     (e.g. the hierarchical sampler, the axial-only baseline and the classical
     biharmonic and harmonic fills);
  3. scores them with the BraTS metrics and prints and writes a table
     (`comparison.json`): SSIM, PSNR, MSE in the healthy mask, through-plane
     discontinuity and seconds per volume.

Each step resumes: trained models are reused, as are finished inpaintings.
"""

import pathlib
import time

import ml_collections

from data_pipelines import sources
from sciimg_jax.core import atomic_files
from sciimg_jax.core import sharding
from sciimg_jax.inpainting import inpaint_job
from sciimg_jax.inpainting import scoring_job
from sciimg_jax.inpainting import slice_models
from sciimg_jax.inpainting import slice_task

COLUMNS = (("ssim", "SSIM"), ("psnr", "PSNR"), ("mse", "MSE"), ("discontinuity_mean", "discont."),
           ("texture", "texture"),
           ("seconds", "s/volume"))


def format_table(rows):
  header = f"{'method':<26}" + "".join(f"{title:>11}" for _, title in COLUMNS)
  lines = [header, "-" * len(header)]
  for name, means in rows.items():
    cells = "".join(f"{means.get(key, float('nan')):>11.4f}" for key, _ in COLUMNS)
    lines.append(f"{name:<26}{cells}")
  return "\n".join(lines)


def run_quickstart(config, workdir):
  workdir = pathlib.Path(workdir)
  for name in ("axial", "coronal"):
    slice_task.train_slice_model(config[name], workdir / name)
  eval_dir = sources.source_dirs(config.axial.data, workdir / "axial")["eval"]

  mesh = sharding.make_mesh()
  models = {name: slice_models.load_slice_model(workdir / name, name, mesh)
            for name in ("axial", "coronal")}
  rows = {}
  for method in config.compare:
    c = ml_collections.ConfigDict(config.to_dict())
    c.pipeline.method, c.pipeline.resampling.mode = method.split("/")
    run_dir = workdir / "inpaint" / method.replace("/", "-")
    c.inpaint.input_dir = str(eval_dir)
    c.inpaint.output_dir = str(run_dir / "predictions")
    start = time.time()
    inpaint_job.inpaint_cases(c, run_dir, inpaint_job.build_inpainter(c, models, mesh))
    c.evaluate.predictions, c.evaluate.ground_truth = c.inpaint.output_dir, str(eval_dir)
    summary = scoring_job.evaluate_folder(c, run_dir)
    rows[method] = {k: v["mean"] for k, v in summary["metrics"].items()}
    rows[method]["total_seconds"] = time.time() - start

  table = format_table(rows)
  print("\nHeld-out embedded subjects, inpainted and scored as in BraTS:\n" + table)
  atomic_files.write_json(workdir / "comparison.json", rows)
  return rows
