"""Run directories that are damaged, written concurrently or unwritable (issue 23, items 6, 7, 8,
17, 18): a damaged artifact is one line naming the file in every reader and is recomputed or
replaced by a rerun; every command writing into a finished run holds the directory's lock and
writes into the run it read; two debugged images of one file name keep both results; a full disk
or a read-only file system is one line and leaves every file whole."""

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import neurflow
from neurflow.analysis.labels import LABELERS, label_run, register
from neurflow.analysis.labels.base import Label, Labeler
from neurflow.analysis.run import Run
from neurflow.cli import main
from neurflow.errors import NeurFlowError

from conftest import TINY_NET_PY, one_line, run_args

FAULT_INJECT = Path(__file__).resolve().parent / "fault_inject.py"
LAYERS = ("--layers", "head,block2,block1,stem")  # two layers below the class layer, with groups


def workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "mymodel.py").write_text(TINY_NET_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, path / "data.pt")
    return path


def run_argv(ws, out="out", extra=(), inputs=None):
    """`neurflow run` into ``ws/out`` on the model and data of ``inputs`` (default ``ws``: the
    run hash covers their paths, so a rerun into a copy of a run names the original's)."""
    argv = run_args(inputs or ws, extra=extra)
    argv[argv.index("--layers") + 1] = LAYERS[1]
    argv[argv.index("--out") + 1] = str(ws / out)
    return argv


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished run, made once; tests work on copies."""
    ws = workspace(tmp_path_factory.mktemp("pristine"))
    assert main(run_argv(ws)) == 0
    return ws


@pytest.fixture
def ws(pristine, tmp_path):
    """A workspace with a copy of the finished run in ``ws/out``."""
    ws = workspace(tmp_path)
    shutil.copytree(pristine / "out", ws / "out")
    return ws


def artifact(directory: Path) -> dict:
    """circuit.json without what may differ between equal runs (timings)."""
    doc = json.loads((directory / "circuit.json").read_text())
    doc["meta"].pop("timings_s")
    for layer in doc["layers"]:
        layer.pop("seconds")
    return doc


def files(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def flip(data: bytes) -> bytes:
    """The top bit of the middle byte flipped (a lone byte >= 0x80: never valid UTF-8 JSON)."""
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :]


def edit_json(change):
    return lambda data: json.dumps(change(json.loads(data))).encode()


DAMAGE = {
    "truncated manifest": ("manifest.json", lambda b: b[: len(b) // 2]),
    "bit-flipped manifest": ("manifest.json", flip),
    "binary manifest": ("manifest.json", lambda b: bytes(range(256))),
    "[] as manifest": ("manifest.json", lambda b: b"[]"),
    "truncated circuit": ("circuit.json", lambda b: b[: len(b) // 2]),
    "bit-flipped circuit": ("circuit.json", flip),
    "[1] as circuit": ("circuit.json", lambda b: b"[1]"),
    "circuit without layers": ("circuit.json", edit_json(lambda d: {k: v for k, v in d.items() if k != "layers"})),
    "string target": ("circuit.json", edit_json(lambda d: {**d, "target": "dog"})),
    "a group naming a missing neuron": ("circuit.json", edit_json(lambda d: missing_member(d))),
    "truncated arrays": ("arrays.npz", lambda b: b[: len(b) // 2]),
    "bit-flipped arrays": ("arrays.npz", flip),
    "empty arrays": ("arrays.npz", lambda b: b""),
}


def missing_member(doc: dict) -> dict:
    """The first group of the layer below the class layer made to name neuron 999 (no node)."""
    doc["layers"][1]["groups"][0]["members"][0][0] = 999
    return doc


def damage(directory: Path, case: str) -> str:
    name, change = DAMAGE[case]
    path = directory / name
    path.write_bytes(change(path.read_bytes()))
    return name


# -- item 18: every reader reports a damaged artifact in one line ------------------------------------
@pytest.mark.parametrize("command", ["show", "report", "debug", "neurflow.load"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_artifact_is_one_line_naming_the_file(ws, capsys, case, command):
    name = damage(ws / "out", case)
    before = files(ws / "out")
    if command == "neurflow.load":
        with pytest.raises(NeurFlowError) as info:
            neurflow.load(ws / "out")
        line = str(info.value)
    else:
        extra = ["--image", "0", "--model", f"{ws}/mymodel.py:build"] if command == "debug" else []
        line = one_line([command, str(ws / "out"), *extra], capsys)
    assert f"{name} is damaged" in line and "neurflow run" in line and "--overwrite" in line, line
    assert files(ws / "out") == before  # a reader changes nothing


# -- item 7: a damaged run is recomputed by the same command, replaced with --overwrite ---------------
@pytest.mark.parametrize("case", ["truncated circuit", "truncated arrays", "truncated manifest", "[1] as circuit"])
def test_rerunning_the_same_command_recomputes_a_damaged_run(ws, pristine, caplog, case):
    damage(ws / "out", case)
    assert main(run_argv(ws, inputs=pristine)) == 0
    err = caplog.text
    assert "is damaged; recomputing the run" in err and "loaded the finished run" not in err, err
    assert artifact(ws / "out") == artifact(pristine / "out")
    neurflow.load(ws / "out")


def test_a_damaged_run_that_names_no_run_is_replaced_with_overwrite_only(ws, pristine, capsys):
    damage(ws / "out", "truncated manifest")
    damage(ws / "out", "truncated circuit")  # nothing left says which run this was
    line = one_line(run_argv(ws, inputs=pristine), capsys)
    assert "--out" in line and "manifest.json is damaged" in line and "--overwrite" in line, line
    assert main(run_argv(ws, extra=("--overwrite",), inputs=pristine)) == 0
    assert artifact(ws / "out") == artifact(pristine / "out")


def test_a_directory_that_is_not_a_run_is_never_deleted(ws, capsys):
    other = ws / "webapp"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    (other / "index.html").write_text("<p>mine</p>")
    before = files(other)
    for extra in ((), ("--overwrite",)):
        line = one_line(run_argv(ws, "webapp", extra), capsys)
        assert "--out" in line and "not a neurflow manifest" in line, line
    assert files(other) == before


def test_a_damaged_partial_layer_is_recomputed_on_resume(ws, pristine):
    killed = subprocess.run(
        [sys.executable, str(FAULT_INJECT), "layer1.npz", *run_argv(ws, "killed", inputs=pristine)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    partial = ws / "killed" / "partial" / "layer0.json"
    partial.write_bytes(partial.read_bytes()[:100])
    assert main(run_argv(ws, "killed", inputs=pristine)) == 0
    assert artifact(ws / "killed") == artifact(pristine / "out")


# -- item 6: label, debug, audit, eval and report write under the directory's lock ----------------
class ProbeLabeler(Labeler):
    """Labels every group "LAYER G<id>"; ``during`` runs once, while the first group is labelled."""

    name = "probe"
    during = None

    def __init__(self, during=None):
        self.during, self.calls = during, 0

    def label_group(self, run, layer, group):
        self.calls += 1
        if self.calls == 1 and self.during is not None:
            self.during()
        return Label(f"{layer.name} G{group.id}", self.name)


def labels_of(directory: Path) -> dict:
    return {l.name: [g.label_text for g in l.groups] for l in neurflow.load(directory).layers}


def test_two_labels_at_once_keep_both_layers_labels(ws):
    out = ws / "out"
    c = neurflow.load(out)
    assert c.layers[1].groups and c.layers[2].groups
    second = lambda: label_run(Run(out), ProbeLabeler(), "all", ["block1"])  # noqa: E731
    label_run(Run(out), ProbeLabeler(during=second), "all", ["block2"])
    got = labels_of(out)
    assert got["block2"] == [f"block2 G{g.id}" for g in c.layers[1].groups]
    assert got["block1"] == [f"block1 G{g.id}" for g in c.layers[2].groups]  # not lost to the first's write


def test_a_label_racing_run_overwrite_is_refused_and_the_new_run_kept(ws, pristine):
    out = ws / "out"
    replace = lambda: main(run_argv(ws, extra=("--overwrite", "--seed", "1"), inputs=pristine))  # noqa: E731
    with pytest.raises(NeurFlowError, match="another run replaced it meanwhile"):
        label_run(Run(out), ProbeLabeler(during=replace), "all")
    c = neurflow.load(out)  # the new run, whole and unlabelled
    assert c.settings["seed"] == 1 and all(g.label is None for l in c.layers for g in l.groups)
    assert main(["show", str(out)]) == 0


@pytest.fixture
def held_lock(ws, monkeypatch):
    """The run directory's lock held (as by a `neurflow run` writing it), the wait for it short."""
    monkeypatch.setattr("neurflow.store.layout.WRITE_WAIT_S", 0.2, raising=False)
    fd = os.open(ws / "out" / ".neurflow.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    yield ws
    os.close(fd)


def test_commands_writing_a_run_wait_for_its_lock_then_refuse(held_lock, capsys):
    ws = held_lock
    before = files(ws / "out")
    model = ["--model", f"{ws}/mymodel.py:build"]
    for argv in (["report", str(ws / "out")], ["debug", str(ws / "out"), "--image", "0", *model]):
        line = one_line(argv, capsys)
        assert "DIR" in line and "another neurflow process is writing" in line and "pid 4242" in line, line
    labeler = ProbeLabeler()
    with pytest.raises(NeurFlowError, match="another neurflow process is writing"):
        label_run(Run(ws / "out"), labeler, "all")
    assert labeler.calls == 0  # refused before any labelling
    assert files(ws / "out") == before


# -- item 8: debugged images of one file name from different folders -----------------------------------
def test_debugged_images_of_one_name_from_two_folders_keep_both_results(ws, capsys):
    out, model = ws / "out", ["--model", f"{ws}/mymodel.py:build", "--quiet"]
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (ws / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ws / folder / "cat.png")
    torch.save({"images": torch.rand(4, 3, 16, 16), "labels": torch.arange(4)}, ws / "other.pt")
    debugs = [
        ["--image", str(ws / "a" / "cat.png")],
        ["--image", str(ws / "b" / "cat.png")],
        ["--image", str(ws / "a" / "cat.png")],  # the same image again: its result is replaced
        ["--image", "0", "--data", str(ws / "data.pt")],
        ["--image", "0", "--data", str(ws / "other.pt")],  # index 0 of other data
    ]
    for args in debugs:
        assert main(["debug", str(out), *args, *model]) == 0
    saved = {p.stem: json.loads(p.read_text())["image"]["source"] for p in (out / "debug").glob("*.json")}
    assert saved["cat"] == str(ws / "a" / "cat.png")  # the first keeps today's name
    assert sorted(saved.values()) == sorted(
        [str(ws / "a" / "cat.png"), str(ws / "b" / "cat.png"), f"{ws / 'data.pt'}[0]", f"{ws / 'other.pt'}[0]"]
    )
    assert len(list((out / "debug").glob("*.png"))) == 4
    html = (out / "report.html").read_text()
    assert all(f'"file_name":"{name}.json"' in html for name in saved)


# -- item 17: a full disk, a read-only file system ---------------------------------------------------
@pytest.mark.parametrize("target", ["manifest.json", "layer1.npz", "arrays.npz", "circuit.json"])
def test_disk_full_during_a_run_is_one_line_and_the_rerun_finishes(ws, pristine, capsys, monkeypatch, target):
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    line = one_line(run_argv(ws, "full", inputs=pristine), capsys)
    assert "--out" in line and "No space left on device" in line and target in line, line
    assert not list((ws / "full").rglob(".tmp-*"))
    with pytest.raises(NeurFlowError):
        neurflow.load(ws / "full")  # not readable as complete
    monkeypatch.setattr(os, "replace", real)  # space freed
    assert main(run_argv(ws, "full", inputs=pristine)) == 0
    assert artifact(ws / "full") == artifact(pristine / "out")


@pytest.fixture
def read_only(ws, monkeypatch):
    """``ws/out`` on a read-only file system: opening a file there for writing fails with EROFS."""
    real = os.open
    out = str(ws / "out")

    def ro(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(out) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro)
    register("store-probe", "test_store_damage:ProbeLabeler", "tests: labels every group")
    yield ws
    LABELERS.pop("store-probe", None)


@pytest.mark.parametrize("command", ["report", "debug", "label"])
def test_a_read_only_run_directory_is_one_line(read_only, capsys, command):
    ws = read_only
    before = files(ws / "out")
    extra = {
        "report": [],
        "debug": ["--image", "0", "--model", f"{ws}/mymodel.py:build"],
        "label": ["--labeler", "store-probe", "--groups", "all"],
    }[command]
    line = one_line([command, str(ws / "out"), *extra], capsys)
    assert "DIR" in line and "Read-only file system" in line, line
    assert files(ws / "out") == before


# -- other readers of a run directory's files -------------------------------------------------------
def test_damaged_debug_audit_and_eval_results_are_left_out_of_the_report(ws, capsys, caplog):
    out = ws / "out"
    target = neurflow.load(out).target
    (out / "debug").mkdir()
    (out / "debug" / "list.json").write_text("[1]")
    (out / "debug" / "half.json").write_text('{"layer": "block2", "groups": [{"crops": [{"box": 3}]}]}')
    (out / "eval").mkdir()
    (out / "eval" / "fidelity.json").write_text("[]")
    (out / "eval" / "mct.json").write_text('{"experiment": "x", "layers": 7}')
    (out / "audit.json").write_text(json.dumps({"target": target, "groups": [{"layer": "block2", "exemplars": "x"}]}))
    assert main(["report", str(out)]) == 0
    assert caplog.text.count("left ") == 5, caplog.text
    data = (out / "report.html").read_text()
    assert '"debug":[]' in data and '"audit":null' in data
    assert main(["show", str(out)]) == 0
    assert "audit.json is damaged" in capsys.readouterr().out


def test_a_damaged_eval_checkpoint_is_not_resumed_from(ws):
    from neurflow.analysis.evaluate.common import Checkpoint

    out = ws / "out"
    Checkpoint(Run(out).dir, "fidelity", {"draws": 1}, "id").put("u1", 0.5)
    assert Checkpoint(out, "fidelity", {"draws": 1}, "id").get("u1") == 0.5
    path = out / "eval" / "fidelity.partial.json"
    doc = json.loads(path.read_text())
    doc["units"]["u1"] = 9.0  # changed on disk
    path.write_text(json.dumps(doc))
    assert Checkpoint(out, "fidelity", {"draws": 1}, "id").get("u1") is None
    path.write_text("[]")
    assert Checkpoint(out, "fidelity", {"draws": 1}, "id").get("u1") is None
