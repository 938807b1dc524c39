"""Channels-last layer outputs ([B, H, W, C]: torchvision's Swin): the channel axis is read off
each layer's module (``layers.module_axis``) or given (``--channel-axis``), refused where neither says."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neurflow import NeurFlow
from neurflow.errors import NeurFlowError
from neurflow.method.probe import image_responses
from neurflow.slicing import LayerGraph

SETTINGS = dict(tau=2, top_k=4, ig_steps=4, granularities=(1.0,), n_groups=2)


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(self.conv(x).permute(0, 2, 3, 1))  # [B, 8, 8, 6]


class Block(nn.Module):  # a Swin-like channels-last MLP with a residual path
    def __init__(self):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(6), nn.Linear(6, 6)

    def forward(self, x):
        return x + F.gelu(self.fc(self.norm(x)))


class Opaque(nn.Module):  # moves the channels by an operation the axis walk does not read
    def forward(self, x):
        return torch.movedim(x, 1, -1)


class ChannelsLastNet(nn.Module):
    def __init__(self, opaque: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), Opaque()) if opaque else Stem()
        self.block, self.head = Block(), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean(dim=(1, 2)))


def _target(model, images) -> int:
    with torch.no_grad():
        return int(torch.mode(model(images).argmax(1)).values)


def _hooked(model, name, x):
    got = {}
    h = dict(model.named_modules())[name].register_forward_hook(lambda m, a, o: got.__setitem__("o", o))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["o"]


def test_axis_read_off_the_modules_and_responses_average_h_w():
    torch.manual_seed(0)
    model, x = ChannelsLastNet().eval(), torch.rand(3, 3, 16, 16)
    graph = LayerGraph(model, ["head", "block", "stem"])
    assert graph.axes == {"head": -1, "block": -1, "stem": -1}
    for name in ("block", "stem"):
        want = _hooked(model, name, x).mean(dim=(1, 2)).numpy()  # [B, H, W, C] -> [B, C]
        got = image_responses(graph, name, x, batch_size=2)
        assert got.shape == (3, 6)
        assert abs(got - want).max() < 1e-6
    with torch.no_grad():  # the segment takes the permuted lower output and gives the upper one
        lower, upper = graph.recorder(["stem", "block"])(x)
        assert torch.allclose(graph.segment("stem", "block")(lower), upper, atol=1e-6)


@pytest.mark.parametrize("engine", ["auto", "dense"])
def test_fit_on_a_channels_last_model(engine):
    torch.manual_seed(0)
    model, images = ChannelsLastNet().eval(), torch.rand(6, 3, 16, 16)
    target = _target(model, images)
    c = NeurFlow(engine=engine, **SETTINGS).fit(model, images, target, ["head", "block", "stem"]).circuit_
    for layer in c.layers[1:]:
        assert layer.nodes and all(0 <= n < 6 for n in layer.nodes)
    for layer in c.layers:
        for node in layer.nodes.values():
            assert all(0 <= int(k) < 6 for k in node.core)


def test_fit_engines_agree():
    torch.manual_seed(0)
    model, images = ChannelsLastNet().eval(), torch.rand(6, 3, 16, 16)
    fits = [
        NeurFlow(engine=e, **SETTINGS).fit(model, images, _target(model, images), ["head", "block", "stem"]).circuit_
        for e in ("auto", "dense")
    ]
    a, b = ({(l.name, n): tuple(nd.core) for l in c.layers for n, nd in l.nodes.items()} for c in fits)
    assert a == b


def test_unknown_axis_is_refused_in_one_line_unless_given():
    torch.manual_seed(0)
    model, images = ChannelsLastNet(opaque=True).eval(), torch.rand(4, 3, 16, 16)
    with pytest.raises(NeurFlowError) as e:
        NeurFlow(**SETTINGS).fit(model, images, _target(model, images), ["head", "block", "stem"])
    assert "channel-axis" in str(e.value) and "\n" not in str(e.value)
    graph = LayerGraph(model, ["head", "block", "stem"], channel_axis="-1")
    assert graph.axes["stem"] == -1
    want = _hooked(model, "stem", images).mean(dim=(1, 2)).numpy()
    assert abs(image_responses(graph, "stem", images, batch_size=4) - want).max() < 1e-6
    NeurFlow(channel_axis="-1", **SETTINGS).fit(model, images, _target(model, images), ["head", "block", "stem"])


def test_setting_checked_and_in_the_identity_only_when_given():
    from neurflow.config import NeurFlowConfig

    with pytest.raises(NeurFlowError):
        NeurFlowConfig(channel_axis="2")
    assert "channel_axis" not in NeurFlowConfig().method_dict()
    assert NeurFlowConfig(channel_axis="-1").method_dict()["channel_axis"] == "-1"


@pytest.mark.slow
def test_swin_t_responses_are_the_h_w_mean_of_the_channels_last_output():
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model, x = tv.swin_t(weights=None).eval(), torch.rand(3, 3, 224, 224)
    graph = LayerGraph(model, ["head", "norm", "features.5", "features.3"])
    assert graph.axes["features.5"] == graph.axes["features.3"] == graph.axes["norm"] == -1
    for name in ("features.5", "norm"):
        out = _hooked(model, name, x)
        assert out.shape[1] == out.shape[2] and out.ndim == 4  # [B, H, W, C]
        got = image_responses(graph, name, x, batch_size=3)
        assert got.shape == (3, out.shape[-1])
        assert abs(got - out.mean(dim=(1, 2)).numpy()).max() < 1e-5


def test_channel_axis_flag():
    import argparse

    from neurflow.cli import add_flags
    from neurflow.config import NeurFlowConfig

    p = argparse.ArgumentParser()
    add_flags(p, NeurFlowConfig)
    assert p.parse_args(["--channel-axis", "-1"]).channel_axis == "-1"
    assert p.parse_args([]).channel_axis == "auto"


def test_zeroed_channels_of_a_channels_last_layer():
    from neurflow.method.probe import logits

    torch.manual_seed(0)
    model, x = ChannelsLastNet().eval(), torch.rand(2, 3, 16, 16)

    def zero_last(m, a, o):
        o = o.clone()
        o[..., [1, 4]] = 0
        return o

    h = model.stem.register_forward_hook(zero_last)
    with torch.no_grad():
        want = model(x)
    h.remove()
    assert torch.allclose(logits(model, x, zero={"stem": [1, 4]}), want, atol=1e-6)
    with pytest.raises(NeurFlowError):
        logits(model, x, zero={"stem": [6]})


def test_zeroing_follows_the_given_channel_axis():
    """A layer whose axis only ``--channel-axis`` says (LayerGraph.axes): zeroing its channels in
    the audit, the evaluation and debug's verification zeroes the last axis, not H."""
    from neurflow.method.probe import logits

    torch.manual_seed(0)
    model, x = ChannelsLastNet(opaque=True).eval(), torch.rand(2, 3, 16, 16)
    graph = LayerGraph(model, ["head", "block", "stem"], channel_axis="-1")

    def zero_last(m, a, o):
        o = o.clone()
        o[..., [1, 4]] = 0
        return o

    h = model.stem.register_forward_hook(zero_last)
    with torch.no_grad():
        want = model(x)
    h.remove()
    assert torch.allclose(logits(model, x, zero={"stem": [1, 4]}, axes=graph.axes), want, atol=1e-6)
    assert not torch.allclose(logits(model, x, zero={"stem": [1, 4]}), want, atol=1e-6)  # what it did before


def test_audit_zeroing_follows_the_given_channel_axis():
    """The audit's batched zeroing of a layer whose axis only ``--channel-axis`` says."""
    from neurflow.analysis.candidates import zeroed_logits
    from neurflow.method.probe import logits

    torch.manual_seed(0)
    model, x = ChannelsLastNet(opaque=True).eval(), torch.rand(2, 3, 16, 16)
    ref = logits(model, x)
    want = []
    for chans in ([1, 4], [0]):
        h = model.stem.register_forward_hook(lambda m, a, o, c=chans: o.index_fill(-1, torch.tensor(c), 0))
        with torch.no_grad():
            want.append(model(x))
        h.remove()
    got = list(zeroed_logits(model, "head", "stem", x, ref, [[1, 4], [0]], 2, "cpu", channel_axis="-1"))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)
