"""Text from artifacts, models, folders and labelers is shown on the terminal, never obeyed (issue 23
item 4): control sequences in class names, captions, file names and error messages come out as
their escapes, on stdout, in log lines and in the error line."""

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from neurflow.cli import main
from neurflow.cli.terminal import printable

from conftest import TINY_NET_PY, one_line, tiny_run

CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
FAKE = "\rneurflow: error: fake"  # a carriage return back over the line, then a made-up error
BIDI = "\u202egnp.exe"  # a right-to-left override


def test_printable_escapes_controls_and_keeps_text():
    assert printable(f"a{CLEAR}b") == "a\\x1b[2J\\x1b[Hb"
    assert printable(FAKE) == "\\x0dneurflow: error: fake"
    assert printable(BIDI) == "\\u202egnp.exe"
    assert printable("\x07\x00\x7f\x9b") == "\\x07\\x00\\x7f\\x9b"  # bell, NUL, DEL, CSI (C1)
    same = "tab\tnew\nline é ü 日本 🐟 <b>bird</b>"
    assert printable(same) == same


def _hostile_labels(run_dir):
    doc = json.loads((run_dir / "circuit.json").read_text())
    doc["meta"]["class_names"] = [f"cls{i}{CLEAR}" for i in range(4)]
    doc["meta"]["target_name"] = f"dog{FAKE}"
    layer = doc["layers"][1]
    layer["groups"][0]["label"] = {"text": f"stripes{CLEAR}{BIDI}", "labeler": "vlm"}
    (run_dir / "circuit.json").write_text(json.dumps(doc))


def test_show_prints_hostile_names_and_labels_as_escapes(tmp_path, capsys):
    tiny_run(tmp_path / "run")
    _hostile_labels(tmp_path / "run")
    assert main(["show", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "dog\\x0dneurflow: error: fake" in out
    assert "stripes\\x1b[2J\\x1b[H\\u202egnp.exe" in out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out


def test_the_error_line_shows_a_factory_message_as_escapes(tmp_path, capsys):
    (tmp_path / "m.py").write_text(f"def build():\n    raise RuntimeError({CLEAR + FAKE!r})\n")
    line = one_line(["layers", f"{tmp_path}/m.py:build"], capsys)
    assert "\x1b" not in line and "\r" not in line and "\\x1b[2J" in line


def test_log_lines_show_a_hostile_file_name_as_escapes(tmp_path):
    # a data folder with a file whose name holds a clear-screen sequence: its "skipped" warning
    (tmp_path / "model.py").write_text(TINY_NET_PY)
    rng = np.random.RandomState(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "a" / f"x{CLEAR}.png").write_bytes(b"not a png")
    torch.manual_seed(0)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neurflow.cli",
            "run",
            "--model",
            f"{tmp_path}/model.py:build",
            "--data",
            f"{tmp_path}/data",
            "--transform",
            "none",
            "--target",
            "0",
            "--selection",
            "predicted",
            "--layers",
            "head,block2,block1",
            "--tau",
            "3",
            "--top-k",
            "5",
            "--ig-steps",
            "4",
            "--granularities",
            "1",
            "--out",
            f"{tmp_path}/run",
            "--quiet",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert "skipped" in proc.stderr and "x\\x1b[2J\\x1b[H.png" in proc.stderr, proc.stderr
    assert "\x1b" not in proc.stderr + proc.stdout
