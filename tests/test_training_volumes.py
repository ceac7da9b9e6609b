"""Inpainting slice models trained on whole volumes: context, 3D holes, the classical prior."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import quickstart
from configs.inpainting import inpaint
from configs.inpainting import study
from data_pipelines import sources
from sciimg_jax.core import slice_context
from sciimg_jax.core import slice_task
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import chain_space
from sciimg_jax.inpainting import classical
from sciimg_jax.inpainting import slice_inputs
from sciimg_jax.inpainting import training_volumes
from sciimg_jax.inpainting import volume_inpainter
from tolerances import float32_tolerance

CONTEXT = 2


def volume_config(data_cache, axis="axial", **data):
  c = quickstart.get_config("tiny")[axis]
  c.data.cache_dir = str(data_cache)
  c.data.update({**dict(source="volumes", context=CONTEXT, prior="biharmonic", residual=True),
                 **data})
  return c


@pytest.fixture(scope="module")
def source(data_cache):
  c = volume_config(data_cache)
  c.data.random_masks.update(probability=1.0, radius_fraction=(0.1, 0.12))
  splits = sources.source_dirs(c.data, data_cache)
  return training_volumes.sources(c.data, {"eval": splits["eval"]}, data_cache)["eval"]


def test_context_of_a_volume_matches_the_context_of_each_slice():
  rng = np.random.default_rng(0)
  volume = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
  fills = [-1.0, 0.0]
  expanded = slice_context.expand(volume, 0, 2, [2, 0], fills)
  assert expanded.shape == (5, 4, 3, 3 + 2 * 2 * 2)
  assert len(slice_context.names(("a", "b"), 2)) == 8
  for s in range(5):
    np.testing.assert_array_equal(expanded[s, ..., :3], volume[s])
    np.testing.assert_array_equal(expanded[s, ..., 3:],
                                  slice_context.at_slice(volume, s, 2, [2, 0], fills))
  # offset -2 of slice 0 lies beyond the volume: background; offset +1 of slice 0 is slice 1
  np.testing.assert_array_equal(expanded[0, ..., 3], -1.0)
  np.testing.assert_array_equal(expanded[0, ..., 4], 0.0)
  np.testing.assert_array_equal(expanded[0, ..., 7:9], volume[1][..., [2, 0]])
  # along another axis, and traced by jax: the same numbers
  moved = np.moveaxis(volume, 0, 2)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda v: slice_context.expand(v, 2, 2, [2, 0], fills, xp=jnp))(moved)),
      np.moveaxis(expanded, 0, 2))


def test_holes_are_3d_and_cross_the_context_slices(source):
  names = list(source.names)
  mask, voided, prior = (names.index(n) for n in ("mask", "t1n-voided", "prior"))
  crossed, holes = 0, 0
  for record in range(0, len(source), max(len(source) // 12, 1)):
    plain = source.example(record)
    holed = source.example(record, np.random.default_rng(record))
    new = (holed["cond"][..., mask] > 0) & (plain["cond"][..., mask] == 0)
    if not new.any():
      continue
    holes += 1
    for n in ("mask@-1", "mask@+1"):
      c = names.index(n)
      if ((holed["cond"][..., c] > 0) & (plain["cond"][..., c] == 0)).any():
        crossed += 1
        break
    for c, name in enumerate(names):  # voided -1 wherever its mask says so, on every slice
      if name.startswith("mask"):
        v = names.index(name.replace("mask", "t1n-voided"))
        np.testing.assert_array_equal(holed["cond"][..., v][holed["cond"][..., c] > 0], -1.0)
    # residual target: zero where the image is known; the prior keeps the known pixels
    known = holed["cond"][..., mask] == 0
    np.testing.assert_array_equal(holed["target"][..., 0][known], 0.0)
    np.testing.assert_array_equal(holed["cond"][..., prior][known], holed["cond"][..., voided][known])
  assert holes >= 6
  assert crossed == holes  # every hole reaches a neighbouring slice: nothing to copy from


def test_holes_come_from_the_configured_families(source, data_cache):
  """`data.random_masks.families = ('box',)`: every new hole is an axis-aligned box (cut to
  the brain), so its slice is a rectangle of the brain's pixels; two families mix."""
  data = ml_collections.ConfigDict(source.data.to_dict())
  data.random_masks.families = ("box",)
  boxes = training_volumes.SlabSource(source.cases, data)
  mask = list(boxes.names).index("mask")
  seen = 0
  for record in range(0, len(boxes), max(len(boxes) // 12, 1)):
    plain = boxes.example(record)
    new = (boxes.example(record, np.random.default_rng(record))["cond"][..., mask] > 0) & (
        plain["cond"][..., mask] == 0)
    if not new.any():
      continue
    seen += 1
    rows, cols = np.nonzero(new)
    box = np.zeros_like(new)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    brain = plain["cond"][..., list(boxes.names).index("t1n-voided")] > -1.0
    np.testing.assert_array_equal(new, box & brain)  # a rectangle, cut to the brain
  assert seen >= 3
  data.random_masks.families = ("box", "blob")
  mixed = training_volumes.SlabSource(source.cases, data)
  assert mixed.example(0, np.random.default_rng(0))["cond"].shape == plain["cond"].shape
  with pytest.raises(InputError, match="unknown mask family 'cube'; known: lesion"):
    c = volume_config(data_cache)
    c.data.random_masks.update(probability=0.5, families=("cube",))
    slice_inputs.check_data_config(c.data)


def test_prior_dropout_shows_the_voided_image_and_keeps_the_target(source):
  """`data.prior_dropout`: the dropped examples' prior channel is the voided image; the
  residual target is still relative to the prior; the other channels are unchanged."""
  data = ml_collections.ConfigDict(source.data.to_dict())
  data.random_masks.probability = 0.0
  data.prior_dropout = 0.5
  dropping = training_volumes.SlabSource(source.cases, data)
  names = list(dropping.names)
  prior, voided = names.index("prior"), names.index("t1n-voided")
  dropped = 0
  for record in range(0, len(dropping), max(len(dropping) // 40, 1)):
    plain, out = dropping.example(record), dropping.example(record, np.random.default_rng(record))
    np.testing.assert_array_equal(out["target"], plain["target"])
    others = [c for c in range(len(names)) if c != prior]
    np.testing.assert_array_equal(out["cond"][..., others], plain["cond"][..., others])
    if np.array_equal(out["cond"][..., prior], plain["cond"][..., prior]):
      continue
    dropped += 1
    np.testing.assert_array_equal(out["cond"][..., prior], plain["cond"][..., voided])
  assert 0 < dropped < 40


def test_prior_of_a_hole_is_its_fill(source):
  array = np.array(source.cases[0].array)
  k = source.index[len(source) // 2][1]
  before = array.copy()
  source.hole(array, k, np.random.default_rng(3))
  hole = (array[..., training_volumes.MASK] > 0) & (before[..., training_volumes.MASK] == 0)
  assert hole.any()
  box = tuple(slice(max(a.min() - 4, 0), a.max() + 5) for a in np.nonzero(hole))
  expected = classical.biharmonic_fill(before[box + (training_volumes.PRIOR,)], hole[box])
  np.testing.assert_allclose(array[box + (training_volumes.PRIOR,)][hole[box]],
                             expected[hole[box]], atol=float32_tolerance(1.0, 4))


@pytest.fixture(scope="module")
def untrained(data_cache):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  configs = {name: slice_task.with_in_channels(volume_config(data_cache, name),
                                              slice_inputs.InpaintingSlices())
             for name in volume_inpainter.MODELS}
  return {name: volume_inpainter.fresh_slice_model(c, name, mesh) for name, c in configs.items()}


def test_untrained_residual_model_returns_the_classical_fill(untrained):
  """x0 models with a zero output layer predict a zero residual: the result is the prior."""
  rng = np.random.default_rng(0)
  shape = (64, 64, 64)
  voided = np.clip(rng.normal(0.0, 0.3, shape), -1, 1).astype(np.float32)
  mask = np.zeros(shape, np.float32)
  mask[28:36, 30:37, 26:33] = 1.0
  voided[mask > 0] = -1.0
  c = inpaint.get_config("tiny")
  c.pipeline.resampling.max_loops = 1
  out = volume_inpainter.VolumeInpainter(c, models=untrained)(voided, mask, jax.random.key(0))
  fill = classical.ClassicalInpainter("biharmonic", margin=4)(voided, mask)
  np.testing.assert_allclose(out, fill, rtol=0, atol=float32_tolerance(1.0, 3))
  assert np.abs(out[mask > 0] - voided[mask > 0]).mean() > 0.05


def test_context_wider_than_the_volume_is_refused(untrained):
  axial = untrained["axial"]
  wide = dataclasses.replace(axial, context=40)
  with pytest.raises(InputError, match="context of 40 slices on each side needs 81 slices"):
    volume_inpainter.VolumeInpainter(inpaint.get_config("tiny"),
                                     models={**untrained, "axial": wide})


def test_models_that_disagree_on_the_residual_are_refused(untrained):
  config = untrained["coronal"].config.copy_and_resolve_references()
  config.data.residual = False
  other = dataclasses.replace(untrained["coronal"], config=config)
  with pytest.raises(InputError, match=r"disagree on \(data.residual, data.residual_scale\)"):
    volume_inpainter.VolumeInpainter(inpaint.get_config("tiny"),
                                     models={**untrained, "coronal": other})


def test_models_that_disagree_on_the_residual_scale_are_refused(untrained):
  config = untrained["coronal"].config.copy_and_resolve_references()
  config.data.residual_scale = 0.5
  other = dataclasses.replace(untrained["coronal"], config=config)
  with pytest.raises(InputError, match="'coronal': .True, 0.5."):
    volume_inpainter.VolumeInpainter(inpaint.get_config("tiny"),
                                     models={**untrained, "coronal": other})


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_residual_round_trip_and_its_clip_bound(scale):
  """from_residual inverts to_residual, and chain_clip(1) bounds every residual of images in
  [-1, 1] (it is 2 / s), so clipping never cuts a reachable value."""
  rng = np.random.default_rng(1)
  image, prior = rng.uniform(-1, 1, (2, 1000)).astype(np.float32)
  image[:2], prior[:2] = (1.0, -1.0), (-1.0, 1.0)  # the extremes
  data = ml_collections.ConfigDict(dict(residual=True, residual_scale=scale))
  r = chain_space.to_residual(image, prior, chain_space.residual_scale(data))
  np.testing.assert_allclose(chain_space.from_residual(r, prior, scale), image, rtol=0,
                             atol=float32_tolerance(2.0, 3))
  bound = chain_space.chain_clip(data, 1.0)
  assert bound == pytest.approx(2.0 / scale)
  assert np.abs(r).max() <= bound * (1 + 1e-6) and np.abs(r).max() > 0.99 * bound
  assert chain_space.chain_clip(ml_collections.ConfigDict(dict(residual=False)), 1.0) == 1.0


def test_prior_without_known_voxels_near_the_mask_is_refused(untrained):
  shape = (64, 64, 64)
  voided = np.full(shape, -1.0, np.float32)
  mask = np.ones(shape, np.float32)
  inpainter = volume_inpainter.VolumeInpainter(inpaint.get_config("tiny"), models=untrained)
  with pytest.raises(InputError, match="biharmonic prior cannot be computed"):
    inpainter(voided, mask, jax.random.key(0))


@pytest.mark.parametrize("data, match", [
    (dict(source="slices", context=1, prior="", residual=False), "needs data.source = 'volumes'"),
    (dict(prior="", residual=True), "residual target .* needs data.prior"),
    (dict(prior="bilinear"), "unknown fill 'bilinear'"),
    (dict(context=-1), "must be an integer >= 0"),
    (dict(source="tfds"), "unknown source 'tfds'"),
    (dict(prior_dropout=1.0), r"prior_dropout.*must be in \[0, 1\)"),
    (dict(prior="", residual=False, prior_dropout=0.5), "needs data.prior"),
])
def test_bad_data_settings_are_refused(data_cache, data, match):
  c = volume_config(data_cache, **data)
  with pytest.raises(InputError, match=match):
    slice_inputs.check_data_config(c.data)


def test_training_on_volumes_runs_and_the_checkpoint_carries_context(data_cache, tmp_path):
  c = volume_config(data_cache)
  c.train.num_steps = 2
  c.train.eval_every = 2
  c.train.num_sample_images = 4
  slice_inputs.train_slice_model(c, tmp_path / "axial")
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  model = volume_inpainter.load_slice_model(tmp_path / "axial", "axial", mesh)
  assert model.context == CONTEXT and model.config.data.prior == "biharmonic"
  assert (tmp_path / "axial" / "samples" / "step_0000002.png").is_file()


@pytest.mark.parametrize("lever", sorted(study.LEVERS))
def test_every_study_lever_makes_valid_slice_models(lever):
  c = study.get_config(f"tiny+{lever}")
  for name in volume_inpainter.MODELS:
    slice_task.check_config(c[name], slice_inputs.InpaintingSlices())


def test_the_tumour_is_left_out_of_the_loss(data_cache):
  c = volume_config(data_cache, loss_exclude="mask-unhealthy")
  splits = sources.source_dirs(c.data, data_cache)
  source = training_volumes.sources(c.data, {"eval": splits["eval"]}, data_cache)["eval"]
  tumour = [r for r, (i, k) in enumerate(source.index)
            if np.take(source.cases[i].array[..., training_volumes.UNSCORED], k, axis=2).any()]
  assert tumour
  example = source.example(tumour[len(tumour) // 2])
  batch = {k: v[None] for k, v in example.items()}
  weights = slice_inputs.InpaintingSlices().loss_weights(c, batch)
  unscored = example["scored"][..., 0] == 0
  assert unscored.any() and np.all(weights[0][..., 0][unscored] == 0)
  mask = example["cond"][..., list(source.names).index("mask")]
  assert np.all(mask[unscored] == 1)  # the tumour is inside the mask
  np.testing.assert_array_equal(weights[0][..., 0][~unscored],
                                1 + (c.train.loss_weight_in_mask - 1) * mask[~unscored])


def test_the_slice_task_counts_the_channels_of_the_data():
  """x_t, the conditions, the prior and the voided image and mask of 2k context slices: the
  slice task derives the count, no config states it."""
  for variant in ("", "context", "prior+context", "best"):
    c = study.get_config(variant).axial
    assert "in_channels" not in c.model
    d = c.data
    assert slice_task.in_channels(c, slice_inputs.InpaintingSlices()) == (
        1 + len(d.conditions) + bool(d.prior) + 2 * 2 * d.context)
