"""The prepared GPU check runs on the CPU (``--smoke``), so it is known to work before a GPU is lent."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_smoke_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path)}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--precisions", "bf16"]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu" and result["smoke"] and result["demo_exit"] == 0
    assert result["time_ratio"] > 0
    assert result["precisions"]["bf16"]["wall_s"] > 0
    for layer, a in result["baseline"]["agreement"].items():  # the same cores as the published algorithm
        assert a["compared"] >= 1 and a["identical_ordered"] == a["compared"], layer
