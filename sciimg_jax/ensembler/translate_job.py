"""The translation job: super-resolve or translate a folder of volumes with every method.

  python main.py --config=configs/ensembler/translate.py --workdir=runs/sr-eval \
      --config.translate.members='("runs/sr/axial","runs/sr/coronal","runs/sr/sagittal")' \
      --config.translate.fusion=runs/sr/fusion

For each case of `translate.input_root` (a BraTS-layout folder; '' = the held-out split
of `data`), prepared on the `data.volume_shape` grid (`volume_cases`), and each method of
`translate.methods` (a member's axis, 'average', 'tpdm', 'fused' from
`translator.METHODS`, or a baseline: 'cubic', 'regressor'):

  1. sample with key `fold_in(key(seed), crc32(case name))` (the same in any folder,
     order or subset), `sampling.num_samples` samples whose mean is the result;
  2. write `outputs/<method>/<case>/<case>-<target>.nii.gz`: the input's shape, affine and
     header, in the target's intensity units when the case has the target (else on
     [0, 1]);
  3. score it against the case's target, when it has one (`evaluation.scores`): PSNR and
     3D SSIM after min-max normalisation by the ground truth, the texture ratio in the
     brain, and with `translate.segmenter` the Dice of the downstream tumour segmenter
     on the result against `mask-unhealthy`;
  4. draw `figures/<case>.png`: the three planes of the condition, every method and
     the ground truth.

After every case the job rewrites `cases.csv` (one row per case and method) and
`summary.json` (per method: mean and std of each score, seconds per volume, and the
set-level MMD against the ground truths), all atomically; at the end it prints the table.
"""

import csv
import io
import pathlib
import time
import zlib

import jax
import numpy as np
import tqdm

from data_pipelines import brats_layout
from data_pipelines import sources as data_sources
from data_pipelines import volume_cases
from sciimg_jax.core import atomic_files
from sciimg_jax.core import figures
from sciimg_jax.core import intensity
from sciimg_jax.core import interrupts
from sciimg_jax.core import nifti
from sciimg_jax.core import sharding
from sciimg_jax.core import trained_models
from sciimg_jax.core import volumes
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluation
from sciimg_jax.ensembler import fusion_task
from sciimg_jax.ensembler import members as members_lib
from sciimg_jax.ensembler import translator as translator_lib

SCORES = ("psnr", "ssim", "texture", "dice")


def case_key(base_key, name):
  """A case's key from its name, never its position in a listing."""
  return jax.random.fold_in(base_key, zlib.crc32(name.encode()))


def input_cases(config, workdir):
  """The prepared cases to translate: `translate.input_root`, or the held-out split."""
  t = config.translate
  cache = pathlib.Path(config.data.cache_dir or pathlib.Path(workdir) / "data")
  root = t.input_root or data_sources.source_dirs(config.data, workdir)["eval"]
  has_target = all(brats_layout.case_file(d, config.data.target).is_file()
                   for d in brats_layout.find_cases(root, volume_cases.required_keys(
                       config.data, with_target=False)))
  cases = volume_cases.prepare(root, config.data, cache, with_target=has_target,
                               split="translate")
  return cases[:t.num_cases] if t.num_cases else cases


def load_models(config, mesh):
  """(members, fusion, regressor, segmenter) named by `translate.*` ('' = none)."""
  t = config.translate
  members = members_lib.load_members(t.members, config.data, config.diffusion, mesh)
  fusion = (fusion_task.load_fusion(t.fusion, members, config.data, mesh)
            if t.fusion else None)

  def deterministic(workdir, objective):
    def check(c):
      if c.train.get("objective") != objective:
        raise InputError(workdir, f"holds a {c.train.get('objective')} model, expected "
                         f"{objective}")
    return trained_models.load(workdir, mesh, check=check) if workdir else None

  return (members, fusion, deterministic(t.regressor, "regression"),
          deterministic(t.segmenter, "segmentation"))


def check_methods(config, translator, regressor):
  for m in config.translate.methods:
    translator.check_method(m)
  if "regressor" in config.translate.methods and regressor is None:
    raise InputError("translate.regressor", "method 'regressor' needs a trained regressor workdir")
  if "fused" in config.translate.methods and translator.fusion is None:
    raise InputError("translate.fusion", "method 'fused' needs a trained fusion workdir")
  if "cubic" in config.translate.methods and translator_lib.pooled_condition(config.data) is None:
    raise InputError("translate.methods", "'cubic' needs a pooled condition of the target "
                     f"(e.g. '{config.data.target}:pool4')")


def write_output(path, image, case, data):
  """The result on the case's own grid, in the target's units, with the input's header."""
  restored = volumes.center_pad_crop(image, tuple(case.meta["shape"]), -1.0)
  if case.meta["has_target"]:
    lo, hi = case.meta["ranges"][data.target]
    restored = intensity.denormalize(restored, lo, hi)
  else:
    restored = (restored + 1.0) / 2.0
  key = volume_cases.parse_condition(data.conditions[0])[0]
  header = nifti.load_image(brats_layout.case_file(case.directory, key)).header
  nifti.save_volume(path, restored, np.asarray(case.meta["affine"]), header, dtype=np.float32)


def summarise(rows, results, truths):
  """{method: {score: [mean, std], seconds, mmd}} over the cases scored so far."""
  summary = {}
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = [r for r in rows if r["method"] == method]
    entry = {"cases": len(mine)}
    for key in SCORES + ("seconds",):
      values = [r[key] for r in mine if r.get(key) is not None and np.isfinite(r[key])]
      if values:
        entry[key] = [float(np.mean(values)), float(np.std(values))]
    if truths and method in results:
      entry["mmd"] = evaluation.set_mmd(results[method], truths)
    summary[method] = entry
  return summary


def write_tables(workdir, rows, summary):
  buf = io.StringIO()
  fields = ["case", "method"] + list(SCORES) + ["seconds"]
  writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
  atomic_files.write_text(pathlib.Path(workdir) / "cases.csv", buf.getvalue())
  atomic_files.write_json(pathlib.Path(workdir) / "summary.json", summary)


def format_table(summary):
  """The summary as a Markdown table (mean ± std)."""
  head = "| method | PSNR (dB) | SSIM | MMD | texture | Dice | s / volume |"
  lines = [head, "|" + " --- |" * 7]
  fmt = lambda e, k, p: (f"{e[k][0]:.{p}f} ± {e[k][1]:.{p}f}" if k in e else "")
  for method, e in summary.items():
    mmd = f"{e['mmd']:.2e}" if "mmd" in e else ""
    lines.append(f"| {method} | {fmt(e, 'psnr', 2)} | {fmt(e, 'ssim', 3)} | {mmd} | "
                 f"{fmt(e, 'texture', 2)} | {fmt(e, 'dice', 3)} | {fmt(e, 'seconds', 1)} |")
  return "\n".join(lines)


def translate_cases(config, workdir, translator, regressor=None, segmenter=None):
  """Runs every method on every case; returns the summary dict."""
  workdir = pathlib.Path(workdir)
  check_methods(config, translator, regressor)
  data, methods = config.data, tuple(config.translate.methods)
  cases = input_cases(config, workdir)
  position = volumes.position_embedding(tuple(data.volume_shape))
  base_key = jax.random.key(config.seed)
  rows, results, truths = [], {m: [] for m in methods}, []
  chunk = config.sampling.chunk_size
  summary = {}
  for case in tqdm.tqdm(cases, desc="cases", disable=not config.translate.progress_bar):
    interrupts.check()
    array = np.asarray(case.array)
    cond = volume_cases.example(data, array, position)["cond"]
    truth = array[..., 0] if case.meta["has_target"] else None
    brain = array[..., -1]
    labels = load_labels(case, data) if segmenter is not None else None
    outputs = {}
    for method in methods:
      if method in translator.names:
        translator.compile(method, cond)  # compiled once, outside the timing
      start = time.perf_counter()
      if method == "cubic":
        image = translator_lib.cubic_upsampling(data, cond)
      elif method == "regressor":
        image = translator_lib.slicewise_network(regressor, data, cond, chunk, translator.mesh)
      else:
        image = translator(method, cond, case_key(base_key, case.name)).mean(axis=0)
      seconds = time.perf_counter() - start
      outputs[method] = image
      write_output(workdir / "outputs" / method / case.name / f"{case.name}-{data.target}.nii.gz",
                   image, case, data)
      row = {"case": case.name, "method": method, "seconds": round(seconds, 3)}
      if truth is not None:
        row.update(evaluation.scores(image, truth, brain))
        results[method].append(evaluation.normalised(image, truth))
      if segmenter is not None and labels is not None:
        seg_cond = segmenter_input(segmenter, data, image, cond)
        probability = translator_lib.slicewise_network(segmenter, segmenter.config.data, seg_cond,
                                                       chunk, translator.mesh)
        row["dice"] = evaluation.dice(probability, labels)
      rows.append(row)
    if truth is not None:
      truths.append(evaluation.normalised(truth, truth))
    columns = {"condition": cond[..., 0], **outputs}
    if truth is not None:
      columns["ground truth"] = truth
    figures.save_triplanar(workdir / "figures" / f"{case.name}.png", columns,
                           [s // 2 for s in truth.shape] if truth is not None
                           else [s // 2 for s in cond.shape[:3]],
                           {k: (-1.0, 1.0) for k in columns})
    summary = summarise(rows, results, truths)
    write_tables(workdir, rows, summary)
  return summary


def load_labels(case, data):
  """The case's `mask-unhealthy` on the grid, or None if the folder has none."""
  path = brats_layout.case_file(case.directory, "mask-unhealthy")
  if not path.is_file():
    return None
  labels, _ = nifti.load_volume(path, allow_all_zero=True)
  return volumes.center_pad_crop((labels != 0).astype(np.float32), tuple(data.volume_shape), 0.0)


def segmenter_input(segmenter, data, image, cond):
  """The segmenter's channels for a translated `image`: it in place of the segmenter's
  condition (the target modality), with the volume's position and mask."""
  own = segmenter.config.data
  if tuple(own.conditions) != (data.target,):
    raise InputError("translate.segmenter", f"the segmenter reads {tuple(own.conditions)}; "
                     f"it must read the translated {data.target!r} alone")
  return np.concatenate([image[..., None], cond[..., -4:]], axis=-1)


def translate_folder(config, workdir):
  """The `ensembler_translate` job."""
  mesh = sharding.make_mesh()
  members, fusion, regressor, segmenter = load_models(config, mesh)
  translator = translator_lib.VolumeTranslator(config, members, fusion, mesh)
  summary = translate_cases(config, workdir, translator, regressor, segmenter)
  atomic_files.write_json(pathlib.Path(workdir) / "config.json", config.to_dict())
  tqdm.tqdm.write(format_table(summary))
  return summary
