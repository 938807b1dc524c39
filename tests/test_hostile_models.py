"""Models and data the pipeline could not take (issue 23): a 1-channel model, float64 / float16 /
bfloat16 weights, a dynamically quantised model, a forward that fails on the data, the meta
device, a model's declared ``default_layers`` / ``class_names`` of the wrong type, a sparse
``.pt`` tensor.  CLI cases run ``neurflow.cli.main`` in this process (capsys)."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import neurflow
from neurflow.cli import main
from neurflow.sources.models import load_model
from neurflow.sources.schemes import LoadedModel, register_model_scheme, unregister_model_scheme
from neurflow.store import hash_tensors, model_hash

from conftest import TINY_NET_PY, one_line, run_args, tiny_net

MODEL_PY = (
    TINY_NET_PY
    + """

def grey():
    net = build()
    net.stem[0] = nn.Conv2d(1, 8, 3, padding=1)
    return net


def two_channels():
    net = build()
    net.stem[0] = nn.Conv2d(2, 8, 3, padding=1)
    return net


def half():
    return build().half()


def double():
    return build().double()


def bfloat():
    return build().to(torch.bfloat16)


def quantised():
    return torch.ao.quantization.quantize_dynamic(build(), {nn.Linear}, dtype=torch.qint8)


def wrong_head():
    net = build()
    net.head = nn.Linear(15, 4)
    return net


class Viewed(Net):
    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))).mean((2, 3)).view(-1, 15))


def viewed():
    return Viewed()


class Sized(Net):
    def forward(self, x):  # as torchvision's ViT checks its input size (an f-string run at trace time)
        torch._assert(x.shape[2] == 224, f"Wrong image height! Expected 224 but got {x.shape[2]}!")
        return super().forward(x)


def sized():
    return Sized()


class Checked(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        half = x[:, :4]
        return self.conv(half).relu()


def checked():
    net = build()
    net.block1 = Checked()
    return net


def on_meta():
    with torch.device("meta"):
        return build()


def layers_int():
    net = build()
    net.default_layers = 5
    return net


def layers_str():
    net = build()
    net.default_layers = "head"
    return net


def names_str():
    net = build()
    net.class_names = "cat,dog,bird,fish"
    return net
"""
)


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    images = torch.rand(10, 3, 16, 16)
    labels = torch.arange(10) % 4
    torch.save({"images": images, "labels": labels}, tmp_path / "data.pt")
    torch.save({"images": images.mean(1, keepdim=True), "labels": labels}, tmp_path / "grey.pt")
    torch.save({"images": images.to_sparse(), "labels": labels.to_sparse()}, tmp_path / "sparse.pt")
    torch.save({"images": images.to("meta"), "labels": labels}, tmp_path / "meta.pt")
    rng = np.random.default_rng(0)
    for name in ["cat", "dog", "bird", "fish"]:
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / name / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "one.png")
    return tmp_path


def args(ws, factory, out="out", data="data.pt", extra=()):
    argv = run_args(ws, out=out, extra=extra, factory=factory)
    argv[argv.index("--data") + 1] = str(ws / data)
    return argv


def logged(caplog, argv) -> str:
    """``neurflow ARGV`` in this process, which must succeed; its info lines."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neurflow"):
        assert main(argv) == 0, argv
    return caplog.text


def meta_of(out):
    return json.loads((out / "circuit.json").read_text())["meta"]


# -- 13. channels --------------------------------------------------------------------------
def test_a_one_channel_model_takes_tensor_and_folder_data(ws, caplog):
    for name, data, extra in [
        ("rgb", "data.pt", ()),
        ("grey", "grey.pt", ()),
        ("none", "folder", ("--transform", "none")),
        ("imagenet", "folder", ()),
    ]:
        err = logged(caplog, args(ws, "grey", name, data, extra))
        assert meta_of(ws / name)["image_channels"] == 1, name
        if name == "rgb":
            assert "3-channel images in data.pt averaged to the model's 1 channel" in err
        elif name == "grey":
            assert "channel" not in err  # nothing converted
        else:
            assert "read as greyscale (PIL 'L') for the model's 1 input channel" in err
            assert ("ImageNet statistics averaged" in err) == (name == "imagenet")
    # the runs reopen with the same class images: debug an index and an image file
    for name in ("rgb", "none", "imagenet"):
        for image in ("0", str(ws / "one.png")):
            assert main(["debug", str(ws / name), "--image", image, "--quiet"]) == 0, (name, image)
    # a 3-channel model still gets 1-channel tensors repeated
    assert main(args(ws, "build", "rgb3", "grey.pt")) == 0
    assert meta_of(ws / "rgb3")["image_channels"] == 3


def test_channels_that_do_not_convert_are_one_line(ws, capsys):
    line = one_line(args(ws, "two_channels"), capsys)
    assert "--data: expected images with 2 channel(s), as the model's first layer takes, got '3 channels'" in line
    line = one_line(args(ws, "two_channels", data="folder"), capsys)
    assert "--data: expected images with 2 channels" in line and "greyscale (1 channel) or RGB (3)" in line


# -- 14. float64, float16, bfloat16 weights -----------------------------------------------------
@pytest.mark.parametrize("factory,dtype", [("half", "float16"), ("double", "float64"), ("bfloat", "bfloat16")])
def test_models_in_other_float_dtypes_run_in_float32(ws, caplog, factory, dtype):
    err = logged(caplog, args(ws, factory))
    assert err.count(f"model: {dtype} parameters computed in float32 (the model keeps its own dtype)") == 1
    # the reopened model (in its own dtype) is the run's: debug and audit take it
    assert main(["debug", str(ws / "out"), "--image", "1", "--quiet"]) == 0
    assert main(["eval", str(ws / "out"), "fidelity", "--quiet"]) == 0


def test_a_float16_model_is_left_as_found_and_explained_as_its_float32_copy():
    torch.manual_seed(0)
    model = tiny_net().eval().half()
    copy = tiny_net().eval()
    copy.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    images = torch.rand(8, 3, 16, 16)
    fit = dict(target=1, layers=["head", "block2", "block1", "stem"], labels=torch.arange(8) % 4)
    settings = dict(tau=3, top_k=5, ig_steps=8, granularities=(1.0, 0.5), selection="labelled")
    half = neurflow.NeurFlow(**settings).fit(model, images, **fit).circuit_
    full = neurflow.NeurFlow(**settings).fit(copy, images, **fit).circuit_
    for n, p in model.named_parameters():
        assert p is params[n][0] and p.dtype == torch.float16 and torch.equal(p, params[n][1])
    assert half.meta["model_hash"] == full.meta["model_hash"] and half.meta["run_hash"] == full.meta["run_hash"]
    # a float32 model hashes as before the dtype was normalised
    assert full.meta["model_hash"] == hash_tensors(sorted(copy.state_dict().items()))
    layers = [[{**layer.to_json(), "seconds": 0} for layer in c.layers] for c in (half, full)]
    assert layers[0] == layers[1]  # the same circuit, apart from timings


# -- 15. a dynamically quantised model ---------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*quantiz")  # torch's deprecation of its quantised tensors
def test_a_dynamically_quantised_model_is_hashed_and_refused_in_one_line(ws, capsys):
    a = load_model(f"{ws}/mymodel.py:quantised").model
    b = load_model(f"{ws}/mymodel.py:quantised", seed=1).model
    assert model_hash(a) == model_hash(load_model(f"{ws}/mymodel.py:quantised").model) != model_hash(b)
    line = one_line(args(ws, "quantised"), capsys)
    assert "--model: expected a model with gradients (integrated gradients differentiate it)" in line
    assert "1 quantised module(s): head (a quantised Linear)" in line and "quantize_dynamic" in line
    assert not (ws / "out").exists()
    assert main(["layers", f"{ws}/mymodel.py:quantised"]) == 0


# -- 16. the model's own forward failing on the data -------------------------------------------------
def test_a_forward_that_fails_on_the_data_is_one_line_naming_the_input_and_the_users_code(ws, capsys):
    line = one_line(args(ws, "wrong_head"), capsys)
    assert (
        "--model: expected a model whose forward accepts the data (input [" in line and ", 3, 16, 16] float32)" in line
    )
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in line
    assert f"raised at {ws}/mymodel.py:" in line and "in forward, traced line: head = self.head(mean)" in line
    # an operation inlined by the trace (torch.fx would print its generated code to stderr)
    line = one_line(args(ws, "viewed"), capsys)
    assert "RuntimeError: shape '[-1, 15]' is invalid" in line and "traced line: view = mean.view(-1, 15)" in line
    # the user's own module (an analysed layer runs its real forward): its frame and line
    line = one_line(args(ws, "checked"), capsys)
    assert "RuntimeError: Given groups=1, weight of size [12, 8, 3, 3], expected input[" in line
    assert f"raised at {ws}/mymodel.py:" in line and "in Checked.forward: return self.conv(half).relu()" in line
    # a message torch.fx formatted at trace time (torchvision:vit_b_16 on 96-px images, issue 24):
    # no Proxy(...) in the line, the input's shape instead
    line = one_line(args(ws, "sized"), capsys)
    assert "Wrong image height! Expected 224 but got ?!" in line and "Proxy" not in line and ", 3, 16, 16]" in line


# -- 21. the meta device ----------------------------------------------------------------------
def test_the_meta_device_for_the_device_the_model_and_the_data(ws, capsys):
    line = one_line(args(ws, "build", extra=("--device", "meta")), capsys)
    assert "--device: expected a device that computes values (cpu, cuda, mps), got 'meta'" in line
    line = one_line(args(ws, "on_meta"), capsys)
    assert "--model: expected parameters and buffers with values, got '8 of 8 on the meta device" in line
    line = one_line(args(ws, "build", data="meta.pt"), capsys)
    assert "--data: expected images with values, got 'a tensor on the meta device'" in line
    assert not (ws / "out").exists()
    assert main(args(ws, "build")) == 0
    for argv in (["debug", str(ws / "out"), "--image", "1"], ["audit", str(ws / "out")]):
        assert "--device: expected a device that computes values" in one_line([*argv, "--device", "meta"], capsys)


# -- 21. a model's declared default_layers and class_names --------------------------------------------
def without_layers(argv):
    i = argv.index("--layers")
    return argv[:i] + argv[i + 2 :]


def test_declared_default_layers_and_class_names_of_the_wrong_type(ws, capsys):
    line = one_line(without_layers(args(ws, "layers_int")), capsys)
    assert "--model: expected default_layers declared as a list of str" in line and "default_layers is 5 (int)" in line
    line = one_line(without_layers(args(ws, "layers_str")), capsys)
    assert "default_layers is 'head' (str)" in line
    line = one_line(args(ws, "names_str"), capsys)
    assert "expected class_names declared as a list of str" in line and "'cat,dog,bird,fish' (str)" in line
    # a scheme's LoadedModel is checked alike; a tuple of names is fine

    def loader(rest):
        return LoadedModel(tiny_net(), f"oddlayers:{rest}", None, tuple(rest.split(",")) if "," in rest else rest)

    register_model_scheme("oddlayers", loader, "oddlayers:LAYERS - test")
    try:
        argv = without_layers(args(ws, "build"))
        argv[argv.index("--model") + 1] = "oddlayers:head"
        assert "default_layers is 'head' (str)" in one_line(argv, capsys)
        assert load_model("oddlayers:head,block2,block1").default_layers == ["head", "block2", "block1"]
    finally:
        unregister_model_scheme("oddlayers")


# -- 21. a sparse .pt tensor ---------------------------------------------------------------------
def test_a_sparse_pt_tensor_is_made_dense(ws, caplog, recwarn):
    err = logged(caplog, args(ws, "build", "sparse", "sparse.pt"))
    assert "the sparse images tensor in sparse.pt made dense" in err and "sparse labels tensor" in err
    assert not [w for w in recwarn if "sparse" in str(w.message)]  # torch's warning is not shown
    assert main(args(ws, "build", "dense")) == 0
    sparse, dense = meta_of(ws / "sparse"), meta_of(ws / "dense")
    assert sparse["class_images_hash"] == dense["class_images_hash"] and sparse["model_hash"] == dense["model_hash"]
