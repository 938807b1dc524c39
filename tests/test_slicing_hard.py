"""Real models sliced without wrong results or crashes (issue 14): in-place writes after an
analysed layer, a gradient cut between two layers, a run's identity that covers the model's code,
and layers the output does not depend on."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neurflow
from neurflow import NeurFlow
from neurflow._state import preserved, threads
from neurflow.attribution import integrated_gradients, integrated_gradients_sparse, plan_segment
from neurflow.cli import main
from neurflow.errors import NeurFlowError
from neurflow.slicing import LayerGraph, layer_names

from conftest import assert_same_state, majority_class, model_state, one_line


class InPlaceNet(nn.Module):
    """A small CNN that writes in place after its layers (``inplace=False``: the same network
    written out of place): ReLU(inplace=True) right after a conv, a BN -> ReLU(inplace=True)
    block, ``add_`` into a block's output, ``F.relu(..., inplace=True)``, a discarded
    ``mul_`` and an in-place Dropout."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace))
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.drop = nn.Dropout(0.5, inplace=inplace)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        s = self.act(self.stem(x))
        b = self.block1(s)
        if self.inplace:
            b.add_(s)  # writes into block1's output
        else:
            b = b + s
        c = F.relu(self.bn2(self.conv2(b)), inplace=self.inplace)
        if self.inplace:
            c.mul_(2.0)  # result discarded: later readers of c see the doubled value
        else:
            c = c * 2.0
        return self.head(self.drop(c.mean((2, 3))))


def inplace_net(inplace=True):
    torch.manual_seed(0)
    model = InPlaceNet(inplace).eval()
    for bn in (model.block1[1], model.bn2):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


def eager_outputs(model, names, x):
    """Each module's output as its forward returned it (before anything wrote into it)."""
    modules, seen = dict(model.named_modules()), {}
    handles = [
        modules[n].register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, out.detach().clone()))
        for n in names
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def check_every_layer(model, x, top, bottom, steps=2):
    """Every layer ``neurflow layers`` lists, as the lower layer under ``top`` and as the upper
    layer over ``bottom``: the recorder returns what the layer returned, the full graph what the
    model returns, dense IG runs and the channel-sparse engine agrees with it where it applies."""
    names = [n for n in layer_names(model) if n not in (top, bottom) and not n.startswith(bottom + ".")]
    before = model_state(model)
    seen, logits = eager_outputs(model, names + [top, bottom], x)
    sparse_pairs = 0
    with threads(1), preserved(model, freeze=True):
        torch.testing.assert_close(LayerGraph(model, [top, bottom]).full()(x), logits)
        for name in names:
            graph = LayerGraph(model, [top, name, bottom])
            recorded = graph.recorder([top, name, bottom])(x)
            for n, r in zip([top, name, bottom], recorded):
                torch.testing.assert_close(r, seen[n], msg=f"recorded {n} (with {name})")
            for upper, lower in ((top, name), (name, bottom)):
                with torch.no_grad():
                    acts, *extras = graph.prefix(lower, upper)(x)
                segment = graph.segment(lower, upper)
                dense = integrated_gradients(segment, acts, extras, [[0]] * len(x), steps=steps, batch_size=8)
                assert all(np.isfinite(s).all() for s in dense.scores), (upper, lower)
                p = plan_segment(segment)
                sparse = p and integrated_gradients_sparse(p, acts, extras, [[0]] * len(x), steps, 8)
                if sparse:
                    sparse_pairs += 1
                    for a, b in zip(dense.scores, sparse.scores):
                        np.testing.assert_allclose(
                            b, a, rtol=1e-3, atol=1e-5 * np.abs(a).max(), err_msg=f"{upper}<-{lower}"
                        )
    assert_same_state(before, model_state(model))
    return names, sparse_pairs


# 1. in-place writes after an analysed layer -------------------------------------------------------
def test_every_layer_of_a_model_with_inplace_writes():
    model = inplace_net()
    names, sparse_pairs = check_every_layer(model, torch.rand(2, 3, 16, 16), "head", "stem")
    assert {"act", "block1", "block1.2", "conv2", "bn2", "drop"} <= set(names) and sparse_pairs > 0
    # the user's model is the same objects with the same flags: nothing was switched out of place
    assert model.act.inplace and model.block1[2].inplace and model.drop.inplace


def test_the_issue_command_bn_followed_by_inplace_relu_dense_and_sparse():
    """``--layers fc,layer4.1.bn1,layer4.0`` on a ResNet-18: BN followed by ReLU(inplace=True)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(4, 3, 32, 32)
    target = majority_class(model, x)
    before = model_state(model)
    circuits = []
    with threads(1):
        for engine in ("dense", "auto"):
            nf = NeurFlow(tau=2, top_k=3, ig_steps=4, granularities=(1.0,), engine=engine, selection="labelled")
            nf.fit(model, x, target, ["fc", "layer4.1.bn1", "layer4.0"], labels=torch.full((4,), target))
            circuits.append(nf.circuit_)
    assert_same_state(before, model_state(model))
    assert same_circuit(circuits[0], circuits[1])


@pytest.mark.parametrize(
    "act",
    [nn.ReLU(True), nn.ReLU6(True), nn.LeakyReLU(0.2, True), nn.ELU(0.5, True), nn.CELU(0.7, True), nn.SELU(True),
     nn.SiLU(True), nn.Mish(True), nn.Hardswish(True), nn.Hardsigmoid(True), nn.Hardtanh(-0.3, 0.4, True),
     nn.Threshold(0.1, -1.0, True), nn.RReLU(inplace=True), nn.Dropout(0.3, True), nn.AlphaDropout(0.3, True)],
    ids=lambda m: type(m).__name__,
)  # fmt: skip
def test_every_standard_inplace_module_is_rewritten(act):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act, nn.Flatten(), nn.LazyLinear(3)).eval()
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    names, _ = check_every_layer(model, torch.randn(2, 3, 8, 8), "3", "0")
    assert names == ["1", "2"] and act.inplace


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "googlenet"])
def test_every_listed_layer_of_resnet18_and_googlenet(arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    if arch == "resnet18":
        model = torchvision.models.resnet18(weights=None)
    else:
        model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    names, sparse_pairs = check_every_layer(model.eval(), torch.randn(1, 3, 32, 32), "fc", "conv1")
    assert len(names) > (50 if arch == "resnet18" else 200) and sparse_pairs > 0


def circuit_doc(circuit):
    doc = circuit.to_json()
    for layer in doc["layers"]:
        layer.pop("seconds", None)
    return {k: doc[k] for k in ("target", "layers", "input_layer", "trace")}


def same_circuit(a, b, rel=1e-4):
    """Equal circuits: the same structure, cores and exemplars; numbers equal up to float rounding
    (the dense and channel-sparse engines sum in another order)."""

    def close(x, y):
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        if isinstance(x, float) and isinstance(y, (int, float)):
            return y == pytest.approx(x, rel=rel, abs=1e-6)
        return x == y

    return close(circuit_doc(a), circuit_doc(b))


def test_fit_with_inplace_relu_equals_the_out_of_place_model():
    x = torch.rand(8, 3, 16, 16)
    plain = inplace_net(inplace=False)
    target = majority_class(plain, x)
    layers = ["head", "conv2", "block1", "act", "stem"]
    circuits = {}
    for inplace in (True, False):
        for engine in ("dense", "auto"):
            model = inplace_net(inplace)
            before = model_state(model)
            nf = NeurFlow(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), engine=engine)
            circuits[inplace, engine] = nf.fit(model, x, target, layers).circuit_
            assert_same_state(before, model_state(model))
    ref = circuits[False, "dense"]
    for key, c in circuits.items():
        assert same_circuit(c, ref), key
    assert circuits[True, "auto"].meta["run_hash"] != ref.meta["run_hash"]  # another forward, another run


# 2. a gradient cut between two analysed layers ---------------------------------------------------------
class CutNet(nn.Module):
    def __init__(self, how=None):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        a = self.stem(x)
        if self.how == "detach":
            a = a.detach()
        elif self.how == "data":
            a = a.data
        elif self.how == "torch.detach":
            a = torch.detach(a)
        return self.head(self.block1(a).mean((2, 3)))


class NoGradBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        with torch.no_grad():  # invisible to torch.fx: caught when the gradient does not come back
            return self.conv(x)


@pytest.mark.parametrize("how,what", [("detach", ".detach()"), ("data", ".data"), ("torch.detach", "torch.detach()")])
def test_a_detach_between_two_layers_is_refused_up_front(how, what):
    model = CutNet(how)
    with pytest.raises(NeurFlowError) as err:
        LayerGraph(model, ["head", "block1", "stem"])
    line = str(err.value)
    assert "block1 and stem" in line and what in line and "integrated gradients cannot pass" in line
    LayerGraph(model, ["head", "block1"])  # the layers above the cut are fine


@pytest.mark.parametrize("engine,steps", [("dense", 4), ("auto", 4), ("auto", "auto")])
def test_no_grad_inside_a_layer_is_refused_when_the_gradient_does_not_come_back(engine, steps):
    torch.manual_seed(0)
    model = CutNet()
    model.block1 = NoGradBlock()
    x = torch.rand(6, 3, 16, 16)
    with pytest.raises(NeurFlowError, match="block1 and stem.*integrated gradients cannot pass"):
        NeurFlow(tau=2, top_k=3, ig_steps=steps, granularities=(1.0,), engine=engine).fit(
            model, x, majority_class(model, x), ["block1", "stem"]
        )


# 4. a layer the output does not depend on ------------------------------------------------------------
class SideNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.aux = nn.Linear(8, 4)  # a side head: computed from block1, its result discarded
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        b = self.block1(self.stem(x)).mean((2, 3))
        self.aux(b)
        return self.head(b)


def test_a_side_head_the_output_does_not_depend_on_is_refused():
    with pytest.raises(NeurFlowError, match="the model's output does not depend on aux"):
        LayerGraph(SideNet(), ["aux", "block1", "stem"])
    LayerGraph(SideNet(), ["head", "block1", "stem"])


# the same through the command line: exit 2 and one line ----------------------------------------------------
MODELS_PY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, act=torch.relu, how=None):
        super().__init__()
        self.act, self.how = act, how
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.aux = nn.Linear(8, 4)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        a = self.act(self.stem(x))
        if self.how == "detach":
            a = a.detach()
        b = self.block1(a).mean((2, 3))
        self.aux(b)
        return self.head(b)

def relu():
    return Net()

def tanh():  # the same state dict, another forward
    return Net(act=torch.tanh)

def detach():
    return Net(how="detach")
"""


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "m.py").write_text(MODELS_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.rand(8, 3, 16, 16), "labels": torch.zeros(8, dtype=torch.long)}, tmp_path / "d.pt")
    return tmp_path


def run_args(ws, factory="relu", layers="head,block1,stem", out="out"):
    return ["run", "--model", f"{ws}/m.py:{factory}", "--data", f"{ws}/d.pt", "--target", "0", "--layers", layers,
            "--selection", "labelled", "--tau", "2", "--top-k", "4", "--ig-steps", "4", "--granularities", "1",
            "--out", str(ws / out), "--quiet"]  # fmt: skip


def test_cli_refuses_a_cut_and_a_side_head_in_one_line(ws, capsys):
    line = one_line(run_args(ws, "detach"), capsys)
    assert line.startswith("neurflow: error: --layers") and "block1 is computed from stem through .detach()" in line
    line = one_line(run_args(ws, layers="aux,block1,stem"), capsys)
    assert line.startswith("neurflow: error: --layers") and "the model's output does not depend on aux" in line
    assert not (ws / "out" / "manifest.json").exists()  # refused before the directory is claimed


# 3. a run's identity covers the model's code --------------------------------------------------------
def test_same_state_dict_other_forward_is_another_run_same_model_is_loaded(ws, capsys, caplog):
    from neurflow.sources.models import load_model

    relu, tanh = load_model(f"{ws}/m.py:relu").model, load_model(f"{ws}/m.py:tanh").model
    sd_a, sd_b = relu.state_dict(), tanh.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert LayerGraph(relu, ["head", "block1"]).code != LayerGraph(tanh, ["head", "block1"]).code

    assert main(run_args(ws)) == 0
    first = json.loads((ws / "out" / "circuit.json").read_text())
    capsys.readouterr()
    assert main(run_args(ws, "tanh")) == 2  # not served the ReLU model's circuit
    assert "it holds a different run" in capsys.readouterr().err
    assert main(run_args(ws, "tanh", out="out-tanh")) == 0  # computed
    second = json.loads((ws / "out-tanh" / "circuit.json").read_text())
    assert second["run_hash"] != first["run_hash"]

    with caplog.at_level(logging.INFO, logger="neurflow"):
        assert main(run_args(ws)) == 0  # the same model again: loaded, and it says so
    assert f"loaded the finished run in {ws / 'out'}" in caplog.text
    assert json.loads((ws / "out" / "circuit.json").read_text()) == first
    # the finished run reads back without and with the model
    assert neurflow.load(ws / "out").meta["run_hash"] == first["run_hash"]
    run = neurflow.Run(ws / "out")
    assert run.responses("block1").shape[1] == 8


def test_loaded_message_is_on_stderr_even_when_quiet(ws):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "neurflow.cli", *args], capture_output=True, text=True)

    assert main(run_args(ws)) == 0
    proc = cli(*run_args(ws))
    assert proc.returncode == 0 and f"loaded the finished run in {ws / 'out'}" in proc.stderr, proc.stderr
