import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from neurflow.cli import main

from conftest import TINY_NET_PY as MODEL_PY




@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, tmp_path / "data.pt")
    return tmp_path


def run_args(ws, out="out", extra=()):
    return ["run", "--model", f"{ws}/mymodel.py:build", "--data", f"{ws}/data.pt", "--target", "dog",
            "--layers", "head,block2,block1", "--tau", "3", "--top-k", "5", "--ig-steps", "8",
            "--granularities", "1,0.5", "--selection", "labelled", "--out", str(ws / out), "--quiet", *extra]


def test_layers_run_show(workspace, capsys):
    assert main(["layers", f"{workspace}/mymodel.py:build"]) == 0
    out = capsys.readouterr().out
    assert "block1\tSequential" in out and "head\tLinear" in out
    assert main(run_args(workspace)) == 0
    doc = json.loads((workspace / "out" / "circuit.json").read_text())
    assert doc["target"] == 1 and doc["schema_version"] == 1 and doc["meta"]["target_name"] == "dog"
    assert [l["name"] for l in doc["layers"]] == ["head", "block2"]
    capsys.readouterr()
    assert main(["show", str(workspace / "out")]) == 0
    shown = capsys.readouterr().out
    assert "class 1 (dog)" in shown and "traced top path" in shown and "block1" in shown


@pytest.mark.parametrize("change,needle", [
    ({"--layers": "head,blok2,block1"}, "did you mean block2"),
    ({"--data": "/nonexistent/x.pt"}, "--data"),
    ({"--target": "9"}, "0..3"),
    ({"--target": "dgo"}, "did you mean dog"),
    ({"--top-k": "500"}, "top_k"),
    ({"--granularities": "1,2"}, "granularities"),
    ({"--model": "torchvision:resnet19"}, "torchvision:resnet18"),
    ({"--out": "/proc/forbidden"}, "--out"),
])
def test_bad_input_is_one_line_and_exit_2(workspace, change, needle):
    args = run_args(workspace)
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    proc = subprocess.run([sys.executable, "-m", "neurflow.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_pickle_checkpoint_refused_without_trust(workspace):
    from neurflow.models import load_model
    model = load_model(f"{workspace}/mymodel.py:build").model
    torch.save(model, workspace / "full.pt")  # a pickled module, not a state dict
    args = run_args(workspace, extra=("--weights", str(workspace / "full.pt")))
    proc = subprocess.run([sys.executable, "-m", "neurflow.cli", *args], capture_output=True, text=True,
                          cwd=workspace)
    assert proc.returncode == 2 and "--trust-checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    torch.save(model.state_dict(), workspace / "sd.pt")
    assert main(run_args(workspace, extra=("--weights", str(workspace / "sd.pt")))) == 0


def test_sigkill_then_resume_equals_uninterrupted(workspace):
    big = run_args(workspace, "killed")
    big[big.index("--ig-steps") + 1] = "50"
    big[big.index("--granularities") + 1] = "1,0.5,0.25"
    proc = subprocess.Popen([sys.executable, "-m", "neurflow.cli", *big], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    manifest = workspace / "killed" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and '"layers_done"' in manifest.read_text() and "layer0" in manifest.read_text():
            break
        time.sleep(0.02)
    finished_first = proc.poll() is not None
    os.kill(proc.pid, signal.SIGKILL) if not finished_first else None
    proc.wait()
    if not finished_first:
        assert not (workspace / "killed" / "circuit.json").exists()
    assert main(big) == 0
    ref = run_args(workspace, "ref")
    ref[ref.index("--ig-steps") + 1] = "50"
    ref[ref.index("--granularities") + 1] = "1,0.5,0.25"
    assert main(ref) == 0
    a = json.loads((workspace / "killed" / "circuit.json").read_text())
    b = json.loads((workspace / "ref" / "circuit.json").read_text())
    for d in (a, b):
        d["meta"].pop("timings_s")
        d["meta"].pop("data", None)
        for layer in d["layers"]:
            layer.pop("seconds")
    assert a == b


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Sneaker" in out and "demo finished" in out
    from neurflow import load
    c = load(tmp_path / "demo")
    assert c.target == 7 and [l.name for l in c.layers] == ["head", "block4", "block3", "block2"]
    assert all(len(l.groups) >= 1 for l in c.layers) and all(len(l.groups) >= 2 for l in c.layers[1:])
