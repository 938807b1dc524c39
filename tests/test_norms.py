"""Scale-invariant normalisations held at their value (``norm_rule="frozen"``, neurflow/norms.py;
issue 15, item 8): IG is complete again through LayerNorm, GroupNorm and RMSNorm, checked against
a closed form, against the real network at the crop, on a torchvision ViT block and on vit_b_16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from neurflow import NeurFlow, NeurFlowConfig, NeurFlowError
from neurflow.attribution import integrated_gradients
from neurflow.slicing import LayerGraph


def _gap(graph: LayerGraph, lower: str, upper: str, x, rule: str, steps: int = 8, nodes=None) -> float:
    prefix, segment = graph.cut(lower, upper, rule)
    with torch.no_grad():
        acts, *extras = prefix(x)
        width = segment(acts, *extras).shape[-1 if acts.ndim == 3 else 1]
    reqs = [list(nodes if nodes is not None else range(width))] * len(x)
    res = integrated_gradients(segment, acts, extras, reqs, steps=steps)
    return float(np.abs(res.gaps()).sum() / np.abs(np.concatenate(res.deltas)).sum())


class Tokens(nn.Module):
    """[B, 3, 4, 4] -> 16 tokens of width 6 -> LayerNorm: the lower layer ``embed``, upper ``norm``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        t = self.norm(self.embed(x.flatten(2).transpose(1, 2)))
        return self.head(t.mean(1))


def test_layernorm_attributions_equal_the_closed_form():
    """Held at the crop's scale s_t, LayerNorm is affine in z: h_c = mean_t((z_tc - mean_k z_tk) / s_t
    * w_c + b_c), so IG from zero is exactly z * dh/dz, whatever the number of steps."""
    torch.manual_seed(0)
    model = Tokens().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2.0)
    x = torch.rand(3, 3, 4, 4)
    graph = LayerGraph(model, ["norm", "embed"])
    prefix, segment = graph.cut("embed", "norm", "frozen")
    with torch.no_grad():
        z, *extras = prefix(x)
    res = integrated_gradients(segment, z, extras, [[0, 4]] * len(x), steps=4)
    w = model.norm.weight.detach().double()
    zd = z.double()
    s = torch.sqrt(zd.var(-1, unbiased=False, keepdim=True) + model.norm.eps)  # [B, T, 1]
    T, C = zd.shape[1], zd.shape[2]
    for b in range(len(x)):
        for i, c in enumerate([0, 4]):
            grad = (w[c] / s[b] / T) * (torch.eye(C, dtype=torch.float64)[c] - 1.0 / C)  # dh_c / dz[b], [T, C]
            attr = zd[b] * grad
            np.testing.assert_allclose(res.scores[b][i], attr.mean(0).numpy(), rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(res.totals[b][i], attr.sum().item(), rtol=1e-5, atol=1e-8)
    assert np.abs(res.gaps()).max() < 1e-5
    assert _gap(graph, "embed", "norm", x, "plain", steps=4) > 0.5  # what the plain rule misses


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: its own forward, traced to ``F.layer_norm``."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.conv, self.norm, self.proj = nn.Conv2d(4, 8, 3, padding=1, bias=False), norm, nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.proj(self.norm(self.conv(x)))


class Net(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = Block(norm)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


NORMS = {
    "GroupNorm": lambda: nn.GroupNorm(2, 8),
    "RMSNorm": lambda: nn.RMSNorm([8, 6, 6]),
    "LayerNorm2d (F.layer_norm)": lambda: LayerNorm2d(8),
}


@pytest.mark.parametrize("kind", list(NORMS))
def test_held_normalisation_equals_the_network_at_the_crop_and_is_complete(kind):
    torch.manual_seed(0)
    model = Net(NORMS[kind]()).eval()
    x = torch.rand(4, 3, 6, 6) * 20  # activations well above the norms' eps: their scale invariance shows
    graph = LayerGraph(model, ["block", "stem"])
    prefix, segment = graph.cut("stem", "block", "frozen")
    plain_prefix, plain_segment = graph.cut("stem", "block", "plain")
    with torch.no_grad():
        acts, *extras = prefix(x)
        real = plain_segment(*plain_prefix(x))
        assert len(extras) == 1  # the held scale, one per normalisation
        torch.testing.assert_close(segment(acts, *extras), real, rtol=1e-5, atol=1e-6)
    assert _gap(graph, "stem", "block", x, "frozen") < 1e-5  # conv . held norm . conv: affine
    assert _gap(graph, "stem", "block", x, "plain") > 0.05


def _vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()


VIT_LAYERS = ["heads.head", "encoder.ln", "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_0"]


def test_vit_block_completeness():
    """torchvision's ViT: the final LayerNorm over the last block, and a whole pre-norm block
    (LayerNorm, attention, LayerNorm, MLP, two residuals) over the block below it."""
    model = _vit()
    x = torch.rand(4, 3, 32, 32)
    graph = LayerGraph(model, VIT_LAYERS)
    lo, blk, up = "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1", "encoder.ln"
    assert _gap(graph, blk, up, x, "plain") > 0.5
    assert _gap(graph, lo, blk, x, "plain") > 0.25
    assert _gap(graph, blk, up, x, "frozen") < 1e-5
    assert _gap(graph, lo, blk, x, "frozen") < 1e-5
    prefix, segment = graph.cut(lo, blk, "frozen")
    with torch.no_grad():  # the held network is the real one at the crop
        acts, *extras = prefix(x)
        real = graph.recorder([blk])(x)[0]
        torch.testing.assert_close(segment(acts, *extras), real)


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


@pytest.mark.parametrize("rule", ["frozen", "plain"])
def test_vit_engines_agree_and_the_model_is_left_as_found(rule):
    model = _vit()
    x = torch.rand(6, 3, 32, 32)
    before = _state(model)
    fits = {
        engine: NeurFlow(tau=2, top_k=3, ig_steps=8, granularities=(1.0,), engine=engine, norm_rule=rule)
        .fit(model, x, 0, VIT_LAYERS)
        .circuit_
        for engine in ("auto", "dense")
    }
    for a, b in zip(fits["auto"].layers, fits["dense"].layers):
        assert {n: nd.core for n, nd in a.nodes.items()} == {n: nd.core for n, nd in b.nodes.items()}
    gaps = [fits["auto"].layer(n).completeness_gap["relative"] for n in VIT_LAYERS[1:3]]
    assert all(g < 1e-5 for g in gaps) if rule == "frozen" else all(g > 0.25 for g in gaps)
    after = _state(model)
    assert before[1:] == after[1:] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_setting_checked_and_in_the_identity_only_when_plain():
    assert "norm_rule" not in NeurFlowConfig().method_dict()
    assert NeurFlowConfig(norm_rule="plain").method_dict()["norm_rule"] == "plain"
    with pytest.raises(NeurFlowError, match="norm_rule"):
        NeurFlowConfig(norm_rule="detached")


def test_cnn_segments_are_unchanged():
    """No normalisation of those kinds between the layers (BatchNorm in eval mode is affine):
    the cut is the plain one, so circuits of CNNs do not change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3)).eval()
    graph = LayerGraph(model, ["3", "0"])
    frozen, plain = graph.cut("0", "3", "frozen"), graph.cut("0", "3", "plain")
    assert all(isinstance(m, fx.GraphModule) for m in frozen)  # not the prefix that also outputs scales
    assert [m.code for m in frozen] == [m.code for m in plain]


@pytest.mark.slow
def test_vit_b_16_as_in_the_issue(tmp_path):
    """The issue's repro: torchvision vit_b_16 with random weights (seed 0), 3 random 224-px images;
    the plain rule's gaps were 0.998 at encoder.ln and 0.18-0.31 at encoder_layer_11."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    x = torch.rand(3, 3, 224, 224)
    layers = ["heads.head", "encoder.ln", "encoder.layers.encoder_layer_11", "encoder.layers.encoder_layer_10"]
    c = (
        NeurFlow(tau=2, top_k=3, ig_steps=8, granularities=(1.0, 0.5), selection="labelled")
        .fit(model, x, 0, layers, labels=torch.zeros(3, dtype=torch.long))
        .circuit_
    )
    assert c.layer("encoder.ln").completeness_gap["relative"] < 1e-4
    assert c.layer("encoder.layers.encoder_layer_11").completeness_gap["relative"] < 1e-4
    assert c.layer("heads.head").completeness_gap["zero_attribution_nodes"] == 1  # its zero-initialised head
