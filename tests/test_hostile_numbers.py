"""Hostile numbers, seeds and user hooks (issue 23, items 10, 11, 12, 19): non-finite settings and
out-of-range seeds are refused in one line by every command; every eval experiment runs under its
seed (twice the same numbers, a resumed experiment equals an uninterrupted one); a user's forward
hook inside an analysed segment is run by the sliced graph, or refused in one line naming it."""

import importlib
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from neurflow import NeurFlow, NeurFlowConfig, NeurFlowError
from neurflow.analysis.evaluate import Options, run_eval
from neurflow.analysis.evaluate import common as eval_common
from neurflow.analysis.run import Run
from neurflow.cli import main
from neurflow.options import AtlasOptions, AuditOptions, DebugOptions, EvalOptions, LabelOptions
from neurflow.slicing import LayerGraph
from neurflow.sources.datasets import Dataset

from conftest import TINY_NET_PY, import_oracle, one_line, run_args, tiny_net

HOOKED_PY = (
    TINY_NET_PY
    + """

def hooked_block():
    net = build()
    net.block2.register_forward_hook(lambda module, args, out: -out)
    return net
"""
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The CLI workspace (a model factory file, data.pt) and one finished run in ws/out."""
    ws = tmp_path_factory.mktemp("numbers")
    (ws / "mymodel.py").write_text(HOOKED_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, ws / "data.pt")
    assert main(run_args(ws)) == 0
    return ws


# -- 12: non-finite numbers ------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value",
    [("--adaptive-eps", "inf"), ("--monosemantic-threshold", "nan"), ("--adaptive-eps", "-inf")],
)
def test_run_refuses_non_finite_settings_before_writing(ws, capsys, flag, value):
    out = ws / f"nonfinite-{flag[2:]}-{value}"
    line = one_line(run_args(ws, out.name, [f"{flag}={value}"]), capsys)  # = : -inf is no flag
    assert f"{flag}: expected a finite number, got {value}" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["debug", "{out}", "--image", "0", "--threshold", "nan"], "--threshold"),
        (
            [
                "atlas",
                "--model",
                "{ws}/mymodel.py:build",
                "--data",
                "{ws}/data.pt",
                "--out",
                "{ws}/atlas",
                "--gpus-per-worker",
                "inf",
            ],
            "--gpus-per-worker",
        ),  # fmt: skip
        (
            [
                "atlas",
                "--model",
                "{ws}/mymodel.py:build",
                "--data",
                "{ws}/data.pt",
                "--out",
                "{ws}/atlas",
                "--adaptive-eps",
                "nan",
            ],
            "--adaptive-eps",
        ),  # fmt: skip
    ],
)
def test_every_float_flag_refuses_non_finite_numbers(ws, capsys, argv, flag):
    argv = [a.format(ws=ws, out=ws / "out") for a in argv]
    line = one_line(argv, capsys)
    assert f"{flag}: expected a finite number" in line
    assert not (ws / "atlas").exists()


def test_the_dataclasses_refuse_non_finite_numbers():
    """One check for every setting and option (the library as the CLI); int fields given inf too."""
    for make in (
        lambda: NeurFlowConfig(adaptive_eps=float("inf")),
        lambda: NeurFlowConfig(monosemantic_threshold=float("nan")),
        lambda: NeurFlowConfig(max_groups=float("inf")),
        lambda: NeurFlowConfig(top_n=float("inf")),
        lambda: DebugOptions(threshold=float("nan")),
        lambda: AtlasOptions(gpus_per_worker=float("nan")),
    ):
        with pytest.raises(NeurFlowError, match="finite|an integer >= 1"):
            make()
    # a config read back from a damaged circuit.json with Infinity in it is refused too
    with pytest.raises(NeurFlowError, match="adaptive_eps: expected a finite number"):
        NeurFlowConfig.from_dict(json.loads('{"adaptive_eps": Infinity}'))


# -- 19: seeds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-5", "4294967296", "99999999999999999999999"])
@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["audit", "{out}"],
        ["eval", "{out}", "fidelity"],
        ["label", "{out}", "--labeler", "annotations"],
    ],
)
def test_one_seed_range_for_every_command(ws, capsys, command, seed):
    argv = run_args(ws, "seeded") if command == ["run"] else [a.format(out=ws / "out") for a in command]
    line = one_line([*argv, "--seed", seed], capsys)
    assert f"--seed: expected an integer in [0, 4294967296) (0 <= seed < 2**32), got {seed}" in line
    assert not (ws / "seeded").exists()


def test_the_seed_range_is_one_check_and_its_ends_work(ws):
    for cls in (NeurFlowConfig, EvalOptions, AuditOptions, LabelOptions):
        for bad in (-1, 2**32, 1.5, True):
            with pytest.raises(NeurFlowError, match="seed: expected an integer in"):
                cls(seed=bad)
        assert cls(seed=2**32 - 1).seed == 2**32 - 1
    # the last seed is usable: the crops drawn with seed + 1 wrap around instead of overflowing numpy
    assert eval_common.unit_seed(2**32 - 1, 1) == 0
    result = run_eval(_reopened(ws), "weight-norm", Options(seed=2**32 - 1, max_crops=5))["weight-norm"]
    assert result["options"]["seed"] == 2**32 - 1 and result["nodes"]


# -- 11: every eval experiment under its seed ---------------------------------------------
def _reopened(ws) -> Run:
    data = torch.load(ws / "data.pt")
    namespace: dict = {}
    exec(TINY_NET_PY, namespace)  # noqa: S102 - our own test source
    torch.manual_seed(0)  # the run's seed: load_model draws the factory's initialisation under it
    model = namespace["build"]().eval()
    return Run(ws / "out", quiet=True).attach(model, Dataset(data["images"], data["labels"]))


def _numbers(result: dict) -> dict:
    """A result without its run times and plot path (everything else must repeat exactly)."""
    drop = {"seconds", "plot"}
    if isinstance(result, dict):
        return {k: _numbers(v) for k, v in result.items() if k not in drop}
    if isinstance(result, list):
        return [_numbers(v) for v in result]
    return result


def test_methods_twice_gives_the_same_numbers(ws):
    import_oracle("captum")
    run = _reopened(ws)
    opts = Options(subsets=3, sizes=(1, 2), max_crops=0)
    torch.manual_seed(123)
    np.random.seed(123)
    first = run_eval(run, "methods", opts)["methods"]
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    second = run_eval(run, "methods", opts)["methods"]  # the global generators moved on in between
    rows = {row["method"]: row for row in second["methods"]}
    assert {"smoothgrad_ig", "gradient_shap"} <= set(rows)
    assert _numbers(first) == _numbers(second)
    other = run_eval(run, "methods", Options(subsets=3, sizes=(1, 2), max_crops=0, seed=1))["methods"]
    assert _numbers(other) != _numbers(first)  # the seed is what they are drawn with
    # the caller's generators are left where they were
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], np_state)


def _fingerprint(unit_call: str, args) -> str:
    """What a unit drew: fidelity's zeroed channel sets, the generator NeuronMCT samples images with."""
    if unit_call == "class_accuracy":
        return repr(sorted((k, list(v)) for k, v in (args[1] if len(args) > 1 and args[1] else {}).items()))
    state = args[3].get_state()
    return f"{state[1][:4].tolist()} {state[2]}"


@pytest.mark.parametrize(
    "experiment, unit_call, per_unit", [("fidelity", "class_accuracy", 2 + 2 * 3), ("mct", "mct_ranking", 1)]
)
def test_a_resumed_experiment_equals_an_uninterrupted_one(ws, monkeypatch, experiment, unit_call, per_unit):
    """Interrupted after its first unit (DIR/eval/<name>.partial.json kept), the rerun computes the
    units left with the draws an uninterrupted run makes for them, and the same result."""
    module = importlib.import_module("neurflow.analysis.evaluate.fidelity")  # the module, not its function

    opts = Options(draws=3, max_images=2)  # mct: 2 of the 3 class images drawn per layer
    run = _reopened(ws)
    real = getattr(module, unit_call)
    drawn: list = []

    def recording(*args, **kwargs):
        drawn.append(_fingerprint(unit_call, args))
        if stop and len(drawn) > per_unit:  # past the first unit
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, unit_call, recording)
    stop = False
    whole = run_eval(run, experiment, opts)[experiment]
    uninterrupted, drawn[:] = list(drawn), []
    stop = True
    with pytest.raises(KeyboardInterrupt):
        run_eval(run, experiment, opts)
    assert len(json.loads(run.dir.eval_partial(experiment).read_text())["units"]) == 1
    stop, drawn[:] = False, []
    resumed = run_eval(run, experiment, opts)[experiment]
    assert not run.dir.eval_partial(experiment).exists()
    assert drawn == uninterrupted[per_unit:]  # the units left drew what they draw uninterrupted
    assert _numbers(resumed) == _numbers(whole)


# -- 10: user forward hooks --------------------------------------------------------------------
class Neg(nn.Module):
    """``-m(x)``: a hook's negation written into forward (the model the hooked one must equal)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return -self.m(x)


def _circuit(model, images, layers, **settings) -> dict:
    with torch.no_grad():
        target = int(torch.mode(model(images).argmax(1)).values)
    nf = NeurFlow(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), **settings).fit(model, images, target, layers)
    return {
        layer.name: {k: (n.core, [float(f"{v:.4g}") for v in n.importance]) for k, n in layer.nodes.items()}
        for layer in nf.circuit_.layers
    }


def _pair():
    """Two copies of TINY_NET_PY's net with the same weights, and 8 images."""
    torch.manual_seed(0)
    hooked, written = tiny_net().eval(), tiny_net().eval()
    written.load_state_dict(hooked.state_dict())
    return hooked, written, torch.rand(8, 3, 16, 16)


def test_a_hook_inside_a_segment_is_run_by_both_engines():
    """A forward hook on the convolution inside the analysed block2 (segment block1 -> block2): the
    channel-sparse engine (auto on the CPU) used to evaluate that convolution by its weights, without
    the hook; the dense one calls it."""
    hooked, written, images = _pair()
    hooked.block2[0].register_forward_hook(lambda module, args, out: -out)
    written.block2[0] = Neg(written.block2[0])
    layers = ["head", "block2", "block1"]
    for engine in ("auto", "dense"):
        assert _circuit(hooked, images, layers, engine=engine) == _circuit(written, images, layers, engine=engine)
    assert len(hooked.block2[0]._forward_hooks) == 1  # the user's hook is left on the model


def test_a_hook_on_a_module_outside_the_layers_runs_on_the_data():
    """block1 lies between the analysed stem and block2; its hook reads the data (bool of a tensor),
    which torch.fx cannot trace through: the module is called whole, so the hook runs."""
    hooked, written, images = _pair()
    calls = []

    def hook(module, args, out):
        calls.append(out.shape[0])
        return -out if bool((out >= 0).all()) else out  # after a ReLU: always negated

    hooked.block1.register_forward_hook(hook)
    written.block1 = Neg(written.block1)
    layers = ["head", "block2", "stem"]
    assert _circuit(hooked, images, layers) == _circuit(written, images, layers)
    assert len(calls) > 2  # on the data, not once while tracing


def test_a_hook_on_a_module_holding_an_analysed_layer_is_refused(ws, capsys):
    argv = run_args(ws, "hooked", factory="hooked_block")
    argv[argv.index("--layers") + 1] = "head,block2.0,block1"
    line = one_line(argv, capsys)
    assert "--layers: expected layers outside the modules that have forward hooks, got 'block2.0'" in line
    assert "block2 has a forward hook" in line and not (ws / "hooked").exists()


def test_hooks_on_the_model_itself_and_global_hooks_are_refused():
    hooked, _, images = _pair()
    handle = hooked.register_forward_pre_hook(lambda module, args: (args[0] * 2,))  # the input scaled
    with pytest.raises(NeurFlowError, match="model: .*Net with a forward pre-hook"):
        LayerGraph(hooked, ["head", "block2", "block1"])
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        with pytest.raises(NeurFlowError, match="a global module forward hook"):
            LayerGraph(hooked, ["head", "block2", "block1"])
    finally:
        handle.remove()
    LayerGraph(hooked, ["head", "block2", "block1"])  # without them: fine


class Mlp(nn.Module):
    """flatten -> fc1 -> LayerNorm -> ReLU -> fc2 -> head: a normalisation inside the segment fc1 -> fc2."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3 * 16 * 16, 12)
        self.norm = nn.LayerNorm(12)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(12, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.norm(self.fc1(x.flatten(1))))))


def test_a_hooked_normalisation_is_run_with_its_hook_under_the_frozen_rule(caplog):
    """The frozen rule replaces a LayerNorm's call by its held form: a hooked one is called as it
    is instead (its hook runs), differentiated through, with a warning naming it."""
    torch.manual_seed(0)
    hooked, written = Mlp().eval(), Mlp().eval()
    written.load_state_dict(hooked.state_dict())
    hooked.norm.register_forward_hook(lambda module, args, out: -out)
    written.norm = Neg(written.norm)
    images = torch.rand(8, 3, 16, 16)
    layers = ["head", "fc2", "fc1"]
    with caplog.at_level(logging.WARNING, logger="neurflow"):
        got = _circuit(hooked, images, layers)  # --norm-rule frozen, the default
    assert got == _circuit(written, images, layers, norm_rule="plain")
    assert any("norm has a forward hook" in r.getMessage() for r in caplog.records)


def test_a_hook_is_part_of_the_run_identity():
    """A hook on a module the graph calls whole (here a convolution) is not in the traced code: its
    code and the values it closes over are part of the digest (a run with the hook is another run)."""
    layers = ["head", "block2", "block1"]
    model = tiny_net().eval()
    plain = LayerGraph(model, layers).code

    def scaled(factor):
        return model.block2[0].register_forward_hook(lambda module, args, out: out * factor)

    handle = scaled(-1.0)
    minus_one = LayerGraph(model, layers).code
    handle.remove()
    handle = scaled(2.0)
    two = LayerGraph(model, layers).code
    handle.remove()
    assert len({plain, minus_one, two}) == 3 and LayerGraph(model, layers).code == plain
