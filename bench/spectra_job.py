"""Wall time of the `ir_spectra` job end to end, and its accuracies.

  python bench/spectra_job.py                    # a 60-spectrum, 1841-band, 3-class table
  python bench/spectra_job.py --table=collagen   # configs/ir/spectra.py:collagen (the wheel)
  python bench/spectra_job.py --set train.num_epochs=30 --set shuffled_reference=False

The synthetic table is drawn from the embedded generator (`data_pipelines.synthetic_ir`,
prior `--prior`) at 0.598 cm^-1 (1841 bands, 900-1800 and 2800-3000 cm^-1): `--per_class`
pixel spectra of epithelium, stroma and lumen from training image 0, written as a CSV in a
temporary folder. The job runs in this process with the config file's defaults (5 folds, the
MLP and the CNN, their shuffled references, the three baselines) and a fresh temporary
workdir; `--set key=value` overrides config keys. Prints the seconds in all, each network
fold's (the job's own `seconds`, where it records them) and the mean accuracy of every row.
"""

import argparse
import ast
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sciimg_jax.core import xla_flags  # noqa: E402

xla_flags.set_cpu_flags()  # as main.py, before JAX starts

import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from configs.ir import spectra as spectra_config  # noqa: E402
from data_pipelines import ir_formats  # noqa: E402
from data_pipelines import synthetic_ir  # noqa: E402
from sciimg_jax.ir import spectra_job  # noqa: E402

CLASSES = ("epithelium", "stroma", "lumen")
STEP = 0.598  # cm^-1: 1841 bands


def synthetic_table(path, per_class, prior, seed=0):
  """Writes `per_class` spectra of each of CLASSES from training image 0 as a CSV."""
  labels, cube, _, wn = synthetic_ir.synthesize_image(0, size=48, seed=seed, step=STEP,
                                                      prior=prior)
  rng = np.random.default_rng(seed)
  pixels, flat = cube.reshape(-1, cube.shape[-1]), labels.reshape(-1)
  rows = [rng.choice(np.flatnonzero(flat == synthetic_ir.CLASSES.index(c)), per_class,
                     replace=False) for c in CLASSES]
  x = np.concatenate([pixels[r] for r in rows])
  names = np.repeat(CLASSES, per_class)
  ir_formats.write_spectra_csv(path, x, wn, names)
  return x.shape


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--table", default="synthetic", choices=("synthetic", "collagen"))
  parser.add_argument("--per_class", type=int, default=20)
  parser.add_argument("--prior", default="real_like", help="of the synthetic table")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config key (Python literal values), repeatable")
  parser.add_argument("--keep", default="", help="workdir to keep (default: a temporary one)")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    c = spectra_config.get_config("collagen" if args.table == "collagen" else "")
    if args.table == "synthetic":
      shape = synthetic_table(tmp / "spectra.csv", args.per_class, args.prior)
      c.data.table = str(tmp / "spectra.csv")
      print(f"Synthetic table ({args.prior}): {shape[0]} spectra x {shape[1]} bands, "
            f"{len(CLASSES)} classes.")
    c.train.progress_bar = False
    overrides = {}
    for item in args.set:
      key, _, value = item.partition("=")
      try:
        overrides[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        overrides[key] = value  # a bare word: a string
    c = base.set_keys(c, overrides)
    workdir = pathlib.Path(args.keep) if args.keep else tmp / "w"
    start = time.perf_counter()
    summary = spectra_job.run_spectra(c, workdir)
    total = time.perf_counter() - start
    runs = json.loads((workdir / "results.json").read_text())["runs"]

  print(f"\nThe job: {total:.1f} s in all.")
  for name, rows in runs.items():
    seconds = [r["seconds"] for r in rows if "seconds" in r]
    acc = summary[name].get("accuracy")
    line = f"  {name:22s} accuracy {acc[0]:.3f} ± {acc[1]:.3f}" if acc else f"  {name:22s}"
    if seconds:
      line += (f"   s per fold: {' '.join(f'{s:.1f}' for s in seconds)} "
               f"(sum {sum(seconds):.1f})")
    print(line)


if __name__ == "__main__":
  main()
