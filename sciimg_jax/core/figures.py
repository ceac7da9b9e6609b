"""PNG figures, written atomically."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sciimg_jax.core import atomic_files  # noqa: E402


def save_figure(fig, path):
  """Saves a matplotlib figure to `path` via a temporary file and a rename."""
  try:
    with atomic_files.atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)
  return pathlib.Path(path)


def save_image_grid(path, columns, ranges=None):
  """One row per image, one column per entry of `columns` ({title: (N, H, W)}).

  `ranges` maps a title to its display (lo, hi); the default is [-1, 1].
  """
  ranges = ranges or {}
  n = len(next(iter(columns.values())))
  fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.2 * n), squeeze=False)
  for col, (title, images) in enumerate(columns.items()):
    lo, hi = ranges.get(title, (-1.0, 1.0))
    for row in range(n):
      ax = axes[row, col]
      ax.imshow(np.rot90(np.asarray(images[row])), cmap="gray", vmin=lo, vmax=hi)
      ax.set_axis_off()
      if row == 0:
        ax.set_title(title, fontsize=9)
  return save_figure(fig, path)


def save_triplanar(path, columns, centre, ranges=None):
  """Axial, coronal and sagittal planes (rows) through voxel `centre` of each volume (columns).

  `columns` is {title: (X, Y, Z) volume}; `ranges` maps a title to its display (lo, hi)
  (default: the volume's own range).
  """
  ranges = ranges or {}
  fig, axes = plt.subplots(3, len(columns), figsize=(2.4 * len(columns), 7.2), squeeze=False)
  for row, (plane, axis) in enumerate((("axial", 2), ("coronal", 1), ("sagittal", 0))):
    for col, (title, vol) in enumerate(columns.items()):
      lo, hi = ranges.get(title, (float(np.min(vol)), float(np.max(vol))))
      image = np.rot90(np.take(vol, centre[axis], axis=axis))
      axes[row, col].imshow(image, cmap="gray", vmin=lo, vmax=hi)
      axes[row, col].set_axis_off()
      if row == 0:
        axes[row, col].set_title(title, fontsize=9)
    axes[row, 0].text(-0.1, 0.5, plane, transform=axes[row, 0].transAxes, rotation=90,
                      va="center", fontsize=9)
  return save_figure(fig, path)
