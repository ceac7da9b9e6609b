"""How much any weighting of the 2D models' samples could gain: the room a fusion's weights have.

  python bench/fusion_ceiling.py --outputs=runs/ens_sr/evaluation/outputs \
      --truth=runs/ens_sr/data/embedded-4mm-seed0/eval [--blocks=16,8,4]

From the NIfTI outputs of an evaluation that sampled each direction alone (`axial`,
`coronal`, `sagittal` folders of `--outputs`) and the held-out cases' files (`--truth`, a
case folder each, holding a file of the outputs' name), all min-max normalised by the
ground truth's range as the evaluation's file-space scores are, it prints the mean PSNR of:

  each direction, and `average` / `fused` where the outputs hold them;
  the mean of the three directions' final samples;
  the best global weights (summing to one; least squares against the ground truth over
    every case: an oracle);
  the best weights per block of B^3 voxels (an oracle of a smooth weight map; 2 free
    weights per block, so small blocks also fit noise);
  the best direction at every voxel (an oracle no weighting can reach).

A fusion's weights can gain at most what these oracles gain over the average; beyond that
only its residual, detail that no 2D model has, can.
"""

import argparse
import pathlib

import nibabel as nib
import numpy as np

from sciimg_jax.core import image_metrics
from sciimg_jax.core.errors import InputError

DIRECTIONS = ("axial", "coronal", "sagittal")
REPORTED = ("average", "fused")


def load_cases(outputs, truth):
  """(case names, {method: [normalised volume]}, [normalised truth])."""
  folders = {m: outputs / m for m in DIRECTIONS + REPORTED if (outputs / m).is_dir()}
  missing = [m for m in DIRECTIONS if m not in folders]
  if missing:
    raise InputError(str(outputs), f"has no outputs of {', '.join(missing)}: evaluate "
                     "each direction alone first (evaluate.methods)")
  cases = sorted(p.name for p in folders["axial"].iterdir() if p.is_dir())
  if not cases:
    raise InputError(str(folders["axial"]), "holds no case folders")
  volumes = {m: [] for m in folders}
  truths = []
  for case in cases:
    files = sorted((folders["axial"] / case).glob("*.nii*"))
    if len(files) != 1:
      raise InputError(str(folders["axial"] / case), f"holds {len(files)} NIfTI files, not 1")
    truth_file = truth / case / files[0].name
    if not truth_file.is_file():
      raise InputError(str(truth_file), "is missing: --truth must hold the evaluated cases")
    gt = np.asarray(nib.load(str(truth_file)).dataobj, np.float64)
    for m, folder in folders.items():
      path = folder / case / files[0].name
      if not path.is_file():
        raise InputError(str(path), "is missing")
      p, g = image_metrics.minmax_by_reference(np.asarray(nib.load(str(path)).dataobj), gt)
      volumes[m].append(p)
    truths.append(g)
  return cases, volumes, truths


def global_weights(parts, truths):
  """Least-squares weights (summing to one) of the directions over every case."""
  last = parts[-1]
  a = np.concatenate([np.stack([(p[i] - last[i]).ravel() for p in parts[:-1]], 1)
                      for i in range(len(truths))])
  b = np.concatenate([(truths[i] - last[i]).ravel() for i in range(len(truths))])
  w = np.linalg.lstsq(a, b, rcond=None)[0]
  return np.append(w, 1.0 - w.sum())


def blocks(v, size):
  """(num_blocks, size^3) blocks of the largest whole-block corner of v."""
  shape = [s // size * size for s in v.shape]
  corner = v[tuple(slice(0, s) for s in shape)]
  b = corner.reshape(shape[0] // size, size, shape[1] // size, size, shape[2] // size, size)
  return b.transpose(0, 2, 4, 1, 3, 5).reshape(-1, size ** 3)


def block_oracle_psnr(parts, g, size):
  """PSNR of the best weights (summing to one) per block of size^3 voxels; voxels outside
  the whole blocks keep the directions' mean."""
  n = len(parts)
  last = blocks(parts[-1], size)
  diffs = [blocks(p, size) - last for p in parts[:-1]]
  target = blocks(g, size)
  r = target - last
  gram = np.stack([np.stack([(diffs[a] * diffs[c]).sum(1) for c in range(n - 1)], -1)
                   for a in range(n - 1)], -2)
  rhs = np.stack([(diffs[a] * r).sum(1) for a in range(n - 1)], -1)
  w = np.linalg.solve(gram + 1e-12 * np.eye(n - 1), rhs[..., None])[..., 0]
  fitted = last + sum(w[:, a:a + 1] * diffs[a] for a in range(n - 1))
  inside = np.sum(np.square(fitted - target))
  mean = sum(parts) / n
  outside = np.sum(np.square(mean - g)) - np.sum(np.square(blocks(mean, size) - target))
  return float(10.0 * np.log10(g.size / (inside + outside)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--outputs", required=True, type=pathlib.Path,
                      help="an evaluation's outputs/ folder (a folder per method)")
  parser.add_argument("--truth", required=True, type=pathlib.Path,
                      help="the held-out cases' folder (a folder per case)")
  parser.add_argument("--blocks", default="16,8,4", help="block sizes of the block oracle")
  args = parser.parse_args()
  try:
    cases, volumes, truths = load_cases(args.outputs, args.truth)
    sizes = [int(s) for s in args.blocks.split(",") if s]
  except (InputError, ValueError) as e:
    raise SystemExit(f"fusion_ceiling: {e}")
  parts = lambda i: [volumes[d][i] for d in DIRECTIONS]
  mean_psnr = lambda preds: np.mean([image_metrics.psnr(p, g) for p, g in zip(preds, truths)])
  rows = [(m, mean_psnr(volumes[m])) for m in volumes]
  rows.append(("mean of the directions' samples",
               mean_psnr([sum(parts(i)) / 3 for i in range(len(cases))])))
  w = global_weights([volumes[d] for d in DIRECTIONS], truths)
  rows.append((f"oracle global weights {np.round(w, 3).tolist()}",
               mean_psnr([sum(wk * p for wk, p in zip(w, parts(i))) for i in range(len(cases))])))
  for size in sizes:
    rows.append((f"oracle weights per {size}^3 block",
                 np.mean([block_oracle_psnr(parts(i), truths[i], size)
                          for i in range(len(cases))])))
  best = [np.take_along_axis(np.stack(parts(i)), np.argmin(np.abs(np.stack(parts(i)) -
                                                                  truths[i]), 0)[None], 0)[0]
          for i in range(len(cases))]
  rows.append(("oracle best direction per voxel", mean_psnr(best)))
  print(f"{len(cases)} cases of {args.outputs}; PSNR in file space (dB)\n")
  print("| samples | PSNR (dB) |\n| --- | --- |")
  for name, value in rows:
    print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
  main()
