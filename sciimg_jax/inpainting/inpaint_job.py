"""The inpainting job: BraTS-layout NIfTI in, `<case>-t1n-inference.nii.gz` out.

  python main.py --config=configs/inpainting/inpaint.py --workdir=runs/infer \
      --config.inpaint.input_dir=/data/BraTS-inpainting/val
  python main.py --config=configs/inpainting/inpaint.py --workdir=runs/one \
      --config.input=C-t1n-voided.nii.gz --config.mask=C-mask.nii.gz

For each case (every folder of `inpaint.input_dir` with `-t1n-voided` and `-mask`,
or the single pair `input` / `mask`, named after the file without
`-t1n-voided.nii.gz` or `.nii.gz`):
  1. load and check the voided image and the mask (3D, finite, same shape and
     affine, some positive intensity, mask mostly inside the brain: `check_case`);
  2. normalise as in BraTS practice: the 0.5/99.5 percentiles of the voided image
     (lower bound clipped at 0) map to [-1, 1] (`intensity`); the voided region is -1;
  3. centre pad (with -1) / crop to the inpainter's `volume_shape`; a crop may cut
     only background (`check_fits`);
  4. inpaint with key `fold_in(key(seed), crc32(case name))` (the same result in
     any folder, order or subset), clip to [-1, 1], undo the
     crop and the normalisation;
  5. write `<output_dir>/<case>/<case>-t1n-inference.nii.gz` (float32) with the
     input's shape, affine and header: the input voxel for voxel outside the mask,
     the inpainted values inside. An inpainter that returns N samples (N, X, Y, Z)
     (`sampling.num_samples`) gets their mean written there (the posterior mean the
     BraTS scores reward), their voxelwise standard deviation as
     `<case>-t1n-inference-std.nii.gz` (`inpaint.write_std`; 0 outside the mask) and
     sample 0 alone as `<case>-t1n-sample.nii.gz` (`inpaint.write_sample`, for
     realism scores of one sample); and `<case>-triplanar.png` (axial, coronal and
     sagittal planes through the mask's centre; input, mask, result and the ground
     truth `-t1n` when present).
An empty mask copies the input through unchanged (listed as `copied_through`). A
case that fails is listed with its reason and the others go on; if every case
fails the job raises InputError. `output_dir` defaults to `workdir/predictions`.
All files are written atomically; after every case the job rewrites
`<output_dir>/timings.json` ({case: seconds}, read by the scoring job) and
`workdir/inpaint_summary.json` (seconds per case, `copied_through`, `failed`
[{case, error}], settings), so an interrupted run leaves a valid record. Several
processes split the cases by name and merge their records once at the end
(`inpaint_cases`).
"""

import pathlib
import time

import jax
import numpy as np
import scipy.ndimage as ndi
from absl import logging

from data_pipelines import brats_layout
from sciimg_jax.core import atomic_files
from sciimg_jax.core import distributed
from sciimg_jax.core import figures
from sciimg_jax.core import intensity
from sciimg_jax.core import interrupts
from sciimg_jax.core import nifti
from sciimg_jax.core import reports
from sciimg_jax.core import volumes
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import classical
from sciimg_jax.inpainting import volume_inpainter

MAX_MASK_OUTSIDE_BRAIN = 0.5


def case_name(path):
  """'BraTS-GLI-00001-000' for '.../BraTS-GLI-00001-000-t1n-voided.nii.gz'."""
  name = pathlib.Path(path).name
  for suffix in ("-t1n-voided.nii.gz", ".nii.gz", ".nii"):
    if name.endswith(suffix) and len(name) > len(suffix):
      return name[:-len(suffix)]
  return name


def list_cases(config):
  """([(case name, voided path, mask path, ground-truth path or None)], {folder: problem}).

  The second item names the sub-folders of `inpaint.input_dir` that are not complete
  cases (no `-mask`, empty, files with another case's prefix) and why. The ground truth (`-t1n`, only drawn in the figure) is the case folder's, or in
  single-pair mode a `<case>-t1n.nii.gz` beside the voided file.
  """
  input_dir = config.inpaint.input_dir
  single, mask = config.get("input", ""), config.get("mask", "")
  if single or mask:
    if not (single and mask):
      raise InputError("input/mask", "give both --config.input and --config.mask")
    if input_dir:
      raise InputError("inpaint.input_dir", "give either a folder or --config.input/--config.mask, "
                       "not both")
    voided = pathlib.Path(single)
    name = case_name(voided)
    truth = voided.with_name(f"{name}-t1n.nii.gz")
    return [(name, voided, pathlib.Path(mask), truth if truth.is_file() else None)], {}
  if not input_dir:
    raise InputError("inpaint.input_dir",
                     "not set; pass a BraTS folder or --config.input/--config.mask")
  required = ("t1n-voided", "mask")
  folders, incomplete = brats_layout.scan_cases(input_dir, required)
  if not folders and not incomplete:
    brats_layout.find_cases(input_dir, required)  # raises: no case folders
  cases = []
  for d in folders:
    truth = brats_layout.case_file(d, "t1n")
    cases.append((d.name, brats_layout.case_file(d, "t1n-voided"),
                  brats_layout.case_file(d, "mask"), truth if truth.is_file() else None))
  return cases, incomplete


def estimated_brain(voided):
  """Brain estimate from the voided image alone (the mask is never counted as brain).

  A voxel is brain if, along at least one of the three axes, the line through it
  meets support (voided > 0) on both sides (or at the voxel itself). This puts back
  the voided region, which is 0 inside the brain: a region enclosed by brain (what
  `binary_fill_holes` would restore) and also one that reaches the brain's surface
  (which hole filling leaves open), as long as brain remains beside it along some
  axis. It adds nothing outside a convex brain (a line through an outside voxel meets
  a convex body on one side only) and, for a real brain, only voxels in its folds,
  next to the brain; a mask placed in the background stays outside.
  """
  support = voided > 0
  brain = np.zeros(voided.shape, bool)
  for axis in range(voided.ndim):
    before = np.logical_or.accumulate(support, axis=axis)
    after = np.flip(np.logical_or.accumulate(np.flip(support, axis), axis=axis), axis)
    brain |= before & after
  return brain


def check_case(voided_path, voided, mask_path, mask):
  """Raises InputError for inputs the inpainter must not see (names the file).

  The mask is rejected when more than `MAX_MASK_OUTSIDE_BRAIN` of its voxels lie
  outside `estimated_brain(voided)`.
  """
  if not np.any(voided > 0):
    raise InputError(voided_path, "no positive intensities (negative-only or empty image)")
  if mask.any():
    outside = float(np.mean(~estimated_brain(voided)[mask > 0]))
    if outside > MAX_MASK_OUTSIDE_BRAIN:
      raise InputError(mask_path, f"{outside:.0%} of the mask lies outside the brain "
                       f"(estimated from {pathlib.Path(voided_path).name})")


def check_fits(volume_shape, path, voided, mask):
  """Raises InputError if cropping to `volume_shape` would cut brain or mask voxels."""
  keep = (voided != 0) | (mask > 0)
  for axis, m in enumerate(volume_shape):
    n = voided.shape[axis]
    if n > m:
      start = (n - m) // 2
      other = tuple(a for a in range(voided.ndim) if a != axis)
      profile = keep.any(axis=other)
      if profile[:start].any() or profile[start + m:].any():
        first, last = np.flatnonzero(profile)[[0, -1]]
        raise InputError(
            path, f"brain or mask spans voxels {first}..{last} on axis {axis}, beyond the "
            f"centre crop {start}..{start + m - 1} to the inpainter's shape {tuple(volume_shape)}")


def save_triplanar(path, voided, mask, result, truth=None):
  """Axial, coronal and sagittal planes through the centre of the mask's largest part."""
  labels, n = ndi.label(mask > 0)
  if n:
    largest = 1 + int(np.argmax(ndi.sum_labels(mask > 0, labels, range(1, n + 1))))
    centre = [int(round(c)) for c in ndi.center_of_mass(labels == largest)]
  else:
    centre = [s // 2 for s in voided.shape]
  columns = {"input": voided, "mask": mask, "result": result}
  if truth is not None:
    columns["ground truth"] = truth
  hi = np.percentile(voided[voided > 0], 99.5) if np.any(voided > 0) else 1.0
  ranges = {title: (0, 1 if title == "mask" else hi) for title in columns}
  figures.save_triplanar(path, columns, centre, ranges)


def load_truth(truth_path, voided_path, case):
  """The ground truth for the figure, or None (with a warning) if it cannot be used."""
  if truth_path is None:
    return None
  try:
    truth, truth_img = nifti.load_volume(truth_path)
    nifti.check_same_grid(voided_path, case, truth_path, truth_img)  # a Case has shape, affine
  except InputError as e:
    logging.warning("ground truth left out of the figure: %s", e)
    return None
  return truth


def inpaint_one(config, inpainter, name, voided_path, mask_path, truth_path, out_dir, key):
  """Inpaints one case; returns ('done' or 'copied', seconds). Raises InputError for bad input.

  The seconds run from loading to the written prediction (the figure is not counted).
  """
  start = time.perf_counter()
  case = brats_layout.load_volumes(name, {"t1n-voided": voided_path, "mask": mask_path})
  voided, mask = case.volumes["t1n-voided"], case.volumes["mask"]
  brats_layout.warn_if_not_ras(voided_path, case.affine)
  check_case(voided_path, voided, mask_path, mask)
  out_path = brats_layout.case_file(out_dir / name, "t1n-inference")
  extras = {}
  if not mask.any():
    logging.warning("%s: the mask is empty; the voided input is copied through unchanged",
                    mask_path)
    out, status = voided, "copied"
  else:
    lo, hi = intensity.percentile_range(voided, where=voided_path)
    shape = inpainter.volume_shape or voided.shape  # None: the inpainter takes any shape
    check_fits(shape, voided_path, voided, mask)
    x = volumes.center_pad_crop(intensity.normalize(voided, lo, hi), shape, -1.0)
    m = volumes.center_pad_crop(mask, shape, 0.0)
    x = np.where(m > 0, np.float32(-1.0), x)  # the voided region is -1, whatever the file says
    result = np.asarray(inpainter(x, m, key), np.float32)
    samples = result[None] if result.ndim == x.ndim else result   # (N, X, Y, Z)
    if samples.shape[1:] != x.shape or not np.all(np.isfinite(samples)):
      raise InputError(f"inpainter {inpainter.name}",
                       f"returned shape {result.shape} or NaN/inf for {voided_path}")
    filled = np.stack([np.where(mask > 0, intensity.denormalize(volumes.center_pad_crop(
        np.clip(s, -1.0, 1.0), voided.shape, -1.0), lo, hi), voided) for s in samples])
    out = np.where(mask > 0, filled.mean(axis=0), voided)  # outside: the input, bit for bit
    if len(filled) > 1 and config.inpaint.get("write_std"):
      extras["t1n-inference-std"] = np.where(mask > 0, filled.std(axis=0), 0.0)
    if len(filled) > 1 and config.inpaint.get("write_sample"):
      extras["t1n-sample"] = filled[0]
    status = "done"
  for key_name in brats_layout.OUTPUT_KEYS[1:]:  # before the prediction, which marks a case done
    path = brats_layout.case_file(out_dir / name, key_name)
    if key_name in extras:
      nifti.save_volume(path, extras[key_name], case.affine, case.header, dtype=np.float32)
    elif path.is_file():  # an earlier run's, which would look like this one's
      path.unlink()
  nifti.save_volume(out_path, out, case.affine, case.header, dtype=np.float32)
  seconds = time.perf_counter() - start
  if config.inpaint.get("figures", True):
    truth = load_truth(truth_path, voided_path, case)
    save_triplanar(out_dir / name / f"{name}-triplanar.png", voided, mask, out, truth)
  return status, seconds


def record_failure(summary, out_dir, name, error):
  """Lists a failed case and removes its older outputs, which would look current. The
  failure is printed once, in the summary at the end (as the other jobs over a folder do)."""
  summary["failed"].append(dict(case=name, error=error))
  removed = remove_outputs(out_dir, name)
  if removed:
    summary.setdefault("removed_stale", []).extend(removed)


def remove_outputs(out_dir, name):
  """Deletes the case's outputs of an earlier run; returns the paths it removed."""
  removed = []
  for stale in ([brats_layout.case_file(out_dir / name, k) for k in brats_layout.OUTPUT_KEYS]
                + [out_dir / name / f"{name}-triplanar.png"]):
    if stale.is_file():
      stale.unlink()
      removed.append(str(stale))
  return removed


def merge_summaries(parts, names):
  """The summaries of the processes (`distributed.gather`) as one, in the order of one
  process: the incomplete folders' failures first, then the cases in `names`' order."""
  rank = {name: i for i, name in enumerate(names)}
  merged = dict(parts[0], done={}, copied_through=[], failed=[])
  for part in parts:
    merged["done"].update(part["done"])
    merged["copied_through"] += part["copied_through"]
    merged["failed"] += part["failed"]
    merged.setdefault("removed_stale", []).extend(part.get("removed_stale", []))
    if "interrupted" in part:
      merged["interrupted"] = part["interrupted"]
  merged["done"] = dict(sorted(merged["done"].items(), key=lambda kv: rank[kv[0]]))
  merged["copied_through"].sort(key=rank.get)
  merged["failed"].sort(key=lambda f: rank.get(f["case"], -1))
  if not merged["removed_stale"]:
    del merged["removed_stale"]
  return merged


def inpaint_cases(config, workdir, inpainter):
  """Inpaints every case with `inpainter`; returns (and writes) the summary.

  `inpainter` has `name`, `volume_shape` (X, Y, Z, or None for any shape) and is called as
  `inpainter(voided, mask, key)` on normalised (X, Y, Z) float32 arrays. Raises
  InputError if there is no case or every case failed.

  With several processes (`main.py --num_processes`), each takes its share of the cases by
  name (`distributed.process_share`) on its own devices, keeps its running record in
  `inpaint_summary.process-<i>.json`, and at the end process 0 writes the merged summary
  and timings: the outputs of one process.
  """
  workdir = atomic_files.writable_folder(workdir)
  out_dir = atomic_files.writable_folder(config.inpaint.output_dir or workdir / "predictions")
  cases, incomplete = list_cases(config)
  index, count = jax.process_index(), jax.process_count()
  record = workdir / ("inpaint_summary.json" if count == 1 else
                      f"inpaint_summary.process-{index}.json")
  settings = dict(inpainter=inpainter.name, volume_shape=list(inpainter.volume_shape or ()),
                  seed=config.seed, input=str(config.inpaint.input_dir or config.get("input")))
  summary = dict(inpainter=inpainter.name, output_dir=str(out_dir), settings=settings,
                 done={}, copied_through=[], failed=[])
  if index == 0:
    for name, problem in incomplete.items():
      record_failure(summary, out_dir, name, problem)
  mine = distributed.process_share(cases, key=lambda case: case[0])
  try:
    for (name, voided, mask, truth), key in reports.each_case(
        mine, desc="inpaint", progress=config.inpaint.get("progress_bar", True),
        base_key=jax.random.key(config.seed), name=lambda case: case[0]):
      try:
        status, seconds = inpaint_one(config, inpainter, name, voided, mask, truth, out_dir, key)
      except InputError as e:
        status, error = "failed", str(e)
      if status == "failed":
        record_failure(summary, out_dir, name, error)
      else:
        summary["done"][name] = seconds
        if status == "copied":
          summary["copied_through"].append(name)
      if count == 1:
        atomic_files.write_json(out_dir / "timings.json", summary["done"])
      atomic_files.write_json(record, summary)
    interrupts.check()  # a Ctrl-C during the last case
  except interrupts.Interrupted:
    summary["interrupted"] = (f"after {len(summary['done']) + len(summary['failed'])} "
                              f"of {len(mine)}")
    atomic_files.write_json(record, summary)
    raise interrupts.Interrupted(
        f"{len(summary['done'])} finished cases kept in {out_dir}; the others were not started "
        f"(see {record})") from None
  if count > 1:
    summary = merge_summaries(distributed.gather(summary), [case[0] for case in cases])
    record.unlink(missing_ok=True)
    if index == 0:
      atomic_files.write_json(out_dir / "timings.json", summary["done"])
      atomic_files.write_json(workdir / "inpaint_summary.json", summary)
  if index == 0:
    print(f"{len(summary['done'])} done ({len(summary['copied_through'])} copied through "
          f"unchanged), {len(summary['failed'])} failed; predictions in {out_dir}")
    for f in summary["failed"]:
      print(f"  failed {f['case']}: {f['error']}")
  if not summary["done"]:
    raise InputError(settings["input"], f"every case failed ({len(summary['failed'])}); see "
                     f"{workdir / 'inpaint_summary.json'}")
  return summary


def build_inpainter(config, models=None, mesh=None):
  """The inpainter of `pipeline.method`: a classical fill or the diffusion volume sampler."""
  volume_inpainter.check_config(config)
  p = config.pipeline
  if p.method in classical.FILLS:
    return classical.ClassicalInpainter(p.method, p.classical_margin)
  return volume_inpainter.VolumeInpainter(config, models, mesh)


def inpaint_folder(config, workdir):
  """The `inpaint` job: `inpaint_cases` with the configured inpainter."""
  return inpaint_cases(config, workdir, build_inpainter(config))
