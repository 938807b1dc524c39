"""The planted shortcut, found by the audit (issue: image debugging and dataset audit).

Slow tier: two real circuits on the 10,000 marked test images (about 3 minutes on 2 cores).
The figures are the ones docs/debugging.md reports (docs/shortcut-proof.json, written by
scripts/shortcut_proof.py); the test recomputes them and checks both the claims and the record.
"""

import json
from pathlib import Path

import pytest

from neurflow.shortcut_proof import audit_proof

RECORD = Path(__file__).resolve().parents[1] / "docs" / "shortcut-proof.json"


@pytest.mark.slow
def test_audit_finds_the_planted_shortcut_and_not_on_the_clean_model(tmp_path):
    sc = audit_proof("fashion-cnn-shortcut", tmp_path / "shortcut")
    top, before, after = sc["top"], sc["before"], sc["after"]
    # the top group's exemplars mostly show the mark
    assert top["mark_share"] >= 0.5
    # zeroing it removes most of the mark's effect: marked images of other classes stop being
    # predicted as the target ...
    removed = before["marked_others_to_target"] - after["marked_others_to_target"]
    assert removed >= 0.5 * (before["marked_others_to_target"] - before["clean_others_to_target"])
    # ... at a much smaller cost on clean images of the target
    cost = before["clean_target_recall"] - after["clean_target_recall"]
    assert cost <= 0.25 * removed
    # ... and the top group stands out: its score is clearly above the next one
    scores = [g["score"] for g in sc["audit"]["groups"]]
    assert scores[0] >= 1.5 * max(scores[1], 0.0) and scores[0] > 0

    # the annotations labeler names the audited mark group by the mark tag (zoo annotations)
    from neurflow import load
    from neurflow.labels import get_labeler, label_run

    label_run(tmp_path / "shortcut", get_labeler("annotations", annotations="zoo"))
    label = load(tmp_path / "shortcut").layer(top["layer"]).groups[top["group"]].label
    assert label["text"] == "mark" and label["confidence"] >= 0.9

    clean = audit_proof("fashion-cnn", tmp_path / "clean")
    # no group of the model without a shortcut stands out the same way
    assert clean["top"]["mark_share"] < 0.5
    assert clean["top"]["score"] <= 0.25 * top["score"]

    recorded = json.loads(RECORD.read_text())["summary"]
    for name, got in (("zoo:fashion-cnn-shortcut", sc), ("zoo:fashion-cnn", clean)):
        want = recorded[name]["top"]
        assert (got["top"]["layer"], got["top"]["group"]) == (want["layer"], want["group"])
        assert got["top"]["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["after"] == pytest.approx(recorded[name]["after"], abs=1e-4)
