"""Warnings on IG's completeness (issue 15, item 8): a layer whose relative completeness gap is above
``COMPLETENESS_WARN_RELATIVE`` (a normalisation layer right after the lower layer, differentiated
through under ``norm_rule="plain"``), and nodes whose attributions are all zero (a zero-initialised
class head), in the run's log, ``show`` and the report."""

from __future__ import annotations

import json
import logging
import re

import torch
from torch import nn

from neurflow import NeurFlow
from neurflow.analysis.report import write_report
from neurflow.analysis.summary import summary
from neurflow.circuit import gap_warnings
from neurflow.config import COMPLETENESS_WARN_RELATIVE

SIZE = 16
SETTINGS = dict(tau=2, top_k=4, ig_steps=8, granularities=(1.0,))


class Net(nn.Module):
    """A tiny CNN; ``norm``: a LayerNorm (over channels and space, scale invariant) right after
    ``stem``, the lower layer of the analysed pair (block, stem)."""

    def __init__(self, norm: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.norm = nn.LayerNorm([6, SIZE, SIZE]) if norm else nn.Identity()
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(self.norm(self.stem(x))).mean((2, 3)))


def _fit(model: nn.Module, caplog, out=None, **settings):
    torch.manual_seed(0)
    images = torch.rand(4, 3, SIZE, SIZE) * 4
    with torch.no_grad():
        target = int(torch.mode(model(images).argmax(1)).values)
    with caplog.at_level(logging.WARNING, logger="neurflow.method.estimator"):
        nf = NeurFlow(**{**SETTINGS, **settings}).fit(model, images, target, ["head", "block", "stem"], out=out)
    return nf.circuit_


def _net(**kw) -> nn.Module:
    torch.manual_seed(0)
    return Net(**kw).eval()


def test_layernorm_after_the_lower_layer_is_warned_in_run_and_show(caplog):
    c = _fit(_net(norm=True), caplog, norm_rule="plain")
    block = c.layer("block")
    assert block.completeness_gap["relative"] > COMPLETENESS_WARN_RELATIVE
    assert "layer block (attributions to stem): relative completeness gap" in caplog.text
    assert c.layer("head").completeness_gap["relative"] <= COMPLETENESS_WARN_RELATIVE
    assert "layer head (attributions" not in caplog.text
    text = summary(c)
    row = next(line for line in text.splitlines() if line.startswith("block "))
    assert "WARNING" in row
    assert "WARNING block: relative completeness gap" in text
    assert not any(line.startswith("head ") and "WARNING" in line for line in text.splitlines())


def test_zero_initialised_head_is_warned(caplog):
    model = _net()
    with torch.no_grad():
        model.head.weight.zero_()
    c = _fit(model, caplog)
    assert c.layer("head").completeness_gap["zero_attribution_nodes"] == 1
    assert "layer head: all-zero attributions at node(s)" in caplog.text
    assert "1 node(s) with all-zero attributions" in summary(c)


def test_a_normal_model_gives_no_warning(caplog):
    c = _fit(_net(), caplog)
    for layer in c.layers:
        assert layer.completeness_gap["relative"] <= COMPLETENESS_WARN_RELATIVE, layer.name
        assert layer.completeness_gap["zero_attribution_nodes"] == 0
        assert gap_warnings(layer.completeness_gap) == []
    assert "completeness gap" not in caplog.text and "all-zero" not in caplog.text
    assert "WARNING" not in summary(c)


def test_the_frozen_rule_closes_the_gap_of_the_same_layernorm(caplog):
    c = _fit(_net(norm=True), caplog)  # the default norm_rule: frozen
    # what is left is the quadrature's error on the ReLU kinks at 8 steps, as without the LayerNorm
    assert c.layer("block").completeness_gap["relative"] < 0.01
    assert "completeness gap" not in caplog.text


def test_report_shows_the_warning(tmp_path, caplog):
    c = _fit(_net(norm=True), caplog, out=tmp_path / "run", norm_rule="plain")
    text = write_report(tmp_path / "run").read_text()
    data = json.loads(re.search(r'<script id="circuit-data" type="application/json">(.*?)</script>', text, re.S)[1])
    layers = {entry["name"]: entry for entry in data["layers"]}
    assert layers["head"]["warnings"] == []
    (warning,) = layers["block"]["warnings"]
    assert warning == gap_warnings(c.layer("block").completeness_gap)[0]
    assert warning.startswith("relative completeness gap") and warning in text
    assert '"WARNING " + l.name' in text  # the viewer writes each warning next to the layers table
