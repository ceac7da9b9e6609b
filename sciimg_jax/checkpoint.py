"""Orbax checkpoints: model, optimiser, EMA and step; data-iterator state; the config.

One `CheckpointManager` per workdir with three items:
  state   the train state pytree (restored into an explicitly sharded abstract state),
  data    the grain iterator state (so a resumed run sees exactly the batches it would have seen),
  config  the run's config as JSON.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores (state, data iterator, config) under `directory`."""

  def __init__(self, directory, max_to_keep=3, save_interval_steps=1):
    directory = os.path.abspath(os.fspath(directory))  # orbax's OCDBT store wants absolute paths
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True)
    self.manager = ocp.CheckpointManager(
        directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_iterator, config, force=False):
    args = dict(state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config.to_dict()))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_state, data_iterator, step=None):
    """Restores the latest (or `step`) checkpoint; `data_iterator` is updated in place.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` carrying the target
    shardings, so arrays land directly on the right devices.
    """
    step = self.manager.latest_step() if step is None else step
    args = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def restore_config(self, step=None):
    step = self.manager.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait_until_finished(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(state, shardings):
  """ShapeDtypeStructs of `state` with the given shardings (a pytree or one sharding)."""
  if not isinstance(shardings, (dict, list, tuple)) and not hasattr(shardings, "params"):
    shardings = jax.tree.map(lambda _: shardings, state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
