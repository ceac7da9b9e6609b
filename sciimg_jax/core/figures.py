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


def save_inpainting_grid(path, *, voided, mask, result, target=None):
  """One row per slice: voided input | mask | inpainted | ground truth (if given).

  Images are (N, H, W) in [-1, 1]; masks (N, H, W) in {0, 1}.
  """
  columns = [("voided", voided), ("mask", mask), ("inpainted", result)]
  if target is not None:
    columns.append(("ground truth", target))
  n = len(voided)
  fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.2 * n), squeeze=False)
  for row in range(n):
    for col, (title, images) in enumerate(columns):
      ax = axes[row, col]
      lo, hi = (0.0, 1.0) if title == "mask" else (-1.0, 1.0)
      ax.imshow(np.rot90(np.asarray(images[row])), cmap="gray", vmin=lo, vmax=hi)
      ax.set_axis_off()
      if row == 0:
        ax.set_title(title, fontsize=9)
  return save_figure(fig, path)
