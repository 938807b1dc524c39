"""The planted shortcuts, found by the audit (issues: image debugging and dataset audit; an audit
that finds entangled shortcuts).

Slow tier: three real circuits and audits on 10,000 marked test images (several minutes on 2 cores).
The figures are the ones docs/debugging.md reports (docs/shortcut-proof.json, written by
scripts/shortcut_proof.py); the test recomputes them and checks both the claims and the record.
"""

import json
from pathlib import Path

import pytest

from neurflow.analysis.shortcut_proof import audit_proof
from neurflow.zoo.shortcut import ENTANGLED

RECORD = Path(__file__).resolve().parents[1] / "docs" / "shortcut-proof.json"


@pytest.mark.slow
def test_audit_finds_the_planted_shortcut_and_not_on_the_clean_model(tmp_path):
    sc = audit_proof("fashion-cnn-shortcut", tmp_path / "shortcut")
    top, old, before, after = sc["top"], sc["old_top"], sc["before"], sc["after"]
    # the false positives that activate the top candidate most mostly show the mark
    assert top["fp_mark_share"] >= 0.5
    # zeroing it removes most of the mark's effect: marked images of other classes stop being
    # predicted as the target ...
    induced, removed, cost = removed_and_cost(before, after)
    assert removed >= 0.5 * induced
    # ... at a much smaller cost on clean images of the target
    assert cost <= 0.25 * removed
    # ... and at least as well as the top group of the earlier ranking (groups by logit_score)
    _, old_removed, old_cost = removed_and_cost(before, sc["old_after"])
    assert removed >= old_removed and cost <= old_cost
    assert old["mark_share"] >= 0.5  # the earlier proof's mark group, still ranked first there
    # the best three rows together fix most false positives and keep nearly all true positives
    third = sc["audit"]["groups"][2]
    assert third["joint_fp_fixed"] >= 0.8 and third["joint_tp_kept"] >= 0.95
    assert top["score"] > 0 and top["tp_kept"] >= 0.95

    # the annotations labeler names the earlier ranking's mark group by the mark tag (zoo annotations)
    from neurflow import load
    from neurflow.analysis.labels import get_labeler, label_run

    label_run(tmp_path / "shortcut", get_labeler("annotations", annotations="zoo"))
    label = load(tmp_path / "shortcut").layer(old["layer"]).groups[old["group"]].label
    assert label["text"] == "mark" and label["confidence"] >= 0.9

    clean = audit_proof("fashion-cnn", tmp_path / "clean")
    # the model without a shortcut has a few natural false positives, and a candidate that fixes
    # some of them; but no top candidate shows the mark, and zeroing it changes nothing about the mark
    assert clean["top"]["fp_mark_share"] < 0.5 and clean["top"]["mark_share"] < 0.5
    assert clean["after"]["marked_others_to_target"] <= clean["before"]["clean_others_to_target"] + 0.01

    recorded = json.loads(RECORD.read_text())["summary"]
    for name, got in (("zoo:fashion-cnn-shortcut", sc), ("zoo:fashion-cnn", clean)):
        want = recorded[name]["top"]
        for key in ("layer", "kind", "group"):
            assert got["top"][key] == want[key]
        assert sorted(got["top"]["neurons"]) == sorted(want["neurons"])  # a set: its order is not a claim
        assert (got["old_top"]["layer"], got["old_top"]["group"]) == (
            recorded[name]["old_top"]["layer"],
            recorded[name]["old_top"]["group"],
        )
        assert got["top"]["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["after"] == pytest.approx(recorded[name]["after"], abs=1e-4)
        assert got["old_after"] == pytest.approx(recorded[name]["old_after"], abs=1e-4)


def removed_and_cost(before: dict, after: dict) -> tuple[float, float, float]:
    """(mark-induced predictions before, share of them removed, clean-recall points lost)."""
    induced = before["marked_others_to_target"] - before["clean_others_to_target"]
    removed = before["marked_others_to_target"] - after["marked_others_to_target"]
    return induced, removed, before["clean_target_recall"] - after["clean_target_recall"]


@pytest.mark.slow
def test_audit_finds_the_entangled_shortcut_where_the_group_ranking_fails(tmp_path):
    """zoo:fashion-cnn-entangled: a checkerboard in the middle of 90 % of the Shirt training images.
    The earlier ranking (groups by logit_score) puts first a group that destroys the class; the
    margin-normalised score over groups, sub-groups and neurons puts first a candidate that removes
    a large share of the mark-induced predictions and keeps clean Shirt recall."""
    r = audit_proof("fashion-cnn-entangled", tmp_path / "entangled", plant=ENTANGLED)
    top, old, before = r["top"], r["old_top"], r["before"]
    induced, removed, cost = removed_and_cost(before, r["after"])
    assert induced > 0.8  # the shortcut is strong: most marked images of other classes become Shirt
    # the new top row: a large share of the mark-induced mistakes removed, at a small clean-recall cost
    assert removed >= 0.4 * induced
    assert cost <= 0.25 * removed
    assert top["tp_kept"] >= 0.9 and top["fp_fixed"] >= 0.4
    # the false positives that activate it most show the mark
    assert top["fp_mark_share"] >= 0.8
    # the best two rows together fix most of the audited false positives and keep most true positives
    second = r["audit"]["groups"][1]
    assert second["joint_fp_fixed"] >= 0.8 and second["joint_tp_kept"] >= 0.8
    # ... and clean Shirt recall stays (here it even rises: without the mark's detectors the model
    # falls back on the garment)
    assert r["after"]["clean_target_recall"] >= 0.9 * before["clean_target_recall"]
    # the earlier group-only ranking fails: its top group removes the class along with the mark
    # (at most a quarter of clean recall and a tenth of the audited true positives left)
    assert r["old_after"]["clean_target_recall"] <= 0.25 * before["clean_target_recall"]
    assert old["tp_kept"] <= 0.1

    want = json.loads(RECORD.read_text())["summary"]["zoo:fashion-cnn-entangled"]
    for key in ("layer", "kind", "group"):
        assert top[key] == want["top"][key]
        assert old[key] == want["old_top"][key]
    assert sorted(top["neurons"]) == sorted(want["top"]["neurons"])  # sets: their order is not a claim
    assert sorted(old["neurons"]) == sorted(want["old_top"]["neurons"])
    assert top["score"] == pytest.approx(want["top"]["score"], abs=1e-4)
    assert r["after"] == pytest.approx(want["after"], abs=1e-4)
    assert r["old_after"] == pytest.approx(want["old_after"], abs=1e-4)
