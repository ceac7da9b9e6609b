"""The inpainting job: BraTS-layout NIfTI in, `<case>-t1n-inference.nii.gz` out.

For each case (every folder of `inpaint.input_dir` with `-t1n-voided` and `-mask`,
or the single pair `--config.input` / `--config.mask`):
  1. load and check the voided image and the mask (3D, finite, same shape and affine);
  2. normalise as in BraTS practice (`intensity.percentile_range` of the voided image);
  3. centre pad/crop to the inpainter's `volume_shape` (only background may be cut);
  4. inpaint (`pipeline.VolumeInpainter`), undo the crop and the normalisation;
  5. write `<output_dir>/<case>/<case>-t1n-inference.nii.gz` with the input's shape,
     affine and header, equal to the input voxel for voxel outside the mask, and a
     tri-planar PNG (input, mask, result, and ground truth `-t1n` when present).
A case that fails (see `check_case`) is listed in `workdir/inpaint_summary.json`
with its reason and the others go on; an empty mask copies the input through.
Files are written atomically; `timings.json` ({case: seconds}) goes beside the
predictions for the scoring job.
"""

import json
import os
import pathlib
import tempfile
import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.ndimage as ndi  # noqa: E402
import tqdm  # noqa: E402
from absl import logging  # noqa: E402

from data_pipelines import brats_layout  # noqa: E402
from sciimg_jax import figures  # noqa: E402
from sciimg_jax import intensity  # noqa: E402
from sciimg_jax import nifti  # noqa: E402
from sciimg_jax.errors import InputError  # noqa: E402

MAX_MASK_OUTSIDE_BRAIN = 0.5


def write_json(path, obj):
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def list_cases(config):
  """[(case name, voided path, mask path, ground-truth path or None)]."""
  if config.get("input") or config.get("mask"):
    if not (config.input and config.mask):
      raise InputError("input/mask", "give both --config.input and --config.mask")
    voided = pathlib.Path(config.input)
    name = voided.name.replace("-t1n-voided.nii.gz", "").replace(".nii.gz", "")
    return [(name, voided, pathlib.Path(config.mask), None)]
  if not config.inpaint.input_dir:
    raise InputError("inpaint.input_dir", "not set; pass a BraTS folder or --config.input/--config.mask")
  cases = []
  for d in brats_layout.find_cases(config.inpaint.input_dir, required=("t1n-voided", "mask")):
    gt = brats_layout.case_file(d, "t1n")
    cases.append((d.name, brats_layout.case_file(d, "t1n-voided"), brats_layout.case_file(d, "mask"),
                  gt if gt.is_file() else None))
  return cases


def estimated_brain(voided):
  """Brain estimate from the voided image: closed, hole-filled support of voided > 0.

  The voided region is 0 inside the brain; filling holes puts it back in.
  """
  support = ndi.binary_closing(voided > 0, iterations=2)
  return ndi.binary_fill_holes(support)


def check_case(voided_path, voided, mask_path, mask):
  """Raises InputError for inputs the inpainter must not see (names the file)."""
  if not np.any(voided > 0):
    raise InputError(voided_path, "no positive intensities (negative-only or empty image)")
  if mask.any():
    outside = np.mean(~estimated_brain(voided)[mask > 0])
    if outside > MAX_MASK_OUTSIDE_BRAIN:
      raise InputError(mask_path, f"{outside:.0%} of the mask lies outside the brain")


def pad_crop(volume, shape, fill):
  """Centre pads with `fill` / crops `volume` to `shape`; returns (result, undo slices/pads)."""
  out = volume
  pads, crops = [], []
  for axis, (n, m) in enumerate(zip(volume.shape, shape)):
    before = (m - n) // 2 if m >= n else 0
    pads.append((before, m - n - before) if m >= n else (0, 0))
    start = (n - m) // 2 if n > m else 0
    crops.append(slice(start, start + m) if n > m else slice(None))
  out = np.pad(volume[tuple(crops)], pads, constant_values=fill)
  return out, (pads, crops)


def unpad_crop(volume, undo, original):
  """Inverse of `pad_crop`: the cropped-away border comes from `original`."""
  pads, crops = undo
  inner = volume[tuple(slice(b, volume.shape[i] - a) for i, (b, a) in enumerate(pads))]
  out = np.array(original, copy=True)
  out[tuple(crops)] = inner
  return out


def check_fits(volume_shape, path, voided, mask):
  """Cropping to `volume_shape` may only cut background."""
  keep = (voided != 0) | (mask > 0)
  for axis, m in enumerate(volume_shape):
    n = voided.shape[axis]
    if n > m:
      start = (n - m) // 2
      other = tuple(a for a in range(3) if a != axis)
      profile = keep.any(axis=other)
      if profile[:start].any() or profile[start + m:].any():
        raise InputError(path, f"brain extends beyond the network's {volume_shape} crop on axis {axis}")


def save_triplanar(path, voided, mask, result, truth=None):
  """Axial, coronal and sagittal planes through the mask's centre of mass."""
  labels, n = ndi.label(mask > 0)
  if n:  # through the largest mask component
    largest = 1 + int(np.argmax(ndi.sum_labels(mask > 0, labels, range(1, n + 1))))
    centre = [int(round(c)) for c in ndi.center_of_mass(labels == largest)]
  else:
    centre = [n // 2 for n in voided.shape]
  columns = [("input", voided), ("mask", mask), ("result", result)]
  if truth is not None:
    columns.append(("ground truth", truth))
  hi = np.percentile(voided[voided > 0], 99.5) if np.any(voided > 0) else 1.0
  fig, axes = plt.subplots(3, len(columns), figsize=(2.4 * len(columns), 7.2), squeeze=False)
  for row, (plane, axis) in enumerate((("axial", 2), ("coronal", 1), ("sagittal", 0))):
    for col, (title, vol) in enumerate(columns):
      image = np.rot90(np.take(vol, centre[axis], axis=axis))
      axes[row, col].imshow(image, cmap="gray", vmin=0, vmax=1 if title == "mask" else hi)
      axes[row, col].set_axis_off()
      if row == 0:
        axes[row, col].set_title(title, fontsize=9)
    axes[row, 0].text(-0.1, 0.5, plane, transform=axes[row, 0].transAxes, rotation=90,
                      va="center", fontsize=9)
  figures.save_figure(fig, path)


def inpaint_one(config, inpainter, name, voided_path, mask_path, truth_path, out_dir, key):
  """Inpaints one case; returns 'done' or 'copied'. Raises InputError for bad input."""
  voided, voided_img = nifti.load_volume(voided_path, allow_all_zero=True)
  mask, mask_img = nifti.load_volume(mask_path, allow_all_zero=True)
  nifti.check_same_grid(voided_path, voided_img, mask_path, mask_img)
  mask = (mask > 0.5).astype(np.float32)
  check_case(voided_path, voided, mask_path, mask)
  out_path = out_dir / name / f"{name}-t1n-inference.nii.gz"
  if not mask.any():
    logging.warning("%s: empty mask, the input is copied through", mask_path)
    nifti.save_volume(out_path, voided, voided_img.affine, voided_img.header, dtype=np.float32)
    return "copied"
  lo, hi = intensity.percentile_range(voided, where=voided_path)
  check_fits(inpainter.volume_shape, voided_path, voided, mask)
  x, undo = pad_crop(intensity.normalize(voided, lo, hi), inpainter.volume_shape, -1.0)
  m, _ = pad_crop(mask, inpainter.volume_shape, 0.0)
  result = np.asarray(inpainter(x, m, key), np.float32)
  if not np.all(np.isfinite(result)):
    raise InputError(voided_path, "the inpainter returned NaN or inf")
  filled = intensity.denormalize(unpad_crop(result, undo, np.zeros_like(voided)), lo, hi)
  out = np.where(mask > 0, filled, voided).astype(np.float32)
  nifti.save_volume(out_path, out, voided_img.affine, voided_img.header, dtype=np.float32)
  if config.inpaint.figures:
    truth = nifti.load_volume(truth_path)[0] if truth_path is not None else None
    save_triplanar(out_dir / name / f"{name}-triplanar.png", voided, mask, out, truth)
  return "done"


def inpaint_cases(config, workdir, inpainter):
  """Inpaints every case; returns (and writes) the summary. Raises if every case failed."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out_dir = pathlib.Path(config.inpaint.output_dir or workdir / "predictions")
  out_dir.mkdir(parents=True, exist_ok=True)
  cases = list_cases(config)
  summary = dict(inpainter=inpainter.name, output_dir=str(out_dir), done={}, copied_through=[],
                 failed=[])
  base_key = jax.random.key(config.seed)
  for n, (name, voided, mask, truth) in enumerate(tqdm.tqdm(
      cases, desc="inpaint", unit="case", disable=not config.inpaint.progress_bar)):
    start = time.time()
    try:
      status = inpaint_one(config, inpainter, name, voided, mask, truth, out_dir,
                           jax.random.fold_in(base_key, n))
    except InputError as e:
      logging.warning("%s failed: %s", name, e)
      summary["failed"].append(dict(case=name, error=str(e)))
      continue
    summary["done"][name] = time.time() - start
    if status == "copied":
      summary["copied_through"].append(name)
  write_json(out_dir / "timings.json", summary["done"])
  write_json(workdir / "inpaint_summary.json", summary)
  print(f"{len(summary['done'])} cases inpainted into {out_dir} "
        f"({len(summary['copied_through'])} copied through), {len(summary['failed'])} failed")
  for f in summary["failed"]:
    print(f"  failed {f['case']}: {f['error']}")
  if cases and not summary["done"]:
    raise InputError(config.inpaint.input_dir or config.input, "every case failed (see above)")
  return summary


def inpaint_folder(config, workdir):
  """The `inpaint` job."""
  from sciimg_jax import pipeline
  return inpaint_cases(config, workdir, pipeline.build_inpainter(config))
