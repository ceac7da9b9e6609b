"""The diffusion U-Net: MONAI's parameter count, 2D/3D shapes, zero init, training, dropout."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs.inpainting import common
from sciimg_jax.core import models
from sciimg_jax.core import slice_task
from sciimg_jax.core.errors import InputError
from sciimg_jax.core.models import unet
from sciimg_jax.inpainting import slice_inputs
from tolerances import float32_tolerance, max_abs

TINY = dict(channels=(8, 16), num_res_blocks=1, attention_levels=(False, True),
            num_head_channels=8, num_groups=4)


@nnx.jit
def run(model, x, t):
  return model(x, t)


def count_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_reference_config_has_monais_parameter_count():
  # DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(32, 64, 128),
  #   attention_levels=(False, False, True), num_res_blocks=2, num_head_channels=32,
  #   norm_num_groups=8) has 3,939,969 parameters.
  inputs = slice_inputs.InpaintingSlices()  # x_t, the voided slice and the mask
  cfg = slice_task.with_in_channels(common.get_base_config(), inputs).model
  model = nnx.eval_shape(lambda: models.create_model(cfg, rngs=nnx.Rngs(0)))
  assert count_params(model) == 3_939_969


def test_create_model_rejects_unknown_name():
  cfg = ml_collections.ConfigDict(dict(name="resnet", spatial_dims=2))
  with pytest.raises(InputError, match="model.name"):
    models.create_model(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("spatial,dtype", [((16, 16), jnp.float32), ((8, 8, 8), jnp.bfloat16)])
def test_shapes_and_zero_output_at_init(spatial, dtype):
  model = unet.UNet(spatial_dims=len(spatial), in_channels=3, out_channels=2, **TINY,
                    dtype=dtype, rngs=nnx.Rngs(0))
  # Parameters stay float32 whatever the compute dtype; the output is float32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  x = jax.random.normal(jax.random.key(0), (2, *spatial, 3))
  out = run(model, x, jnp.array([3, 700]))
  assert out.shape == (2, *spatial, 2) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output convolution


def test_training_through_split_merge_and_jit_wires_the_timestep():
  model = unet.UNet(spatial_dims=2, in_channels=3, out_channels=1, **TINY, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  target = jax.random.normal(jax.random.key(2), (4, 16, 16, 1))
  t = jnp.array([0, 10, 500, 999])

  @jax.jit
  def apply(params, x, t):
    return nnx.merge(graphdef, params, rest)(x, t)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(jnp.square(apply(p, x, t) - target)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  before = apply(params, x, t)
  params, opt_state, _ = step(params, opt_state)
  after_one = apply(params, x, t)
  assert float(jnp.abs(after_one - before).max()) > 0  # the output layer learns at once
  # As in MONAI, each residual block's last convolution is zero-initialised too, and the
  # timestep enters before it: it gets a gradient once the output layer is non-zero, so the
  # output depends on t from the second step on.
  params, opt_state, _ = step(params, opt_state)
  x_same = jnp.broadcast_to(x[:1], x.shape)
  out = apply(params, x_same, t)
  # a forward pass: ~20 layers of fan-in <= 3*3*32 = 288 on GroupNorm'd O(1) activations
  tol = float32_tolerance(1.0, 20 * 288)   # 7e-4; t moves the output by ~1e-2 here
  assert float(jnp.abs(out[0] - out[3]).max()) > tol
  out_same_t = apply(params, x_same, jnp.full((4,), 10))
  np.testing.assert_allclose(out_same_t[0], out_same_t[3], atol=tol)


def test_dropout_stochastic_in_train_deterministic_in_eval():
  model = unet.UNet(spatial_dims=2, in_channels=3, out_channels=1, **TINY, dropout=0.5,
                    rngs=nnx.Rngs(params=0, dropout=1))
  # Make every layer non-zero so that dropout inside the blocks reaches the output.
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(3)  # numpy: a jax draw would compile once for every shape
  nnx.update(model, jax.tree.unflatten(
      treedef, [jnp.asarray(np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32))
                for p in leaves]))
  x = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
  t = jnp.array([1, 2])
  model.train()
  a, b = run(model, x, t), run(model, x, t)
  assert float(jnp.abs(a - b).max()) > 1e-4
  model.eval()
  np.testing.assert_array_equal(run(model, x, t), run(model, x, t))


def test_group_norm_and_attention_gradients_match_autodiff():
  k = jax.random.split(jax.random.key(5), 8)
  x = 2 * jax.random.normal(k[0], (2, 6, 6, 16)) + 1
  scale, bias = 1 + 0.3 * jax.random.normal(k[1], (16,)), jax.random.normal(k[2], (16,))
  w = jax.random.normal(k[3], x.shape)

  def reference_gn(x, scale, bias):
    xg = x.reshape(2, -1, 4, 4)
    xg = (xg - xg.mean((1, 3), keepdims=True)) / jnp.sqrt(xg.var((1, 3), keepdims=True) + 1e-6)
    return jax.nn.silu(xg.reshape(x.shape) * scale + bias)

  ours = jax.grad(lambda *a: jnp.sum(unet.group_norm(*a, 4, 1e-6, True) * w), (0, 1, 2))
  ref = jax.grad(lambda *a: jnp.sum(reference_gn(*a) * w), (0, 1, 2))
  # the largest term of any sum is dy * scale * xhat (|silu'| <= 1.1); a side sums groups of
  # n = 6 * 6 * 4 = 144 twice (the statistics, then the backward's means; d_scale's batch and
  # space sums are shorter), plus ~10 elementwise ops; two sides
  xg = np.asarray(x).reshape(2, -1, 4, 4)
  xhat = (xg - xg.mean((1, 3), keepdims=True)) / xg.std((1, 3), keepdims=True)
  tol = float32_tolerance(1.1 * max_abs(w) * max_abs(scale) * max_abs(xhat), 2 * (2 * 144 + 10))
  for a, b in zip(ours(x, scale, bias), ref(x, scale, bias)):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)

  q, kk, v, wo = (jax.random.normal(k[4 + i], (2, 3, 10, 8)) for i in range(4))
  ours = jax.grad(lambda *a: jnp.sum(unet.attention(*a) * wo), (0, 1, 2))
  # jax.nn.dot_product_attention takes (B, L, heads, D) and scales q by 1/sqrt(D) itself.
  bl = lambda y: y.transpose(0, 2, 1, 3)
  ref = jax.grad(lambda q, k, v: jnp.sum(bl(jax.nn.dot_product_attention(
      bl(q), bl(k), bl(v), scale=1.0)) * wo), (0, 1, 2))
  # the logits (fan-in D=8) are off by eps*D|q||k|: a relative error of the softmax weights;
  # normalising and weighting add 2L eps; backward: 4 more reductions over <= L terms; two sides
  L, D = 10, 8
  fwd_ops = D * max_abs(q) * max_abs(kk) + 2 * L
  for a, b in zip(ours(q, kk, v), ref(q, kk, v)):
    np.testing.assert_allclose(a, b, atol=float32_tolerance(max_abs(b), 2 * (fwd_ops + 4 * L)))


def test_blocked_attention_equals_batched_attention_with_gradients():
  # 3 slices, 2 heads, 48 tokens in query blocks of at most 20 (3 blocks of 16).
  q, kk, v, wo = (jax.random.normal(jax.random.key(20 + i), (3, 2, 48, 8)) for i in range(4))
  blocked = lambda *a: unet.blocked_attention(*a, query_block=20)
  # as in test_group_norm_and_attention_gradients_match_autodiff, with L=48 tokens
  L, D = 48, 8
  fwd_ops = D * max_abs(q) * max_abs(kk) + 2 * L
  np.testing.assert_allclose(blocked(q, kk, v), unet.batched_attention(q, kk, v),
                             atol=float32_tolerance(max_abs(v), 2 * fwd_ops))
  grads = [jax.grad(lambda *a: jnp.sum(f(*a) * wo), (0, 1, 2))(q, kk, v)
           for f in (blocked, unet.batched_attention)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, atol=float32_tolerance(max_abs(b), 2 * (fwd_ops + 4 * L)))


def test_long_attention_on_cpu_takes_the_blocked_path():
  q = jax.random.normal(jax.random.key(0), (1, 1, unet.CPU_BLOCKED_MIN_LENGTH, 4))
  text = jax.jit(unet.attention).lower(q, q, q).as_text()
  short = jax.jit(unet.attention).lower(q[:, :, :16], q[:, :, :16], q[:, :, :16]).as_text()
  assert "while" in text and "while" not in short  # lax.map lowers to a loop


def test_remat_gives_the_plain_networks_output_and_gradients():
  """`remat=True` recomputes each block in the backward pass (a `checkpoint` in the program)
  and computes the same function: output and parameter gradients equal the plain network's."""
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  t = jnp.array([3, 700])
  nets = {r: unet.UNet(spatial_dims=2, in_channels=3, out_channels=1, remat=r,
                       rngs=nnx.Rngs(0), **TINY) for r in (False, True)}
  for net in nets.values():  # move off the zero-initialised output, so gradients reach in
    net.conv_out.kernel[...] = jax.random.normal(jax.random.key(4), net.conv_out.kernel.shape)

  def loss(params, graphdef):
    return jnp.mean(jnp.square(nnx.merge(graphdef, params)(x, t)))

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  grads, outputs = {}, {}
  for r, net in nets.items():
    graphdef, params = nnx.split(net)
    outputs[r], grads[r] = value_and_grad(params, graphdef)
    text = str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, graphdef))
    assert (("checkpoint" in text) or ("remat" in text)) == r
  # both sides are the same float32 operations (XLA may order the recomputation's sums
  # otherwise): per layer a fan-in of at most 9 x 32 terms, about 12 layers, forward and
  # backward, on each side
  ops = 2 * 2 * 12 * 9 * 32
  np.testing.assert_allclose(outputs[True], outputs[False],
                             atol=float32_tolerance(max_abs(outputs[False]), ops))
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    np.testing.assert_allclose(a, b, atol=float32_tolerance(max_abs(b), ops))
