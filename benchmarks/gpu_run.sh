#!/usr/bin/env bash
# On the lent GPU machine (device tool, `carry: [".gpu"]`): unpack .gpu/ (benchmarks/gpu_bundle.py) and run
# the GPU check at the 7B shape; the JSON lands in results/gpu-check/ and, where $OUT is set, in $OUT too.
#   bash benchmarks/gpu_run.sh [BUDGET_SECONDS] [SHAPE]
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-480}"
shape="${2:-7b}"
site=/tmp/inspect-em-site
mkdir -p "$site"
for wheel in .gpu/wheels/*; do python3 -m zipfile -e "$wheel" "$site"; done
export PYTHONPATH="$PWD/src:$site:$PWD/.gpu/stubs:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import inspect_ai, trl, torch; print('inspect_ai', inspect_ai.__version__, 'trl', trl.__version__, \
'torch', torch.__version__, torch.cuda.get_device_name(0))"
status=0
python3 benchmarks/gpu_check.py --shape "$shape" --device cuda --budget "$budget" --tokenizer .gpu/tokenizer \
    || status=$?
if [ -n "${OUT:-}" ]; then cp results/gpu-check/*.json "$OUT/" 2>/dev/null || true; fi
exit "$status"
