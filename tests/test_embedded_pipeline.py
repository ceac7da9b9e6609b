"""The embedded MNI152 subjects through the TFDS slice builder, as the jobs read them."""

import numpy as np
import pytest

from data_pipelines import brats_layout
from data_pipelines import input_pipeline
from data_pipelines import sources
from sciimg_jax.core import intensity
from tolerances import float32_tolerance

AXES = {"axial": 2, "coronal": 1, "sagittal": 0}


@pytest.mark.parametrize("axis", ["axial", "coronal"])
def test_generated_cases_through_tfds(tiny_config, axis, tmp_path):
  data = tiny_config.data
  data.axis = axis
  splits = sources.source_dirs(data, tmp_path)
  srcs = input_pipeline.slice_sources(data, splits, data.cache_dir)
  cases = brats_layout.find_cases(splits["eval"])
  assert len(cases) == data.synthetic.num_eval

  examples = [srcs["eval"][i] for i in range(len(srcs["eval"]))]
  expected = 0
  for case_dir in cases:
    case = brats_layout.load_case(case_dir, ["t1n", "t1n-voided", "mask"])
    np.testing.assert_allclose(np.abs(np.diag(case.affine)[:3]), [4, 4, 4])
    vol, voided, mask = (case.volumes[k] for k in ("t1n", "t1n-voided", "mask"))
    ax = AXES[axis]
    keep = np.flatnonzero(mask.sum(axis=tuple(a for a in range(3) if a != ax)))
    expected += len(keep)
    lo, hi = intensity.percentile_range(voided)
    ex = next(e for e in examples if e["case"] in (case.name, case.name.encode()) and e["slice"] == keep[0])
    take = lambda v: np.take(v, keep[0], axis=ax)
    np.testing.assert_allclose(ex["target"][..., 0], intensity.normalize(take(vol), lo, hi), atol=1e-6)
    np.testing.assert_allclose(ex["cond"][..., 1], take(mask))
    # The voided channel is the normalised background value inside the mask.
    inside = take(mask) > 0
    np.testing.assert_allclose(ex["cond"][..., 0][inside], intensity.normalize(np.float32(0), lo, hi))
    # stored as float32 scalars: one rounding each
    rtol = float32_tolerance(1.0, 1)
    assert np.isclose(ex["lo"], lo, rtol=rtol, atol=0)
    assert np.isclose(ex["hi"], hi, rtol=rtol, atol=0)
  assert len(examples) == expected


def test_batches_have_the_configured_shape(tiny_config, tmp_path):
  splits = sources.source_dirs(tiny_config.data, tmp_path)
  srcs = input_pipeline.slice_sources(tiny_config.data, splits, tiny_config.data.cache_dir)
  it = input_pipeline.make_train_iterator(tiny_config.data, srcs["train"], seed=0,
                                          batch_size_per_process=4)
  batch = next(it)
  assert batch["target"].shape == (4, 32, 32, 1)
  assert batch["cond"].shape == (4, 32, 32, 2)
  assert batch["target"].min() >= -1 and batch["target"].max() <= 1
