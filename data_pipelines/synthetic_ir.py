"""Embedded paired IR / RGB pathology data: tissue label maps, IR cubes and H&E renderings.

Nothing is downloaded. Each image is a tissue region drawn from its own random stream,
seeded by (seed, image id), so an image does not depend on how many others are made:

  * a label map of CLASSES: stroma everywhere, glands (an epithelial ring around a lumen,
    ellipses with smooth-noise boundaries), small vessels full of blood in the stroma, and
    necrotic patches;
  * the IR absorbance cube on WAVENUMBERS (900-1800 and 2800-3000 cm^-1): per class a
    mixture of Gaussian absorption bands at the positions of real tissue bands (BANDS: amide
    I/II/III, lipid ester C=O, CH2/CH3 stretches and bending, carboxylate, the collagen
    triplet, phosphate, glycogen), weights jittered per pixel (biological variation), times a
    smooth section-thickness field (the direction that dominates the variance of real IR
    data), plus a smooth scattering baseline (offset, slope and a broad Mie-like ripple) and
    white noise;
  * the RGB image of the same section stained with H&E: per class hematoxylin and eosin
    amounts with texture (nuclei in the epithelium, fibres in the stroma), the same thickness,
    rendered by Beer-Lambert with the Ruifrok-Johnston optical-density vectors.

`write_dataset` writes them in the formats `ir_formats` reads:

  OUT/manifest.json                 classes, wavenumbers, images of each split
  OUT/<split>/<name>/<name>-ir.hdr  + <name>-ir.img   ENVI cube (H, W, bands)
  OUT/<split>/<name>/<name>-rgb.png                   H&E rendering
  OUT/<split>/<name>/<name>-labels.png                class index a pixel
  OUT/<split>/spectra.csv                             sampled pixel spectra with labels

Training and test images are different regions (ids 0.. and TEST_FIRST_IMAGE..), so no
patch of a test region is ever in training.

The prior is a set of knobs (PRIOR_KNOBS: nuisance, overlap, noise, band_correlation,
intensity_contrast) with
named settings (PRIORS: default, real_like, raw_like); `resolve_prior` reads them from a name
or a config block (`data.synthetic.prior`). The default prior is the generator of version 1,
number for number; the others change only the knobs' parts, not the tissue layout.

Usage: python -m data_pipelines.synthetic_ir --out_dir D --num_train N --num_test M [--prior P]
"""

import argparse
import os
import pathlib
import shutil
import tempfile

import numpy as np
from scipy import ndimage as ndi

from data_pipelines import ir_formats
from data_pipelines import processes
from sciimg_jax.core import atomic_files
from sciimg_jax.core.errors import InputError

CLASSES = ("epithelium", "stroma", "lumen", "blood", "necrosis")
TEST_FIRST_IMAGE = 10_000

# Absorption bands of tissue: name -> (centre, width sigma), cm^-1.
BANDS = {
    "amide_I": (1655.0, 15.0), "amide_II": (1545.0, 14.0), "amide_III": (1310.0, 12.0),
    "lipid_ester": (1740.0, 9.0), "ch2_bend": (1455.0, 10.0), "carboxylate": (1400.0, 10.0),
    "collagen_1338": (1338.0, 7.0), "collagen_1282": (1282.0, 8.0), "collagen_1204": (1204.0, 7.0),
    "phosphate_asym": (1240.0, 14.0), "phosphate_sym": (1082.0, 13.0),
    "glycogen_1030": (1030.0, 9.0), "glycogen_1152": (1152.0, 9.0),
    "ch3_asym": (2958.0, 8.0), "ch2_asym": (2922.0, 9.0), "ch2_sym": (2852.0, 6.0),
}

# Band weights (absorbance at unit thickness) of each class; unlisted bands are 0.
CLASS_BANDS = {
    "epithelium": {"amide_I": 1.0, "amide_II": 0.64, "amide_III": 0.10, "lipid_ester": 0.10,
                   "ch2_bend": 0.14, "carboxylate": 0.10, "phosphate_asym": 0.34,
                   "phosphate_sym": 0.40, "glycogen_1030": 0.16, "glycogen_1152": 0.10,
                   "ch3_asym": 0.20, "ch2_asym": 0.26, "ch2_sym": 0.12, "collagen_1338": 0.02},
    "stroma": {"amide_I": 1.0, "amide_II": 0.56, "amide_III": 0.16, "lipid_ester": 0.04,
               "ch2_bend": 0.12, "carboxylate": 0.09, "collagen_1338": 0.20,
               "collagen_1282": 0.17, "collagen_1204": 0.16, "phosphate_asym": 0.13,
               "phosphate_sym": 0.12, "glycogen_1030": 0.06, "ch3_asym": 0.16, "ch2_asym": 0.15,
               "ch2_sym": 0.06},
    "lumen": {"amide_I": 0.08, "amide_II": 0.05, "glycogen_1030": 0.06, "glycogen_1152": 0.05,
              "phosphate_sym": 0.04},
    "blood": {"amide_I": 1.0, "amide_II": 0.76, "amide_III": 0.08, "ch2_bend": 0.16,
              "carboxylate": 0.14, "phosphate_asym": 0.06, "phosphate_sym": 0.05,
              "ch3_asym": 0.24, "ch2_asym": 0.17, "ch2_sym": 0.07},
    "necrosis": {"amide_I": 0.72, "amide_II": 0.40, "amide_III": 0.08, "lipid_ester": 0.26,
                 "ch2_bend": 0.18, "carboxylate": 0.12, "phosphate_asym": 0.26,
                 "phosphate_sym": 0.24, "glycogen_1030": 0.12, "ch3_asym": 0.18,
                 "ch2_asym": 0.40, "ch2_sym": 0.22},
}
# Section thickness relative to the tissue's (lumen is mostly empty slide).
CLASS_THICKNESS = {"epithelium": 1.0, "stroma": 1.0, "lumen": 0.12, "blood": 0.9, "necrosis": 0.8}

# H&E: (hematoxylin, eosin) amounts of each class, and the Ruifrok-Johnston OD vectors (R, G, B).
CLASS_STAINS = {"epithelium": (0.40, 0.14), "stroma": (0.06, 0.26), "lumen": (0.01, 0.01),
                "blood": (0.03, 0.55), "necrosis": (0.22, 0.18)}
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])


# The knobs of the generator's prior (`data.synthetic.prior`), with their default values: the
# default reproduces the generator of version 1 exactly (same folder name, same numbers).
PRIOR_KNOBS = {
    # Nuisance directions against the classes' chemistry: the exponent of the smooth section
    # thickness field (t = t1 ** nuisance, t1 in [0.55, 1.45]; 0 = constant thickness) and the
    # factor of the scattering baseline (offset, slope, Mie-like ripple).
    "nuisance": 1.0,
    # Per-pixel class overlap: a smooth field m in [0, overlap] of the fraction of each pixel
    # that is another class's tissue (chemistry, thickness and stains mixed: IR and H&E alike).
    "overlap": 0.0,
    # White noise sigma of the absorbance (unit-thickness amide I peak = 1).
    "noise": 0.004,
    # Band correlation: the share rho of the per-pixel log-variation of band weights (sigma
    # 0.12) carried by one shared component, protein bands against all others (anticorrelated
    # bands); 0 = independent per absorption band.
    "band_correlation": 0.0,
    # How much of the classes' IR contrast is total absorbance rather than chemistry: each
    # class's absorbance is scaled by (mean I / I_k) ** (1 - intensity_contrast), I_k the norm
    # of its spectrum at its thickness (CLASS_THICKNESS), so 0 leaves the classes differing in
    # band shape only (as in a table of normalised spectra). The H&E rendering is unchanged.
    "intensity_contrast": 1.0,
}
# Named settings (configs name them as data.synthetic.prior.name; the knobs override them).
PRIORS = {
    "default": dict(PRIOR_KNOBS),
    # matched to the measured statistics of collagen.csv (docs/ir_pathology.md, "When deep IR
    # models fall below RGB"): no thickness or baseline variation (the table's spectra are
    # normalised), some class overlap, low noise, correlated band variation
    "real_like": dict(nuisance=0.0, overlap=0.55, noise=0.0005, band_correlation=0.9,
                      intensity_contrast=0.0),
    # a raw IR image: thickness and scattering dominate the variance
    "raw_like": dict(nuisance=3.0, overlap=0.55, noise=0.004, band_correlation=0.9,
                     intensity_contrast=1.0),
}
# Protein bands (+1) against the rest (-1): the shared component of `band_correlation`.
PROTEIN_BANDS = ("amide_I", "amide_II", "amide_III", "collagen_1338", "collagen_1282",
                 "collagen_1204")


def resolve_prior(prior=None):
  """{knob: float} of a prior: None or '' = default, a name of PRIORS, or a dict (a ConfigDict)
  with an optional `name` (the setting it starts from, default 'default') and knobs."""
  if prior is None or prior == "":
    return dict(PRIORS["default"])
  if isinstance(prior, str):
    prior = {"name": prior}
  prior = dict(prior.to_dict() if hasattr(prior, "to_dict") else prior)
  name = prior.pop("name", "") or "default"
  if name not in PRIORS:
    raise InputError("data.synthetic.prior.name", f"unknown prior {name!r}; known: "
                     f"{', '.join(PRIORS)}")
  unknown = [k for k in prior if k not in PRIOR_KNOBS]
  if unknown:
    raise InputError("data.synthetic.prior", f"unknown knobs {unknown}; known: "
                     f"{', '.join(PRIOR_KNOBS)}")
  out = dict(PRIORS[name])
  for k, v in prior.items():
    if v is None:
      continue
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
      raise InputError(f"data.synthetic.prior.{k}", f"must be a number >= 0, got {v!r}")
    out[k] = float(v)
  for k in ("overlap", "band_correlation"):
    if out[k] > 1:
      raise InputError(f"data.synthetic.prior.{k}", f"must lie in [0, 1], got {out[k]!r}")
  return out


def prior_tag(prior):
  """'' for the default prior, else '-prior-' and the knobs (a folder name's part)."""
  prior = resolve_prior(prior)
  if prior == PRIORS["default"]:
    return ""
  return "-prior-" + "-".join(f"{k[:4]}{prior[k]:g}" for k in PRIOR_KNOBS)


def wavenumbers(step=4.0):
  """The band centres: 900-1800 and 2800-3000 cm^-1 every `step` (277 bands at 4 cm^-1)."""
  return np.concatenate([np.arange(900.0, 1800.0 + step / 2, step),
                         np.arange(2800.0, 3000.0 + step / 2, step)]).astype(np.float32)


def band_profiles(wn):
  """(bands of BANDS, wavenumbers): each absorption band's unit-height Gaussian."""
  return np.stack([np.exp(-0.5 * ((wn - c) / s) ** 2) for c, s in BANDS.values()])


def band_weights(classes=CLASSES):
  """(classes, bands of BANDS): CLASS_BANDS as a matrix."""
  return np.array([[CLASS_BANDS[k].get(b, 0.0) for b in BANDS] for k in classes])


def class_spectra(wn, classes=CLASSES):
  """(classes, wavenumbers): each class's mean absorbance spectrum at unit thickness."""
  return (band_weights(classes) @ band_profiles(wn)).astype(np.float32)


def class_scales(wn, intensity_contrast):
  """(classes,): the factor of each class's absorbance for `intensity_contrast` (PRIOR_KNOBS)."""
  thickness = np.array([CLASS_THICKNESS[k] for k in CLASSES])
  intensity = thickness * np.linalg.norm(class_spectra(wn).astype(np.float64), axis=1)
  return (intensity.mean() / intensity) ** (1.0 - intensity_contrast)


def smooth_field(rng, shape, sigma, lo=-1.0, hi=1.0):
  """Gaussian-smoothed noise rescaled to [lo, hi]."""
  f = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
  f = (f - f.min()) / max(f.max() - f.min(), 1e-12)
  return lo + (hi - lo) * f


def label_map(rng, size):
  """(size, size) int32 class indices: stroma, glands, vessels, necrosis."""
  e, s, l, b, n = (CLASSES.index(k) for k in CLASSES)
  labels = np.full((size, size), s, np.int32)
  yy, xx = np.mgrid[:size, :size].astype(np.float64)
  wobble = smooth_field(rng, (size, size), size / 24, -0.18, 0.18)
  num_glands = max(2, int(rng.poisson(size * size / 1400)))
  for _ in range(num_glands):
    cy, cx = rng.uniform(0, size, 2)
    a, c = rng.uniform(7.0, 16.0, 2)
    th = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
    v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / c
    f = u ** 2 + v ** 2 + wobble
    ring = rng.uniform(3.0, 6.0) / min(a, c)
    labels[f < 1.0] = e
    labels[f < (1.0 - ring) ** 2] = l
  for _ in range(max(2, int(rng.poisson(size * size / 900)))):
    cy, cx = rng.uniform(0, size, 2)
    r = rng.uniform(1.5, 4.0)
    vessel = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (labels == s)
    labels[vessel] = b
  patch = smooth_field(rng, (size, size), 6.0)  # necrosis: 3-10 % of the region
  labels[patch > np.quantile(patch, 1.0 - rng.uniform(0.03, 0.10))] = n
  return labels


def ir_cube(rng, labels, wn, thickness, noise=None, *, prior=None, extra=None, mix=None):
  """(H, W, bands) absorbance of the label map; `thickness` (H, W) per pixel (module docstring).

  `prior` (a dict of PRIOR_KNOBS; None = the default) scales the baseline (`nuisance`), sets
  the noise (`noise`, unless the argument `noise` is given), correlates the band-weight
  variation (`band_correlation`, drawn from `extra`) and rescales each class's absorbance
  (`intensity_contrast`); `mix` ((H, W) fraction, (H, W) other class) mixes another class's
  absorbance into each pixel (`overlap`). The draws from `rng` are the same for every prior.
  """
  prior = resolve_prior(prior)
  h, w = labels.shape
  jitter = rng.lognormal(0.0, 0.12, (h, w, len(BANDS)))  # biological variation per pixel
  rho = prior["band_correlation"]
  if rho > 0:  # one shared protein-versus-the-rest component carries a share rho of it
    sign = np.array([1.0 if b in PROTEIN_BANDS else -1.0 for b in BANDS])
    shared = extra.standard_normal((h, w, 1)) * 0.12 * sign
    jitter = np.exp(np.sqrt(1.0 - rho) * np.log(jitter) + np.sqrt(rho) * shared)
  table = band_weights()
  if prior["intensity_contrast"] != 1.0:
    table = table * class_scales(wn, prior["intensity_contrast"])[:, None]
  weights = table[labels]
  if mix is not None:  # absorbance of the mixture: each tissue's at its own class thickness
    m, other = mix
    t = np.array([CLASS_THICKNESS[k] for k in CLASSES])
    mixed = (1.0 - m) * t[labels] + m * t[other]
    weights = (((1.0 - m) * t[labels] / mixed)[..., None] * weights
               + (m * t[other] / mixed)[..., None] * table[other])
  pure = np.einsum("hwk,kb->hwb", weights * jitter, band_profiles(wn))
  x = (wn - 900.0) / 2100.0
  offset = smooth_field(rng, (h, w), h / 6, 0.0, 0.08)
  slope = smooth_field(rng, (h, w), h / 6, -0.05, 0.05)
  ripple = smooth_field(rng, (h, w), h / 6, 0.0, 0.04)
  phase = rng.uniform(0, 2 * np.pi)
  baseline = (offset[..., None] + slope[..., None] * x
              + ripple[..., None] * np.sin(2 * np.pi * x * 1.3 + phase))
  if prior["nuisance"] != 1.0:
    baseline = prior["nuisance"] * baseline
  noise = prior["noise"] if noise is None else noise
  cube = thickness[..., None] * pure + baseline + rng.normal(0.0, noise, pure.shape)
  return cube.astype(np.float32)


def he_rgb(rng, labels, thickness, mix=None):
  """(H, W, 3) uint8 H&E rendering of the label map (Beer-Lambert), same per-pixel thickness."""
  h, w = labels.shape
  table = np.array([CLASS_STAINS[k] for k in CLASSES])
  stains = table[labels]  # (H, W, 2)
  if mix is not None:  # the same mixture of tissues as the IR cube's (`overlap`)
    m, other = mix
    stains = (1.0 - m[..., None]) * stains + m[..., None] * table[other]
  epi = labels == CLASSES.index("epithelium")
  nuclei = (ndi.gaussian_filter(rng.standard_normal((h, w)), 1.0) > 0.35) & epi
  stains[..., 0] += 0.45 * nuclei
  fibres = ndi.gaussian_filter(rng.standard_normal((h, w)), (0.8, 4.0))
  stroma = labels == CLASSES.index("stroma")
  stains[..., 1] *= np.where(stroma, 1.0 + 1.5 * fibres, 1.0)
  grains = labels == CLASSES.index("necrosis")
  stains[..., 0] *= np.where(grains, rng.uniform(0.3, 1.8, (h, w)), 1.0)
  od = 0.02 + thickness[..., None] * (np.clip(stains[..., :1], 0, None) * HEMATOXYLIN
                              + np.clip(stains[..., 1:], 0, None) * EOSIN)
  rgb = 255.0 * 10.0 ** (-od) + rng.normal(0.0, 2.0, od.shape)
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def overlap_mix(extra, labels, overlap):
  """((H, W) fraction m, (H, W) other class): a smooth field of m in [0, overlap] and, where
  it lies, a smoothly varying other class (never the pixel's own)."""
  size = labels.shape[0]
  m = smooth_field(extra, labels.shape, 2.0, 0.0, overlap)
  shift = smooth_field(extra, labels.shape, size / 8, 0.0, len(CLASSES) - 1 - 1e-9)
  return m, (labels + 1 + shift.astype(np.int32)) % len(CLASSES)


def synthesize_image(image_id, *, size=96, seed=0, step=4.0, prior=None):
  """(labels (H, W) int32, cube (H, W, bands) float32, rgb (H, W, 3) uint8, wavenumbers).

  `prior`: the knobs of the prior (PRIOR_KNOBS; a name of PRIORS, a dict, or None for the
  default). The tissue layout and every draw of the default prior are the same for every
  prior; the knobs' own draws come from a second stream of (seed, image id).
  """
  prior = resolve_prior(prior)
  rng = np.random.default_rng([seed, image_id])
  extra = np.random.default_rng([seed, image_id, 2])
  wn = wavenumbers(step)
  labels = label_map(rng, size)
  section = smooth_field(rng, (size, size), size / 5, 0.55, 1.45)
  if prior["nuisance"] != 1.0:  # the thickness field's spread, on a log scale
    section = section ** prior["nuisance"]
  mix = overlap_mix(extra, labels, prior["overlap"]) if prior["overlap"] > 0 else None
  per_class = np.array([CLASS_THICKNESS[k] for k in CLASSES])
  class_thickness = per_class[labels]
  if mix is not None:
    class_thickness = (1.0 - mix[0]) * class_thickness + mix[0] * per_class[mix[1]]
  thickness = section * class_thickness
  cube = ir_cube(rng, labels, wn, thickness, prior=prior, extra=extra, mix=mix)
  rgb = he_rgb(rng, labels, thickness, mix=mix)
  return labels, cube, rgb, wn


def image_name(image_id):
  return f"IR-{image_id:05d}"


def write_dataset(out_dir, *, num_train=8, num_test=4, size=96, seed=0, step=4.0,
                  spectra_per_class=40, prior=None):
  """Writes the paired dataset (module docstring); returns the manifest."""
  out_dir = pathlib.Path(out_dir)
  prior = resolve_prior(prior)
  splits = {"train": range(num_train),
            "test": range(TEST_FIRST_IMAGE, TEST_FIRST_IMAGE + num_test)}
  manifest = {"classes": list(CLASSES), "seed": seed, "size": size, "step": step,
              "wavenumbers": wavenumbers(step).tolist(), "splits": {}}
  if prior != PRIORS["default"]:
    manifest["prior"] = prior
  for split, ids in splits.items():
    names, table, table_labels = [], [], []
    for image_id in ids:
      labels, cube, rgb, wn = synthesize_image(image_id, size=size, seed=seed, step=step,
                                               prior=prior)
      name = image_name(image_id)
      folder = out_dir / split / name
      ir_formats.write_envi(folder / f"{name}-ir.hdr", cube, wn)
      ir_formats.write_image(folder / f"{name}-rgb.png", rgb)
      ir_formats.write_image(folder / f"{name}-labels.png", labels.astype(np.uint8))
      rng = np.random.default_rng([seed, image_id, 1])
      for k in range(len(CLASSES)):
        idx = np.flatnonzero(labels.reshape(-1) == k)
        pick = rng.choice(idx, min(len(idx), spectra_per_class), replace=False)
        table.append(cube.reshape(-1, cube.shape[-1])[pick])
        table_labels += [CLASSES[k]] * len(pick)
      names.append(name)
    if table:
      ir_formats.write_spectra_csv(out_dir / split / "spectra.csv", np.concatenate(table),
                                   wavenumbers(step), table_labels)
    manifest["splits"][split] = names
  atomic_files.write_json(out_dir / "manifest.json", manifest)
  return manifest


def sample_table(prior=None, *, num_images=4, per_class=40, size=96, seed=0, step=4.0):
  """(spectra (N, bands) float32, labels (N,) str, wavenumbers): at most `per_class` pixel
  spectra of each class from each of the training images 0..num_images-1 of `prior`, drawn as
  `write_dataset` draws its spectra.csv."""
  table, names = [], []
  for image_id in range(num_images):
    labels, cube, _, wn = synthesize_image(image_id, size=size, seed=seed, step=step, prior=prior)
    rng = np.random.default_rng([seed, image_id, 1])
    for k, name in enumerate(CLASSES):
      idx = np.flatnonzero(labels.reshape(-1) == k)
      pick = rng.choice(idx, min(len(idx), per_class), replace=False)
      table.append(cube.reshape(-1, cube.shape[-1])[pick])
      names += [name] * len(pick)
  return np.concatenate(table), np.array(names), wavenumbers(step)


VERSION = 1  # bump when the generator's output changes


@processes.process_0_first
def generate(cache_dir, *, num_train, num_test, size, seed=0, prior=None):
  """{'train': folder, 'test': folder} of the embedded dataset, written once under `cache_dir`.

  The folder's name holds every parameter, the prior's knobs (`prior_tag`: nothing for the
  default prior) and the generator version, so a change writes a
  new folder; it is written under a temporary name and renamed, so a stopped run leaves no
  half-written dataset that a later run would take for complete.
  """
  for key, value, lo in (("num_train", num_train, 1), ("num_test", num_test, 1), ("size", size, 32)):
    if not isinstance(value, int) or value < lo:
      raise InputError(f"data.synthetic.{key}", f"must be a whole number >= {lo}, got {value!r}")
  prior = resolve_prior(prior)
  out = pathlib.Path(cache_dir) / (f"embedded-ir-v{VERSION}-seed{seed}-size{size}-"
                                   f"train{num_train}-test{num_test}{prior_tag(prior)}")
  if not (out / "manifest.json").is_file():
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
      write_dataset(tmp, num_train=num_train, num_test=num_test, size=size, seed=seed,
                    prior=prior)
      os.chmod(tmp, atomic_files.plain_mode(folder=True))
      if not (out / "manifest.json").is_file():  # another process may have finished first
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        os.makedirs(tmp)  # TemporaryDirectory removes its folder on exit
  return {"train": out / "train", "test": out / "test"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--num_train", type=int, default=8)
  parser.add_argument("--num_test", type=int, default=4)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--prior", default="default", choices=sorted(PRIORS))
  args = parser.parse_args()
  write_dataset(args.out_dir, num_train=args.num_train, num_test=args.num_test,
                size=args.size, seed=args.seed, prior=args.prior)


if __name__ == "__main__":
  main()
