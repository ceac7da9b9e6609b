"""Where a job's case folders come from: a user's BraTS folder or the embedded data.

`data.root = ''` selects the embedded data: `synthetic_brats.generate` writes
MNI152-derived subjects (train and eval disjoint) once into the cache folder and
reuses them afterwards. Otherwise `data.root` is a BraTS-layout folder; if it holds
`train/` and `eval/` subfolders those are the splits, else all of it is training
data and `data.eval_root` (default: the same folder) is held out.

`cache_dir` is where every job keeps its prepared data: `data.cache_dir`, else
`<workdir>/data`.
"""

import logging
import pathlib

from data_pipelines import synthetic_brats


def cache_dir(data, workdir):
  """The folder of a job's prepared data: `data.cache_dir`, else `<workdir>/data`."""
  return pathlib.Path(data.cache_dir or pathlib.Path(workdir) / "data")


def source_dirs(data, workdir):
  """{'train': folder, 'eval': folder} of BraTS case folders for the `data` config."""
  if not data.root:
    s = data.synthetic
    cache = cache_dir(data, workdir)
    out = cache / f"embedded-{s.resolution_mm}mm-seed{s.seed}"
    return synthetic_brats.generate(out, num_train=s.num_train, num_eval=s.num_eval,
                                    resolution_mm=s.resolution_mm, seed=s.seed)
  root = pathlib.Path(data.root)
  if (root / "train").is_dir() and (root / "eval").is_dir():
    return {"train": root / "train", "eval": root / "eval"}
  eval_root = pathlib.Path(data.get("eval_root") or root)
  if eval_root == root:
    logging.warning("data.eval_root is not set: sample figures use training cases of %s", root)
  return {"train": root, "eval": eval_root}
