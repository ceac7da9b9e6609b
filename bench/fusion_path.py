"""Diff-Ensembler's error along the sampler's path: where the fused model's advantage goes.

  python bench/fusion_path.py --workdir=runs/ens_sr [--cases=2] [--steps=25 --stepper=ddim --eta=0]

For every held-out subject of the study `--workdir` (its 2D members and `fusion/`, found by
`study.run_dir`, `study.reuse_from` included) the 'average' and the 'fused'
walks run as the evaluation job runs them: the same respaced chain, stepper, eta, clipping,
data consistency and keys (sample 0 of `fold_in(key(seed), crc32(case))`), here as a Python
loop of one jitted step. At every visited index i both denoisers give their x0 (clipped as
the sampler clips it) on (a) the walk's own x_i and (b) a fresh sample of q(x_i | x0) (noise
keyed by the case and i), scored by the MSE against the true x0 in the chain's space (the
residual (target - condition) / 2 with `data.residual`), over the whole grid or the brain
(`--region`). One table per walk, means over the subjects; the last row is the PSNR of the
walk's final sample (the evaluation's `psnr`). A check compares the average walk of the
first subject with the translator's own `average` output.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import volume_cases
from sciimg_jax.core import image_metrics
from sciimg_jax.core import reports
from sciimg_jax.core import sharding
from sciimg_jax.core import volumes
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import steppers
from sciimg_jax.core.diffusion import volume_sampler
from sciimg_jax.ensembler import consistency
from sciimg_jax.ensembler import evaluate_job
from sciimg_jax.ensembler import fusion as fusion_lib
from sciimg_jax.ensembler import members as members_lib
from sciimg_jax.ensembler import study
from sciimg_jax.ensembler import translator as translator_lib

METHODS = ("average", "fused")
Q_STREAM = 104729  # fold_in salt of the q(x_t | x0) noise (off the walk's keys)


def load(workdir, args):
  """(config, translator) of the study in `workdir`, with the sampling overrides of `args`."""
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  for key in ("steps", "stepper", "eta"):
    if getattr(args, key) is not None:
      config.sampling[key] = getattr(args, key)
  place = lambda name: str(study.run_dir(config, workdir, name))
  mesh = sharding.local_mesh()
  members = members_lib.load_members([place(a) for a in config.study.directions], config.data,
                                     config.diffusion, mesh)
  fusion = fusion_lib.load_fusion(place("fusion"), members, config.data, mesh)
  return config, translator_lib.VolumeTranslator(config, members, fusion, mesh)


def make_step(tr, method):
  """jitted (params, cond, x0, weight, x, prev_x0, n, i, key, q_key) -> (x_{i-1}, the walk's
  x0, {name: x0 on x_i}, {(where, name): x0 MSE}): one step of `method`'s walk."""
  chain, walk, clip = tr.chain, tr.walk, tr.walk.clip
  step_fn = steppers.STEPPERS[walk.stepper]

  def x0_of(denoise, x, i):
    eps = denoise(x, jnp.full((x.shape[0],), chain.timesteps[i], jnp.int32))
    x0 = schedules.predict_x0_eps(chain, "eps", x, i, eps)[0]
    return eps, (x0 if clip is None else jnp.clip(x0, -clip, clip))

  def step(params, cond, x0, weight, x, prev_x0, n, i, key, q_key):
    denoisers = {name: tr.denoiser(name, params, cond) for name in METHODS}
    x_q = schedules.q_sample(chain, x0, i, jax.random.normal(q_key, x0.shape))
    mse = lambda a: jnp.sum(weight * jnp.square(a - x0)) / jnp.sum(weight)
    own = {name: x0_of(d, x, i) for name, d in denoisers.items()}
    errors = {("own", name): mse(own[name][1]) for name in METHODS}
    errors.update({("q", name): mse(x0_of(d, x_q, i)[1]) for name, d in denoisers.items()})
    key_i = jax.random.fold_in(key, i)
    if walk.stepper in steppers.MULTISTEP:
      x_prev, walk_x0 = step_fn(chain, "eps", x, i, own[method][0], key_i, clip_x0=clip,
                                prev_x0=prev_x0, has_prev=n > 0)
    else:
      x_prev = step_fn(chain, "eps", x, i, own[method][0], key_i, clip_x0=clip,
                       eta=sampler.band_eta(chain, i, walk.eta, walk.eta_band))
      walk_x0 = own[method][1]
    if tr.pool is not None:  # the evaluation's data consistency
      post = consistency.low_pass_replacement(chain, tr.low_resolution(cond), tr.pool[1])
      x_prev = post(x_prev, i, jax.random.fold_in(key_i, sampler.POST_STEP_STREAM))
    return x_prev, walk_x0, {name: o[1] for name, o in own.items()}, errors

  return jax.jit(step)


def run_walk(tr, step, params, cond, x0, weight, case_key):
  """The walk of sample 0 as the evaluation draws it: (rows of errors per index, final x,
  x0 of every denoiser at the last index)."""
  key = tr.sampler.keys(case_key)[0]
  x = volume_sampler.initial_noise(key, cond.shape[:3])
  prev_x0, rows, last = jnp.zeros_like(x), [], None
  top = tr.chain.betas.shape[0] - 1
  for n, i in enumerate(range(top, -1, -1)):
    q_key = jax.random.fold_in(jax.random.fold_in(case_key, Q_STREAM), i)
    x, prev_x0, last, errors = step(params, cond, x0, weight, x, prev_x0, n, i, key, q_key)
    rows.append({k: float(v) for k, v in errors.items()})
  return rows, x, last


def psnr(data, x, cond, truth):
  p, g = image_metrics.minmax_by_reference(np.asarray(translator_lib.to_image(data, x, cond)),
                                           truth)
  return image_metrics.psnr(p, g)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a Diff-Ensembler study workdir")
  parser.add_argument("--cases", type=int, default=0, help="first K held-out subjects (0 = all)")
  parser.add_argument("--steps", type=int, default=None, help="override sampling.steps")
  parser.add_argument("--stepper", default=None, help="override sampling.stepper")
  parser.add_argument("--eta", type=float, default=None, help="override sampling.eta")
  parser.add_argument("--region", choices=("grid", "brain"), default="grid",
                      help="where the x0 MSE is taken: the whole grid or the brain mask")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  config, tr = load(workdir, args)
  data, params = config.data, tr.params()
  config.evaluate.input_root, config.evaluate.num_cases = "", args.cases
  cases = evaluate_job.input_cases(config, workdir / "evaluation")
  position = volumes.position_embedding(tuple(data.volume_shape))
  chain = tr.chain
  abar = np.asarray(chain.alphas_cumprod, np.float64)
  sigma = np.sqrt((1.0 - abar) / abar)
  w = tr.walk
  print(f"study {workdir}: {len(cases)} held-out subjects, {w.steps} steps ({w.spacing}), "
        f"stepper {w.stepper}, eta {w.eta}, clip_x0 {w.clip_x0}, data consistency "
        f"{tr.pool is not None}; x0 MSE over the {args.region}, chain space")
  for method in METHODS:
    step = make_step(tr, method)
    table, psnrs = [], []
    for case, case_key in reports.each_case(cases, progress=False,
                                            base_key=jax.random.key(config.seed)):
      array = np.asarray(case.array)
      ex = volume_cases.example(data, array, position)
      cond, x0 = jnp.asarray(ex["cond"]), jnp.asarray(ex["target"][..., 0])
      weight = jnp.asarray(array[..., -1] if args.region == "brain" else np.ones(x0.shape),
                           jnp.float32)
      rows, x, last = run_walk(tr, step, params, cond, x0, weight, case_key)
      table.append(rows)
      psnrs.append(psnr(data, x, cond, array[..., 0]))
      if method == "average" and case is cases[0]:
        check(tr, params, cond, case_key, x, last["average"])
    print(f"\n### {method} walk\n")
    print("| step | t | sigma | x0 MSE avg (own x_t) | fused (own x_t) | fused - avg (own) "
          "| x0 MSE avg (q) | fused (q) | fused - avg (q) |")
    print("| --- " * 9 + "|")
    top = chain.betas.shape[0] - 1
    for n in range(top + 1):
      i = top - n
      m = {k: np.mean([rows[n][k] for rows in table]) for k in table[0][n]}
      cells = [f"{m[(where, 'average')]:.4g} | {m[(where, 'fused')]:.4g} | "
               f"{100 * (m[(where, 'fused')] / m[(where, 'average')] - 1):+.2f}%"
               for where in ("own", "q")]
      print(f"| {n} | {int(chain.timesteps[i])} | {sigma[i]:.3g} | {cells[0]} | {cells[1]} |")
    print(f"| final | | | PSNR {np.mean(psnrs):.2f} dB | | | | | |")


def check(tr, params, cond, case_key, x_final, x0_last):
  """The average walk's end against its own last x0 and against the translator's output."""
  projected = x0_last
  if tr.pool is not None:
    projected = consistency.project(x0_last, tr.low_resolution(cond), tr.pool[1])
  reference = tr("average", cond, case_key)[0]
  image = np.asarray(translator_lib.to_image(tr.data, x_final, cond))
  print(f"check (first subject, average walk): max |last x0 (avg) - final x| = "
        f"{float(jnp.abs(x0_last - x_final).max()):.3g} before the data consistency, "
        f"{float(jnp.abs(projected - x_final).max()):.3g} after it; max |this walk - "
        f"translator's 'average'| = {np.abs(image - reference).max():.3g} (image space)")


if __name__ == "__main__":
  main()
