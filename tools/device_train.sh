#!/bin/bash
# Runs on the lent GPU machine, in the repository root, with .device/ carried
# (made here by `python -m tools.device_kit pack`; see tools/device_kit.py):
#   bash tools/device_train.sh MINUTES [device_kit train options, e.g. --batch 32]
# Installs the carried wheels, fails fast if anything is missing, then trains
# the committed hyperprior-gmm checkpoint on CUDA for about MINUTES, mirroring
# each checkpoint (without Adam's state) and the learning curve into $OUT;
# then checks GPU coding against the CPU's (about 30 s) into $OUT/check, which
# `python -m tools.device_kit verify <files_at>/check` reads back here.
set -euo pipefail
MINUTES=${1:-8.2}
shift || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, compressai, constriction, codec.models.hyperprior, tools.train_image; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
trained=0
python3 -m tools.device_kit train --minutes "$MINUTES" --device cuda --mirror "$OUT" "$@" 2>&1 | tee "$OUT/log.txt" || trained=$?
# The check writes its files at its end: bounded, so that it cannot run the call past its limit.
timeout 90 python3 -m tools.device_kit check --out "$OUT/check" 2>&1 | tee "$OUT/check.txt"
exit "$trained"
