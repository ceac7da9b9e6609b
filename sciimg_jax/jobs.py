"""The jobs `main.py` can run, keyed by `config.job`."""

from sciimg_jax import evaluate
from sciimg_jax import inpaint_volumes
from sciimg_jax import quickstart
from sciimg_jax import train
from sciimg_jax.errors import InputError

JOBS = {
    "train": train.train_and_evaluate,
    "inpaint": inpaint_volumes.inpaint_folder,
    "inpaint_evaluate": evaluate.evaluate_folder,
    "quickstart": quickstart.run_quickstart,
}


def run(config, workdir):
  if config.job not in JOBS:
    raise InputError("job", f"unknown job {config.job!r}; known: {', '.join(sorted(JOBS))}")
  return JOBS[config.job](config, workdir)
