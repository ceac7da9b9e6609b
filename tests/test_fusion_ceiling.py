"""bench/fusion_ceiling.py: its oracles recover weights that are there, and bad folders stop
with one line."""

import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import bench_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ceiling():
  return bench_scripts.load("fusion_ceiling")


def test_the_global_oracle_finds_the_weights_that_made_the_truth(ceiling):
  rng = np.random.default_rng(0)
  parts = [[rng.normal(size=(8, 8, 8)) for _ in range(2)] for _ in range(3)]
  w = np.array([0.2, 0.5, 0.3])
  truths = [sum(w[k] * parts[k][i] for k in range(3)) for i in range(2)]
  np.testing.assert_allclose(ceiling.global_weights(parts, truths), w, atol=1e-9)


def test_the_block_oracle_is_exact_where_each_block_has_its_weights(ceiling):
  """Truth made with other weights in each 4^3 block: the 4^3 oracle fits it (PSNR > 200 dB),
  the 8^3 one cannot, and neither is below the directions' plain mean."""
  rng = np.random.default_rng(1)
  parts = [rng.uniform(size=(8, 8, 8)) for _ in range(3)]
  w = rng.uniform(size=(2, 2, 2, 2)).repeat(4, 0).repeat(4, 1).repeat(4, 2)
  g = w[..., 0] * parts[0] + w[..., 1] * parts[1] + (1 - w.sum(-1)) * parts[2]
  mean_psnr = 10 * np.log10(1 / np.mean(np.square(sum(parts) / 3 - g)))
  assert ceiling.block_oracle_psnr(parts, g, 4) > 200
  assert mean_psnr <= ceiling.block_oracle_psnr(parts, g, 8) < 100


def test_missing_directions_stop_with_one_line(tmp_path):
  (tmp_path / "outputs" / "average" / "case").mkdir(parents=True)
  nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
           str(tmp_path / "outputs" / "average" / "case" / "case-t2f.nii.gz"))
  run = subprocess.run([sys.executable, str(ROOT / "bench" / "fusion_ceiling.py"),
                        f"--outputs={tmp_path / 'outputs'}", f"--truth={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1].startswith(
      f"fusion_ceiling: {tmp_path / 'outputs'}: has no outputs of axial, coronal, sagittal")
