"""MODEL / DATA spec schemes (issue "one shape for the code"): the registries, the plugins that
fill them (the zoo, timm), ``zoo:NAME`` with a weights file, and ``timm:NAME``.

Fast tier, offline: timm models are built with random weights; ``@pretrained`` is checked against
an empty and a hand-made Hugging Face cache.
"""

import ast
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import neurflow
from neurflow.errors import NeurFlowError
from neurflow.sources import schemes
from neurflow.sources.datasets import Dataset, load_data
from neurflow.sources.models import load_model
from neurflow.sources.schemes import (
    LoadedModel,
    data_schemes,
    model_schemes,
    register_data_scheme,
    register_model_scheme,
    unregister_data_scheme,
    unregister_model_scheme,
)
from neurflow.store import model_hash

PKG = Path(neurflow.__file__).resolve().parent


class Toy(nn.Module):
    class_names = ["a", "b", "c"]
    default_layers = ["head", "body"]

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


@pytest.fixture
def toy_scheme():
    calls = []

    def loader(rest: str):
        calls.append(rest)
        if not rest.isdigit():
            raise NeurFlowError("model", "toy:WIDTH", f"toy:{rest}")
        return Toy(int(rest)).train()  # load_model puts it in eval mode

    register_model_scheme("toy", loader, "toy:WIDTH - a throwaway test model")
    yield calls
    unregister_model_scheme("toy")


# -- the registries --------------------------------------------------------------------------
def test_a_registered_model_scheme_loads_through_load_model(toy_scheme, tmp_path):
    assert model_schemes()["toy"].startswith("toy:WIDTH")
    loaded = load_model("toy:8")
    assert toy_scheme == ["8"] and isinstance(loaded, LoadedModel) and isinstance(loaded.model, Toy)
    assert (
        loaded.spec == "toy:8" and loaded.class_names == ["a", "b", "c"] and loaded.default_layers == ["head", "body"]
    )
    assert not loaded.model.training
    # random initialisation drawn under the seed
    assert model_hash(load_model("toy:8").model) == model_hash(loaded.model)
    other = load_model("toy:8", seed=1).model
    assert model_hash(other) != model_hash(loaded.model)
    # a weights file goes on top of whatever the scheme built
    torch.save(other.state_dict(), tmp_path / "w.pt")
    assert model_hash(load_model("toy:8", weights=str(tmp_path / "w.pt")).model) == model_hash(other)
    with pytest.raises(NeurFlowError, match="^weights: expected a state dict matching toy:4"):
        load_model("toy:4", weights=str(tmp_path / "w.pt"))
    with pytest.raises(NeurFlowError, match="^model: expected toy:WIDTH"):
        load_model("toy:wide")


def test_builtin_forms_and_plugins_are_listed():
    forms = model_schemes()
    assert {"torchvision", "zoo", "timm", "factory", "torchscript"} <= set(forms)
    assert list(forms)[-2:] == ["factory", "torchscript"]  # fallbacks last
    assert all(isinstance(h, str) and h for h in forms.values())
    assert forms["timm"].startswith("timm:NAME") and "@pretrained" in forms["timm"]
    assert {"zoo", "path"} <= set(data_schemes())
    assert list(schemes.BUILTIN_PLUGINS) == ["torchvision", "zoo", "timm"]


def test_unknown_scheme_is_one_line_with_a_suggestion():
    with pytest.raises(NeurFlowError) as e:
        load_model("tim:resnet18")
    assert e.value.parameter == "model" and "did you mean timm:resnet18" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(NeurFlowError, match="^model: .*no ':' in the spec"):
        load_model("no-such-thing")
    with pytest.raises(NeurFlowError, match="^model: expected an importable module"):
        load_model("no_such_pkg.mod:build")


def test_scheme_names_are_checked():
    with pytest.raises(ValueError):
        register_model_scheme("C", lambda rest: None, "one letter would shadow a drive letter")
    with pytest.raises(ValueError):
        register_model_scheme("a:b", lambda rest: None, "no colon")
    with pytest.raises(TypeError):
        register_data_scheme("nothing", None, "not callable")


def test_a_registered_data_scheme_loads_through_load_data():
    def loader(rest):
        n = int(rest)
        return Dataset(torch.zeros(n, 3, 8, 8), torch.arange(n) % 2, ["x", "y"], spec=f"blank:{rest}")

    register_data_scheme("blank", loader, "blank:N - N black images")
    try:
        assert "blank" in data_schemes()
        ds = load_data("blank:5")
        assert ds.images.shape == (5, 3, 8, 8) and ds.spec == "blank:5"
        register_data_scheme("blank", lambda rest: "not a dataset", "broken")
        with pytest.raises(NeurFlowError, match="^data: expected a scheme loader returning a Dataset"):
            load_data("blank:5")
    finally:
        unregister_data_scheme("blank")
    with pytest.raises(NeurFlowError, match="^data: .*no such file"):
        load_data("blank:5")


def test_entry_point_plugins_are_loaded_once(monkeypatch):
    registered = []

    def register():
        registered.append(1)
        register_model_scheme("fromplugin", lambda rest: Toy(2), "fromplugin:X - from an entry point")

    ep = SimpleNamespace(name="fromplugin", value="somepkg.plugin:register", load=lambda: register)
    monkeypatch.setattr(schemes, "_entry_points", lambda: [ep])
    monkeypatch.setitem(schemes._plugins_state, "loaded", False)
    try:
        assert "fromplugin" in model_schemes() and "zoo" in model_schemes()  # built-ins still there
        assert isinstance(load_model("fromplugin:x").model, Toy)
        assert registered == [1]
    finally:
        unregister_model_scheme("fromplugin")


def test_a_broken_plugin_is_skipped(monkeypatch, caplog):
    def boom():
        raise RuntimeError("broken plugin")

    ep = SimpleNamespace(name="broken", value="x:y", load=lambda: boom)
    monkeypatch.setattr(schemes, "_entry_points", lambda: [ep])
    monkeypatch.setitem(schemes._plugins_state, "loaded", False)
    assert "zoo" in model_schemes()
    assert "broken" in caplog.text


# -- layering ----------------------------------------------------------------------------------
def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_loaders_know_nothing_of_the_zoo_and_the_zoo_runs_no_pipeline():
    for name in ("models.py", "datasets.py", "schemes.py"):
        text = (PKG / "sources" / name).read_text()
        assert ("zoo" not in text) if name != "schemes.py" else ("import neurflow.zoo" not in text)
    for f in (PKG / "zoo").glob("*.py"):
        mods = {m.lstrip(".") for m in _imports(f)}
        assert not {m for m in mods if m.split(".")[0] in ("method", "analysis", "atlas", "cli")}, f


# -- the zoo as a plugin -------------------------------------------------------------------------
def test_zoo_model_with_a_weights_file(tmp_path):
    shortcut = load_model("zoo:fashion-cnn-shortcut").model
    plain = load_model("zoo:fashion-cnn")
    torch.save(shortcut.state_dict(), tmp_path / "sd.pt")
    loaded = load_model("zoo:fashion-cnn", weights=str(tmp_path / "sd.pt"))
    assert model_hash(loaded.model) == model_hash(shortcut) != model_hash(plain.model)
    assert loaded.class_names == plain.class_names and loaded.default_layers == plain.default_layers
    assert not loaded.model.training
    with pytest.raises(NeurFlowError, match="^weights: expected an existing checkpoint file"):
        load_model("zoo:fashion-cnn", weights=str(tmp_path / "missing.pt"))


# -- timm ----------------------------------------------------------------------------------------
TIMM_CASES = [
    ("resnet18", ["fc", "layer4.1", "layer4.0"]),
    ("mobilenetv3_small_050", ["classifier", "blocks.5.0", "blocks.4.1"]),
]


@pytest.mark.parametrize("name,layers", TIMM_CASES)
def test_timm_models_trace_and_give_a_circuit(name, layers):
    pytest.importorskip("timm", reason="needs the neurflow[timm] extra")
    loaded = load_model(f"timm:{name}")
    assert loaded.spec == f"timm:{name}" and not loaded.model.training
    assert loaded.class_names is not None and len(loaded.class_names) == 1000 and loaded.class_names[0] == "tench"
    names = neurflow.layer_names(loaded.model)
    assert set(layers) <= set(names)
    g = torch.Generator().manual_seed(0)
    # images near one another, so that several share image 0's predicted class
    images = torch.randn(1, 3, 64, 64, generator=g) + 0.1 * torch.randn(8, 3, 64, 64, generator=g)
    with torch.no_grad():
        target = int(loaded.model(images[:1]).argmax(1))
    nf = neurflow.NeurFlow(tau=2, top_k=3, ig_steps=4, granularities=(1.0,), batch_size=16)
    circuit = nf.fit(loaded.model, images, target, layers=layers).circuit_
    assert circuit.target == target
    assert [l.name for l in circuit.layers][:2] == layers[:2]
    assert all(len(l.nodes) >= 1 for l in circuit.layers)


def test_timm_weights_file_round_trips(tmp_path):
    pytest.importorskip("timm", reason="needs the neurflow[timm] extra")
    a = load_model("timm:resnet18").model
    assert model_hash(load_model("timm:resnet18").model) == model_hash(a)  # seeded
    b = load_model("timm:resnet18", seed=7).model
    assert model_hash(b) != model_hash(a)
    torch.save(b.state_dict(), tmp_path / "resnet18.pt")
    loaded = load_model("timm:resnet18", weights=str(tmp_path / "resnet18.pt"))
    assert model_hash(loaded.model) == model_hash(b)
    with pytest.raises(NeurFlowError, match="^weights: expected a state dict matching timm:resnet34"):
        load_model("timm:resnet34", weights=str(tmp_path / "resnet18.pt"))


def test_timm_unknown_names_and_suffixes():
    pytest.importorskip("timm", reason="needs the neurflow[timm] extra")
    with pytest.raises(NeurFlowError) as e:
        load_model("timm:resnet1")
    assert e.value.parameter == "model" and "timm:resnet18" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NeurFlowError, match="^model: expected timm:NAME or timm:NAME@pretrained"):
        load_model("timm:resnet18@latest")


def _hf_cache(monkeypatch, root: Path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    return hf


def test_timm_pretrained_never_downloads(monkeypatch, tmp_path):
    pytest.importorskip("timm", reason="needs the neurflow[timm] extra")
    hf = _hf_cache(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline_before = hf.HF_HUB_OFFLINE
    with pytest.raises(NeurFlowError) as e:
        load_model("timm:resnet18@pretrained")
    msg = str(e.value)
    assert msg.startswith("model: expected timm's pretrained weights of resnet18 in the local cache")
    assert "not in the local cache" in msg and "\n" not in msg
    # the offline switches are put back
    assert hf.HF_HUB_OFFLINE == offline_before and "HF_HUB_OFFLINE" not in os.environ
    assert not any(tmp_path.rglob("*.safetensors"))


def test_timm_pretrained_from_the_local_cache(monkeypatch, tmp_path):
    timm = pytest.importorskip("timm", reason="needs the neurflow[timm] extra")
    safetensors = pytest.importorskip("safetensors.torch")
    _hf_cache(monkeypatch, tmp_path)
    # a hand-made cache entry of the hub, as a download by timm would leave it
    repo = timm.create_model("resnet18").pretrained_cfg["hf_hub_id"]
    base = tmp_path / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    cached = load_model("timm:resnet18", seed=3).model
    safetensors.save_file(
        {k: v.contiguous() for k, v in cached.state_dict().items()},
        str(base / "snapshots" / commit / "model.safetensors"),
    )
    loaded = load_model("timm:resnet18@pretrained")
    assert loaded.spec == "timm:resnet18@pretrained" and model_hash(loaded.model) == model_hash(cached)


def test_timm_missing_is_one_line_with_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(NeurFlowError, match=r"pip install 'neurflow\[timm\]'"):
        load_model("timm:resnet18")


def test_cli_layers_of_a_timm_model(capsys):
    pytest.importorskip("timm", reason="needs the neurflow[timm] extra")
    from neurflow.cli import main

    assert main(["layers", "timm:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1\t" in out and "fc\tLinear" in out
    assert main(["layers", "timm:resnet1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "timm:resnet18" in err and "Traceback" not in err


# -- torchvision ---------------------------------------------------------------------------------
def test_torchvision_classifiers_declare_imagenet_class_names(tmp_path, capsys):
    """Issue 24 item 6: a 1000-class torchvision: model names its classes as timm: models do (one
    list), so ``--target tench`` is class 0 and ``show`` and the report name it; other heads get none."""
    import json

    import torchvision

    from neurflow.cli import main
    from neurflow.sources.timm_models import _class_names
    from neurflow.sources.torchvision import imagenet_names_for

    names = load_model("torchvision:resnet18").class_names
    assert names is not None and len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert load_model("torchvision:squeezenet1_0").class_names == names  # a convolution head
    assert imagenet_names_for(torchvision.models.resnet18(num_classes=10)) is None
    if importlib.util.find_spec("timm") is not None:
        import timm

        assert _class_names(timm.create_model("resnet18", pretrained=False)) == names  # the same list
    torch.manual_seed(0)
    torch.save({"images": torch.rand(4, 3, 32, 32), "labels": torch.zeros(4, dtype=torch.long)}, tmp_path / "d.pt")
    out = tmp_path / "out"
    args = ["run", "--model", "torchvision:resnet18", "--data", str(tmp_path / "d.pt"), "--target", "tench"]
    args += ["--selection", "labelled", "--layers", "fc,layer4", "--tau", "2", "--top-k", "2", "--ig-steps", "4"]
    assert main([*args, "--granularities", "1", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["target"] == 0 and doc["meta"]["target_name"] == "tench"
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "class 0 (tench)" in capsys.readouterr().out
    assert "tench" in (out / "report.html").read_text()
