"""A lighter start (issue 14): the command line's parser, and so every ``--help``, imports no torch
(nor scipy.stats or scikit-learn); the commands import them when they run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "scipy.stats", "sklearn", "PIL.Image", "tqdm")
COMMANDS = ("run", "demo", "layers", "show", "report", "debug", "audit", "label", "eval", "atlas")

PROBE = """
import contextlib, io, json, sys
from neurflow.cli import main
helps = {}
for argv in [["--help"]] + [[c, "--help"] for c in %r]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    helps[" ".join(argv)] = out.getvalue()
print(json.dumps({"loaded": [m for m in %r if m in sys.modules], "helps": helps}))
"""


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and parse its last line as JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_no_torch():
    result = _fresh(PROBE % (COMMANDS, HEAVY))
    assert result["loaded"] == []
    helps = result["helps"]
    assert all(c in helps["--help"] for c in COMMANDS)
    # the generated parts are all there: scheme help, config flags, labeler options with defaults, experiments
    assert "torchvision:NAME" in helps["run --help"] and "zoo:NAME" in helps["run --help"]
    assert "timm:NAME" in helps["layers --help"] and "FOLDER or FILE.pt" in helps["run --help"]
    assert "--top-k" in helps["run --help"] and "--transform" in helps["run --help"]
    assert "(default: ViT-B-32)" in helps["label --help"] and "(default: 60.0)" in helps["label --help"]
    assert "weight-norm" in helps["eval --help"] and "--draws" in helps["eval --help"]
    assert "--trust-checkpoint" in helps["debug --help"]


def test_a_command_still_loads_torch_when_it_runs():
    result = _fresh(
        "import json, sys\nfrom neurflow.cli import main\nmain(['layers', 'zoo:fashion-cnn'])\n"
        "print(json.dumps('torch' in sys.modules))"
    )
    assert result is True


def test_scheme_registries_hold_the_built_ins_without_torch():
    result = _fresh(
        "import json, sys\nfrom neurflow.sources.schemes import data_schemes, model_schemes\n"
        "print(json.dumps([list(model_schemes()), list(data_schemes()), 'torch' in sys.modules]))"
    )
    models, data, torch_loaded = result
    assert models[0] == "torchvision" and {"zoo", "timm", "factory", "torchscript"} <= set(models)
    assert {"zoo", "path"} <= set(data)
    assert not torch_loaded


def test_the_light_registries_are_the_ones_the_library_uses():
    import neurflow
    from neurflow import options
    from neurflow.analysis import evaluate
    from neurflow.sources import datasets, models, schemes

    assert tuple(evaluate.EXPERIMENTS) == options.EXPERIMENT_NAMES
    assert datasets.TRANSFORMS is options.TRANSFORMS
    assert neurflow.register_model_scheme is schemes.register_model_scheme
    assert neurflow.register_data_scheme is schemes.register_data_scheme
    loaded = models.load_model("torchvision:resnet18")  # the built-in plugin, registered through schemes.py
    assert type(loaded.model).__name__ == "ResNet" and loaded.spec == "torchvision:resnet18"


@pytest.mark.slow
def test_bench_start_prints_a_time_per_command(tmp_path):
    out = tmp_path / "start.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_start.py"), "--repeat", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    times = json.loads(out.read_text())["median_s"]
    assert "neurflow --help" in times and "neurflow layers zoo:fashion-cnn" in times
    assert all(t > 0 for t in times.values()) and len(proc.stdout.strip().splitlines()) == len(times)
