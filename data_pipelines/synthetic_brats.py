"""Embedded BraTS-like data: many synthetic subjects made from the MNI152 2009 template.

Nothing is downloaded: nilearn ships the template (skull-stripped T1, grey- and white-matter
probability maps, brain mask) inside its wheel. Each subject is the template pulled through

  * a random smooth diffeomorphism: a Gaussian-smoothed random velocity field integrated by
    scaling and squaring, halved until its Jacobian determinant is positive everywhere,
  * a small random affine (rotation up to 6 degrees, anisotropic scale within 8 %, shift 3 mm),

then given contrasts from the warped tissue maps (GM, WM, CSF = 1 - GM - WM in the brain):

  * T1 (`t1n`): the template T1 with per-tissue intensity jitter (WM > GM > CSF),
  * T2 (`t2w`): CSF bright, GM > WM,
  * FLAIR (`t2f`): CSF dark, GM > WM,

a tumour (whole tumour = `mask-unhealthy`, a lumpy ellipsoid in white matter with an enhancing
core and sometimes a necrotic centre: T1 hypointense, T2 and FLAIR hyperintense edema halo,
FLAIR-dark necrosis), and per modality a random gamma, a smooth multiplicative bias field, a random
global scale (about 1000, arbitrary units like real scans) and Rician noise. Everything outside the
brain mask is 0, as in the skull-stripped BraTS volumes. `mask-healthy` is one or two lesion-shaped
regions in healthy brain tissue, kept at least one voxel (26-connectivity) away from the tumour;
`mask` is their union with the tumour and `t1n-voided` is `t1n` with `mask` set to 0.

Random smooth fields (velocity, bias) live on the 4 mm grid and are resampled to the output grid,
and every subject draws from its own streams seeded by (seed, subject id), so a subject's anatomy
does not depend on how many others are made, nor (apart from lesion placement and noise) on the
resolution. Training subjects are 0..num_train-1; evaluation subjects start at a fixed id,
`EVAL_FIRST_SUBJECT`, so the evaluation set stays the same when `num_train` changes.

The output uses the BraTS folder layout of `data_pipelines.brats_layout`:

  OUT/manifest.json
  OUT/train/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t2w,t2f,t1n-voided,mask,...}.nii.gz
  OUT/eval/BraTS-GLI-90000-000/...

Usage: python -m data_pipelines.synthetic_brats --out_dir D --num_train N --num_eval M
"""

import argparse
import functools
import json
import pathlib
import shutil
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage
import tqdm

from data_pipelines import brats_layout
from data_pipelines import processes
from sciimg_jax.core import atomic_files
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError

VERSION = 1
RESOLUTIONS_MM = (1, 2, 4)
EVAL_FIRST_SUBJECT = 90000
MAX_SUBJECT = 99999
SPLITS = ("train", "eval")
CASE_KEYS = ("t1n", "t2w", "t2f", "t1n-voided", "mask", "mask-healthy", "mask-unhealthy",
             "mask-brain")
MANIFEST = "manifest.json"
_GENERATOR = "data_pipelines.synthetic_brats"
_TMP_PREFIX = ".tmp-"
_FIELD_MM = 4  # Random smooth fields are drawn on this grid.


def case_name(subject):
  return f"BraTS-GLI-{subject:05d}-000"


def subject_ids(split, num_train, num_eval):
  """Subject ids of a split: train 0..num_train-1, eval EVAL_FIRST_SUBJECT..+num_eval-1."""
  if split == "train":
    return list(range(num_train))
  return list(range(EVAL_FIRST_SUBJECT, EVAL_FIRST_SUBJECT + num_eval))


# ----------------------------------------------------------------------------- template


@functools.lru_cache(maxsize=None)
def template(resolution_mm):
  """The MNI152 2009 template at `resolution_mm`: ({t1, gm, wm, brain}, affine).

  1 and 2 mm are nilearn's own grids; 4 mm averages 2x2x2 blocks of the 2 mm grid (the affine
  scaled by 2 and shifted by half a 2 mm voxel, so voxel centres stay where they belong).
  Arrays are float32 and read-only.
  """
  resolution_mm = _check_resolution(resolution_mm)
  from nilearn import datasets  # pylint: disable=g-import-not-at-top  (slow import)
  loaders = {
      "t1": datasets.load_mni152_template,
      "gm": datasets.load_mni152_gm_template,
      "wm": datasets.load_mni152_wm_template,
      "brain": datasets.load_mni152_brain_mask,
  }
  base = 1 if resolution_mm == 1 else 2
  volumes = {}
  for key, load in loaders.items():
    img = load(resolution=base)
    volumes[key] = np.clip(img.get_fdata(dtype=np.float32), 0, 1)
    affine = img.affine
  if resolution_mm == 4:
    volumes = {k: _block_mean(v) for k, v in volumes.items()}
    affine = affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1]])
  volumes["t1"] = volumes["t1"] * (volumes["brain"] > 0.5)
  for v in volumes.values():
    v.flags.writeable = False
  return volumes, np.asarray(affine, dtype=np.float64)


def _block_mean(volume):
  """Averages 2x2x2 blocks (zero-padding odd sizes)."""
  pad = [(0, s % 2) for s in volume.shape]
  v = np.pad(volume, pad)
  x, y, z = (s // 2 for s in v.shape)
  return v.reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5)).astype(np.float32)


# ----------------------------------------------------------------------- random fields


def _smooth_noise(rng, shape, sigma_vox):
  """Gaussian-smoothed white noise scaled to unit standard deviation."""
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
  return field / field.std()


def _resample(field, field_affine, affine, shape):
  """Linearly resamples `field` (on `field_affine`) onto the grid (`affine`, `shape`).

  Both grids are axis-aligned, so the voxel mapping is a per-axis scale and shift.
  """
  m = np.linalg.solve(field_affine, affine)
  if field.shape == tuple(shape) and np.allclose(m, np.eye(4)):
    return field
  return ndimage.affine_transform(field, np.diag(m)[:3], offset=m[:3, 3], output_shape=shape,
                                  order=1, mode="nearest")


def _exponential(velocity, spacing, steps=6):
  """Displacement (mm) of exp(velocity) by scaling and squaring; velocity is (3, *shape) mm."""
  grid = np.indices(velocity.shape[1:], dtype=np.float64)
  disp = velocity / 2**steps
  for _ in range(steps):
    coords = grid + disp / spacing
    disp = disp + np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest")
                            for c in disp])
  return disp


def jacobian_determinant(disp, spacing):
  """det(I + grad disp) on every voxel, for a displacement field (3, *shape) in mm."""
  grads = np.stack([np.stack(np.gradient(c, spacing), axis=-1) for c in disp], axis=-2)
  return np.linalg.det(grads + np.eye(3))


def random_displacement(rng, shape, spacing, *, amplitude_mm, smoothness_mm=14.0,
                        min_jacobian=0.2):
  """A smooth random diffeomorphic displacement field (3, *shape) in mm.

  The velocity is smoothed white noise of standard deviation `amplitude_mm`; it is halved
  until the Jacobian determinant of its exponential exceeds `min_jacobian` everywhere.
  """
  velocity = amplitude_mm * np.stack(
      [_smooth_noise(rng, shape, smoothness_mm / spacing) for _ in range(3)])
  for _ in range(10):
    disp = _exponential(velocity, spacing)
    if jacobian_determinant(disp, spacing).min() > min_jacobian:
      return disp
    velocity = velocity / 2
  return np.zeros_like(velocity)


def _rotation(angles):
  """Rotation matrix from three angles (radians) about x, y, z."""
  cx, cy, cz = np.cos(angles)
  sx, sy, sz = np.sin(angles)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _warp(volumes, affine, disp, linear, shift):
  """Pulls `volumes` back through x -> linear @ (x + disp(x)) + shift (world mm, MNI origin)."""
  shape = next(iter(volumes.values())).shape
  spacing = np.diag(affine)[:3]
  world = [affine[a, 3] + spacing[a] * np.arange(shape[a]).reshape(
      [-1 if b == a else 1 for b in range(3)]) + disp[a] for a in range(3)]
  inverse = np.linalg.inv(affine)
  coords = []
  for a in range(3):
    source = sum(linear[a, b] * world[b] for b in range(3)) + shift[a]
    coords.append(inverse[a, a] * source + inverse[a, 3])
  coords = np.stack(coords)
  return {k: ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0)
          for k, v in volumes.items()}


# ----------------------------------------------------------------------------- lesions


def _blob(shape, affine, centre_mm, radii_mm, rng):
  """Boolean mask of a lumpy ellipsoid: random orientation and low-frequency surface bumps."""
  rotation = _rotation(rng.uniform(-np.pi, np.pi, 3))
  directions = rng.standard_normal((4, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  freqs = rng.integers(1, 4, 4)
  phases = rng.uniform(0, 2 * np.pi, 4)
  amps = rng.uniform(0, 0.12, 4)

  spacing = np.diag(affine)[:3]
  centre_vox = (centre_mm - affine[:3, 3]) / spacing
  reach = 1.5 * np.max(radii_mm) / spacing
  lo = np.maximum(np.floor(centre_vox - reach).astype(int), 0)
  hi = np.minimum(np.ceil(centre_vox + reach).astype(int) + 1, shape)
  mask = np.zeros(shape, bool)
  if np.any(hi <= lo):
    return mask
  box = tuple(slice(l, h) for l, h in zip(lo, hi))
  idx = np.mgrid[box].reshape(3, -1).astype(np.float64)
  rel = spacing[:, None] * idx + affine[:3, 3:] - centre_mm[:, None]
  local = (rotation.T @ rel) / np.asarray(radii_mm)[:, None]
  r = np.linalg.norm(local, axis=0)
  unit = local / np.maximum(r, 1e-6)
  bumps = 1 + sum(a * np.cos(f * np.pi * (d @ unit) + p)
                  for a, f, d, p in zip(amps, freqs, directions, phases))
  mask[box] = (r < bumps).reshape(hi - lo)
  return mask


def _pick_voxel(candidates, rng, affine):
  """World position (mm) of a random voxel of `candidates`, jittered within the voxel."""
  idx = np.argwhere(candidates)
  voxel = idx[rng.integers(len(idx))] + rng.uniform(-0.5, 0.5, 3)
  return affine[:3, :3] @ voxel + affine[:3, 3]


def _place_tumour(brain, depth, wm, affine, rng):
  """(whole tumour, core, necrosis) boolean masks, centred in white matter.

  `depth` is the distance (mm) from each voxel to the outside of the brain.
  """
  radius = rng.uniform(12, 26)
  candidates = (depth > 0.6 * radius) & (wm > 0.5)
  if not candidates.any():
    candidates = depth >= 0.5 * depth.max()
  centre = _pick_voxel(candidates, rng, affine)
  whole = _blob(brain.shape, affine, centre, radius * rng.uniform(0.75, 1.25, 3), rng) & brain
  core_radius = radius * rng.uniform(0.35, 0.65)
  core_centre = centre + rng.uniform(-0.2, 0.2, 3) * radius
  core = _blob(brain.shape, affine, core_centre, core_radius * rng.uniform(0.8, 1.2, 3), rng)
  core &= whole
  necrosis = _blob(brain.shape, affine, core_centre, core_radius * rng.uniform(0.3, 0.6, 3),
                   rng) & core
  if rng.uniform() < 0.4:
    necrosis[:] = False
  if not whole.any():  # A tiny brain; never happens with the template.
    whole[tuple(np.argwhere(depth == depth.max())[0])] = True
  return whole, core, necrosis


def _place_healthy(brain, depth, unhealthy, affine, rng, tries=30):
  """One or two lesion-shaped regions in healthy tissue, not touching `unhealthy`.

  A region is a lumpy ellipsoid restricted to the brain minus the tumour dilated by one voxel
  (26-connectivity); it is kept only if at least 75 % of the ellipsoid survives that.
  """
  spacing = np.diag(affine)[:3]
  forbidden = ndimage.binary_dilation(unhealthy, structure=np.ones((3, 3, 3), bool))
  allowed = brain & ~forbidden
  clearance = np.minimum(depth, ndimage.distance_transform_edt(~forbidden, sampling=spacing))
  healthy = np.zeros(brain.shape, bool)
  for _ in range(rng.integers(1, 3)):
    for _ in range(tries):
      radius = rng.uniform(8, 18)
      candidates = clearance > 0.8 * radius
      if not candidates.any():
        continue
      centre = _pick_voxel(candidates, rng, affine)
      blob = _blob(brain.shape, affine, centre, radius * rng.uniform(0.75, 1.25, 3), rng)
      region = blob & allowed
      if region.any() and region.sum() >= 0.75 * blob.sum():
        healthy |= region
        break
  if not healthy.any():  # Fall back to a small ball where there is most room.
    centre = np.unravel_index(np.argmax(clearance), brain.shape)
    dist = np.sqrt(sum(((np.arange(n) - c) * s).reshape([-1 if b == a else 1 for b in range(3)])**2
                       for a, (n, c, s) in enumerate(zip(brain.shape, centre, spacing))))
    healthy = (dist <= 1.5 * spacing.max()) & allowed
    healthy[centre] = True
  return healthy


# ---------------------------------------------------------------------------- subjects


def synthesize_subject(subject, *, resolution_mm=4, seed=0):
  """Makes one subject: ({key: array}, affine) with the keys of `CASE_KEYS`.

  Images are float32 (0 outside the brain), masks uint8. Deterministic in (seed, subject,
  resolution_mm).
  """
  resolution_mm = _check_resolution(resolution_mm)
  seq = np.random.SeedSequence([_check_int("data.synthetic.seed", seed), subject])
  anatomy_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in seq.spawn(3))
  tpl, affine = template(resolution_mm)
  shape = tpl["t1"].shape
  field_tpl, field_affine = template(_FIELD_MM)
  field_shape = field_tpl["t1"].shape

  # Geometry: smooth diffeomorphism then a small affine.
  disp = random_displacement(anatomy_rng, field_shape, _FIELD_MM,
                             amplitude_mm=anatomy_rng.uniform(1.5, 3.5))
  disp = np.stack([_resample(c, field_affine, affine, shape) for c in disp])
  linear = _rotation(np.deg2rad(anatomy_rng.uniform(-6, 6, 3))) @ np.diag(
      anatomy_rng.uniform(0.92, 1.08, 3))
  shift = anatomy_rng.uniform(-3, 3, 3)
  warped = _warp(tpl, affine, disp, linear, shift)
  brain = warped["brain"] > 0.5
  gm, wm = warped["gm"], warped["wm"]
  csf = np.clip(1 - gm - wm, 0, 1)  # Whatever else lies inside the brain mask.
  tissues = (gm, wm, csf)

  # Healthy contrasts: T1 from the template, T2 and FLAIR from tissue levels (GM, WM, CSF).
  jitter = lambda: 1 + anatomy_rng.uniform(-0.08, 0.08, 3)
  t1 = warped["t1"] * (1 + sum(p * (j - 1) for p, j in zip(tissues, jitter())))
  t2 = sum(p * level for p, level in zip(tissues, np.array([0.55, 0.42, 1.0]) * jitter()))
  flair = sum(p * level for p, level in zip(tissues, np.array([0.62, 0.48, 0.12]) * jitter()))

  # Tumour: edema (whole tumour minus core), core, optional necrosis; soft edges.
  depth = ndimage.distance_transform_edt(brain, sampling=np.diag(affine)[:3])
  whole, core, necrosis = _place_tumour(brain, depth, wm, affine, lesion_rng)
  sigma = 2.0 / resolution_mm
  soft = lambda m: ndimage.gaussian_filter(m.astype(np.float32), sigma)
  w_whole, w_core, w_necrosis = soft(whole), soft(core), soft(necrosis)
  lvl = lambda x: x * lesion_rng.uniform(0.9, 1.1)
  mix = lambda img, w, level: img * (1 - w) + level * w
  t1 = t1 * (1 - lvl(0.2) * w_whole) * (1 - lvl(0.35) * w_core) * (1 - lvl(0.45) * w_necrosis)
  t2 = mix(mix(mix(t2, w_whole, lvl(0.8)), w_core, lvl(0.68)), w_necrosis, lvl(0.95))
  flair = mix(mix(mix(flair, w_whole, lvl(0.92)), w_core, lvl(0.75)), w_necrosis, lvl(0.25))
  healthy = _place_healthy(brain, depth, whole, affine, lesion_rng)

  # Acquisition: gamma, bias field, global scale, Rician noise; zero outside the brain.
  images = {}
  for key, img in (("t1n", t1), ("t2w", t2), ("t2f", flair)):
    img = np.clip(img / np.percentile(img[brain], 99), 0, None)
    img = img ** anatomy_rng.uniform(0.8, 1.25)
    bias = np.exp(anatomy_rng.uniform(0.05, 0.15) *
                  _smooth_noise(anatomy_rng, field_shape, 40.0 / _FIELD_MM))
    img = img * _resample(bias, field_affine, affine, shape)
    scale = anatomy_rng.uniform(700, 1400)
    noise = noise_rng.uniform(0.01, 0.03)
    real = img + noise * noise_rng.standard_normal(shape)
    imag = noise * noise_rng.standard_normal(shape)
    images[key] = (scale * np.sqrt(real**2 + imag**2) * brain).astype(np.float32)

  union = healthy | whole
  volumes = dict(images)
  volumes["t1n-voided"] = np.where(union, 0, images["t1n"]).astype(np.float32)
  volumes["mask"] = union.astype(np.uint8)
  volumes["mask-healthy"] = healthy.astype(np.uint8)
  volumes["mask-unhealthy"] = whole.astype(np.uint8)
  volumes["mask-brain"] = brain.astype(np.uint8)
  return volumes, affine.copy()


def write_case(split_dir, subject, *, resolution_mm=4, seed=0):
  """Writes one case folder into `split_dir` atomically (temporary folder, then rename)."""
  split_dir = pathlib.Path(split_dir)
  split_dir.mkdir(parents=True, exist_ok=True)
  name = case_name(subject)
  volumes, affine = synthesize_subject(subject, resolution_mm=resolution_mm, seed=seed)
  header = nib.Nifti1Header()
  header.set_xyzt_units("mm", "sec")
  with atomic_files.atomic_folder(split_dir / name, f"{_TMP_PREFIX}{name}-") as tmp:
    for key in CASE_KEYS:
      nifti.save_volume(tmp / f"{name}-{key}.nii.gz", volumes[key], affine, header)
  return split_dir / name


# ----------------------------------------------------------------------------- dataset


def _case_complete(case_dir):
  return case_dir.is_dir() and all(
      brats_layout.case_file(case_dir, k).is_file() for k in CASE_KEYS)


def _read_manifest(out_dir):
  path = out_dir / MANIFEST
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise InputError(path, f"unreadable manifest ({e}); delete the folder to regenerate")
  if not isinstance(manifest, dict) or manifest.get("generator") != _GENERATOR:
    raise InputError(path, f"not a manifest of {_GENERATOR}; choose another out_dir")
  return manifest


def _write_manifest(out_dir, manifest):
  atomic_files.write_json(out_dir / MANIFEST, manifest, sort_keys=True)


@processes.process_0_first
def generate(out_dir, *, num_train, num_eval, resolution_mm=4, seed=0, progress=True):
  """Writes (or reuses) the synthetic BraTS-layout dataset in `out_dir`.

  Returns {"train": out_dir/"train", "eval": out_dir/"eval"}. `out_dir/manifest.json`
  records the parameters and the generator version. If it matches and every case is there,
  nothing is written. Otherwise the folder is brought up to date: case folders made with the
  same version, seed and resolution are kept when still wanted, all others are removed, and
  the missing ones are generated (each written to a temporary folder and renamed into place).
  Refuses (InputError) to touch a folder holding case folders but no manifest of ours.
  """
  resolution_mm = _check_resolution(resolution_mm)
  seed = _check_int("data.synthetic.seed", seed)
  num_train = _check_int("data.synthetic.num_train", num_train, hi=EVAL_FIRST_SUBJECT)
  num_eval = _check_int("data.synthetic.num_eval", num_eval,
                        hi=MAX_SUBJECT + 1 - EVAL_FIRST_SUBJECT)
  out_dir = pathlib.Path(out_dir)
  paths = {split: out_dir / split for split in SPLITS}
  wanted = {split: {case_name(s) for s in subject_ids(split, num_train, num_eval)}
            for split in SPLITS}
  key = {"generator": _GENERATOR, "version": VERSION, "resolution_mm": resolution_mm,
         "seed": seed}
  params = dict(key, num_train=num_train, num_eval=num_eval)

  if out_dir.exists() and not out_dir.is_dir():
    raise InputError(out_dir, "exists and is not a folder")
  manifest = _read_manifest(out_dir) if out_dir.is_dir() else None
  if manifest == dict(params, complete=True) and all(
      _case_complete(paths[s] / n) for s in SPLITS for n in wanted[s]):
    return paths
  if manifest is None:
    for split in SPLITS:
      if paths[split].is_dir() and any(d.name.startswith("BraTS-")
                                       for d in paths[split].iterdir()):
        raise InputError(out_dir, f"holds case folders but no {MANIFEST} of {_GENERATOR}; "
                         "refusing to overwrite them, choose another out_dir")
  reusable = manifest is not None and all(manifest.get(k) == v for k, v in key.items())

  out_dir.mkdir(parents=True, exist_ok=True)
  _write_manifest(out_dir, dict(params, complete=False))
  todo = []
  for split in SPLITS:
    paths[split].mkdir(exist_ok=True)
    for d in sorted(paths[split].iterdir()):
      stale = d.name.startswith(_TMP_PREFIX) or (d.name.startswith("BraTS-") and not (
          reusable and d.name in wanted[split] and _case_complete(d)))
      if stale and d.is_dir():
        shutil.rmtree(d)
    todo += [(split, s) for s in subject_ids(split, num_train, num_eval)
             if not _case_complete(paths[split] / case_name(s))]
  for split, subject in tqdm.tqdm(todo, desc=f"synthetic BraTS {resolution_mm} mm",
                                  unit="case", disable=not progress or not todo):
    write_case(paths[split], subject, resolution_mm=resolution_mm, seed=seed)
  _write_manifest(out_dir, dict(params, complete=True))
  return paths


def _check_resolution(resolution_mm):
  if (isinstance(resolution_mm, bool) or not isinstance(resolution_mm, (int, float, np.number))
      or resolution_mm not in RESOLUTIONS_MM):
    raise InputError("data.synthetic.resolution_mm",
                     f"must be one of {', '.join(map(str, RESOLUTIONS_MM))} mm, got "
                     f"{resolution_mm!r}")
  return int(resolution_mm)


def _check_int(name, value, hi=None):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise InputError(name, f"must be a non-negative integer, got {value!r}")
  if hi is not None and value > hi:
    raise InputError(name, f"must be at most {hi}, got {value}")
  return int(value)


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m data_pipelines.synthetic_brats",
      description="Write the embedded MNI152-derived BraTS-like dataset (no downloads).")
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--num_train", type=int, default=16)
  parser.add_argument("--num_eval", type=int, default=4)
  parser.add_argument("--resolution_mm", type=float, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  try:
    paths = generate(args.out_dir, num_train=args.num_train, num_eval=args.num_eval,
                     resolution_mm=args.resolution_mm, seed=args.seed,
                     progress=not args.no_progress)
  except InputError as e:
    sys.exit(f"error: {e}")
  for split, path in paths.items():
    print(f"{split}: {path}")


if __name__ == "__main__":
  main()
