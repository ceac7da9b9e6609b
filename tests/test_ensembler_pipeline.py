"""Diff-Ensembler through the shared trainer and the one sampler, on tiny embedded volumes."""

import csv
import json

import jax
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from configs.ensembler import fusion as fusion_configs
from configs.ensembler import evaluate as evaluate_configs
from configs.ensembler import slice_model
from data_pipelines import brats_layout
from sciimg_jax.core import sharding
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import consistency
from sciimg_jax.ensembler import evaluate_job
from sciimg_jax.ensembler import fusion as fusion_lib
from sciimg_jax.ensembler import fusion_task
from sciimg_jax.ensembler import members as members_lib
from sciimg_jax.ensembler import slice_inputs
from sciimg_jax.ensembler import translator as translator_lib
from tolerances import float32_tolerance, max_abs

AXES = ("axial", "coronal")


@pytest.fixture(scope="module")
def member_dirs(data_cache, tmp_path_factory):
  """Tiny super-resolution models along two axes, 4 steps each."""
  dirs = []
  for axis in AXES:
    c = slice_model.get_config(f"sr+{axis}+tiny")
    c.data.cache_dir, c.train.eval_every = str(data_cache), 0
    dirs.append(tmp_path_factory.mktemp(f"sr_{axis}"))
    slice_inputs.train_slice_model(c, dirs[-1])
  return dirs


def fusion_config(data_cache, member_dirs):
  c = fusion_configs.get_config("sr+tiny")
  c.data.cache_dir = str(data_cache)
  c.fusion.members = tuple(str(d) for d in member_dirs)
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = 2, 1, 2
  return c


@pytest.fixture(scope="module")
def fusion_run(data_cache, member_dirs, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fusion")
  state = fusion_task.train_fusion(fusion_config(data_cache, member_dirs), workdir)
  return workdir, state


def test_fusion_trains_only_the_3d_network_and_resumes_exactly(data_cache, member_dirs,
                                                               fusion_run, tmp_path):
  workdir, straight = fusion_run
  c = fusion_config(data_cache, member_dirs)
  fusion_task.train_fusion(c, tmp_path, stop_at_step=1)
  resumed = fusion_task.train_fusion(c, tmp_path)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the trainable parameters are the 3D U-Net's alone (3D kernels), not the 2D members'
  kernels = [p for p in jax.tree.leaves(straight.params) if np.ndim(p) >= 4]
  assert kernels and all(np.ndim(k) == 5 for k in kernels)
  logged = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in logged if "eval_eps_mse_fused" in r]
  assert evals and all(np.isfinite(evals[-1][f"eval_{w}_mse_{n}"])
                       for w in ("eps", "x0") for n in ("fused", "average"))
  assert evals[-1]["eval_x0_mse_average"] <= 4.0  # x0 clipped to [-1, 1], as images are
  records = json.loads((workdir / fusion_lib.MEMBERS_FILE).read_text())
  assert [r["axis"] for r in records] == list(AXES) and records[0]["step"] == 4


def test_a_fusion_with_other_2d_models_is_refused(data_cache, member_dirs, fusion_run):
  workdir, _ = fusion_run
  c = fusion_config(data_cache, member_dirs[::-1])
  with pytest.raises(InputError, match="differs from the one the fusion was trained with in axis"):
    fusion_task.train_fusion(c, workdir)  # resuming with the members swapped
  mesh = sharding.make_mesh()
  swapped = members_lib.load_members(c.fusion.members, c.data, c.diffusion, mesh)
  with pytest.raises(InputError, match="members.json: 2D model 1"):
    fusion_lib.load_fusion(workdir, swapped, c.data, mesh)


def test_a_fusion_trains_on_its_members_rollouts(data_cache, member_dirs, tmp_path):
  """fusion.rollout_fraction=1: every batch is the members' own walk (with SR data
  consistency on block-aligned crops); the loss is finite and the log says so."""
  c = fusion_config(data_cache, member_dirs)
  c.fusion.rollout_fraction, c.fusion.loss_on = 1.0, "x0"
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 1, 0, 2
  fusion_task.train_fusion(c, tmp_path / "fusion")
  logged = [json.loads(l) for l in (tmp_path / "fusion" / "metrics.jsonl").read_text().splitlines()]
  steps = [r for r in logged if "rollout" in r]
  assert [r["rollout"] for r in steps] == [1.0, 1.0]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
  c.fusion.members = (str(tmp_path / "none_a"), str(tmp_path / "none_b"))
  with pytest.raises(InputError, match="none_a"):  # a rollout without trained members
    fusion_task.train_fusion(c, tmp_path / "fusion2")


def test_a_feature_fusion_starts_from_a_trained_eps_fusion(data_cache, member_dirs,
                                                           fusion_run, tmp_path):
  """fusion.init_from: the U-Net takes the trained fusion's EMA parameters, the feature
  adapters stay zero, so the started network gives the trained one's output exactly."""
  from flax import nnx
  c = fusion_config(data_cache, member_dirs)
  c.fusion.variant, c.fusion.init_from = "features", str(fusion_run[0])
  task = fusion_task.FusionTask(c, tmp_path)
  module = task.create_model(nnx.Rngs(0), jax.numpy.float32)
  mesh = sharding.make_mesh()
  trained = fusion_lib.load_fusion(fusion_run[0], task.members, c.data, mesh)
  for a, b in zip(jax.tree.leaves(nnx.state(module.unet, nnx.Param)),
                  jax.tree.leaves(trained.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(not np.any(np.asarray(k)) for k in jax.tree.leaves(nnx.state(module.adapters)))
  assert any(np.any(np.asarray(k)) for k in jax.tree.leaves(trained.params) if np.ndim(k) == 5)
  c.fusion.space = "x0"
  with pytest.raises(InputError, match="fusion.init_from: .* fuses in eps space, this config"):
    fusion_task.FusionTask(c, tmp_path / "x0").create_model(nnx.Rngs(0), jax.numpy.float32)
  c.fusion.space = "eps"
  c.model.channels = (4, 8)
  with pytest.raises(InputError, match="fusion.init_from: .* of another shape"):
    fusion_task.FusionTask(c, tmp_path / "other").create_model(nnx.Rngs(0), jax.numpy.float32)


@pytest.fixture(scope="module")
def translation(data_cache, member_dirs, fusion_run):
  c = evaluate_configs.get_config("sr+tiny")
  c.data.cache_dir = str(data_cache)
  c.evaluate.members = tuple(str(d) for d in member_dirs)
  c.evaluate.fusion = str(fusion_run[0])
  c.evaluate.methods = ("cubic", "tpdm", "average", "fused")
  c.evaluate.progress_bar = False
  c.sampling.num_samples = 2
  mesh = sharding.make_mesh()
  members, fusion, *_ = evaluate_job.load_models(c, mesh)
  return c, translator_lib.VolumeTranslator(c, members, fusion, mesh)


def test_super_resolution_samples_pool_to_the_low_resolution_input(translation, tmp_path):
  config, translator = translation
  case = evaluate_job.input_cases(config, tmp_path)[0]
  from data_pipelines import volume_cases
  from sciimg_jax.core import volumes
  array = np.asarray(case.array)
  cond = volume_cases.example(config.data, array, volumes.position_embedding(array.shape[:3]))
  samples = translator("fused", cond["cond"], jax.random.key(0))
  assert samples.shape == (2, 24, 32, 24)
  assert np.abs(samples[0] - samples[1]).mean() > 1e-3  # two samples, one call
  low = consistency.avg_pool(array[..., 1], 4)
  # four 4^3 block means (64 terms each; the translator's of the condition and of x, both here)
  # and ~8 elementwise ops (projection, residual image 2x + low), on values <= |s| + |low|
  for s in samples:
    np.testing.assert_allclose(consistency.avg_pool(s, 4), low,
                               atol=float32_tolerance(max_abs(s) + max_abs(low), 4 * 64 + 8))


def test_evaluate_job_writes_volumes_tables_and_figures(translation, tmp_path):
  config, translator = translation
  summary = evaluate_job.evaluate_cases(config, tmp_path, translator)
  assert list(summary) == list(config.evaluate.methods)
  for method, entry in summary.items():
    assert entry["cases"] == 2 and set(entry) >= {"psnr", "ssim", "texture", "mmd", "seconds"}
  rows = list(csv.DictReader((tmp_path / "cases.csv").open()))
  assert len(rows) == 2 * 4 and all(float(r["psnr"]) > 0 for r in rows)
  assert all(np.isfinite(float(r["psnr_file"])) and 0 < float(r["ssim_file"]) <= 1 for r in rows)
  source = sorted(p for p in (tmp_path.parent).glob("**/eval/BraTS-*") if p.is_dir())
  name = rows[0]["case"]
  original = next(p for p in source if p.name == name)
  ref = nib.load(brats_layout.case_file(original, "t2f"))
  out = nib.load(tmp_path / "outputs" / "fused" / name / f"{name}-t2f.nii.gz")
  assert out.shape == ref.shape == (50, 59, 48)
  np.testing.assert_allclose(out.affine, ref.affine)
  assert out.header.get_zooms() == ref.header.get_zooms()
  assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
  cubic = [r for r in rows if r["method"] == "cubic"]
  assert all(float(r["ssim"]) > 0.3 for r in cubic)


def test_feature_variant_trains_and_samples(data_cache, member_dirs, tmp_path):
  """2D decoder features into the 3D encoder: through the trainer and the one sampler."""
  c = fusion_config(data_cache, member_dirs)
  c.fusion.variant = "features"
  c.fusion.min_snr_gamma = 1.0  # and the min-SNR weighted loss
  c.train.checkpoint_every, c.train.eval_every = 2, 0  # the eval is tested above
  fusion_task.train_fusion(c, tmp_path / "fusion")
  t = evaluate_configs.get_config("sr+tiny")
  t.data.cache_dir = str(data_cache)
  t.evaluate.members, t.evaluate.fusion = c.fusion.members, str(tmp_path / "fusion")
  mesh = sharding.make_mesh()
  members, fusion, *_ = evaluate_job.load_models(t, mesh)
  assert type(fusion.net.module(fusion.params)).__name__ == "FeatureFusion"
  translator = translator_lib.VolumeTranslator(t, members, fusion, mesh)
  case = evaluate_job.input_cases(t, tmp_path)[0]
  from data_pipelines import volume_cases
  from sciimg_jax.core import volumes
  array = np.asarray(case.array)
  cond = volume_cases.example(t.data, array, volumes.position_embedding(array.shape[:3]))["cond"]
  sample = translator("fused", cond, jax.random.key(1))[0]
  low = consistency.avg_pool(array[..., 1], 4)  # tolerance: as in test_super_resolution_samples_...
  np.testing.assert_allclose(consistency.avg_pool(sample, 4), low,
                             atol=float32_tolerance(max_abs(sample) + max_abs(low), 4 * 64 + 8))


def test_the_study_reuses_finished_runs_only(member_dirs, tmp_path):
  from sciimg_jax.core import reports
  assert reports.run_is_finished(member_dirs[0], 4)
  assert not reports.run_is_finished(member_dirs[0], 5)
  assert not reports.run_is_finished(tmp_path, 1)


def test_a_method_without_what_it_needs_stops_before_any_case(translation):
  """`evaluate.methods` are checked against what each needs: a fusion, a regressor, a pooled
  condition of the target (`translator.REQUIREMENTS`)."""
  config, translator = translation
  bare = translator_lib.VolumeTranslator(config, translator.members, None, translator.mesh)
  for method in ("axial", "average", "tpdm", "cubic"):
    bare.check_method(method)
  with pytest.raises(InputError, match="evaluate.fusion: method 'fused' needs a trained fusion"):
    bare.check_method("fused")
  with pytest.raises(InputError, match="evaluate.regressor: method 'regressor' needs a trained"):
    bare.check_method("regressor")
  no_pool = ml_collections.ConfigDict(config.to_dict())
  no_pool.data.conditions = ("t1n",)
  unpooled = translator_lib.VolumeTranslator(no_pool, translator.members, None, translator.mesh)
  with pytest.raises(InputError, match="evaluate.methods: 'cubic' needs a pooled condition"):
    unpooled.check_method("cubic")
  with pytest.raises(InputError, match="unknown method 'bicubic'"):
    bare.check_method("bicubic")


def test_whole_volume_fusion_trains_and_scores_whole_volumes(data_cache, member_dirs, tmp_path):
  """fusion.crop_size=() trains on whole volumes (what the fusion sees when sampling)."""
  c = fusion_config(data_cache, member_dirs)
  c.fusion.crop_size = ()
  c.train.checkpoint_every, c.train.eval_every = 2, 2
  task = fusion_task.FusionTask(c, tmp_path)
  assert task.crop.crop == tuple(c.data.volume_shape)
  # the evaluation's examples are the held-out cases, whole
  from data_pipelines import volume_cases
  held_out = task.sources["eval"].cases
  for i, e in enumerate(task.eval_examples(3)):
    target, _, _ = volume_cases.split_example(c.data, np.asarray(held_out[i % len(held_out)].array))
    np.testing.assert_array_equal(e["target"], target)
  fusion_task.train_fusion(c, tmp_path)
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert np.isfinite([r["eval_x0_mse_fused"] for r in logged if "eval_x0_mse_fused" in r]).all()
  c.fusion.crop_size = (16, 16, 40)
  with pytest.raises(InputError, match=r"fusion.crop_size: \(16, 16, 40\) does not fit"):
    fusion_task.FusionTask(c, tmp_path / "other")


@pytest.fixture(scope="module")
def context_member(data_cache, tmp_path_factory):
  """A 2.5D axial member (data.context = 1)."""
  c = slice_model.get_config("sr+axial+tiny")
  c.data.cache_dir, c.train.eval_every, c.data.context = str(data_cache), 0, 1
  workdir = tmp_path_factory.mktemp("sr_axial_context")
  slice_inputs.train_slice_model(c, workdir)
  return workdir


def test_context_mismatches_are_refused(data_cache, member_dirs, context_member, fusion_run):
  c = slice_model.get_config("sr+axial+tiny")
  c.data.cache_dir, c.data.context = str(data_cache), 12  # 25 slices; the axis holds 24
  with pytest.raises(InputError, match="a context of 12 slices on each side needs 25 slices"):
    slice_inputs.train_slice_model(c, data_cache / "never")
  f = fusion_config(data_cache, [context_member, member_dirs[1]])
  mesh = sharding.make_mesh()
  with pytest.raises(InputError, match="different through-plane contexts.*: 1, .*: 0"):
    members_lib.load_members(f.fusion.members, f.data, f.diffusion, mesh)
  mixed = (members_lib.load_members([str(context_member)], f.data, f.diffusion, mesh)
           + members_lib.load_members([str(member_dirs[1])], f.data, f.diffusion, mesh))
  with pytest.raises(InputError, match=r"2D model 1 \(axial\) differs .* in context"):
    fusion_lib.load_fusion(fusion_run[0], mixed, f.data, mesh)


def test_the_3d_only_baseline_trains_and_samples_through_the_one_sampler(
    data_cache, member_dirs, translation, tmp_path):
  from configs.ensembler import volume_model as volume_configs
  from data_pipelines import volume_cases
  from sciimg_jax.core import volumes
  from sciimg_jax.ensembler import volume_model
  c = volume_configs.get_config("sr+tiny")
  c.data.cache_dir = str(data_cache)
  volume_model.train_volume_model(c, tmp_path / "3d")
  assert (tmp_path / "3d" / "samples" / "step_0000004.png").is_file()
  config, translator = translation
  mesh = translator.mesh
  model = volume_model.load(tmp_path / "3d", config.data, config.diffusion, mesh)
  with_3d = translator_lib.VolumeTranslator(config, translator.members, None, mesh,
                                            volume_model=model)
  case = evaluate_job.input_cases(config, tmp_path)[0]
  array = np.asarray(case.array)
  cond = volume_cases.example(config.data, array, volumes.position_embedding(array.shape[:3]))
  samples = with_3d("3d_only", cond["cond"], jax.random.key(0))
  assert samples.shape == (2, 24, 32, 24) and np.isfinite(samples).all()
  low = consistency.avg_pool(array[..., 1], 4)  # tolerance: as in test_super_resolution_samples_...
  np.testing.assert_allclose(consistency.avg_pool(samples[0], 4), low,
                             atol=float32_tolerance(max_abs(samples[0]) + max_abs(low), 4 * 64 + 8))
  with pytest.raises(InputError, match="'3d_only' needs a trained 3D model"):
    translator.check_method("3d_only")
  with pytest.raises(InputError, match="holds a 2D model"):
    volume_model.load(member_dirs[0], config.data, config.diffusion, mesh)
