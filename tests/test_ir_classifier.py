"""The IR and RGB patch classifiers: models, training through the shared trainer, bad input."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs.ir import classifier as ir_config
from sciimg_jax.core import models
from sciimg_jax.core import trainer
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import classifiers  # noqa: F401  (registers the models)
from tolerances import float32_tolerance, max_abs


def tiny(variant, data_cache):
  c = ir_config.get_config(f"{variant}+tiny" if variant else "tiny")
  c.data.cache_dir = str(data_cache / "ir")
  return c


@pytest.mark.parametrize("variant,channels", [("ir", 277), ("rgb", 3), ("pixel", 277)])
def test_models_give_logits_and_features(variant, channels):
  c = ir_config.get_config(variant)
  model = models.create_model(c.model, rngs=nnx.Rngs(0), in_channels=channels, num_classes=5,
                             patch_size=8)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, channels))
  assert model(x).shape == (3, 5)
  features = c.model.spectral_widths[-1] if variant == "pixel" else c.model.features
  assert model.embed(x).shape == (3, features)  # the configured width, whatever the input's


def test_the_config_names_the_embedded_classes():
  from data_pipelines import synthetic_ir  # noqa: PLC0415
  assert ir_config.EMBEDDED_CLASSES == synthetic_ir.CLASSES


def test_the_pixel_model_sees_only_the_centre_pixel():
  c = ir_config.get_config("pixel")
  model = models.create_model(c.model, rngs=nnx.Rngs(0), in_channels=6, num_classes=4,
                             patch_size=8)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 6))
  y = x.at[:, 0, 0].set(9.0).at[:, 7, 3].set(-9.0)
  np.testing.assert_array_equal(model(x), model(y))
  assert not np.allclose(model(x), model(x.at[:, 4, 4].set(9.0)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
  """Tiny IR and RGB runs on the same embedded patches."""
  root = tmp_path_factory.mktemp("ir_runs")
  return {v: (classifier_task.train_classifier(tiny(v, data_cache), root / v), root / v)
          for v in ("ir", "rgb")}


def test_training_writes_metrics_and_diagnostics(trained):
  for variant, (result, workdir) in trained.items():
    saved = json.loads((workdir / "final_metrics.json").read_text())
    assert saved == pytest.approx(result)
    assert result["step"] == 6 and result["modality"] == variant
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "probe_accuracy",
                "features_pc1_share", "logits_pc1_share"):
      assert 0.0 <= result[key] <= 1.0, key
    assert 1.0 <= result["logits_effective_rank"] <= 4.0 + 1e-9  # class-centred, 5 classes
    assert 0.0 <= result["logits_collapse_index"] <= 1.0
    assert result["gradient_effective_rank"] >= 1.0
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("features_effective_rank" in r for r in rows)  # logged during training


def test_ir_and_rgb_see_the_same_patches(data_cache, tmp_path):
  ir = classifier_task.PatchClassifierTask(tiny("ir", data_cache), tmp_path / "a")
  rgb = classifier_task.PatchClassifierTask(tiny("rgb", data_cache), tmp_path / "b")
  for split in ("train", "test"):
    a, b = ir.sources[split], rgb.sources[split]
    assert len(a) == len(b)
    for k in (0, len(a) - 1):
      assert (a[k]["region"], a[k]["y"], a[k]["x"], a[k]["label"]) == (
          b[k]["region"], b[k]["y"], b[k]["x"], b[k]["label"])
  for task in (ir, rgb):  # standardised per band or colour with the training statistics
    x, _ = task.arrays("train")
    n = len(classifier_task.training_pixels(task.sources["train"], task.modality))
    assert n == x[..., 0].size  # the statistics are of these very pixels: 0 and 1 but rounding
    # a mean and a std (a mean, then a sum of squares) are float32 sums over the n pixels, in the
    # task and here: 4 n, on values <= |x| + |mean| / std in standardised units, + a few ops
    magnitude = max_abs(x) + max_abs(task.transform.mean / task.transform.std)
    tol = float32_tolerance(magnitude, 4 * n + 8)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=tol)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=tol)


def test_resumed_training_equals_the_uninterrupted_run(data_cache, tmp_path):
  config = tiny("ir", data_cache)
  config.train.eval_every = 0
  straight = trainer.train(classifier_task.PatchClassifierTask(config, tmp_path / "s"), config,
                           tmp_path / "s")
  trainer.train(classifier_task.PatchClassifierTask(config, tmp_path / "r"), config,
                tmp_path / "r", stop_at_step=3)
  resumed = trainer.train(classifier_task.PatchClassifierTask(config, tmp_path / "r"), config,
                          tmp_path / "r")
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)


def test_bad_settings_are_named(data_cache, tmp_path):
  c = tiny("ir", data_cache)
  c.data.modality = "xray"
  with pytest.raises(InputError, match="data.modality: unknown modality 'xray'"):
    classifier_task.PatchClassifierTask(c, tmp_path)
  c = tiny("ir", data_cache)
  c.model.name = "resnet"
  with pytest.raises(InputError, match="model.name: unknown model 'resnet'"):
    classifier_task.train_classifier(c, tmp_path / "m")
  c = tiny("rgb", data_cache)
  c.data.spectral_transform = "snv"
  with pytest.raises(InputError, match="data.spectral_transform: 'snv' transforms IR spectra"):
    classifier_task.PatchClassifierTask(c, tmp_path / "s")


def test_study_writes_its_table_and_reuses_finished_runs(tmp_path, data_cache):
  from configs.ir import study as study_config  # noqa: PLC0415
  from sciimg_jax.ir import study  # noqa: PLC0415
  c = study_config.get_config("tiny")
  for run in c.runs.values():
    run.data.cache_dir = str(data_cache / "ir")
  summary = study.run_study(c, tmp_path)
  baselines = {"pca_lda", "logistic", "random_forest"}
  assert set(summary) == {"ir", "rgb", "labels"} | baselines | {f"{b}-rgb" for b in baselines}
  assert set(summary["ir"]) == set(summary["logistic"]) == set(study.COLUMNS)
  assert "gradient_effective_rank" not in summary["random_forest"]
  assert summary["labels"]["logits_collapse_index"][0] == 0.0  # the reference itself
  for name in ("study.json", "study.md", "study.csv", "study.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert "| pca_lda |" in (tmp_path / "study.md").read_text()
  assert "| pca_lda-rgb |" in (tmp_path / "study.md").read_text()
  assert "| labels |" in (tmp_path / "study.md").read_text()
  (tmp_path / "ir-seed0" / "final_metrics.json").write_text('{"accuracy": 0.5, '
      '"balanced_accuracy": 0.5, "macro_f1": 0.5, "features_effective_rank": 2.0, '
      '"logits_pc1_share": 0.9, "gradient_effective_rank": 1.5}')
  again = study.run_study(c, tmp_path)  # finished runs are read, not trained again
  assert again["ir"]["accuracy"] == (0.5, None)  # one seed: no sample std
  (tmp_path / "ir-seed0" / "final_metrics.json").unlink()  # finished: evaluated, not trained
  assert study.run_study(c, tmp_path)["ir"]["accuracy"] == summary["ir"]["accuracy"]


def test_study_config_names_every_strategy():
  from configs.ir import study as study_config  # noqa: PLC0415
  c = study_config.get_config()
  assert len(c.runs) == 3 + len(study_config.STRATEGIES)
  assert c.runs["ir-snv"].data.spectral_transform == "snv"
  assert c.runs["rgb"].data.modality == "rgb"


def test_diagnose_reproduces_the_final_metrics_from_the_checkpoints(trained, tmp_path):
  import ml_collections  # noqa: PLC0415
  from sciimg_jax.ir import diagnose_job  # noqa: PLC0415
  c = ml_collections.ConfigDict(dict(job="ir_diagnose",
                                     runs=tuple(str(w) for _, w in trained.values())))
  results = diagnose_job.run_diagnose(c, tmp_path)
  for r, (final, _) in zip(results, trained.values()):
    assert r["step"] == 6
    for key in ("accuracy", "macro_f1", "features_effective_rank", "logits_pc1_share"):
      assert r[key] == pytest.approx(final[key], rel=1e-5), key
    assert sum(r["feature_spectrum"]) == pytest.approx(1.0)
    assert [h["step"] for h in r["history"]] == [3, 6]
  assert (tmp_path / "diagnose.png").stat().st_size > 0
  assert len(json.loads((tmp_path / "diagnose.json").read_text())) == 2
  with pytest.raises(InputError, match="no checkpoints/ folder"):
    diagnose_job.run_diagnose(ml_collections.ConfigDict(dict(runs=(str(tmp_path),))), tmp_path)
