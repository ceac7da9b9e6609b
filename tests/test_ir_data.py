"""IR / RGB data: the real-format readers, the bad-input messages and the embedded generator."""

import numpy as np
import pytest
from scipy import io as sio

from data_pipelines import ir_formats
from data_pipelines import synthetic_ir
from sciimg_jax.core.errors import InputError
from tolerances import float32_tolerance, max_abs


def wavenumber_atol(wn):
  """Written with 4 decimals (ENVI header, CSV header: off by <= 5e-5), read back as float32."""
  return 0.5e-4 + float32_tolerance(max_abs(wn), 1)


@pytest.fixture(scope="module")
def cube():
  rng = np.random.default_rng(0)
  return rng.normal(size=(5, 7, 11)).astype(np.float32), np.linspace(900, 1800, 11,
                                                                   dtype=np.float32)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_round_trip(tmp_path, cube, interleave):
  data, wn = cube
  hdr = ir_formats.write_envi(tmp_path / "a.hdr", data, wn, interleave=interleave)
  back, wn_back = ir_formats.read_cube(hdr)
  np.testing.assert_array_equal(back, data)
  np.testing.assert_allclose(wn_back, wn, atol=wavenumber_atol(wn))


def test_envi_reads_a_big_endian_integer_file_as_written_by_other_tools(tmp_path):
  data = np.arange(2 * 3 * 4, dtype=">i2").reshape(4, 2, 3)  # bsq: (bands, lines, samples)
  data.tofile(tmp_path / "b.img")
  (tmp_path / "b.hdr").write_text(
      "ENVI\nsamples = 3\nlines = 2\nbands = 4\ndata type = 2\ninterleave = bsq\n"
      "byte order = 1\nwavelength = {\n 1000, 1100,\n 1200, 1300}\n")
  back, wn = ir_formats.read_envi(tmp_path / "b.hdr")
  np.testing.assert_array_equal(back, data.transpose(1, 2, 0).astype(np.float32))
  np.testing.assert_array_equal(wn, [1000, 1100, 1200, 1300])


def test_numpy_and_matlab_round_trip(tmp_path, cube):
  data, wn = cube
  np.savez(tmp_path / "c.npz", cube=data, wavenumbers=wn)
  np.save(tmp_path / "d.npy", data)
  np.save(tmp_path / "d.wavenumbers.npy", wn)
  sio.savemat(tmp_path / "e.mat", {"spectra_cube": data, "wavenumbers": wn})
  for name in ("c.npz", "d.npy", "e.mat"):
    back, wn_back = ir_formats.read_cube(tmp_path / name)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(wn_back, wn)


def test_a_wavenumber_axis_that_is_not_monotonic_is_refused(tmp_path, cube):
  data, wn = cube
  bad = wn.copy()
  bad[[4, 5]] = bad[[5, 4]]
  np.savez(tmp_path / "c.npz", cube=data, wavenumbers=bad)
  with pytest.raises(InputError, match=r"c\.npz: the wavenumber axis is not strictly monotonic "
                                       r"\(at band 5"):
    ir_formats.read_cube(tmp_path / "c.npz")
  ir_formats.write_envi(tmp_path / "f.hdr", data, bad)
  with pytest.raises(InputError, match=r"f\.hdr: the wavenumber axis is not strictly monotonic"):
    ir_formats.read_cube(tmp_path / "f.hdr")
  # A decreasing axis (as many instruments write it) is monotonic.
  np.savez(tmp_path / "g.npz", cube=data, wavenumbers=wn[::-1])
  ir_formats.read_cube(tmp_path / "g.npz")


def test_envi_problems_name_the_file(tmp_path, cube):
  data, wn = cube
  hdr = ir_formats.write_envi(tmp_path / "a.hdr", data, wn)
  img = tmp_path / "a.img"
  img.write_bytes(img.read_bytes()[:100])
  with pytest.raises(InputError, match=r"a\.img: holds 100 bytes; the header claims 5x7x11"):
    ir_formats.read_cube(hdr)
  img.unlink()
  with pytest.raises(InputError, match=r"a\.hdr: no binary file beside the header"):
    ir_formats.read_cube(hdr)
  (tmp_path / "h.hdr").write_text("ENVI\nsamples = 3\nlines = 2\ndata type = 4\n")
  with pytest.raises(InputError, match=r"h\.hdr: header has no 'bands'"):
    ir_formats.read_cube(tmp_path / "h.hdr")
  with pytest.raises(InputError, match=r"missing\.hdr: no such file"):
    ir_formats.read_cube(tmp_path / "missing.hdr")
  with pytest.raises(InputError, match=r"unknown cube format '\.tif'"):
    ir_formats.read_cube(tmp_path / "x.tif")


def test_spectra_csv_round_trip_and_a_missing_label_column(tmp_path, cube):
  data, wn = cube
  spectra = data.reshape(-1, data.shape[-1])[:6]
  ir_formats.write_spectra_csv(tmp_path / "s.csv", spectra, wn, list("aabbcc"))
  back, wn_back, labels = ir_formats.read_spectra_csv(tmp_path / "s.csv")
  # 6 significant digits (off by <= 5e-6 relative), read back as float32
  np.testing.assert_allclose(back, spectra, rtol=0.5e-5 + float32_tolerance(1.0, 1))
  np.testing.assert_allclose(wn_back, wn, atol=wavenumber_atol(wn))
  assert list(labels) == list("aabbcc")
  text = (tmp_path / "s.csv").read_text().replace("label,", "tissue,", 1)
  (tmp_path / "t.csv").write_text(text)
  with pytest.raises(InputError, match=r"t\.csv: has no label column 'label' \(columns: tissue"):
    ir_formats.read_spectra_csv(tmp_path / "t.csv")


def test_region_checks_sizes_and_masks_nan_pixels(tmp_path, cube):
  data, wn = cube
  data = data.copy()
  data[1, 2, 3] = np.nan
  data[4, 6, :] = np.inf
  np.savez(tmp_path / "c.npz", cube=data, wavenumbers=wn)
  labels = np.arange(35).reshape(5, 7) % 3
  ir_formats.write_image(tmp_path / "l.png", labels.astype(np.uint8))
  region = ir_formats.load_region(tmp_path / "c.npz", tmp_path / "l.png")
  assert region["num_nan"] == 2
  assert region["labels"][1, 2] == ir_formats.IGNORE and region["labels"][4, 6] == ir_formats.IGNORE
  assert np.all(np.isfinite(region["cube"]))
  assert (region["labels"] >= 0).sum() == 33
  ir_formats.write_image(tmp_path / "small.png", labels[:4].astype(np.uint8))
  with pytest.raises(InputError, match=r"small\.png: label map is 4x7, but the cube c\.npz is 5x7"):
    ir_formats.load_region(tmp_path / "c.npz", tmp_path / "small.png")
  ir_formats.write_image(tmp_path / "rgb.png", np.zeros((5, 6, 3), np.uint8))
  with pytest.raises(InputError, match=r"rgb\.png: RGB image is 5x6, but the cube"):
    ir_formats.load_region(tmp_path / "c.npz", tmp_path / "l.png", tmp_path / "rgb.png")
  with pytest.raises(InputError, match=r"region 3: class 'd' has no pixels"):
    ir_formats.check_classes(region["labels"], ("a", "b", "c", "d"), "region 3")


# --- the embedded generator ----------------------------------------------------------------

def test_class_spectra_have_their_bands_where_tissue_has_them():
  wn = synthetic_ir.wavenumbers()
  assert wn.size == 277 and wn.min() == 900 and wn.max() == 3000
  spectra = dict(zip(synthetic_ir.CLASSES, synthetic_ir.class_spectra(wn)))
  fingerprint = wn <= 1800
  for name in ("epithelium", "stroma", "blood", "necrosis"):
    peak = wn[fingerprint][np.argmax(spectra[name][fingerprint])]
    assert abs(peak - 1655) <= 4, name  # amide I is the strongest band (4: the grid's step)
  at = lambda w: int(np.argmin(np.abs(wn - w)))
  # Collagen's 1338/1282/1204 triplet marks stroma, phosphate (nucleic acids) epithelium,
  # the ester C=O (lipid) necrosis; lumen is nearly empty.
  assert spectra["stroma"][at(1204)] > 1.5 * spectra["epithelium"][at(1204)]
  assert spectra["epithelium"][at(1082)] > 2 * spectra["stroma"][at(1082)]
  assert spectra["necrosis"][at(1740)] > 2 * spectra["epithelium"][at(1740)]
  assert spectra["lumen"].max() < 0.15 * spectra["stroma"].max()


def test_images_are_deterministic_and_independent_of_the_dataset_size(tmp_path):
  a = synthetic_ir.synthesize_image(3, size=48, seed=1)
  b = synthetic_ir.synthesize_image(3, size=48, seed=1)
  c = synthetic_ir.synthesize_image(3, size=48, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[1], c[1])
  synthetic_ir.write_dataset(tmp_path / "small", num_train=1, num_test=1, size=48)
  synthetic_ir.write_dataset(tmp_path / "large", num_train=3, num_test=1, size=48)
  name = synthetic_ir.image_name(synthetic_ir.TEST_FIRST_IMAGE)
  cubes = [ir_formats.read_cube(tmp_path / d / "test" / name / f"{name}-ir.hdr")[0]
           for d in ("small", "large")]
  np.testing.assert_array_equal(*cubes)


def test_written_dataset_is_read_back_by_the_loaders(tmp_path):
  manifest = synthetic_ir.write_dataset(tmp_path, num_train=2, num_test=1, size=64)
  assert manifest["splits"] == {"train": ["IR-00000", "IR-00001"], "test": ["IR-10000"]}
  name = "IR-00001"
  folder = tmp_path / "train" / name
  region = ir_formats.load_region(folder / f"{name}-ir.hdr", folder / f"{name}-labels.png",
                                  folder / f"{name}-rgb.png")
  labels, cube, rgb, wn = synthetic_ir.synthesize_image(1, size=64)
  np.testing.assert_array_equal(region["labels"], labels)
  np.testing.assert_array_equal(region["cube"], cube)
  np.testing.assert_array_equal(region["rgb"], rgb)
  np.testing.assert_allclose(region["wavenumbers"], wn, atol=wavenumber_atol(wn))
  assert region["num_nan"] == 0
  # Real H&E colours: eosin-pink stroma is redder than hematoxylin-blue epithelium.
  ratio = lambda k: (rgb[..., 2].astype(float) / rgb[..., 0])[labels == k].mean()
  assert ratio(synthetic_ir.CLASSES.index("epithelium")) > ratio(
      synthetic_ir.CLASSES.index("stroma"))
  spectra, _, names = ir_formats.read_spectra_csv(tmp_path / "train" / "spectra.csv")
  assert spectra.shape[1] == wn.size and set(names) <= set(synthetic_ir.CLASSES)
  # The thickness field dominates the variance of the pixel spectra, as in real IR images.
  x = cube.reshape(-1, cube.shape[-1])
  s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
  assert s[0] / s.sum() > 0.5


# --- patches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("patch_size", [4, 5])
def test_training_patches_never_touch_a_test_block(patch_size):
  from data_pipelines import ir_patches  # noqa: PLC0415
  rng = np.random.default_rng(0)
  labels = rng.integers(-1, 3, (40, 36))
  test = ir_patches.spatial_split(labels.shape, block=8, test_fraction=0.3, seed=1)
  assert abs(test.mean() - 0.3) < 0.1  # not rounding: whole 8x8 blocks (25, 5 cut in half)
  centres, classes = ir_patches.patch_centres(labels, patch_size, num_classes=3, per_class=10_000,
                                              rng=rng, allowed=~test)
  r = patch_size // 2
  # Every admissible window, by brute force, and no other.
  expect = {(y, x) for y in range(r, 40 - patch_size + r + 1) for x in range(r, 36 - patch_size + r + 1)
            if labels[y, x] >= 0 and not test[y - r:y - r + patch_size, x - r:x - r + patch_size].any()}
  assert {tuple(c) for c in centres} == expect
  np.testing.assert_array_equal(classes, labels[centres[:, 0], centres[:, 1]])
  windows = ir_patches.cut(test[..., None], centres, patch_size)
  assert windows.shape == (len(centres), patch_size, patch_size, 1) and not windows.any()


def test_patches_are_class_balanced():
  from data_pipelines import ir_patches  # noqa: PLC0415
  labels = np.zeros((30, 30), int)
  labels[:5] = 1
  labels[10:12, 10:12] = 2
  _, classes = ir_patches.patch_centres(labels, 3, num_classes=3, per_class=20,
                                        rng=np.random.default_rng(0))
  assert np.bincount(classes).tolist() == [20, 20, 4]


def test_tfds_patches_match_the_regions_and_sides_share_no_pixel(tmp_path):
  from data_pipelines import ir_tfds  # noqa: PLC0415
  synthetic_ir.write_dataset(tmp_path / "data", num_train=3, num_test=1, size=64)
  options = ir_tfds.PatchOptions(classes=synthetic_ir.CLASSES, patch_size=8, per_class=6,
                                 block=16, test_fraction=0.4)
  folder = tmp_path / "data" / "train"
  builder = ir_tfds.build({"train": (folder, "train"), "test": (folder, "test"),
                           "held_out": (tmp_path / "data" / "test", "all")}, options,
                          tmp_path / "cache")
  train, test = builder.as_data_source("train"), builder.as_data_source("test")
  assert len(builder.as_data_source("held_out")) > 0
  example = train[3]
  region = example["region"].decode() if isinstance(example["region"], bytes) else example["region"]
  image_id = int(region.split("-")[1])
  labels, cube, rgb, _ = synthetic_ir.synthesize_image(image_id, size=64)
  y, x = int(example["y"]), int(example["x"])
  np.testing.assert_array_equal(example["ir"], cube[y - 4:y + 4, x - 4:x + 4])
  np.testing.assert_array_equal(example["rgb"], rgb[y - 4:y + 4, x - 4:x + 4])
  assert example["label"] == labels[y, x]
  covered = {"train": set(), "test": set()}
  for side, source in (("train", train), ("test", test)):
    for k in range(len(source)):
      e = source[k]
      r = e["region"].decode() if isinstance(e["region"], bytes) else e["region"]
      covered[side] |= {(r, yy, xx) for yy in range(e["y"] - 4, e["y"] + 4)
                        for xx in range(e["x"] - 4, e["x"] + 4)}
  assert covered["train"] and covered["test"] and not covered["train"] & covered["test"]


def test_tfds_refuses_a_class_without_patches(tmp_path):
  from data_pipelines import ir_tfds  # noqa: PLC0415
  synthetic_ir.write_dataset(tmp_path / "data", num_train=1, num_test=0, size=48)
  options = ir_tfds.PatchOptions(classes=synthetic_ir.CLASSES + ("mucus",), patch_size=8)
  with pytest.raises(InputError, match=r"train: class 'mucus' has no all patch"):
    ir_tfds.build({"train": (tmp_path / "data" / "train", "all")}, options, tmp_path / "cache")
