"""XLA flags that make the CPU backend faster for these networks; set before JAX starts.

jaxlib 0.10 hands convolutions, reductions and elementwise ops on CPU to YNNPACK,
whose convolutions (weight gradients above all) are slower than XLA's own and whose
elementwise mode splits fusions. Keeping YNNPACK to reductions took the reference
U-Net train step from ~1400 to ~1100 ms on 2 cores (bench/unet_train_step.py).
The flag only concerns the CPU backend.
"""

import os

CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"


def set_cpu_flags():
  """Adds CPU_FLAGS to XLA_FLAGS unless the user set that option already."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + CPU_FLAGS).strip()
