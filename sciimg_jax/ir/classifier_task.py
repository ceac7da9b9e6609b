"""Training of the IR and RGB patch classifiers: a task of the shared trainer.

`ClassifierTask` trains and evaluates a classifier on given sources of patches (`spectra_job`
gives it spectra as 1x1 patches); `PatchClassifierTask` builds its sources as below.

Data: the embedded paired IR/RGB regions (`data_pipelines.synthetic_ir`, written once under
the cache folder) or a user's folders of regions (`data.train_dir`, `data.test_dir`; with no
`test_dir`, the blocks of a spatial split of `train_dir`). Patches come from the TFDS builder
`data_pipelines.ir_tfds`; `data.modality` picks the IR cube or the RGB image of the same
patch. Inputs are standardised per channel (IR band or RGB colour) with the training
patches' statistics, after the IR spectral transform (`data.spectral_transform`).

Loss: cross-entropy, with `train.label_smoothing`. Evaluation (every `train.eval_every`
steps and at the end) on the held-out patches, with the EMA parameters: accuracy, balanced
accuracy, macro F1, and the collapse diagnostics (`diagnostics`): effective rank (Roy &
Vetterli) and PC1 share of the penultimate features and of the class-centred logits, the
logits' collapse index against the held-out labels; the effective rank of the input gradient
over bands; a linear probe's accuracy on the features.

  python main.py --config=configs/ir/classifier.py:ir --workdir=runs/ir
  python main.py --config=configs/ir/classifier.py:rgb --workdir=runs/rgb
"""

import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines import global_batches
from data_pipelines import ir_tfds
from data_pipelines import sources as data_sources
from data_pipelines import synthetic_ir
from sciimg_jax.core import atomic_files
from sciimg_jax.core import models
from sciimg_jax.core import precision
from sciimg_jax.core import trainer
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import classifiers  # noqa: F401  (registers the classifiers)
from sciimg_jax.ir import diagnostics
from sciimg_jax.ir import robustness

MODALITIES = ("ir", "rgb")


def source_splits(data, workdir):
  """{'train': (folder, side), 'test': (folder, side)} for `ir_tfds.build`."""
  if not data.train_dir:
    s = data.synthetic
    dirs = synthetic_ir.generate(data_sources.cache_dir(data, workdir),
                                 num_train=s.num_train, num_test=s.num_test, size=s.size,
                                 seed=s.seed, prior=s.get("prior"))
    return {"train": (dirs["train"], "all"), "test": (dirs["test"], "all")}
  if data.test_dir:
    return {"train": (data.train_dir, "all"), "test": (data.test_dir, "all")}
  return {"train": (data.train_dir, "train"), "test": (data.train_dir, "test")}


class Standardize(grain.transforms.Map):
  """Example -> {'x': float32 (p, p, C), 'label'}: the modality, transformed, standardised."""

  def __init__(self, modality, transform, mean, std):
    self.modality, self.transform, self.mean, self.std = modality, transform, mean, std

  def map(self, element):
    x = self.transform(np.asarray(element[self.modality], np.float32))
    return {"x": ((x - self.mean) / self.std).astype(np.float32),
            "label": np.int32(element["label"])}


def training_pixels(source, modality, max_examples=2048):
  """(N, channels) pixels of every `len/max`-th training patch, of one modality."""
  step = max(1, len(source) // max_examples)
  x = np.stack([np.asarray(source[i][modality], np.float32)
                for i in range(0, len(source), step)])
  return x.reshape(-1, x.shape[-1])


def spectral_transform(data, pixels, modality="ir"):
  """The `data.spectral_transform` of IR spectra, fitted on training pixels if it needs to be."""
  name = data.spectral_transform
  if name not in robustness.SPECTRAL_TRANSFORMS:
    raise InputError("data.spectral_transform", f"unknown transform {name!r}; known: "
                     f"{', '.join(robustness.SPECTRAL_TRANSFORMS)}")
  if name != "none" and modality != "ir":
    raise InputError("data.spectral_transform", f"{name!r} transforms IR spectra; "
                     f"data.modality is {modality!r}")
  if name == "pca_whiten":
    return robustness.PcaWhitener(pixels, data.pca_components)
  return {"none": lambda x: x, "snv": robustness.snv, "derivative": robustness.derivative}[name]


class ClassifierTask:
  """`trainer.Task`: a classifier of the patches (p, p, C) of `sources` {'train', 'test'}.

  A source's examples are dicts with the patch under the modality's key and `label`; the
  spectra-table job gives spectra as 1x1 patches of modality 'ir'.
  """

  def __init__(self, config, workdir, sources, *, num_classes, patch_size, modality="ir"):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.sources = sources
    self.num_classes, self.patch_size, self.modality = num_classes, patch_size, modality
    pixels = training_pixels(self.sources["train"], modality)
    transform = spectral_transform(config.data, pixels, modality)
    pixels = transform(pixels)
    mean, std = pixels.mean(0), np.maximum(pixels.std(0), 1e-6)
    self.transform = Standardize(modality, transform, mean, std)
    self.in_channels = int(np.size(mean))
    self._test = self._embed = None

  def create_model(self, rngs, dtype):
    return models.create_model(self.config.model, rngs=rngs, dtype=dtype,
                               in_channels=self.in_channels, num_classes=self.num_classes,
                               patch_size=self.patch_size)

  def frozen_params(self, mesh):
    return None

  def train_iterator(self, batch_size_per_process):
    return global_batches.train_loader(
        self.sources["train"], seed=self.config.seed,
        batch_size_per_process=batch_size_per_process, operations=[self.transform])

  def loss(self, model, batch, key, frozen):
    """Cross-entropy with the `train.robust` strategies (see `robustness`) switched on."""
    del frozen
    r = self.config.train.robust
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes),
                                  self.config.train.label_smoothing)
    x, targets = robustness.augment_inputs(jax.random.fold_in(key, 1), batch["x"], targets, r)

    def objective(module, x):
      features = module.embed(x)
      logits = module.head(features).astype(jnp.float32)
      value = optax.softmax_cross_entropy(logits, targets).mean()
      if r.rank_weight > 0:
        value += r.rank_weight * robustness.off_diagonal_correlation(features.astype(jnp.float32))
      return value, logits

    if r.adversarial_eps > 0:  # FGSM examples for the last (1 - adversarial_mix) of the batch
      grad_x = jax.grad(lambda x: objective(model, x)[0])(x)
      x_adv = x + r.adversarial_eps * jnp.sign(jax.lax.stop_gradient(grad_x))
      clean = int(round(r.adversarial_mix * x.shape[0]))
      x = jnp.concatenate([x[:clean], x_adv[clean:]])
    if r.sam_rho > 0:  # the loss at w + rho g/|g|: its gradient is SAM's update
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)
      grads = jax.grad(lambda p: objective(nnx.merge(graphdef, p, rest), x)[0])(params)
      scale = r.sam_rho / (optax.tree.norm(grads) + 1e-12)
      params = jax.tree.map(lambda p, g: p + jax.lax.stop_gradient(scale * g), params, grads)
      model = nnx.merge(graphdef, params, rest)
    value, logits = objective(model, x)
    return value, {"train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def arrays(self, split, limit=None, raw=False):
    """(x, labels) of a split in stored order: standardised, or as stored with `raw`."""
    source = self.sources[split]
    idx = range(len(source)) if limit is None else np.linspace(
        0, len(source) - 1, min(limit, len(source))).round().astype(int)
    modality = self.modality
    prepare = ((lambda e: {"x": np.asarray(e[modality], np.float32), "label": e["label"]})
               if raw else self.transform.map)
    examples = [prepare(source[int(i)]) for i in idx]
    return (np.stack([e["x"] for e in examples]),
            np.array([e["label"] for e in examples], np.int32))

  def held_out(self):
    """(test (x, y), probe-training (x, y)): all test patches and as many training ones."""
    if self._test is None:
      test = self.arrays("test")
      self._test = (test, self.arrays("train", limit=len(test[1])))
    return self._test

  def evaluate(self, net, params, frozen, step, key, workdir):
    if self._embed is None:
      self._embed = jax.jit(lambda p, x: logits_and_features(net, p, x))
    return evaluate_classifier(self, net, params, self._embed)


class PatchClassifierTask(ClassifierTask):
  """`trainer.Task`: a patch classifier on one modality, on the patches of `ir_tfds`."""

  def __init__(self, config, workdir):
    d = config.data
    if d.modality not in MODALITIES:
      raise InputError("data.modality", f"unknown modality {d.modality!r}; known: "
                       f"{', '.join(MODALITIES)}")
    self.options = ir_tfds.PatchOptions(
        classes=tuple(d.classes), patch_size=d.patch_size, per_class=d.per_class,
        block=d.block, test_fraction=d.test_fraction, seed=d.patch_seed)
    builder = ir_tfds.build(source_splits(d, workdir), self.options,
                            data_sources.cache_dir(d, workdir))
    self.wavenumbers = np.asarray(builder.info.metadata["wavenumbers"], np.float32)
    super().__init__(config, workdir, {s: builder.as_data_source(s) for s in ("train", "test")},
                     num_classes=len(d.classes), patch_size=d.patch_size, modality=d.modality)


def logits_and_features(net, params, x):
  module = net.module(params)
  features = module.embed(x)
  return module.head(features), features


def batched(fn, params, x, batch=256):
  outs = [fn(params, x[i:i + batch]) for i in range(0, len(x), batch)]
  return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(len(outs[0])))


def evaluate_classifier(task, net, params, embed, gradient_examples=256, gradients=None):
  """The metrics and diagnostics of the module docstring on the held-out patches.

  `embed(params, x)` gives (logits, features) of a batch of at most 256 patches;
  `gradients(params, x)` the input gradients (default: `diagnostics.gradient_matrix`).
  """
  (x, y), (px, py) = task.held_out()
  logits, features = batched(embed, params, x)
  out = diagnostics.classification_scores(y, logits.argmax(-1))
  out.update(diagnostics.summary(features, "features"))
  out.update(diagnostics.logit_summary(logits, y))
  pick = np.linspace(0, len(x) - 1, min(gradient_examples, len(x))).round().astype(int)
  if gradients is None:
    grads = diagnostics.gradient_matrix(lambda b: net(params, b).astype(jnp.float32), x[pick])
  else:
    grads = gradients(params, x[pick])
  out["gradient_effective_rank"] = diagnostics.effective_rank(grads)
  _, probe_features = batched(embed, params, px)
  out["probe_accuracy"] = diagnostics.linear_probe_accuracy(probe_features, py, features, y)
  return out


def train_classifier(config, workdir, *, stop_at_step=None):
  """The `ir_train` job: trains a patch classifier in `workdir`.

  At the end it evaluates the EMA parameters once more and writes `final_metrics.json`.
  Returns those metrics.
  """
  return train_task(PatchClassifierTask(config, workdir), config, workdir,
                    stop_at_step=stop_at_step, modality=config.data.modality)


def train_task(task, config, workdir, *, stop_at_step=None, **extra):
  """Trains `task` with the shared trainer, evaluates the EMA parameters once more and writes
  `final_metrics.json` (with the `extra` entries). Returns those metrics."""
  state = trainer.train(task, config, workdir, stop_at_step=stop_at_step)
  net, _ = models.Network.split(task.create_model(nnx.Rngs(0), precision.compute_dtype(config)))
  result = dict(step=int(state.step), **extra, model=config.model.name,
                **task.evaluate(net, state.ema_params, None, int(state.step), None, workdir))
  atomic_files.write_json(pathlib.Path(workdir) / "final_metrics.json", result)
  return result
