"""The jobs `main.py` can run, keyed by `config.job`.

This is the one module that sees every method; the core never imports it.
"""

from sciimg_jax.core import atomic_files
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluate_job as ensembler_evaluate
from sciimg_jax.ensembler import fusion_task
from sciimg_jax.ensembler import scoring_job as ensembler_scoring
from sciimg_jax.ensembler import slice_inputs as ensembler_slices
from sciimg_jax.ensembler import study as ensembler_study
from sciimg_jax.ensembler import volume_model as ensembler_volume
from sciimg_jax.inpainting import inpaint_job
from sciimg_jax.inpainting import quickstart
from sciimg_jax.inpainting import scoring_job
from sciimg_jax.inpainting import slice_inputs as inpainting_slices
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import diagnose_job as ir_diagnose
from sciimg_jax.ir import prior_map as ir_prior_map
from sciimg_jax.ir import spectra_job as ir_spectra
from sciimg_jax.ir import study as ir_study

JOBS = {
    "inpaint_train": inpainting_slices.train_slice_model,
    "inpaint": inpaint_job.inpaint_folder,
    "inpaint_evaluate": scoring_job.evaluate_folder,
    "quickstart": quickstart.run_quickstart,
    "inpaint_study": quickstart.run_quickstart,   # the quickstart's steps at the study's size
    "ir_train": classifier_task.train_classifier,
    "ir_study": ir_study.run_study,
    "ir_diagnose": ir_diagnose.run_diagnose,
    "ir_spectra": ir_spectra.run_spectra,
    "ir_prior_map": ir_prior_map.run_map,
    "ensembler_train": ensembler_slices.train_slice_model,
    "ensembler_fusion": fusion_task.train_fusion,
    "ensembler_volume": ensembler_volume.train_volume_model,
    "ensembler_evaluate": ensembler_evaluate.evaluate_folder,
    "ensembler_score": ensembler_scoring.evaluate_folder,
    "ensembler_study": ensembler_study.run_study,
}


def run(config, workdir):
  """Runs `config.job` in `workdir` (created; removed again if the job is refused before it
  wrote anything there)."""
  if config.job not in JOBS:
    raise InputError("job", f"unknown job {config.job!r}; known: {', '.join(sorted(JOBS))}")
  with atomic_files.job_folder(workdir):
    return JOBS[config.job](config, workdir)
