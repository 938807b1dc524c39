"""Reopening a run is reading data, not running it (issue 23, items 3, 9 and 21): a model factory
recorded in a run directory runs only when the user names it or trusts the directory; recorded
paths are absolute, and reopened data must be the run's data (its recorded hashes)."""

import json
import logging
import os

import pytest
import torch

from neurflow.analysis.run import Run
from neurflow.cli import main
from neurflow.errors import NeurFlowError

from conftest import TINY_NET_PY, one_line, run_args

PAYLOAD = TINY_NET_PY.replace(
    "def build():\n",
    "def build():\n    import pathlib\n    pathlib.Path(__file__).with_name('RAN').write_text('payload ran')\n",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished factory run (made with relative specs from its workspace) and its workspace."""
    ws = tmp_path_factory.mktemp("ws")
    (ws / "mymodel.py").write_text(TINY_NET_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": -(torch.arange(10) % 4) - 1}, ws / "data.pt")
    argv = run_args(ws, out="run")
    argv[argv.index("--model") + 1] = "mymodel.py:build"  # relative, as typed in the workspace
    argv[argv.index("--data") + 1] = "data.pt"
    argv[argv.index("--target") + 1] = "2"
    argv[argv.index("--selection") + 1] = "predicted"
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        assert main([*argv, "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return ws


@pytest.fixture
def planted(finished, tmp_path):
    """A copy of the run whose circuit.json names a payload factory in the directory (what a
    hostile shared run directory holds); the payload writes DIR/RAN when it runs."""
    run = tmp_path / "shared"
    os.system(f"cp -r {finished / 'run'} {run}")  # noqa: S605 - test paths
    (run / "payload.py").write_text(PAYLOAD)
    doc = json.loads((run / "circuit.json").read_text())
    doc["meta"]["model_spec"] = f"{run}/payload.py:build"
    (run / "circuit.json").write_text(json.dumps(doc))
    return run


def _set_meta(run, **changes):
    doc = json.loads((run / "circuit.json").read_text())
    doc["meta"].update(changes)
    (run / "circuit.json").write_text(json.dumps(doc))


def test_a_recorded_factory_is_not_run_by_debug_audit_or_eval(planted, capsys):
    for argv in (
        ["debug", str(planted), "--image", "0"],
        ["audit", str(planted)],
        ["eval", str(planted), "weight-norm"],
    ):
        line = one_line(argv, capsys)
        assert "--model: expected a registered model scheme" in line and "payload.py:build" in line, line
        assert "--trust-model-spec" in line and "--model SPEC" in line, line
        assert not (planted / "RAN").exists(), argv
    # named on the command line, or trusted: then (and only then) it runs
    assert main(["debug", str(planted), "--image", "0", "--trust-model-spec", "--quiet"]) == 0
    assert (planted / "RAN").read_text() == "payload ran"


def test_the_users_own_run_reopens_its_factory_a_copy_or_an_edited_factory_does_not(finished, tmp_path, capsys):
    # made by this user with `neurflow run --model mymodel.py:build`: reopened without the flag
    run = Run(finished / "run")
    assert run.model.class_names[0] == "cat"
    # the same directory copied elsewhere (someone else's, or moved): not trusted
    copy = tmp_path / "copy"
    os.system(f"cp -r {finished / 'run'} {copy}")  # noqa: S605 - test paths
    assert "--trust-model-spec" in one_line(["debug", str(copy), "--image", "0"], capsys)
    # the factory file edited since the run: not trusted either (nor run)
    factory = finished / "mymodel.py"
    original = factory.read_text()
    try:
        factory.write_text(PAYLOAD)
        assert "--trust-model-spec" in one_line(["debug", str(finished / "run"), "--image", "0"], capsys)
        assert not (finished / "RAN").exists()
    finally:
        factory.write_text(original)
    assert Run(finished / "run").model is not None


def test_label_sends_thumbnails_instead_of_running_a_recorded_factory(planted, caplog):
    _set_meta(planted, image_size=128)  # above the thumbnails' 64 px: label would re-cut the crops
    run = Run(planted)
    crop = run.thumbs[0]
    with caplog.at_level(logging.WARNING):
        pngs = run.crop_pngs([crop])
    assert pngs == [(planted / "crops" / f"{crop}.png").read_bytes()]  # the saved thumbnail
    assert not (planted / "RAN").exists()
    assert "could not be reopened" in caplog.text and "trust_model_spec" in caplog.text
    Run(planted, trust_model_spec=True).crop_pngs([crop])  # trusted: reopened (and so run)
    assert (planted / "RAN").exists()


def test_a_registered_scheme_in_the_run_reopens_without_trust(planted):
    _set_meta(planted, model_spec="torchvision:resnet18")  # installed code: no trust needed
    with pytest.raises(NeurFlowError, match="weights differ from the run's"):  # reopened, then checked
        assert Run(planted).model is None


def test_specs_are_recorded_absolute_and_reopen_the_same_files_elsewhere(finished, tmp_path, capsys):
    meta = json.loads((finished / "run" / "circuit.json").read_text())["meta"]
    assert meta["model_spec"] == f"{finished.resolve()}/mymodel.py:build"
    assert meta["data_spec"] == str((finished / "data.pt").resolve())
    # another directory with its own mymodel.py and data.pt: the run still reopens its own files
    (tmp_path / "mymodel.py").write_text(PAYLOAD)
    torch.save({"images": torch.zeros(10, 3, 16, 16)}, tmp_path / "data.pt")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run = Run(finished / "run", trust_model_spec=True)
        assert run.data.spec == meta["data_spec"] and not (tmp_path / "RAN").exists()
        assert run.model.class_names[0] == "cat"
        assert not (tmp_path / "RAN").exists()
    finally:
        os.chdir(cwd)


def test_reopened_data_that_changed_is_refused(finished, tmp_path, capsys):
    moved = tmp_path / "run"
    os.system(f"cp -r {finished / 'run'} {moved}")  # noqa: S605 - test paths
    other = tmp_path / "other.pt"
    torch.manual_seed(5)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, other)
    _set_meta(moved, data_spec=str(other))  # the recorded path now names other images (same count)
    line = one_line(["debug", str(moved), "--image", "0", "--trust-model-spec"], capsys)
    assert "--data: expected the data the run was computed on" in line and "other images" in line, line
    # --data given: the user's choice for debug and audit; the crop pool must still be the run's
    run = Run(moved, trust_model_spec=True, data=str(other))
    with pytest.raises(NeurFlowError, match="its class images differ from the run's"):
        assert run.pool is None
    assert len(Run(moved, trust_model_spec=True, data=str(finished / "data.pt")).pool) > 0


def test_debug_of_a_data_index_whose_label_is_negative(finished, capsys):
    # the data's labels are -1..-4 ("unlabelled"): no class name is made up for them (was names[-1],
    # or an IndexError for -5 and below)
    assert main(["debug", str(finished / "run"), "--image", "3", "--trust-model-spec", "--json", "--quiet"]) == 0
    image = json.loads(capsys.readouterr().out)["image"]
    assert image["label"] == -4 and image["label_name"] is None


def test_a_damaged_crop_thumbnail_is_one_line_naming_it(planted):
    run = Run(planted)
    crop = run.thumbs[0]
    (planted / "crops" / f"{crop}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(NeurFlowError, match=rf"crops/{crop}.png is damaged: not a readable PNG"):
        run.png(crop)
