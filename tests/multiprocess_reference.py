"""The computation `test_multiprocess.py` runs in one process and in several: three steps of
the trainer's step (SGD, so that an update is the gradient itself, unnormalised) of the
classifier task of `test_trainer.py` on a fixed global batch of 8."""

import jax
import numpy as np
import optax

from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from test_trainer import ClassifierTask, classifier_config

LR = 0.1


def run_steps(devices, process_id=0, num_processes=1, steps=3):
  """(parameter leaves, {metric: per-step values}) after `steps` steps on `devices`."""
  task, config = ClassifierTask(), classifier_config()
  mesh = sharding.make_mesh(devices)
  net, state, _, _ = trainer.create_train_state(task, config, mesh)
  tx = optax.sgd(LR)
  state = state.replace(opt_state=jax.device_put(tx.init(state.params),
                                                 sharding.replicated(mesh)))
  frozen = jax.device_put(task.frozen_params(mesh), sharding.replicated(mesh))
  share = 8 // num_processes  # this process's contiguous rows of the global batch
  rows = slice(process_id * share, (process_id + 1) * share)
  batch = {"x": task.train_source.x[:8][rows], "label": task.train_source.y[:8][rows]}
  step = trainer.make_train_step(task, net, tx, lambda s: LR, config.optim.ema_decay, mesh)
  metrics = {"loss": [], "grad_norm": []}
  for _ in range(steps):
    state, m = step(state, sharding.shard_batch(batch, mesh), jax.random.key(0), frozen)
    for k in metrics:
      metrics[k].append(float(np.asarray(m[k].addressable_data(0))))
  return jax.tree.leaves(state.params), {k: np.asarray(v) for k, v in metrics.items()}
