"""The evaluation job of Diff-Ensembler: super-resolve or translate a folder of volumes with
every method.

  python main.py --config=configs/ensembler/evaluate.py --workdir=runs/sr-eval \
      --config.evaluate.members='("runs/sr/axial","runs/sr/coronal","runs/sr/sagittal")' \
      --config.evaluate.fusion=runs/sr/fusion

For each case of `evaluate.input_root` (a BraTS-layout folder; '' = the held-out split
of `data`), prepared on the `data.volume_shape` grid (`volume_cases`), and each method of
`evaluate.methods` (a member's axis, 'average', 'tpdm', 'fused': the methods of the
volume sampler, '3d_only' with `evaluate.volume_model`, or a baseline of `translator.BASELINES`: 'cubic', 'regressor'):

  1. sample with key `fold_in(key(seed), crc32(case name))` (the same in any folder,
     order or subset), `sampling.num_samples` samples whose mean is the result;
  2. write `outputs/<method>/<case>/<case>-<target>.nii.gz`: the input's shape, affine and
     header, in the target's intensity units when the case has the target (else on
     [0, 1]);
  3. score it against the case's target, when it has one (`evaluation.scores`): PSNR and
     3D SSIM after min-max normalisation by the ground truth, the texture ratio in the
     brain, and with `evaluate.segmenter` the Dice of the downstream tumour segmenter
     on the result against `mask-unhealthy`. `psnr`, `ssim` and `texture` are taken on
     the prepared grid (percentile-clipped [-1, 1] on `data.volume_shape`); `psnr_file`
     and `ssim_file` score the NIfTI file just written against the case's target file,
     as the `ensembler_score` job scores any tool's files (`scoring_job.score_file`;
     docs/diff_ensembler.md, "Scores in two spaces");
  4. draw `figures/<case>.png`: the three planes of the condition, every method and
     the ground truth.

With a segmenter and labels, each case also gets a row of method `ground truth`: the
segmenter's Dice on the case's own target (on the grid), the ceiling the methods' Dice
reads against; its other scores are empty and it has no MMD.

After every case the job rewrites `cases.csv` (one row per case and method) and
`summary.json` (per method: mean and std (ddof=1) of each score, seconds per volume, and the
set-level MMD against the ground truths), all atomically; at the end it prints the table.
Several processes split the cases by name, each on its own devices, and process 0 writes
the merged tables once at the end.
"""

import pathlib
import time

import jax
import numpy as np
import tqdm

from data_pipelines import brats_layout
from data_pipelines import sources as data_sources
from data_pipelines import volume_cases
from sciimg_jax.core import atomic_files
from sciimg_jax.core import distributed
from sciimg_jax.core import figures
from sciimg_jax.core import intensity
from sciimg_jax.core import nifti
from sciimg_jax.core import reports
from sciimg_jax.core import sharding
from sciimg_jax.core import trained_models
from sciimg_jax.core import volumes
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluation
from sciimg_jax.ensembler import fusion as fusion_lib
from sciimg_jax.ensembler import members as members_lib
from sciimg_jax.ensembler import scoring_job
from sciimg_jax.ensembler import translator as translator_lib
from sciimg_jax.ensembler import volume_model

SCORES = ("psnr", "ssim", "psnr_file", "ssim_file", "texture", "dice")
CEILING = "ground truth"  # the segmenter's Dice on the target itself
TRUTHS = "ground truths"  # the running sum of the normalised targets, for the MMD
CASE_COLUMNS = tuple(reports.Column(k, k) for k in ("case", "method") + SCORES + ("seconds",))
SUMMARY_COLUMNS = (
    reports.Column("method", "method"), reports.Column.mean_std("PSNR (dB)", "psnr", 2),
    reports.Column.mean_std("SSIM", "ssim", 3),
    reports.Column.mean_std("PSNR file (dB)", "psnr_file", 2),
    reports.Column.mean_std("SSIM file", "ssim_file", 3), reports.Column("MMD", "mmd", ".2e"),
    reports.Column.mean_std("texture", "texture", 2), reports.Column.mean_std("Dice", "dice", 3),
    reports.Column.mean_std("s / volume", "seconds", 1))


def input_cases(config, workdir):
  """The prepared cases to translate: `evaluate.input_root`, or the held-out split."""
  t = config.evaluate
  cache = data_sources.cache_dir(config.data, workdir)
  root = t.input_root or data_sources.source_dirs(config.data, workdir)["eval"]
  has_target = all(brats_layout.case_file(d, config.data.target).is_file()
                   for d in brats_layout.find_cases(root, volume_cases.required_keys(
                       config.data, with_target=False)))
  cases = volume_cases.prepare(root, config.data, cache, with_target=has_target,
                               split="translate")
  return cases[:t.num_cases] if t.num_cases else cases


def load_models(config, mesh):
  """(members, fusion, regressor, segmenter, 3D model) named by `evaluate.*` ('' = none)."""
  t = config.evaluate
  members = members_lib.load_members(t.members, config.data, config.diffusion, mesh)
  fusion = (fusion_lib.load_fusion(t.fusion, members, config.data, mesh)
            if t.fusion else None)
  volume = (volume_model.load(t.volume_model, config.data, config.diffusion, mesh)
            if t.get("volume_model") else None)

  def deterministic(workdir, objective):
    def check(c):
      if c.train.get("objective") != objective:
        raise InputError(workdir, f"holds a {c.train.get('objective')} model, expected "
                         f"{objective}")
    return trained_models.load(workdir, mesh, check=check) if workdir else None

  return (members, fusion, deterministic(t.regressor, "regression"),
          deterministic(t.segmenter, "segmentation"), volume)


def check_methods(config, translator):
  """Stops, before any case is read, on a method that is unknown or lacks what it needs."""
  for m in config.evaluate.methods:
    translator.check_method(m)


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


def add_to(sums, name, volume):
  """Adds `volume` to the running (float64 sum, count) of `name` (a method, or TRUTHS)."""
  total, count = sums.get(name, (0.0, 0))
  sums[name] = (total + np.asarray(volume, np.float64), count + 1)


def merge_sums(sums, shape):
  """The running sums (`add_to`) of every process added up; every process calls it."""
  names = sorted({n for part in distributed.gather(sorted(sums)) for n in part})
  local = [sums.get(n, (np.zeros(shape), 0)) for n in names]
  totals = distributed.gather_arrays([total for total, _ in local])
  counts = distributed.gather([count for _, count in local])
  return {n: (sum(t[i] for t in totals), sum(c[i] for c in counts)) for i, n in enumerate(names)}


def summarise(rows, sums):
  """{method: {score: [mean, std], seconds, mmd}} over the cases scored so far.

  std is `reports.mean_std`'s (ddof=1; None for one case). `sums` holds the running sums of
  the normalised outputs of each method and of the ground truths (`add_to`), for the MMD.
  """
  summary = {}
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = [r for r in rows if r["method"] == method]
    entry = {"cases": len(mine)}
    for key in SCORES + ("seconds",):
      values = [r[key] for r in mine if r.get(key) is not None and np.isfinite(r[key])]
      if values:
        entry[key] = list(reports.mean_std(values))
    if TRUTHS in sums and method in sums:
      entry["mmd"] = evaluation.set_mmd(sums[method], sums[TRUTHS])
    summary[method] = entry
  return summary


def write_tables(workdir, rows, summary):
  """`cases.csv` (one row per case and method) and `summary.json`, atomically."""
  reports.write_table(pathlib.Path(workdir) / "cases.csv", rows, CASE_COLUMNS)
  atomic_files.write_json(pathlib.Path(workdir) / "summary.json", summary)


def format_table(summary):
  """The summary as a Markdown table (mean ± std)."""
  return reports.format_markdown([{"method": m, **e} for m, e in summary.items()],
                                 SUMMARY_COLUMNS)


def evaluate_cases(config, workdir, translator, segmenter=None):
  """Runs every method on every case; returns the summary dict."""
  workdir = pathlib.Path(workdir)
  check_methods(config, translator)
  data, methods = config.data, tuple(config.evaluate.methods)
  cases = input_cases(config, workdir)
  position = volumes.position_embedding(tuple(data.volume_shape))
  rows, sums = [], {}
  chunk = config.sampling.chunk_size
  summary = {}
  single = jax.process_count() == 1
  mine = distributed.process_share(cases, key=lambda case: case.name)
  for case, key in reports.each_case(mine, progress=config.evaluate.progress_bar,
                                     base_key=jax.random.key(config.seed)):
    array = np.asarray(case.array)
    cond = volume_cases.example(data, array, position)["cond"]
    truth = array[..., 0] if case.meta["has_target"] else None
    brain = array[..., -1]
    labels = load_labels(case, data) if segmenter is not None else None
    truth_file = (brats_layout.case_file(case.directory, data.target)
                  if truth is not None else None)
    truth_volume = nifti.load_volume(truth_file) if truth is not None else None
    outputs = {}
    for method in methods:
      if method in translator.names:
        translator.compile(method, cond)  # compiled once, outside the timing
      start = time.perf_counter()
      image = translator.image(method, cond, key)
      seconds = time.perf_counter() - start
      outputs[method] = image
      path = workdir / "outputs" / method / case.name / f"{case.name}-{data.target}.nii.gz"
      write_output(path, image, case, data)
      row = {"case": case.name, "method": method, "seconds": round(seconds, 3)}
      if truth is not None:
        row.update(evaluation.scores(image, truth, brain))
        in_file = scoring_job.score_file(path, truth_file, truth_volume)
        row.update(psnr_file=in_file["psnr"], ssim_file=in_file["ssim"])
        add_to(sums, method, evaluation.normalised(image, truth))
      if segmenter is not None and labels is not None:
        row["dice"] = segmenter_dice(segmenter, data, image, cond, labels, chunk, translator.mesh)
      rows.append(row)
    if segmenter is not None and labels is not None and truth is not None:
      rows.append({"case": case.name, "method": CEILING, **dict.fromkeys(SCORES),
                   "dice": segmenter_dice(segmenter, data, truth, cond, labels, chunk,
                                          translator.mesh)})
    if truth is not None:
      add_to(sums, TRUTHS, evaluation.normalised(truth, truth))
    columns = {"condition": cond[..., 0], **outputs}
    if truth is not None:
      columns["ground truth"] = truth
    figures.save_triplanar(workdir / "figures" / f"{case.name}.png", columns,
                           [s // 2 for s in truth.shape] if truth is not None
                           else [s // 2 for s in cond.shape[:3]],
                           {k: (-1.0, 1.0) for k in columns})
    if single:  # a valid record after every case
      summary = summarise(rows, sums)
      write_tables(workdir, rows, summary)
  if not single:
    rows, = distributed.merge_lists(distributed.gather([rows]), [c.name for c in cases], "case")
    summary = summarise(rows, merge_sums(sums, tuple(data.volume_shape)))
    if jax.process_index() == 0:
      write_tables(workdir, rows, summary)
  return summary


def load_labels(case, data):
  """The case's `mask-unhealthy` on the grid, or None if the folder has none."""
  path = brats_layout.case_file(case.directory, "mask-unhealthy")
  if not path.is_file():
    return None
  labels, _ = nifti.load_volume(path, allow_all_zero=True)
  return volumes.center_pad_crop((labels != 0).astype(np.float32), tuple(data.volume_shape), 0.0)


def segmenter_dice(segmenter, data, image, cond, labels, chunk, mesh):
  """The Dice of the segmenter on `image` (the grid's target channel) against `labels`."""
  seg_cond = segmenter_input(segmenter, data, image, cond)
  probability = translator_lib.slicewise_network(segmenter, segmenter.config.data, seg_cond,
                                                 chunk, mesh)
  return evaluation.dice(probability, labels)


def segmenter_input(segmenter, data, image, cond):
  """The segmenter's channels for a translated `image`: it in place of the segmenter's
  condition (the target modality), with the volume's position and mask."""
  own = segmenter.config.data
  if tuple(own.conditions) != (data.target,):
    raise InputError("evaluate.segmenter", f"the segmenter reads {tuple(own.conditions)}; "
                     f"it must read the translated {data.target!r} alone")
  return np.concatenate([image[..., None], cond[..., -4:]], axis=-1)


def evaluate_folder(config, workdir):
  """The `ensembler_evaluate` job."""
  mesh = sharding.local_mesh()  # each process translates its own cases
  members, fusion, regressor, segmenter, volume = load_models(config, mesh)
  translator = translator_lib.VolumeTranslator(config, members, fusion, mesh, regressor, volume)
  summary = evaluate_cases(config, workdir, translator, segmenter)
  atomic_files.write_json(pathlib.Path(workdir) / "config.json", config.to_dict())
  tqdm.tqdm.write(format_table(summary))
  return summary
