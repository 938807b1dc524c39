"""Hostile and odd inputs (issue 14): one line and exit 2 instead of a traceback, and inputs that
used to pass silently wrong.  CLI cases run ``neurflow.cli.main`` in this process (capsys); the
broken pipe and the run-directory lock need real processes."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from neurflow.cli import main
from neurflow.errors import NeurFlowError

from conftest import TINY_NET_PY, one_line, run_args

MODEL_PY = (
    TINY_NET_PY
    + '''

def broken():
    raise RuntimeError("no weights here")


def slow():
    """build(), with every conv call slowed down when NEURFLOW_TEST_SLOW is set (for the lock test)."""
    import os
    import time

    net = build()
    if os.environ.get("NEURFLOW_TEST_SLOW"):
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_pre_hook(lambda *_: time.sleep(0.05))
    return net
'''
)


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, tmp_path / "data.pt")
    return tmp_path


# -- one line, exit 2 -----------------------------------------------------------------------
def test_a_factory_that_raises(ws, capsys):
    line = one_line(run_args(ws, factory="broken"), capsys)
    assert "--model" in line and "broken() raised RuntimeError: no weights here" in line
    line = one_line(["layers", f"{ws}/mymodel.py:broken"], capsys)
    assert "MODEL" in line and "broken() raised RuntimeError" in line


def test_cuda_without_a_gpu_and_a_missing_gpu_index(ws, capsys, monkeypatch):
    if not torch.cuda.is_available():
        line = one_line(run_args(ws, extra=("--device", "cuda")), capsys)
        assert "--device" in line and "no CUDA GPU" in line
    assert "--device" in one_line(run_args(ws, extra=("--device", "gpu")), capsys)
    assert main(run_args(ws)) == 0
    out = str(ws / "out")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for argv in (
        run_args(ws, out="out3", extra=("--device", "cuda:3")),
        ["debug", out, "--image", "0", "--device", "cuda:3"],
        ["audit", out, "--device", "cuda:3"],
        ["eval", out, "fidelity", "--device", "cuda:3"],
    ):
        line = one_line(argv, capsys)
        assert "--device: expected cuda:0..cuda:0 (1 CUDA device(s) visible), got 'cuda:3'" in line, argv
    assert not (ws / "out3").exists()  # refused before the run directory was created


def test_an_image_over_the_decompression_bomb_limit_is_skipped_and_counted(ws, capsys, monkeypatch, caplog):
    rng = np.random.RandomState(0)
    for cls in ("a", "b"):
        (ws / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(ws / "imgs" / cls / f"{i}.png")
    Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(ws / "imgs" / "a" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: PIL refuses to decode it
    argv = run_args(ws, extra=("--data", str(ws / "imgs"), "--transform", "none", "--target", "0"))
    with caplog.at_level(logging.WARNING, logger="neurflow"):
        assert main(argv) == 0
    assert any(
        "skipped a/bomb.png" in r.getMessage() and "decompression bomb" in r.getMessage() for r in caplog.records
    )
    meta = json.loads((ws / "out" / "circuit.json").read_text())["meta"]
    assert meta["data_skipped"] == 1 and meta["n_images"] == 6


@pytest.mark.slow  # two processes that import torch: 6-18 s here
def test_show_into_head_exits_quietly(tmp_path):
    from conftest import tiny_run

    tiny_run(tmp_path / "run")
    cmd = [sys.executable, "-m", "neurflow.cli", "show", str(tmp_path / "run")]
    # both at once (each start imports torch): `| head -1`, and a reader that is gone before
    # anything is written (`| true`), where the write fails for sure (EPIPE)
    left = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=left.stdout, stdout=subprocess.PIPE)
    left.stdout.close()
    left2 = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gone = subprocess.Popen(["true"], stdin=left2.stdout)
    left2.stdout.close()
    gone.wait(timeout=60)
    first, _ = head.communicate(timeout=120)
    for proc in (left, left2):
        proc.wait(timeout=120)
    assert first.decode().startswith("NeurFlow circuit for class") and first.count(b"\n") == 1
    err = left.stderr.read()
    assert err == b"" and left.returncode in (0, 141), err  # 141 when head left before the last write
    err = left2.stderr.read()
    assert err == b"" and left2.returncode == 141, err


def test_pt_labels_that_do_not_match_the_images(ws, capsys):
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(7) % 4}, ws / "bad.pt")
    line = one_line(run_args(ws, extra=("--data", str(ws / "bad.pt"))), capsys)
    assert "--data" in line and "one label per image (10 images)" in line and "[7]" in line


def test_bad_weights_files(ws, capsys):
    from torch import nn

    from conftest import tiny_net

    torch.save(tiny_net().state_dict(), ws / "sd.pt")
    whole = (ws / "sd.pt").read_bytes()
    (ws / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"a": torch.ones(3)}, ws / "legacy.pt", _use_new_zipfile_serialization=False)
    (ws / "legacy_truncated.pt").write_bytes((ws / "legacy.pt").read_bytes()[:40])
    (ws / "random.pt").write_bytes(np.random.RandomState(0).bytes(4096))
    for name in ("truncated.pt", "legacy_truncated.pt", "random.pt"):
        line = one_line(run_args(ws, extra=("--weights", str(ws / name))), capsys)
        assert "--weights" in line and "truncated or not a PyTorch file" in line, line
        assert "Errno" not in line and "--trust-checkpoint" not in line, line
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 4)).state_dict(), ws / "other.pt")
    line = one_line(["layers", f"{ws}/mymodel.py:build", "--weights", str(ws / "other.pt")], capsys)
    assert "8 missing key(s): stem.0.weight, stem.0.bias, block1.0.weight (+5 more)" in line, line
    assert "4 unexpected key(s): 0.weight, 0.bias, 1.weight (+1 more)" in line, line
    state = tiny_net().state_dict()
    state["head.weight"] = torch.zeros(5, 16)
    torch.save(state, ws / "wide.pt")
    line = one_line(["layers", f"{ws}/mymodel.py:build", "--weights", str(ws / "wide.pt")], capsys)
    assert "1 shape mismatch(es) (checkpoint vs model): head.weight [5, 16] vs [4, 16]" in line, line
    torch.save({"module." + k: v for k, v in tiny_net().state_dict().items()}, ws / "parallel.pt")
    line = one_line(["layers", f"{ws}/mymodel.py:build", "--weights", str(ws / "parallel.pt")], capsys)
    assert "'module.'" in line


@pytest.mark.parametrize("raised", ["error", "interrupt"])
def test_errors_start_on_their_own_line_after_a_progress_bar(ws, capsys, monkeypatch, raised):
    import neurflow.attribution.engine

    def fail(*a, **k):
        if raised == "error":
            raise NeurFlowError("layers", "a segment IG can pass", "head <- block2")
        raise KeyboardInterrupt

    monkeypatch.setattr(neurflow.attribution.engine, "integrated_gradients", fail)  # inside the "IG head" bar
    argv = [a for a in run_args(ws, extra=("--engine", "dense")) if a != "--quiet"]
    capsys.readouterr()
    assert main(argv) == (2 if raised == "error" else 130)
    err = capsys.readouterr().err
    assert "IG head" in err  # the bar was shown, and left where it stopped
    lines = err.split("\n")
    msg = [l for l in lines if "neurflow: error:" in l or "neurflow: interrupted" in l]
    assert len(msg) == 1 and msg[0].startswith("neurflow: ") and "\r" not in msg[0], repr(err)
    assert lines[-2] == msg[0] and lines[-1] == "", repr(err)


# -- inputs that were silently wrong ----------------------------------------------------------
def test_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    from neurflow.sources.datasets import load_data

    a8 = np.random.RandomState(0).randint(0, 256, (2, 16, 16)).astype(np.uint8)
    for d, arrays in (("eight", a8), ("sixteen", a8.astype(np.uint16) * 257)):
        (tmp_path / d).mkdir()
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(tmp_path / d / f"{i}.png")
    with Image.open(tmp_path / "sixteen" / "0.png") as im:
        assert im.mode in ("I;16", "I") and np.asarray(im).max() > 255  # a real 16-bit PNG
    for transform in ("none", "imagenet"):
        eight, sixteen = load_data(str(tmp_path / "eight"), transform), load_data(str(tmp_path / "sixteen"), transform)
        assert torch.equal(eight.images.decoded(), sixteen.images.decoded()), transform
    assert abs(float(sixteen.images.decoded().mean()) - float(eight.images.decoded().mean())) < 1e-6


def test_uint8_tensors_are_scaled_like_image_files(tmp_path, caplog):
    from neurflow.sources.datasets import load_data

    pixels = np.random.RandomState(0).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    (tmp_path / "files").mkdir()
    for i, a in enumerate(pixels):
        Image.fromarray(a).save(tmp_path / "files" / f"{i}.png")
    torch.save(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), tmp_path / "u8.pt")
    with caplog.at_level(logging.INFO, logger="neurflow.sources.datasets"):
        data = load_data(str(tmp_path / "u8.pt"))
    assert data.images.decoded().dtype == torch.float32 and float(data.images.decoded().max()) <= 1
    assert torch.equal(data.images.decoded(), load_data(str(tmp_path / "files"), "none").images.decoded())
    assert sum("uint8" in r.getMessage() for r in caplog.records) == 1
    floats = torch.rand(2, 3, 8, 8) * 5  # float tensors are used as stored
    torch.save(floats, tmp_path / "f.pt")
    assert torch.equal(load_data(str(tmp_path / "f.pt")).images.decoded(), floats)


def test_tau_above_a_layers_width_warns_once_per_layer(caplog):
    from neurflow import NeurFlow

    from conftest import tiny_net

    torch.manual_seed(0)
    model, images = tiny_net().eval(), torch.rand(8, 3, 16, 16)
    target = int(torch.mode(model(images).argmax(1)).values)
    with caplog.at_level(logging.WARNING, logger="neurflow.method.estimator"):
        NeurFlow(tau=14, top_k=4, ig_steps=4, granularities=(1.0,)).fit(
            model, images, target, ["head", "block2", "block1"]
        )
    msgs = [r.getMessage() for r in caplog.records if "tau" in r.getMessage()]
    # block2 has 16 channels (>= 14: fine), block1 has 12
    assert msgs == ["tau 14 is above the 12 channels of layer block1: a core there holds at most all 12"], msgs


def test_debug_threshold_above_one(ws, capsys, caplog):
    assert main(run_args(ws)) == 0
    out = str(ws / "out")
    line = one_line(["debug", out, "--image", "0", "--threshold", "1.5", "--score", "clipped"], capsys)
    assert "--threshold" in line and "(0, 1]" in line
    assert "--threshold" in one_line(["debug", out, "--image", "0", "--threshold", "0"], capsys)
    with caplog.at_level(logging.WARNING, logger="neurflow.analysis.debug"):
        assert main(["debug", out, "--image", "0", "--threshold", "1.5", "--quiet"]) == 0
    assert sum("threshold 1.5 is above 1" in r.getMessage() for r in caplog.records) == 1


# -- one writer per run directory -------------------------------------------------------------
def _holder(directory):
    """A process that locks ``directory`` through a RunStore and waits to be killed."""
    code = (
        "import sys, time\n"
        "from neurflow.store import RunStore\n"
        f"store = RunStore({str(directory)!r}, 'h')\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_run_directory_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    from neurflow.store import RunStore

    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(NeurFlowError, match=f"another neurflow process is writing .*run \\(pid {holder.pid}\\)"):
            RunStore(tmp_path / "run", "h")
    finally:
        holder.kill()  # SIGKILL: no cleanup ran, the OS released the lock
        holder.wait()
    store = RunStore(tmp_path / "run", "h")  # resumable by the next process
    assert (tmp_path / "run" / ".neurflow.lock").read_text().strip() == str(os.getpid())
    # a store holds the lock until it is released, also against this process (fit owns and releases
    # the store it creates, however it ends: tests/test_pipeline.py::test_resume_skips_finished_layers)
    with pytest.raises(NeurFlowError, match=f"another neurflow process is writing .*run \\(pid {os.getpid()}\\)"):
        RunStore(tmp_path / "run", "h")
    store.release()
    with RunStore(tmp_path / "run", "h"):
        pass
    RunStore(tmp_path / "run", "h").release()  # the context manager released it


@pytest.mark.slow
def test_two_identical_runs_into_one_directory(ws, capsys, monkeypatch):
    argv = run_args(ws, factory="slow")
    # the slowing hooks are part of the model's function (and so of the run hash): the same for all
    monkeypatch.setenv("NEURFLOW_TEST_SLOW", "1")
    env = dict(os.environ)
    first = subprocess.Popen(
        [sys.executable, "-m", "neurflow.cli", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while not (ws / "out" / "manifest.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second one started"
        line = one_line(argv, capsys)
        assert f"another neurflow process is writing {ws / 'out'} (pid {first.pid})" in line, line
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert main(argv) == 0  # the killed run's lock is gone: the same command resumes and finishes
    assert json.loads((ws / "out" / "manifest.json").read_text())["complete"]
