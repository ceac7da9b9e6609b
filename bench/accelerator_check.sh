#!/usr/bin/env bash
# The accelerator figures in one run, at most 8 minutes on one GPU: the U-Net train
# step at the BraTS axial config (float32 and bfloat16; plain, remat, accumulate 2; seconds,
# images/s, XLA's memory analysis against the device's peak in use), MONAI's step beside it
# where torch is installed, hierarchical inpainting of a 240x240x155 case, Diff-Ensembler's
# average and fused samplers on 192x192x152, and the environment. Each row runs in its own
# process under a time limit (bench/accelerator_check.py says which and how long); a row that
# times out or fails is reported as such and the run goes on. Writes accelerator_check.json
# and accelerator_check.md under $OUT or the folder given.
#
#   OUT=/tmp/check bash bench/accelerator_check.sh
#   bash bench/accelerator_check.sh /tmp/check
#   bash bench/accelerator_check.sh /tmp/check --dry-run      # tiny sizes on the CPU
#   bash bench/accelerator_check.sh --plan                    # the rows and their limits
#
# It installs nothing (a lent machine may reach no registry): it uses $PYTHON, else the
# repository's .venv, else python3; without torch and MONAI the MONAI row says 'skipped'.
# Other flags go to the driver: --rows=..., --budget=SECONDS, --peer-python=PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then
  PYTHON=.venv/bin/python
fi
exec "${PYTHON:-python3}" bench/accelerator_check.py "$@"
