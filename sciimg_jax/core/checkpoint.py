"""Orbax checkpoints: train state, EMA parameters, data-iterator state and the config.

One `CheckpointManager` per workdir with four items per step:
  state   step, parameters and optimiser state (restored into an explicitly sharded
          abstract state),
  ema     the EMA parameters: all that inference needs, restored on their own
          (`restore_ema`), without the optimiser state,
  data    the grain iterator state (so a resumed run sees exactly the batches it would
          have seen),
  config  the run's config as JSON (inference rebuilds the network from it).
"""

import os

import grain
import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "ema", "data", "config")


class Checkpointer:
  """Saves and restores (state, EMA, data iterator, config) under `directory`."""

  def __init__(self, directory, max_to_keep=3, save_interval_steps=1):
    directory = os.path.abspath(os.fspath(directory))  # orbax's OCDBT store wants absolute paths
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True)
    self.directory = directory
    self.manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, ema, data_iterator, config, force=False):
    args = dict(state=ocp.args.StandardSave(state), ema=ocp.args.StandardSave(ema),
                config=ocp.args.JsonSave(config.to_dict()))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_state, abstract_ema, data_iterator, step=None):
    """(state, ema) of the latest (or `step`) checkpoint; `data_iterator` is updated in place.

    The abstract pytrees hold `jax.ShapeDtypeStruct`s carrying the target shardings,
    so arrays land directly on the right devices.
    """
    step = self.manager.latest_step() if step is None else step
    args = dict(state=ocp.args.StandardRestore(abstract_state),
                ema=ocp.args.StandardRestore(abstract_ema))
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored["ema"]

  def restore_ema(self, abstract_ema, step=None):
    """Only the EMA parameters of the latest (or `step`) checkpoint."""
    step = self.manager.latest_step() if step is None else step
    return self.manager.restore(
        step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(abstract_ema)))["ema"]

  def restore_config(self, step=None):
    step = self.manager.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait_until_finished(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree`, every leaf with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
