"""Volume geometry: slice axes and the one centre pad/crop of slices and volumes."""

import numpy as np
import pytest

from sciimg_jax.core import volumes


def test_pad_crop_and_restore():
  x = np.arange(24 * 28, dtype=np.float32).reshape(24, 28, 1)
  y = volumes.center_pad_crop(x, (32, 24), -1.0)
  expected = np.full((32, 24, 1), -1.0, np.float32)
  expected[4:28] = x[:, 2:26]
  np.testing.assert_array_equal(y, expected)
  back = volumes.center_pad_crop(y, (24, 28), -1.0)
  np.testing.assert_array_equal(back[:, 2:26], x[:, 2:26])
  assert np.all(back[:, :2] == -1) and np.all(back[:, 26:] == -1)
  odd = volumes.center_pad_crop(np.ones((5, 7)), (8, 4), 0.0)
  assert odd[:1].sum() == 0 and odd[1:6].sum() == 5 * 4 and odd[6:].sum() == 0


@pytest.mark.parametrize("shape,target", [((7, 10, 5), (8, 8, 8)), ((9, 6, 11), (4, 9, 11)),
                                          ((27, 22, 15), (24, 24, 16))])
def test_pad_crop_round_trip_3d(shape, target):
  vol = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  padded = volumes.center_pad_crop(vol, target, -1.0)
  assert padded.shape == target
  back = volumes.center_pad_crop(padded, shape, 7.0)
  kept = tuple(slice((n - m) // 2, (n - m) // 2 + m) if n > m else slice(None)
               for n, m in zip(shape, target))
  np.testing.assert_array_equal(back[kept], vol[kept])
  assert np.sum(back == 7.0) == vol.size - vol[kept].size        # the cut border is the fill
  assert np.sum(padded == -1.0) == padded.size - vol[kept].size  # the pad is the fill


def test_per_channel_fill_and_trailing_axes():
  x = np.ones((3, 4, 2), np.float32)
  y = volumes.center_pad_crop(x, (5, 4), np.array([-1.0, 0.0], np.float32))
  assert y.shape == (5, 4, 2)
  np.testing.assert_array_equal(y[0, :, 0], -1.0)
  np.testing.assert_array_equal(y[0, :, 1], 0.0)
  np.testing.assert_array_equal(y[1:4], 1.0)


def test_axes_are_ras_slicing():
  vol = np.zeros((2, 3, 4))
  assert np.take(vol, 0, axis=volumes.AXES["axial"]).shape == (2, 3)
  assert np.take(vol, 0, axis=volumes.AXES["coronal"]).shape == (2, 4)
  assert np.take(vol, 0, axis=volumes.AXES["sagittal"]).shape == (3, 4)


def test_position_embedding_spans_minus_one_to_one_along_each_axis():
  pos = volumes.position_embedding((3, 5, 1))
  assert pos.shape == (3, 5, 1, 3) and pos.dtype == np.float32
  np.testing.assert_array_equal(pos[:, 0, 0, 0], [-1.0, 0.0, 1.0])
  np.testing.assert_array_equal(pos[0, :, 0, 1], [-1.0, -0.5, 0.0, 0.5, 1.0])
  np.testing.assert_array_equal(pos[..., 2], 0.0)       # a single slice sits at 0
  assert np.all(pos[1, 2, 0] == [0.0, 0.0, 0.0])         # the centre voxel
