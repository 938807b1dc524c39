#!/usr/bin/env bash
# The one prepared GPU check (issue 13), for a lent machine: ResNet50 (seeded, bn-perturbed), 224 px,
# 50 images, the paper's layers, tau 16, k 50: ours vs the published algorithm on the same GPU (the
# baseline capped per layer and extrapolated per node), then `neurflow demo --device cuda`.
# Budget: about 8 minutes on one H100.  `benchmarks/gpu.sh --smoke` runs a tiny CPU version (CI).
#   on the lent machine:  bash benchmarks/gpu.sh        (figures in $OUT/gpu.json when $OUT is set)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then   # a bare machine: a venv with the pinned torch and the test extra
    python3 -m venv .venv && .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 && .venv/bin/pip install -q -e '.[test]'
    PY=.venv/bin/python
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" benchmarks/bench_gpu.py "$@"
