"""The generator's prior as knobs, the statistics of a table of spectra, and the prior map job."""

import json

import numpy as np
import pytest

from data_pipelines import synthetic_ir
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import prior_stats
from tolerances import float32_tolerance


def table(prior, **kwargs):
  x, labels, wn = synthetic_ir.sample_table(prior, num_images=1, per_class=30, size=48, **kwargs)
  return prior_stats.in_window(x, wn)[0], labels


def test_the_default_prior_is_the_generator_of_before():
  # Numbers of version 1 of the generator (before the knobs), image 2 of seed 5.
  labels, cube, rgb, _ = synthetic_ir.synthesize_image(2, size=32, seed=5)
  assert int(labels.sum()) == 1465 and int(rgb.astype(np.int64).sum()) == 607737
  # float64 arithmetic (its last bits may vary with the CPU: BLAS, SIMD) rounded once to float32:
  # each voxel within one float32 rounding, their float64 sum within one rounding of each term
  total = np.abs(cube.astype(np.float64)).sum()
  assert cube.astype(np.float64).sum() == pytest.approx(27932.563859645736,
                                                        abs=float32_tolerance(total, 1))
  assert cube[3, 7, 100] == pytest.approx(0.10717369616031647, rel=float32_tolerance(1.0, 1))
  for prior in (None, "", "default", {"name": "default"}, dict(synthetic_ir.PRIOR_KNOBS)):
    assert synthetic_ir.resolve_prior(prior) == synthetic_ir.PRIOR_KNOBS
    again = synthetic_ir.synthesize_image(2, size=32, seed=5, prior=prior)
    assert np.array_equal(again[1], cube) and np.array_equal(again[2], rgb)
  assert synthetic_ir.prior_tag(None) == ""  # the dataset folder keeps its name
  assert synthetic_ir.prior_tag("real_like").startswith("-prior-")
  # another prior changes the spectra, not the tissue layout
  other = synthetic_ir.synthesize_image(2, size=32, seed=5, prior="raw_like")
  assert np.array_equal(other[0], labels) and not np.array_equal(other[1], cube)


def test_the_configs_name_the_generators_priors():
  from configs.ir import classifier  # noqa: PLC0415
  assert classifier.PRIORS == synthetic_ir.PRIORS
  c = classifier.get_config("ir+real_like")
  assert synthetic_ir.resolve_prior(c.data.synthetic.prior) == synthetic_ir.PRIORS["real_like"]
  assert synthetic_ir.resolve_prior(classifier.get_config().data.synthetic.prior) == (
      synthetic_ir.PRIOR_KNOBS)


@pytest.mark.parametrize("prior, match", [
    ({"noise": -1.0}, "prior.noise: must be a number >= 0"),
    ({"overlap": 1.5}, "prior.overlap: must lie in"),
    ({"thickness": 1.0}, "unknown knobs"),
    ({"name": "cloudy"}, "unknown prior 'cloudy'"),
])
def test_bad_knobs_are_named(prior, match):
  with pytest.raises(InputError, match=match):
    synthetic_ir.resolve_prior(prior)


def test_the_knobs_do_what_they_say():
  real_like = synthetic_ir.PRIORS["real_like"]
  low, high = (table({**real_like, "nuisance": v}) for v in (0.0, 2.0))
  assert prior_stats.pc1_mean_cos(high[0])[0] > prior_stats.pc1_mean_cos(low[0])[0] + 0.3
  assert prior_stats.mean_direction_share(high[0]) > prior_stats.mean_direction_share(low[0]) + 0.3
  assert prior_stats.between_class_share(*high) < prior_stats.between_class_share(*low) - 0.2

  for sigma in (0.001, 0.01):  # the estimate finds the knob's noise
    x, _ = table({**real_like, "noise": sigma})
    # not rounding: a MAD estimate over each spectrum's ~200 band differences, median over
    # spectra: a few % off
    assert prior_stats.noise_sigma(x) == pytest.approx(sigma, rel=0.05)

  flat, shaped = (table({**real_like, "intensity_contrast": v}) for v in (0.0, 1.0))
  assert prior_stats.pc1_mean_cos(shaped[0])[0] > prior_stats.pc1_mean_cos(flat[0])[0] + 0.3

  def within(rho):  # band correlations inside one class (stroma), no thickness variation
    x, labels, wn = synthetic_ir.sample_table(
        {**real_like, "nuisance": 0.0, "overlap": 0.0, "band_correlation": rho}, num_images=1,
        per_class=100, size=48)
    return prior_stats.min_band_correlation(prior_stats.in_window(x, wn)[0][labels == "stroma"])
  assert within(0.9) < -0.85 and within(0.0) > -0.5  # 100 spectra: -0.93 and -0.36

  apart, mixed = (table({**real_like, "overlap": v}) for v in (0.0, 0.8))
  assert prior_stats.between_class_share(*mixed) < prior_stats.between_class_share(*apart) - 0.1


def test_statistics_on_constructed_tables():
  rng = np.random.default_rng(0)
  wn = np.arange(1000.0, 1800.0, 2.0)
  shape = np.exp(-0.5 * ((wn - 1400.0) / 120.0) ** 2) + 0.3 * np.exp(-0.5 * ((wn - 1100) / 80) ** 2)
  # intensity only: PC1 is the mean spectrum, all variance along it
  x = rng.uniform(0.5, 1.5, (60, 1)) * shape
  assert prior_stats.pc1_mean_cos(x) == pytest.approx((1.0, 1.0), abs=1e-9)
  assert prior_stats.mean_direction_share(x) == pytest.approx(1.0, abs=1e-9)
  # between-class share: class means plus residuals with zero mean in each class
  labels = np.repeat(np.array(["a", "b", "c"]), 20)
  means = rng.standard_normal((3, len(wn)))
  resid = rng.standard_normal((60, len(wn)))
  for c in range(3):
    resid[c * 20:(c + 1) * 20] -= resid[c * 20:(c + 1) * 20].mean(0)
  x = means[np.repeat(np.arange(3), 20)] + resid
  between = 20 * ((means - means.mean(0)) ** 2).sum()
  assert prior_stats.between_class_share(x, labels) == pytest.approx(
      between / (between + (resid ** 2).sum()), rel=1e-9)
  assert prior_stats.between_class_share(means[np.repeat(np.arange(3), 20)], labels) == (
      pytest.approx(1.0))
  # a band that is the negative of another: correlation -1
  x = rng.standard_normal((50, 6))
  x[:, 4] = -2.0 * x[:, 1] + 3.0
  assert prior_stats.min_band_correlation(x) == pytest.approx(-1.0)
  # noise sigma of smooth spectra plus white noise, and the SNR
  x = rng.uniform(0.5, 1.5, (40, 1)) * shape + rng.normal(0, 0.01, (40, len(wn)))
  stats = prior_stats.measure(x, np.repeat(np.array(["a", "b"]), 20), wn, window=(900, 1900))
  assert stats["noise_sigma"] == pytest.approx(0.01, rel=0.08)  # an estimate, as above
  assert stats["snr"] == pytest.approx(stats["median_range"] / stats["noise_sigma"])
  assert stats["n_bands"] == len(wn) and stats["window"] == [1000.0, 1798.0]
  # separability: random labels near chance, separated classes 1
  assert stats["separability"] < 0.8
  y = np.repeat(np.array(["a", "b"]), 20)
  x = shape + rng.normal(0, 0.01, (40, len(wn)))
  x[20:] += 0.2 * np.exp(-0.5 * ((wn - 1600.0) / 30.0) ** 2)
  sep = prior_stats.separability(x, y)
  assert sep["logistic"] == sep["pca_lda"] == 1.0
  # the window keeps its bands, by increasing wavenumber
  kept, w = prior_stats.in_window(x[:, ::-1], wn[::-1], (1100, 1200))
  assert w[0] == 1100 and w[-1] == 1200 and np.array_equal(kept[:, 0], x[:, 50])


def test_the_prior_map_writes_its_table_and_figure_and_reuses_points(tmp_path, data_cache,
                                                                    monkeypatch):
  from configs.ir import prior_map as map_config  # noqa: PLC0415
  from sciimg_jax.ir import prior_map  # noqa: PLC0415
  from sciimg_jax.ir import study  # noqa: PLC0415
  c = map_config.get_config("tiny")
  c.order = ("ir", "rgb")
  c.grid.x_values, c.grid.y_values = (0.0, 3.0), (0.0,)
  rows = prior_map.run_map(c, tmp_path)
  assert [(r["x"], r["y"]) for r in rows] == [(0.0, 0.0), (3.0, 0.0)]
  for r in rows:
    assert r["ir_minus_rgb"][0] == pytest.approx(r["ir_accuracy"][0] - r["rgb_accuracy"][0])
    assert 0.0 <= r["ir_collapse"][0] <= 1.0 and "pca_lda_accuracy" in r
  # the nuisance knob shows in the measured statistics of the points
  assert rows[1]["pc1_mean_cos"] > rows[0]["pc1_mean_cos"]
  for name in ("prior_map.md", "prior_map.csv", "prior_map.json", "prior_map.png",
               "prior_stats.md", "prior_stats.json"):
    assert (tmp_path / name).stat().st_size > 0
  text = (tmp_path / "prior_map.md").read_text()
  assert "| nuisance | overlap | IR CNN acc | RGB CNN acc |" in text
  # each point also writes the IR study's table of its runs
  text = (tmp_path / "nuisance3-overlap0" / "study.md").read_text()
  assert "| run | accuracy |" in text and "logits_collapse_index" in text
  assert "\n| ir |" in text and "\n| rgb |" in text
  saved = json.loads((tmp_path / "prior_map.json").read_text())
  assert saved["grid"]["x"] == "nuisance" and len(saved["points"]) == 2
  # finished points are read back, not trained again
  monkeypatch.setattr(study, "train_or_reuse", lambda *a, **k: pytest.fail("trained again"))
  assert prior_map.run_map(c, tmp_path) == rows


def test_the_prior_map_refuses_a_bad_grid():
  from configs.ir import prior_map as map_config  # noqa: PLC0415
  from sciimg_jax.ir import prior_map  # noqa: PLC0415
  c = map_config.get_config("tiny")
  c.grid.y = "nuisance"
  with pytest.raises(InputError, match="grid.y: the same knob"):
    prior_map.check_config(c)
  c.grid.y = "thickness"
  with pytest.raises(InputError, match="grid.y: unknown knob"):
    prior_map.check_config(c)
  c.grid.y, c.grid.y_values = "overlap", (0.0, 2.0)
  with pytest.raises(InputError, match="prior.overlap: must lie in"):
    prior_map.check_config(c)


def test_the_remedies_variant_runs_the_study_strategies_at_the_failing_points():
  from configs.ir import prior_map as map_config  # noqa: PLC0415
  from configs.ir import study as study_config  # noqa: PLC0415
  from sciimg_jax.ir import prior_map  # noqa: PLC0415
  c, full = map_config.get_config("remedies"), map_config.get_config()
  assert tuple(c.order) == ("ir", "rgb") + tuple(f"ir-{s}" for s in study_config.STRATEGIES)
  assert tuple(c.grid.x_values) == (3.0,) and tuple(c.grid.y_values) == (0.55, 0.7)
  assert c.prior.to_dict() == full.prior.to_dict() and tuple(c.seeds) == tuple(full.seeds)
  # the map's sizes; each run is the IR study's run of that name, at those sizes
  for name in c.order:
    assert c.runs[name].train.num_steps == full.runs["ir"].train.num_steps
    assert c.runs[name].data.synthetic.size == full.runs["ir"].data.synthetic.size
  assert c.runs["ir-snv"].data.spectral_transform == "snv"
  assert c.runs["ir-sam"].train.robust.sam_rho == 0.05
  prior_map.check_config(c)
