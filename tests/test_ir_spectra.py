"""Tables of spectra: the readers (CSV, Orange, .npz, inside a wheel), the bad-input lines,
the folds, and the `ir_spectra` job end to end on tiny synthetic tables."""

import collections
import json
import logging
import pathlib
import re
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx

from configs import base
from configs.ir import spectra as spectra_config
from data_pipelines import ir_formats
from data_pipelines import ir_spectra
from sciimg_jax.core import models
from sciimg_jax.core.errors import InputError
from sciimg_jax.ir import spectra_job
from tolerances import float32_tolerance, max_abs

WN = np.linspace(1800, 900, 16)


def synthetic(counts=(6, 6, 6), seed=0, bands=WN):
  """(spectra, labels): classes 'a', 'b', ... with `counts` spectra, well apart."""
  rng = np.random.default_rng(seed)
  labels = np.repeat([chr(97 + k) for k in range(len(counts))], counts)
  means = np.random.default_rng(1).normal(size=(len(counts), len(bands)))
  x = means[np.searchsorted(sorted(set(labels)), labels)] + 0.2 * rng.normal(size=(len(labels),
                                                                                   len(bands)))
  return x.astype(np.float32), labels


def write_table(path, counts=(6, 6, 6), seed=0, bands=WN):
  x, labels = synthetic(counts, seed, bands)
  ir_formats.write_spectra_csv(path, x, bands, labels)
  return path


def tiny(table, **data):
  c = spectra_config.get_config("tiny")
  c.data.table = str(table)
  for k, v in data.items():
    c.data[k] = v
  return c


# --- readers -------------------------------------------------------------------------------

def test_orange_tables_are_read_by_their_header_rows(tmp_path):
  # Orange's three header rows: names, types, flags; the class column need not come first,
  # meta and ignored columns are skipped even when named by a number.
  (tmp_path / "t.tab").write_text(
      "id\t1000\t1100\t1200\t1300\tmap_x\ttissue\n"
      "s\tc\tc\tc\tc\tc\td\n"
      "meta\t\t\t\tignore\tmeta\tclass\n"
      "r1\t0.1\t0.2\t0.3\t9\t5\tstroma\n"
      "r2\t0.4\t0.5\t0.6\t9\t6\tepithelium\n")
  x, wn, labels = ir_formats.read_spectra_table(tmp_path / "t.tab")
  # the text read into float32: one rounding each
  np.testing.assert_allclose(x, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], rtol=float32_tolerance(1.0, 1))
  np.testing.assert_array_equal(wn, [1000, 1100, 1200])
  assert list(labels) == ["stroma", "epithelium"]
  # As collagen.csv writes it: comma-separated, a short third row.
  (tmp_path / "o.csv").write_text("type,1801.2,1797.4\nd,c,c\nclass\nDNA,0.1,0.2\nlipids,0.3,0.4\n")
  x, wn, labels = ir_formats.read_spectra_table(tmp_path / "o.csv")
  assert x.shape == (2, 2) and list(labels) == ["DNA", "lipids"] and wn[0] > wn[1]
  # A plain CSV with another label column.
  (tmp_path / "p.csv").write_text("sample,tissue,1000,1100\n1,a,0.1,0.2\n2,b,0.3,0.4\n")
  _, _, labels = ir_formats.read_spectra_table(tmp_path / "p.csv", "tissue")
  assert list(labels) == ["a", "b"]


def test_npz_tables_and_tables_inside_a_wheel(tmp_path):
  x, labels = synthetic()
  np.savez(tmp_path / "t.npz", X=x, y=labels, wavenumbers=WN)
  back, wn, names = ir_formats.read_spectra_table(tmp_path / "t.npz")
  np.testing.assert_array_equal(back, x)
  np.testing.assert_array_equal(names, labels)
  np.testing.assert_allclose(wn, WN, atol=float32_tolerance(max_abs(WN), 1))  # read as float32
  write_table(tmp_path / "t.csv")
  (tmp_path / "dl").mkdir()
  with zipfile.ZipFile(tmp_path / "dl" / "pkg-1.0-py3-none-any.whl", "w") as z:
    z.write(tmp_path / "t.csv", "pkg/datasets/t.csv")
  table = ir_spectra.load(tmp_path / "dl" / "pkg-*.whl" / "pkg" / "datasets" / "t.csv")
  assert table.spectra.shape == (18, 16)
  assert table.path.endswith("pkg-1.0-py3-none-any.whl/pkg/datasets/t.csv")
  with pytest.raises(InputError, match=r"other\.csv: no such file in pkg-1\.0-py3-none-any\.whl"):
    ir_spectra.load(tmp_path / "dl" / "pkg-1.0-py3-none-any.whl" / "pkg" / "other.csv")


READ_AND_MEASURE = """
import resource, sys
import numpy as np
from data_pipelines import ir_formats
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after the imports
x, _, labels = ir_formats.read_spectra_table(sys.argv[1])
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
np.save(sys.argv[2], x)
print(grown, x.nbytes, len(labels))
"""


def test_a_large_csv_is_read_in_bounded_memory(tmp_path):
  """A 41 MB table (16,000 x 277: a 189 MB one of 74,400 rows in small) is read into
  float32 without holding its text, rows of strings or lists of floats (issue 34: 2.5 GB
  for a 79 MiB result). Measured in a fresh process: the growth of its peak RSS over the
  read. Bound: 3x the result, plus 24 MiB for what does not grow with the table (the
  reader's 1 MiB blocks, csv's buffers, the labels, the allocator's slack). Measured: 17 MiB
  for a 17 MiB result; the old reader grew by 541 MiB. About 2 s."""
  rows, bands = 16_000, 277
  rng = np.random.default_rng(0)
  block = [[f"{v:.6g}" for v in r] for r in rng.normal(size=(100, bands))]
  wn = np.linspace(1800, 900, bands)
  with open(tmp_path / "big.csv", "w") as f:
    f.write(",".join(["label"] + [f"{w:.4f}" for w in wn]) + "\n")
    for i in range(rows):
      f.write("abc"[i % 3] + "," + ",".join(block[i % 100]) + "\n")
  out = subprocess.run([sys.executable, "-c", READ_AND_MEASURE, str(tmp_path / "big.csv"),
                        str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode == 0, out.stderr[-2000:]
  grown, nbytes, count = map(int, out.stdout.split())
  assert count == rows and nbytes == rows * bands * 4
  assert grown < 3 * nbytes + 24 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
  # the values: each cell's text read as float and rounded to float32 once, as before
  expected = np.array(block, np.float64).astype(np.float32)
  np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.tile(expected, (rows // 100, 1)))


def test_labels_that_stand_for_a_missing_value_are_refused(tmp_path):
  """A label text NaN (or NA, ?) used to become a class of its own."""
  (tmp_path / "t.csv").write_text("label,1000,1100\na,0.1,0.2\nNaN,0.3,0.4\n")
  with pytest.raises(InputError, match=r"t\.csv: line 3 has no label \('label' is 'NaN', which "
                     r"stands for a missing value\)"):
    ir_formats.read_spectra_table(tmp_path / "t.csv")
  (tmp_path / "e.csv").write_text("label,1000,1100\na,0.1,0.2\n ,0.3,0.4\n")
  with pytest.raises(InputError, match=r"e\.csv: line 3 has no label \('label' is empty\)"):
    ir_formats.read_spectra_table(tmp_path / "e.csv")
  x, labels = synthetic()
  np.savez(tmp_path / "t.npz", X=x, y=np.where(np.arange(len(labels)) == 5, "n/a", labels),
           wavenumbers=WN)
  with pytest.raises(InputError, match=r"t\.npz: spectrum 5 has no label \(y\[5\] is 'n/a'"):
    ir_formats.read_spectra_table(tmp_path / "t.npz")


def test_a_missing_wheel_names_the_pip_download_command(tmp_path):
  c = spectra_config.get_config("collagen+tiny")
  assert c.data.table.endswith("collagen.csv") and "orange_spectroscopy-*.whl" in c.data.table
  assert ir_spectra.missing_message(c.data.table, c.data.pip_package).endswith(
      "`pip download --no-deps orange-spectroscopy -d .whl` (it is read in place, not installed)")
  c.data.table = str(tmp_path / "dl" / c.data.table.split("/", 1)[1])
  command = f"pip download --no-deps orange-spectroscopy -d {tmp_path}/dl"
  with pytest.raises(InputError, match=r"collagen\.csv: no such file; fetch the wheel that holds "
                     rf"it once with `{re.escape(command)}`"):
    spectra_job.run_spectra(c, tmp_path / "w")


# --- bad input: one line each, nothing written ---------------------------------------------

def nan_in_csv(d):
  (d / "t.csv").write_text("label,1000,1100\na,0.1,0.2\nb,0.3,\n")
  return {"table": d / "t.csv"}


def nan_in_npz(d):
  x, labels = synthetic()
  x[4, 7] = np.nan
  np.savez(d / "t.npz", X=x, y=labels, wavenumbers=WN)
  return {"table": d / "t.npz"}


def moved_band(d):
  bands = WN.copy()
  bands[1] = 1700
  return {"table": write_table(d / "t.csv"), "test_table": write_table(d / "u.csv", bands=bands)}


# Each writes its tables in a folder and returns the `data` keys that name them.
BAD = {
    "one class": (lambda d: {"table": write_table(d / "t.csv", counts=(6,))},
                  r"t\.csv: holds one class \('a'\); a classifier needs two or more"),
    "few spectra": (lambda d: {"table": write_table(d / "t.csv", counts=(6, 2, 6))},
                    r"t\.csv: class 'b' \(2\) has fewer spectra than the 3 folds"),
    "nan": (nan_in_csv, r"t\.csv: line 3: the spectrum has no value \(NaN\) at 1100 cm\^-1"),
    "nan npz": (nan_in_npz, r"t\.npz: spectrum 4 \(X\[4\]\) has no value \(NaN\) at"),
    "bands": (moved_band, r"u\.csv: its bands do not match those of the training table t\.csv: "
              r"band 2 is at 1700 cm\^-1 against 1740"),
    "band count": (lambda d: {"table": write_table(d / "t.csv"),
                              "test_table": write_table(d / "u.csv", bands=WN[:15])},
                   r"u\.csv: its bands do not match those of the training table t\.csv: 15 "
                   r"bands against 16"),
    "label column": (lambda d: {"table": write_table(d / "t.csv"), "label_column": "tissue"},
                     r"t\.csv: has no label column 'tissue' \(columns: label, 1800"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_tables_stop_with_one_line_and_write_nothing(tmp_path, case):
  make, message = BAD[case]
  data = {k: str(v) for k, v in make(tmp_path).items()}
  workdir = tmp_path / "w"
  workdir.mkdir()
  with pytest.raises(InputError, match=message) as raised:
    spectra_job.run_spectra(tiny(data.pop("table"), **data), workdir)
  assert "\n" not in str(raised.value)
  assert not any(workdir.iterdir())


def test_bad_settings_are_named_before_any_work(tmp_path):
  table = write_table(tmp_path / "t.csv")
  for key, value, message in (("data.folds", 1, "data.folds: must be an integer of 2 or more"),
                              ("runs", ("mlp-smooth",), "runs: unknown spectral transform"),
                              ("runs", ("svm",), "runs: 'svm': no model 'svm' in models"),
                              ("baselines", ("svm",), "baselines: unknown"),
                              ("data.table", "", "data.table: no table of spectra given"),
                              ("train.num_steps", 6, "train.num_steps: 6 steps and "
                               r"train.num_epochs=4 are both set; set one, the other 0"),
                              ("train.num_epochs", 0, "train.num_epochs: and train.num_steps "
                               "are both 0; set one"),
                              ("train.num_epochs", -1, "train.num_epochs: must be a whole "
                               "number of epochs >= 0")):
    c = base.set_keys(tiny(table), {key: value})
    with pytest.raises(InputError, match=message):
      spectra_job.run_spectra(c, tmp_path / "w")
  assert not (tmp_path / "w").exists()


# --- folds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("counts,folds", [((6, 6, 6), 3), ((7, 11, 5, 23), 5), ((2, 9), 2)])
def test_folds_are_stratified_disjoint_and_cover_every_row(counts, folds):
  _, labels = synthetic(counts)
  fold = ir_spectra.stratified_folds(labels, folds, seed=3)
  assert fold.shape == labels.shape and set(fold) == set(range(folds))  # each row in one fold
  for c, n in zip(sorted(set(labels)), counts):
    per_fold = np.bincount(fold[labels == c], minlength=folds)
    assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n  # stratified
  sizes = np.bincount(fold)
  assert sizes.max() - sizes.min() <= 1
  np.testing.assert_array_equal(fold, ir_spectra.stratified_folds(labels, folds, seed=3))
  assert not np.array_equal(fold, ir_spectra.stratified_folds(labels, folds, seed=4))


def test_subsampling_keeps_per_class_and_is_said(tmp_path, capsys):
  labels = np.array(list("aaaaabbbcc"))
  kept = ir_spectra.subsample(np.arange(10), labels, 2, seed=0)
  assert sorted(labels[kept]) == list("aabbcc")
  np.testing.assert_array_equal(ir_spectra.subsample(np.arange(10), labels, 0, seed=0),
                                np.arange(10))
  c = tiny(write_table(tmp_path / "t.csv", counts=(9, 6, 6)), per_class=3)
  c.runs, c.baselines = (), ("pca_lda",)
  spectra_job.run_spectra(c, tmp_path / "w")
  out = capsys.readouterr().out
  assert "Subsampling (data.per_class=3): at most 3 training spectra of each class" in out
  assert "| a | 9 | 3 3 3 | 3 3 3 |" in out  # used for training, held out, in the table
  counts = json.loads((tmp_path / "w" / "results.json").read_text())["counts"]
  assert counts[0] == {"class": "a", "table": 9, "train": "3 3 3", "test": "3 3 3"}


def test_shuffled_labels_keep_the_counts_and_lose_the_spectra():
  y = np.repeat(np.arange(3), 40)
  train, held = np.arange(0, 120, 2), np.arange(1, 120, 2)
  first = spectra_job.shuffled_labels(y, ("fold0", train, held), seed=0)
  np.testing.assert_array_equal(np.bincount(first), np.bincount(y[train]))
  assert np.mean(first == y[train]) < 0.6  # about 1/3 agree by chance
  np.testing.assert_array_equal(first, spectra_job.shuffled_labels(y, ("fold0", train, held), 0))
  assert not np.array_equal(first, spectra_job.shuffled_labels(y, ("fold0", train, held), 1))
  assert not np.array_equal(first, spectra_job.shuffled_labels(y, ("fold1", train, held), 0))


# --- models and the job --------------------------------------------------------------------

def test_the_spectral_cnn_sees_only_the_centre_spectrum():
  c = spectra_config.get_config("tiny")
  model = models.create_model(c.models.cnn, rngs=nnx.Rngs(0), in_channels=16, num_classes=3,
                              patch_size=3)
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 16))
  x = x.at[2].set(x[0].at[0, 2].set(5.0)).at[3].set(x[0].at[1, 1, 8].set(5.0))
  logits, features = jax.jit(lambda x: (model(x), model.embed(x)))(x)
  assert logits.shape == (4, 3) and features.shape == (4, c.models.cnn.features)
  np.testing.assert_allclose(logits[2], logits[0], rtol=1e-6)  # a neighbour changed
  assert not np.allclose(logits[3], logits[0])  # a band of the centre pixel changed


def test_the_steps_are_epochs_of_the_largest_fold_and_short_runs_warm_up_less():
  c = spectra_config.get_config("")
  splits = [("fold0", np.arange(584), None), ("fold1", np.arange(585), None)]
  assert spectra_job.num_steps(c, splits) == 595  # ceil(65 x 585 / 64): collagen's folds
  assert spectra_job.schedule(c.optim, 595) == (50, 0.99)  # as the 600 steps of before
  assert spectra_job.num_steps(c, [("fold0", np.arange(48), None)]) == 49  # ceil(65 x 48 / 64)
  warmup, decay = spectra_job.schedule(c.optim, 49)
  assert warmup == 4 and decay == pytest.approx(1 - 5 / 49)
  c.train.num_epochs, c.train.num_steps = 0, 7
  assert spectra_job.num_steps(c, splits) == 7


def test_each_network_compiles_once_for_every_fold_and_shuffled_reference(tmp_path, caplog,
                                                                           capsys):
  # 3 runs x 3 folds x (true, shuffled labels): the MLP on 16 bands (`mlp`, `mlp-snv`) and on
  # 4 PCA components, so its step and its evaluation compile twice, not 18 times.
  c = tiny(write_table(tmp_path / "t.csv"), pca_components=4)
  c.runs, c.shuffled_reference, c.baselines = ("mlp", "mlp-snv", "mlp-pca_whiten"), True, ()
  c.train.eval_every = 3  # scored at steps 3 and 6: the same compiled evaluation
  with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
    spectra_job.run_spectra(c, tmp_path / "w")
  compiled = collections.Counter(re.findall(r"Compiling jit\((\w+)\)", caplog.text))
  assert {k: compiled[k] for k in ("train_step", "embed", "input_gradients")} == {
      "train_step": 2, "embed": 2, "input_gradients": 2}, compiled
  runs = json.loads((tmp_path / "w" / "results.json").read_text())["runs"]
  for name in ("mlp", "mlp-snv", "mlp-pca_whiten", "mlp-shuffled"):
    assert [r["step"] for r in runs[name]] == [6] * 3  # 4 epochs of 12 spectra, batches of 8
    assert all(r["seconds"] > 0 for r in runs[name])
  assert runs["mlp"][0]["compile_seconds"] > 0 and runs["mlp-pca_whiten"][0]["compile_seconds"] > 0
  assert sum(r["compile_seconds"] for n in ("mlp-snv", "mlp-shuffled")
             for r in runs[n]) == 0
  logged = [json.loads(l) for l in (tmp_path / "w" / "mlp" / "fold1" / "metrics.jsonl")
            .read_text().splitlines()]
  assert [r["step"] for r in logged if "accuracy" in r] == [3, 6]
  assert [r["step"] for r in logged if "loss" in r] == [3, 6]
  out = capsys.readouterr().out  # the time of every fold, and the first one's compiling
  assert re.search(r"^mlp fold0: [\d.]+ s \([\d.]+ s of it compiling the step\); accuracy "
                   r"[\d.]+\.$", out, re.M), out
  assert re.search(r"^mlp-snv fold0: [\d.]+ s; accuracy [\d.]+\.$", out, re.M)
  assert re.search(r"^mlp-shuffled: 3 folds in [\d.]+ s\.$", out, re.M)


def test_a_non_finite_loss_stops_the_fold_naming_the_step(tmp_path):
  c = tiny(write_table(tmp_path / "t.csv"))
  c.runs, c.baselines, c.optim.learning_rate = ("mlp",), (), 1e30
  with pytest.raises(FloatingPointError,
                     match=r"^loss is (nan|-?inf) at step 3 of .*mlp/fold0; stopping"):
    spectra_job.run_spectra(c, tmp_path / "w")
  assert not (tmp_path / "w" / "mlp" / "fold0" / "final_metrics.json").exists()


def test_every_model_and_baseline_is_scored_on_the_same_saved_folds(tmp_path):
  # One network (the CNN; the MLP's training is test_ir_classifier's) keeps the test short.
  table = write_table(tmp_path / "t.csv")
  c = tiny(table, folds=2)
  c.runs, c.shuffled_reference = ("cnn",), True
  summary = spectra_job.run_spectra(c, tmp_path / "w")
  assert list(summary) == ["cnn", "cnn-shuffled", "pca_lda", "logistic", "random_forest",
                           "labels"]
  assert summary["logistic"]["accuracy"][0] > 0.9  # the classes are far apart
  assert set(summary["cnn"]) == set(summary["cnn-shuffled"]) == set(spectra_job.study.COLUMNS)
  assert set(summary["logistic"]) == set(spectra_job.study.COLUMNS)  # the linear reference
  assert set(summary["labels"]) == {"logits_effective_rank", "logits_pc1_share",
                                    "logits_collapse_index"}
  assert summary["labels"]["logits_collapse_index"] == (0.0, 0.0)
  # Three classes of 3 held-out spectra each: the labels' class-centred effective rank is 2.
  assert summary["labels"]["logits_effective_rank"][0] == pytest.approx(2.0)
  fold = ir_spectra.read_folds(tmp_path / "w" / "folds.csv")
  _, labels = synthetic()
  np.testing.assert_array_equal(fold, ir_spectra.stratified_folds(labels, 2, c.seed))
  expect = [spectra_job.digest(np.flatnonzero(fold != k), np.flatnonzero(fold == k))
            for k in range(2)]
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  for name, rows in results["runs"].items():
    assert [r["rows"] for r in rows] == expect, name
    assert [r["split"] for r in rows] == ["fold0", "fold1"], name
  md = (tmp_path / "w" / "results.md").read_text()
  assert "| cnn |" in md and "| cnn-shuffled |" in md and "| labels |" in md
  assert "References of the diagnostics" in md
  assert [r["labels"] for r in results["runs"]["cnn-shuffled"]] == ["shuffled (seed 0)"] * 2
  assert [r["labels"] for r in results["runs"]["cnn"]] == ["true"] * 2
  assert (tmp_path / "w" / "results.csv").read_text().startswith("run,accuracy_mean")
  # A rerun reads the finished runs; another seed would draw other folds: refused.
  assert spectra_job.run_spectra(c, tmp_path / "w")["cnn"] == summary["cnn"]
  c.seed = 1
  with pytest.raises(InputError, match=r"folds\.csv: holds the folds of another table"):
    spectra_job.run_spectra(c, tmp_path / "w")
