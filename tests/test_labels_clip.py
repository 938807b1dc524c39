"""The ``clip`` labeler: the clear refusal when CLIP is absent, and the scoring with a stand-in encoder."""

import subprocess
import sys

import numpy as np
import pytest

import neurflow
from neurflow.analysis.labels import label_run
from neurflow.analysis.labels.clip import ClipLabeler, _available, dissect_scores

from conftest import tiny_run


def test_scores_closed_form():
    t = np.eye(3)  # three orthogonal words
    group = np.array([[1.0, 0, 0], [1.0, 0, 0]])  # the group's images are word 0
    ref = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    scores, pg = dissect_scores(group, ref, t, temperature=1.0)
    e = np.e
    p0 = np.array([e, 1, 1]) / (e + 2)  # softmax of one image of word 0
    pr = (p0 + p0[[1, 0, 2]] + p0[[1, 2, 0]]) / 3
    assert np.allclose(pg, p0) and np.allclose(scores, np.log(p0) - np.log(pr))
    assert int(np.argmax(scores)) == 0


@pytest.mark.skipif(bool(_available()), reason="open_clip or transformers is installed here")
def test_absent_clip_is_one_clear_line_and_nothing_else(tmp_path):
    tiny_run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neurflow.cli",
            "label",
            str(tmp_path / "run"),
            "--labeler",
            "clip",
            "--clip-weights",
            str(tmp_path / "none.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and "open_clip" in errors[0] and "nothing was labelled" in errors[0], proc.stderr
    assert proc.stdout == ""
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


class MeanColour:
    """Stand-in encoder: an image is its mean RGB, a word is a colour."""

    COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}

    def images(self, pngs):
        import io

        from PIL import Image

        out = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), float).mean((0, 1)) + 1e-3 for b in pngs])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def texts(self, words):
        out = np.array([self.COLOURS[w] for w in words], float)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_clip_labeler_plumbing_with_a_stand_in_encoder(tmp_path):
    c = tiny_run(tmp_path / "run")
    lab = ClipLabeler(words=["red", "green", "blue"], encoder=MeanColour())
    res = label_run(tmp_path / "run", lab)
    assert res["labels"] == sum(len(l.groups) for l in c.layers[1:])
    got = neurflow.load(tmp_path / "run")
    for g in res["groups"]:
        assert g["text"] in ("red", "green", "blue") and g["labeler"] == "clip"
        assert g["evidence"]["top"][0]["word"] == g["text"] and 0 < g["confidence"] <= 1
        assert got.layer(g["layer"]).groups[g["group"]].label["text"] == g["text"]
        assert len(g["check"]["picked"]) == (g["check"]["n_true"] + g["check"]["n_random"]) // 2
