"""TFDS builder: class-balanced IR/RGB patches of folders of tissue regions.

A folder of regions (the layout `synthetic_ir.write_dataset` writes; real data the same):

  ROOT/<region>/<region>-ir.{hdr,npz,npy,mat}   the IR cube (`ir_formats.read_cube`)
  ROOT/<region>/<region>-labels.{png,tif,npy}   class index a pixel
  ROOT/<region>/<region>-rgb.{png,tif}          optional: the stained section, same size

Each example is one patch (`ir_patches`): `ir` (p, p, bands) float32, `rgb` (p, p, 3) uint8
(zeros when the region has no RGB image), `label` (the centre pixel's class), `region`, and
the centre `y`, `x`. A split is (folder, side): side 'all' takes patches anywhere; 'train'
and 'test' cut each region into blocks (`ir_patches.spatial_split`) and take windows wholly
inside the training or the test blocks, so one folder can serve both without a shared pixel.
A region's patch draws come from crc32(region name), never from its position in the folder.
NaN pixels are masked out and counted in the log; a class with no patch in a split stops
with a message naming the split folder. Build through `build()`, which keys the TFDS
data_dir on a fingerprint of the files and options (as `brats_slices.build`).
"""

import dataclasses
import hashlib
import json
import logging
import pathlib
import zlib

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import ir_formats
from data_pipelines import ir_patches
from data_pipelines import processes
from sciimg_jax.core.errors import InputError

_FORMAT_VERSION = "1.0.0"
SIDES = ("all", "train", "test")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
RGB_SUFFIXES = (".png", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class PatchOptions:
  classes: tuple
  patch_size: int = 16
  per_class: int = 64       # patches of each class per region (fewer if the region has fewer)
  block: int = 32           # spatial split: block size in pixels
  test_fraction: float = 0.25
  seed: int = 0


def _first(folder, stem, suffixes):
  return next((folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()), None)


_warned = set()


def _warn_skipped(folder, cube, labels):
  """Says once per folder why a region folder is left out (a misnamed cube, no labels)."""
  if folder in _warned:
    return
  _warned.add(folder)
  missing = [f"{folder.name}-ir{'|'.join(ir_formats.CUBE_SUFFIXES)}"] if not cube else []
  missing += [] if labels else [f"{folder.name}-labels{'|'.join(LABEL_SUFFIXES)}"]
  names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
  logging.warning("%s: region folder skipped: no %s (it holds %s; names are case-sensitive)",
                  folder, " and no ".join(missing), ", ".join(names[:6]) or "nothing")


def find_regions(root):
  """[(name, cube path, labels path, rgb path or None)] under `root`, sorted by name."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise InputError(root, "data folder not found" if not root.exists() else "expected a folder "
                     "of region folders")
  regions = []
  for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    cube = _first(d, f"{d.name}-ir", ir_formats.CUBE_SUFFIXES)
    labels = _first(d, f"{d.name}-labels", LABEL_SUFFIXES)
    if cube and labels:
      regions.append((d.name, cube, labels, _first(d, f"{d.name}-rgb", RGB_SUFFIXES)))
    else:
      _warn_skipped(d, cube, labels)
  if not regions:
    raise InputError(root, "no region folders found (each needs <region>/<region>-ir.hdr|npz|npy|"
                     "mat and <region>-labels.png|tif|npy)")
  return regions


def region_patches(name, region, options, side):
  """The patch examples of one loaded region (`ir_formats.load_region`)."""
  labels = region["labels"]
  if labels.max() >= len(options.classes):
    raise InputError(name, f"label {labels.max()} is beyond the {len(options.classes)} classes")
  allowed = None
  if side != "all":
    test = ir_patches.spatial_split(labels.shape, block=options.block,
                                    test_fraction=options.test_fraction,
                                    seed=[options.seed, zlib.crc32(name.encode())])
    allowed = test if side == "test" else ~test
  rng = np.random.default_rng([options.seed, zlib.crc32(name.encode()), 1])
  centres, classes = ir_patches.patch_centres(labels, options.patch_size,
                                              num_classes=len(options.classes),
                                              per_class=options.per_class, rng=rng,
                                              allowed=allowed)
  ir = ir_patches.cut(region["cube"], centres, options.patch_size)
  rgb = region.get("rgb")
  rgb = (ir_patches.cut(rgb, centres, options.patch_size) if rgb is not None
         else np.zeros(ir.shape[:3] + (3,), np.uint8))
  for k, ((y, x), c) in enumerate(zip(centres, classes)):
    yield f"{name}/{y:05d}-{x:05d}", {"ir": ir[k], "rgb": rgb[k], "label": int(c),
                                      "region": name, "y": int(y), "x": int(x)}


class IrPatches(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Patches of IR/RGB regions (see the module docstring)."""

  VERSION = tfds.core.Version(_FORMAT_VERSION)

  def __init__(self, *, splits, options, **kwargs):
    """`splits`: {split: (folder, side)}; `options`: PatchOptions."""
    self._splits = {k: (pathlib.Path(f), s) for k, (f, s) in splits.items()}
    self._options = options
    first = find_regions(next(iter(self._splits.values()))[0])[0]
    self._first_cube = first[1]
    _, self._wavenumbers = ir_formats.read_cube(first[1])  # _info (in __init__) needs them
    super().__init__(**kwargs)
    self._original_state.update(splits={k: (str(f), s) for k, (f, s) in self._splits.items()},
                                options=options)

  def _info(self):
    p, b = self._options.patch_size, len(self._wavenumbers)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"IR/RGB patches; classes {list(self._options.classes)}",
        features=tfds.features.FeaturesDict({
            "ir": tfds.features.Tensor(shape=(p, p, b), dtype=np.float32, encoding="zlib"),
            "rgb": tfds.features.Tensor(shape=(p, p, 3), dtype=np.uint8),
            "label": tfds.features.Scalar(dtype=np.int32),
            "region": tfds.features.Text(),
            "y": tfds.features.Scalar(dtype=np.int32),
            "x": tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(wavenumbers=[float(w) for w in self._wavenumbers]),
        disable_shuffling=True,  # region, then centre order; grain shuffles
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(folder, side) for split, (folder, side) in self._splits.items()}

  def _generate_examples(self, folder, side):
    counts = np.zeros(len(self._options.classes), int)
    for name, cube, labels, rgb in find_regions(folder):
      region = ir_formats.load_region(cube, labels, rgb)
      if len(region["wavenumbers"]) != len(self._wavenumbers):
        raise InputError(cube, f"has {len(region['wavenumbers'])} bands, {self._first_cube} has "
                         f"{len(self._wavenumbers)}; every region needs the same wavenumber axis")
      if not np.allclose(region["wavenumbers"], self._wavenumbers, atol=1e-3):
        raise InputError(cube, "its wavenumber axis differs from the other regions'")
      if region["num_nan"]:
        logging.warning("%s: %d pixels with NaN or infinite values masked out", cube,
                        region["num_nan"])
      for key, example in region_patches(name, region, self._options, side):
        counts[example["label"]] += 1
        yield key, example
    empty = [c for c, n in zip(self._options.classes, counts) if n == 0]
    if empty:
      raise InputError(folder, f"class {', '.join(map(repr, empty))} has no {side} patch "
                       f"of {self._options.patch_size}x{self._options.patch_size}")


def fingerprint(splits, options):
  h = hashlib.sha256(json.dumps({"version": _FORMAT_VERSION, **dataclasses.asdict(options)},
                                default=str).encode())
  for split, (folder, side) in sorted(splits.items()):
    h.update(f"\n{split}={pathlib.Path(folder).resolve()}:{side}".encode())
    for region in find_regions(folder):
      for path in filter(None, region[1:]):
        st = path.stat()
        h.update(f"\n{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


@processes.process_0_first
def build(splits, options, cache_dir):
  """Builds (once) and returns the prepared `IrPatches` builder; {split: (folder, side)}."""
  for split, (_, side) in splits.items():
    if side not in SIDES:
      raise InputError(f"data.splits.{split}", f"unknown side {side!r}; known: {', '.join(SIDES)}")
  data_dir = pathlib.Path(cache_dir) / ("ir_patches-" + fingerprint(splits, options))
  builder = IrPatches(splits=splits, options=options, data_dir=str(data_dir),
                      file_format="array_record")
  tfds.display_progress_bar(False)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder
