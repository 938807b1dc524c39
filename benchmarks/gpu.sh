#!/usr/bin/env bash
# The one prepared GPU check (issue 13), for a lent machine: ResNet50 (seeded, bn-perturbed), 224 px,
# 50 images, the paper's layers, tau 16, k 50: ours vs the published algorithm on the same GPU (the
# baseline capped per layer and extrapolated per node), then `neurflow demo --device cuda`.
# Budget: about 6 minutes on one H100/H200 (the baseline capped at 25 s per layer), then ours with
# --precision tf32 and bf16.  `benchmarks/gpu.sh --smoke` runs a tiny CPU version (CI).
#   on the lent machine:  bash benchmarks/gpu.sh        (figures in $OUT/gpu.json when $OUT is set)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python
    elif python3 -c "import torch, torchvision" 2>/dev/null; then PY=python3   # the lent machine: torch there, offline
    else   # a bare machine with an index: a venv with the pinned torch and the test extra
        python3 -m venv .venv && .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 && .venv/bin/pip install -q -e '.[test]'
        PY=.venv/bin/python
    fi
fi
if [ "$PY" = python3 ]; then   # neurflow from this tree; missing pure-Python packages (captum) carried as wheels in .whl/
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" benchmarks/bench_gpu.py "$@"
