"""TFDS builder: 2D slices of BraTS-layout folders, for slice-wise diffusion models.

Any folder in the BraTS layout (`data_pipelines.brats_layout`) becomes one split of
2D examples cut along one voxel axis:

    axial     slices along the 3rd voxel axis (z); a slice is volume[:, :, k], (X, Y)
    coronal   slices along the 2nd voxel axis (y); a slice is volume[:, k, :], (X, Z)
    sagittal  slices along the 1st voxel axis (x); a slice is volume[k, :, :], (Y, Z)

The names assume the voxel axes are ordered like RAS/LPS (x: left-right,
y: posterior-anterior, z: inferior-superior), as in BraTS files. Volumes are not
reoriented; a warning is logged when the affine says otherwise (reorient such
files first, e.g. with `nibabel.as_closest_canonical`).

Builder configs are axis x selection, e.g. "axial-mask":
    brain   every slice that holds brain (nonzero voided image, or mask)
    mask    only slices that intersect the mask (`-mask.nii.gz`)

Each example:
    target  (h, w, 1) float32  the target key (e.g. t1n) normalised to [-1, 1]
                               (absent when the builder has no target)
    cond    (h, w, C) float32  the condition keys in order; image keys normalised
                               like the target, mask keys 0/1
    case    text               the case folder name
    slice   int32              the slice index along the axis
    lo, hi  float32            the case's normalisation range: 0.5/99.5 percentiles
                               of the whole voided volume (`sciimg_jax.intensity`)

Examples are stored in generation order (case name, then slice index) and the
slices keep their native size; `input_pipeline` pads/crops them. Build through
`build()`, which puts the TFDS data_dir under `cache_dir` with a fingerprint of
the source folders (paths, case names, file sizes and mtimes) and the keys, so
changing any of those builds a fresh copy instead of serving stale data. Works
without TensorFlow (`file_format='array_record'`).
"""

import dataclasses
import hashlib
import json
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_pipelines import brats_layout
from data_pipelines import processes
from sciimg_jax.core import intensity
from sciimg_jax.core.errors import InputError
from sciimg_jax.core.volumes import AXES

SELECTIONS = ("brain", "mask")
# The anatomical directions (nibabel axis codes) each voxel axis should follow.
_FORMAT_VERSION = "1.0.0"


@dataclasses.dataclass(eq=False)
class BratsSlicesConfig(tfds.core.BuilderConfig):
  axis: str = "axial"
  selection: str = "mask"


def config_name(axis, selection):
  return f"{axis}-{selection}"


def check_options(axis, selection, target, conditions):
  """Raises InputError (naming the config key) for an unknown axis, selection or key."""
  if axis not in AXES:
    raise InputError("data.axis", f"unknown axis {axis!r}; choose from {', '.join(AXES)}")
  if selection not in SELECTIONS:
    raise InputError("data.slices",
                     f"unknown selection {selection!r}; choose from {', '.join(SELECTIONS)}")
  if target and target not in brats_layout.IMAGE_KEYS:
    raise InputError("data.target", f"{target!r} is not an image key; known: "
                     f"{', '.join(brats_layout.IMAGE_KEYS)}")
  if not conditions:
    raise InputError("data.conditions", "needs at least one key")
  for key in conditions:
    if key not in brats_layout.ALL_KEYS:
      raise InputError("data.conditions", f"unknown key {key!r}; known: "
                       f"{', '.join(brats_layout.ALL_KEYS)}")


def required_keys(target, conditions):
  """The keys every case must have: voided image and mask, target, conditions."""
  keys = ["t1n-voided", "mask"] + ([target] if target else []) + list(conditions)
  return tuple(dict.fromkeys(keys))


def select_slices(voided, mask, axis, selection):
  """Indices of the slices along `axis` that the selection keeps."""
  keep = mask > 0 if selection == "mask" else (voided != 0) | (mask > 0)
  other = tuple(a for a in range(3) if a != AXES[axis])
  return np.flatnonzero(keep.any(axis=other))


class BratsSlices(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """2D slices of BraTS-layout folders (see the module docstring)."""

  VERSION = tfds.core.Version(_FORMAT_VERSION)
  BUILDER_CONFIGS = [
      BratsSlicesConfig(name=config_name(a, s), axis=a, selection=s,
                        description=f"{a} slices, selection {s!r}")
      for a in AXES for s in SELECTIONS
  ]

  # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size ...)"
  # and "... downloaded and prepared" to stdout; nothing is downloaded here, so say it plainly.
  def _log_download_bytes(self):
    tqdm.tqdm.write(f"Preparing {self.builder_config.name} slices of "
                    f"{', '.join(str(d) for d in self._splits.values())} in {self.data_dir} "
                    "(once; later runs reuse them).")

  def _log_download_done(self):
    logging.info("Slices prepared in %s", self.data_dir)

  def __init__(self, *, splits, target="t1n", conditions=("t1n-voided", "mask"), **kwargs):
    """`splits`: {split name: BraTS-layout folder}; `target`: image key or None."""
    self._splits = {k: pathlib.Path(v) for k, v in splits.items()}
    self._target = target or None
    self._conditions = tuple(conditions)
    super().__init__(**kwargs)
    # TFDS pickles a builder (e.g. for grain worker processes) as its __init__ kwargs.
    self._original_state.update(splits={k: str(v) for k, v in self._splits.items()},
                                target=self._target, conditions=self._conditions)
    check_options(self.builder_config.axis, self.builder_config.selection,
                  self._target, self._conditions)

  def _info(self):
    c = len(self._conditions)
    features = {
        "cond": tfds.features.Tensor(shape=(None, None, c), dtype=np.float32, encoding="zlib"),
        "case": tfds.features.Text(),
        "slice": tfds.features.Scalar(dtype=np.int32),
        "lo": tfds.features.Scalar(dtype=np.float32),
        "hi": tfds.features.Scalar(dtype=np.float32),
    }
    if self._target:
      features["target"] = tfds.features.Tensor(
          shape=(None, None, 1), dtype=np.float32, encoding="zlib")
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"BraTS-layout slices; target={self._target}, "
                     f"conditions={list(self._conditions)}"),
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,  # Keep (case, slice) order; grain shuffles.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    keys = required_keys(self._target, self._conditions)
    return {split: self._generate_examples(root, brats_layout.find_cases(root, keys))
            for split, root in self._splits.items()}

  def _generate_examples(self, root, cases):
    axis, selection = self.builder_config.axis, self.builder_config.selection
    keys = required_keys(self._target, self._conditions)
    num = 0
    for case_dir in cases:
      case = brats_layout.load_case(case_dir, keys=keys)
      brats_layout.warn_if_not_ras(case_dir, case.affine)
      voided, mask = case.volumes["t1n-voided"], case.volumes["mask"]
      lo, hi = intensity.percentile_range(
          voided, where=brats_layout.case_file(case_dir, "t1n-voided"))
      prepared = {k: v if k in brats_layout.MASK_KEYS else intensity.normalize(v, lo, hi)
                  for k, v in case.volumes.items()}
      cond = np.stack([prepared[k] for k in self._conditions], axis=-1)
      for index in select_slices(voided, mask, axis, selection):
        example = {
            "cond": np.take(cond, index, axis=AXES[axis]),
            "case": case.name,
            "slice": int(index),
            "lo": lo,
            "hi": hi,
        }
        if self._target:
          example["target"] = np.take(prepared[self._target], index, axis=AXES[axis])[..., None]
        num += 1
        yield f"{case.name}/{index:05d}", example
    if not num:
      raise InputError(root, f"no {selection} slices along the {axis} axis in "
                       f"{len(cases)} case(s); every mask is empty")


def fingerprint(splits, target, conditions):
  """A short hash of the split folders, their case files (size, mtime) and the keys.

  Raises InputError (from `find_cases`) if a folder is missing or holds no case.
  """
  keys = required_keys(target, conditions)
  h = hashlib.sha256()
  h.update(json.dumps({"version": _FORMAT_VERSION, "target": target,
                       "conditions": list(conditions)}).encode())
  for split, root in sorted(splits.items()):
    root = pathlib.Path(root).resolve()
    h.update(f"\n{split}={root}".encode())
    for case_dir in brats_layout.find_cases(root, keys):
      for key in keys:
        st = brats_layout.case_file(case_dir, key).stat()
        h.update(f"\n{case_dir.name}/{key}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


@processes.process_0_first
def build(splits, *, axis, selection, target, conditions, cache_dir):
  """Builds (once) and returns the prepared `BratsSlices` builder.

  Args:
    splits: {split name: BraTS-layout folder}.
    axis: 'axial', 'coronal' or 'sagittal'.
    selection: 'brain' or 'mask'.
    target: image key to learn (e.g. 't1n'), or None/'' for inference folders.
    conditions: layout keys stacked into `cond`, e.g. ('t1n-voided', 'mask').
    cache_dir: TFDS writes to
      `<cache_dir>/brats_slices-<fingerprint>/brats_slices/<axis>-<selection>/1.0.0/`.
  """
  target = target or None
  conditions = tuple(conditions)
  check_options(axis, selection, target, conditions)
  if not splits:
    raise InputError("data", "no source folders given")
  data_dir = pathlib.Path(cache_dir) / (
      "brats_slices-" + fingerprint(splits, target, conditions))
  builder = BratsSlices(splits=splits, target=target, conditions=conditions,
                        config=config_name(axis, selection), data_dir=str(data_dir),
                        file_format="array_record")
  tfds.display_progress_bar(False)  # its split/shuffle bars say nothing a user needs
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder
