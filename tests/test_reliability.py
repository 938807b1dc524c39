"""Reliability and security guarantees (docs/reliability.md), each one a test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import neurflow
from neurflow.config import NeurFlowConfig
from neurflow.errors import NeurFlowError
from neurflow.store import model_hash, run_hash

from conftest import SKIP_LAYERS, TINY_NET_PY, assert_same_state, majority_class, model_state, one_line

SIDE_NET_PY = (
    TINY_NET_PY
    + """
class Side(Net):
    def __init__(self):
        super().__init__()
        self.aux = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        self.aux(x)                       # computed, but the output does not depend on it
        return super().forward(x)

def side():
    return Side()
"""
)


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "m.py").write_text(SIDE_NET_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, tmp_path / "d.pt")
    return tmp_path


FAULT_INJECT = Path(__file__).with_name("fault_inject.py")


def cli(*args, env=None, cwd=None, fault=None):
    """``neurflow ARGS`` in a subprocess; ``fault``: a glob of the file whose write kills it (``fault_inject.py``)."""
    command = [str(FAULT_INJECT), fault] if fault else ["-m", "neurflow.cli"]
    return subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def base(ws, out="out", **change):
    args = {
        "--model": f"{ws}/m.py:build",
        "--data": f"{ws}/d.pt",
        "--target": "2",
        "--layers": "head,block2,block1",
        "--tau": "3",
        "--top-k": "5",
        "--ig-steps": "8",
        "--granularities": "1,0.5",
        "--out": str(ws / out),
    }
    args.update(change)
    return ["run", *[x for kv in args.items() for x in kv], "--quiet"]


def artifact(directory):
    """circuit.json without what may differ between equal runs (timings)."""
    doc = json.loads((directory / "circuit.json").read_text())
    doc["meta"].pop("timings_s")
    for layer in doc["layers"]:
        layer.pop("seconds")
    return doc


# 1. bad input: exit code 2 and one line (parameter, expected, given, hint) --------------------------
@pytest.mark.parametrize(
    "change,needle",
    [
        ({"--layers": "head,blok2,block1"}, "did you mean block2"),  # unknown layer
        ({"--layers": "block1,block2,head"}, "top down"),  # not top down
        ({"--target": "9"}, "0..3"),  # target out of range
        ({"--target": "dgo"}, "did you mean dog"),  # unknown class name
        ({"--target": "0"}, "no image is predicted as 0"),  # nothing predicted as it
        ({"--top-k": "500"}, "--top-k"),  # fewer crops than top-k
        ({"--data": "/nonexistent/x.pt"}, "--data"),  # missing DATA
        ({"--model": "torchvision:resnet19"}, "did you mean torchvision:resnet18"),  # unresolvable model
        ({"--model": "no_such_pkg.mod:build"}, "--model"),
        ({"--out": "/proc/forbidden"}, "--out"),  # unwritable --out
    ],
)
def test_bad_run_input(ws, change, needle):
    line = one_line(base(ws, **change))
    assert needle in line and "expected" in line and "got" in line


def test_layer_not_on_the_path_to_the_output(ws):
    assert "does not depend on aux" in one_line(
        base(ws, **{"--model": f"{ws}/m.py:side", "--layers": "head,aux,block1"})
    )


def test_empty_folder_and_folder_of_bad_images(ws):
    (ws / "empty").mkdir()
    assert "a folder with images" in one_line(base(ws, **{"--data": str(ws / "empty")}))
    d = ws / "imgs" / "cls"
    d.mkdir(parents=True)
    (d / "broken.png").write_bytes(b"not an image")
    Image.new("RGB", (4, 4)).save(d / "tiny.png")
    line = one_line(base(ws, **{"--data": str(ws / "imgs"), "--transform": "none"}), warnings=True)
    assert "at least one readable image" in line


def test_grey_and_rgba_images_are_converted_bad_ones_skipped_and_counted(ws):
    d = ws / "mixed"
    d.mkdir()
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray(rng.randint(0, 255, (16, 16), dtype=np.uint8), mode="L").save(d / f"grey{i}.png")
        Image.fromarray(rng.randint(0, 255, (16, 16, 4), dtype=np.uint8), mode="RGBA").save(d / f"rgba{i}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.new("RGB", (5, 5)).save(d / "tiny.png")
    proc = cli(*base(ws, **{"--data": str(d), "--transform": "none", "--target": "2"}))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((ws / "out" / "circuit.json").read_text())["meta"]
    assert (
        meta["data_skipped"] == 2 and meta["n_images"] == 8 and len(meta["files"]) == 10
    )  # index -> file, the skipped two included
    assert "skipped 2 unreadable image(s) of 10" in proc.stderr


def test_pickle_checkpoint_nan_weights_and_newer_schema(ws):
    from neurflow.sources.models import load_model

    model = load_model(f"{ws}/m.py:build").model
    torch.save(model, ws / "pickled.pt")
    assert "--trust-checkpoint" in one_line([*base(ws), "--weights", str(ws / "pickled.pt")])
    state = model.state_dict()
    state["block1.0.weight"] = torch.full_like(state["block1.0.weight"], float("nan"))
    torch.save(state, ws / "nan.pt")
    assert "finite" in one_line([*base(ws), "--weights", str(ws / "nan.pt")])
    assert cli(*base(ws)).returncode == 0
    doc = json.loads((ws / "out" / "circuit.json").read_text())
    doc["schema_version"] = 99
    (ws / "out" / "circuit.json").write_text(json.dumps(doc))
    assert "upgrade neurflow" in one_line(["show", str(ws / "out")])


def test_commands_on_a_directory_that_is_not_a_run(ws):
    for args in (
        ["show"],
        ["report"],
        ["debug", "--image", "0"],
        ["audit"],
        ["label", "--labeler", "annotations", "--annotations", "zoo"],
        ["eval", "fidelity"],
    ):
        cmd = [args[0], str(ws / "nothing"), *args[1:]]
        assert "DIR" in one_line(cmd)


# 2. SIGKILL while saving, then resume: the same artifact, never readable as complete ----------------
@pytest.mark.parametrize(
    "fault", ["manifest.json", "layer0.json", "layer1.npz", "arrays.npz", "*/crops/*.png", "circuit.json"]
)
def test_killed_while_saving_resumes_to_the_same_artifact(ws, fault):
    layers = {"--layers": "head,block2,block1,stem"}
    killed = cli(*base(ws, "killed", **layers), fault=fault)
    assert killed.returncode == -9, killed.stderr
    with pytest.raises(NeurFlowError):
        neurflow.load(ws / "killed")  # a partial run is never read as complete
    assert cli(*base(ws, "killed", **layers)).returncode == 0
    assert cli(*base(ws, "ref", **layers)).returncode == 0
    assert artifact(ws / "killed") == artifact(ws / "ref")
    assert not list((ws / "killed").rglob(".tmp-*")) and not (ws / "killed" / "partial").exists()
    assert sorted(p.name for p in (ws / "killed" / "crops").iterdir()) == sorted(
        p.name for p in (ws / "ref" / "crops").iterdir()
    )


# 3. the user's model is left as found, also when a command fails midway -----------------------------
class Boom(Exception):
    pass


def failing_after(module, n):
    """A forward hook that raises after ``n`` calls (the test's own hook: counted before and after)."""
    calls = {"n": 0}

    def hook(mod, args, out):
        calls["n"] += 1
        if calls["n"] > n:
            raise Boom("injected failure")

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("command", ["run", "debug", "audit", "eval"])
def test_model_unchanged_when_a_command_fails_midway(skipnet, tiny_images, tmp_path, command):
    from neurflow.analysis.audit import audit
    from neurflow.analysis.debug import debug_image
    from neurflow.analysis.evaluate import Context, Options
    from neurflow.analysis.evaluate.fidelity import fidelity
    from neurflow.analysis.run import Run
    from neurflow.sources.datasets import Dataset

    target = majority_class(skipnet, tiny_images)
    c = (
        neurflow.NeurFlow(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5))
        .fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS, out=tmp_path / "run")
        .circuit_
    )
    with torch.no_grad():
        labels = skipnet(tiny_images).argmax(1)
    labels[::2] = (target + 1) % 5  # some false positives, some true positives
    skipnet.block2.train()  # a mixed state the commands must restore
    skipnet.head.weight.requires_grad_(False)
    handle = failing_after(skipnet.block3, 2)  # debug calls block3 three times: once for the crops, twice to verify
    before = model_state(skipnet)
    with pytest.raises(Boom):
        if command == "run":
            neurflow.NeurFlow(tau=3, top_k=6, ig_steps=8).fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS)
        elif command == "debug":
            debug_image(c, skipnet, tiny_images[0])
        elif command == "audit":
            audit(c, skipnet, tiny_images, labels)
        else:
            run = Run(tmp_path / "run", quiet=True).attach(skipnet, Dataset(tiny_images, labels))
            fidelity(Context(run, Options(draws=1)))
    assert_same_state(before, model_state(skipnet))
    handle.remove()


# 4. determinism: same seed, same circuit.json; image order does not change the core sets ------------
def test_same_seed_same_artifact_and_order_invariant_cores(ws):
    assert cli(*base(ws, "a")).returncode == 0 and cli(*base(ws, "b")).returncode == 0
    a = artifact(ws / "a")
    assert a == artifact(ws / "b")
    obj = torch.load(ws / "d.pt")
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    torch.save({"images": obj["images"][perm], "labels": obj["labels"][perm]}, ws / "p.pt")
    assert cli(*base(ws, "p", **{"--data": str(ws / "p.pt")})).returncode == 0
    p = json.loads((ws / "p" / "circuit.json").read_text())
    for la, lp in zip(a["layers"], p["layers"]):
        assert {n: v["core"] for n, v in la["nodes"].items()} == {n: v["core"] for n, v in lp["nodes"].items()}


# 6. caches (run identity) are keyed by the model weights, the data and every setting ----------------
def test_run_identity_covers_weights_data_and_every_setting(skipnet, tiny_images):
    cfg = NeurFlowConfig()

    def digest(m, imgs, settings):
        return run_hash(
            model_hash(m),
            neurflow.store.hash_tensors([("images", imgs)]),  # noqa: E731
            settings,
        )

    ref = digest(skipnet, tiny_images, cfg.method_dict())
    changed = {
        "tau": 5,
        "top_k": 7,
        "ig_steps": 9,
        "granularities": [1.0],
        "stride_ratio": 0.25,
        "adaptive_eps": 0.1,
        "edge_norm": "reference",
        "max_sub_concepts": 3,
        "monosemantic_threshold": 0.5,
        "max_groups": 4,
        "n_groups": 2,
        "group_edge_rule": "once",
        "top_n": 1,
        "selection": "labelled",
        "seed": 1,
        "trace_rule": "sum",
        # settings that enter the identity only away from their default (so older runs keep theirs)
        "precision": "bf16",
        "ig_tol": 1e-2,
        "channel_axis": "-1",
    }
    conditional = {"precision", "ig_tol", "channel_axis"}
    assert set(changed) - conditional == set(cfg.method_dict())  # every method setting is covered here
    assert set(NeurFlowConfig(precision="bf16", ig_steps="auto", channel_axis="-1").method_dict()) == set(changed)
    for key, value in changed.items():
        assert digest(skipnet, tiny_images, {**cfg.method_dict(), key: value}) != ref, key
    other = type(skipnet)()
    other.load_state_dict(skipnet.state_dict())
    with torch.no_grad():
        other.head.bias[0] += 1e-6
    assert digest(other, tiny_images, cfg.method_dict()) != ref
    moved = tiny_images.clone()
    moved[0, 0, 0, 0] += 1e-6
    assert digest(skipnet, moved, cfg.method_dict()) != ref
    assert digest(skipnet, tiny_images, NeurFlowConfig(batch_size=3, device="cpu").method_dict()) == ref


def test_a_changed_setting_or_model_is_not_served_from_the_run_directory(ws):
    assert cli(*base(ws)).returncode == 0
    assert "different run" in one_line(base(ws, **{"--tau": "2"}))
    from neurflow.sources.models import load_model

    state = load_model(f"{ws}/m.py:build").model.state_dict()
    state["head.bias"] = state["head.bias"] + 1e-3
    torch.save(state, ws / "w.pt")
    assert "different run" in one_line([*base(ws), "--weights", str(ws / "w.pt")])
    assert cli(*base(ws, **{"--tau": "2"}), "--overwrite").returncode == 0
    assert json.loads((ws / "out" / "circuit.json").read_text())["settings"]["tau"] == 2
