import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import neurflow
from neurflow.analysis.candidates import fp_crop_name
from neurflow.cli import main

from conftest import TINY_NET_PY as MODEL_PY
from conftest import one_line, run_args


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, tmp_path / "data.pt")
    return tmp_path


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


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"--layers": "head,blok2,block1"}, "did you mean block2"),
        ({"--data": "/nonexistent/x.pt"}, "--data"),
        ({"--target": "9"}, "0..3"),
        ({"--target": "dgo"}, "did you mean dog"),
        ({"--top-k": "500"}, "--top-k"),
        ({"--granularities": "1,2"}, "--granularities"),
        ({"--model": "torchvision:resnet19"}, "torchvision:resnet18"),
        ({"--out": "/proc/forbidden"}, "--out"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workspace, change, needle):
    args = run_args(workspace)
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    assert needle in one_line(args)


def test_pickle_checkpoint_refused_without_trust(workspace):
    from neurflow.sources.models import load_model

    model = load_model(f"{workspace}/mymodel.py:build").model
    torch.save(model, workspace / "full.pt")  # a pickled module, not a state dict
    args = run_args(workspace, extra=("--weights", str(workspace / "full.pt")))
    proc = subprocess.run([sys.executable, "-m", "neurflow.cli", *args], capture_output=True, text=True, cwd=workspace)
    assert proc.returncode == 2 and "--trust-checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    torch.save(model.state_dict(), workspace / "sd.pt")
    assert main(run_args(workspace, extra=("--weights", str(workspace / "sd.pt")))) == 0


def test_sigkill_then_resume_equals_uninterrupted(workspace):
    big = run_args(workspace, "killed")
    big[big.index("--ig-steps") + 1] = "50"
    big[big.index("--granularities") + 1] = "1,0.5,0.25"
    proc = subprocess.Popen(
        [sys.executable, "-m", "neurflow.cli", *big], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    assert c.target == 7 and [l.name for l in c.layers] == ["head", "block4", "block3"] and c.input_layer == "block2"
    assert all(len(l.groups) >= 1 for l in c.layers) and all(len(l.groups) >= 2 for l in c.layers[1:])
    # selective (the adaptive rule): every layer's node set, and the input layer's core set, at most
    # half of the layer's channels (block4 and block3 have 128, block2 64)
    widths = {"block4": 128, "block3": 128, "block2": 64}
    sets = {l.name: set(l.nodes) for l in c.layers[1:]}
    sets["block2"] = {j for n in c.layers[-1].nodes.values() for j in n.core}
    assert all(0 < len(s) <= widths[name] // 2 for name, s in sets.items()), {k: len(v) for k, v in sets.items()}


def test_debug_by_index_and_by_file(workspace, capsys):
    from PIL import Image

    out = workspace / "out"
    assert main(run_args(workspace)) == 0
    capsys.readouterr()
    assert main(["debug", str(out), "--image", "3", "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "debug" / "index-3.json").read_text())
    assert printed == saved and (out / "debug" / "index-3.png").is_file()
    assert saved["layer"] == "block2" and saved["image"]["index"] == 3 and saved["image"]["label"] == 3
    assert {"score", "score_clipped", "crops", "strong"} <= set(saved["groups"][0])
    assert {"target_logit_change", "top5_before", "top5_after"} <= set(saved["verification"])
    assert len(saved["verification"]["top5_after"]) == 4  # the model has 4 classes
    # an image file: prepared like the run's inputs (resized, [0, 1]); twice gives the same result
    img = (torch.rand(16, 16, 3) * 255).byte().numpy()
    Image.fromarray(img).save(workspace / "photo <1>.png")
    assert main(["debug", str(out), "--image", str(workspace / "photo <1>.png"), "--threshold", "0.6"]) == 0
    text = capsys.readouterr().out
    assert "verification: zeroing G" in text and "top-5 after" in text
    first = json.loads((out / "debug" / "photo-1.json").read_text())
    assert main(["debug", str(out), "--image", str(workspace / "photo <1>.png"), "--threshold", "0.6", "--quiet"]) == 0
    assert json.loads((out / "debug" / "photo-1.json").read_text()) == first  # deterministic
    assert first["threshold"] == 0.6 and first["representatives"] == 5
    assert main(["debug", str(out), "--image", "3", "--representatives", "all", "--quiet"]) == 0
    assert "all members per group" in capsys.readouterr().out
    every = json.loads((out / "debug" / "index-3.json").read_text())
    assert every["representatives"] == "all"
    five = {g["group"]: g["representatives"] for g in saved["groups"]}  # index-3 with the default 5
    for g in every["groups"]:  # all members: the first 5 are the default's representatives
        assert len(five[g["group"]]) == min(5, len(g["representatives"]))
        assert g["representatives"][:5] == five[g["group"]]
    report = (out / "report.html").read_text()
    assert "photo-1" in report and "photo <1>" not in report  # the file name is escaped inside the JSON


def test_debug_and_audit_bad_input(workspace):
    out = str(workspace / "out")
    assert main(run_args(workspace)) == 0
    assert "0..9" in one_line(["debug", out, "--image", "99"])
    assert "representatives" in one_line(["debug", out, "--image", "0", "--representatives", "0"])
    assert "below the class layer" in one_line(["debug", out, "--image", "0", "--layer", "head"])
    assert "did you mean block2" in one_line(["debug", out, "--image", "0", "--layer", "blok2"])
    assert "--image" in one_line(["debug", out, "--image", str(workspace / "nope.png")])
    assert "DIR" in one_line(["debug", str(workspace / "nothing"), "--image", "0"])
    torch.save(torch.randn(4, 3, 16, 16), workspace / "unlabelled.pt")
    assert "labelled data" in one_line(["audit", out, "--data", str(workspace / "unlabelled.pt")])
    # a different model than the run's
    from neurflow.sources.models import load_model

    state = load_model(f"{workspace}/mymodel.py:build").model.state_dict()
    torch.save({k: v + 1 for k, v in state.items()}, workspace / "other.pt")
    assert "differ" in one_line(
        [
            "debug",
            out,
            "--image",
            "0",
            "--weights",
            str(workspace / "other.pt"),
            "--model",
            f"{workspace}/mymodel.py:build",
        ]
    )


def test_audit_ranks_groups_and_writes_json(workspace, capsys):
    from neurflow.sources.models import load_model

    out = workspace / "out"
    args = run_args(workspace)
    args[args.index("--target") + 1] = "2"  # the class this random model predicts: "<b>bird</b>"
    assert main(args) == 0
    model = load_model(f"{workspace}/mymodel.py:build").model
    torch.manual_seed(5)
    images = torch.randn(60, 3, 16, 16)
    with torch.no_grad():
        pred = model(images).argmax(1)
    target = 2
    labels = pred.clone()
    hits = (pred == target).nonzero().flatten()
    assert len(hits) >= 2
    labels[hits[::2]] = 0  # false positives for class 2
    torch.save({"images": images, "labels": labels}, workspace / "audit.pt")
    capsys.readouterr()
    assert main(["audit", str(out), "--data", str(workspace / "audit.pt"), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((out / "audit.json").read_text())
    assert res["false_positives"] == len(hits[::2]) and res["true_positives"] == len(hits) - len(hits[::2])
    keys = {"layer", "group", "fp_logit_drop", "tp_logit_drop", "score"}
    assert res["groups"] and all(keys <= set(g) for g in res["groups"])
    assert [g["score"] for g in res["groups"]] == sorted((g["score"] for g in res["groups"]), reverse=True)
    report = (out / "report.html").read_text()
    assert 'id="audit"' in report and "<b>bird" not in report
    assert {"group", "subgroup", "neuron"} >= {g["kind"] for g in res["groups"]} and "group" in res["candidates"]
    shown = [e for g in res["groups"] for e in g.get("fp_exemplars", [])]
    assert shown and all((out / "audit-crops" / fp_crop_name(e)).is_file() for e in shown)
    assert main(["audit", str(out), "--data", str(workspace / "audit.pt")]) == 0
    text = capsys.readouterr().out
    assert "rank  layer" in text and "kind" in text and "joint fp fixed" in text
    from neurflow.analysis.summary import summary

    assert "dataset audit (audit.json), best candidates" in summary(neurflow.load(out), out)
    assert "--max-candidates: expected an integer >= 1" in one_line(
        ["audit", str(out), "--data", str(workspace / "audit.pt"), "--max-candidates", "0"]
    )
