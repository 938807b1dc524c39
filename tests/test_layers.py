import pytest
import torch
import torchvision

from neurflow.errors import NeurFlowError
from neurflow.neurons import response
from neurflow.slicing import LayerGraph, layer_names

from conftest import SKIP_LAYERS, assert_same_state, model_state


def chain(graph, layers, x):
    """Prefix up to the lowest layer, then every segment upwards: must equal the model."""
    out = None
    for lower, upper in zip(layers[::-1][:-1], layers[::-1][1:]):
        acts, *extras = graph.prefix(lower, upper)(x)
        if out is not None:
            acts = out
        out = graph.segment(lower, upper)(acts, *extras)
    return out


def test_skip_connection_over_an_analysed_layer(skipnet, tiny_images):
    g = LayerGraph(skipnet, SKIP_LAYERS)
    assert [n.name for n in g.extras("block2", "block3")] == ["stem_1"] or len(g.extras("block2", "block3")) == 1
    assert g.extras("block1", "block2") == []
    with torch.no_grad():
        assert torch.allclose(chain(g, SKIP_LAYERS, tiny_images), skipnet(tiny_images), atol=1e-6)


def test_segment_runs_only_its_modules(skipnet, tiny_images):
    g = LayerGraph(skipnet, SKIP_LAYERS)
    called = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: called.append(n)) for n, m in skipnet.named_children()]
    try:
        acts, *extras = g.prefix("block2", "block3")(tiny_images)
        called.clear()
        g.segment("block2", "block3")(acts, *extras)
    finally:
        for h in hooks:
            h.remove()
    assert called == ["block3"]


def test_names_and_errors(skipnet):
    names = layer_names(skipnet)
    assert names[:3] == ["stem", "stem.0", "stem.1"] and "head" in names
    with pytest.raises(NeurFlowError, match="did you mean block3"):
        LayerGraph(skipnet, ["head", "blok3"])
    with pytest.raises(NeurFlowError, match="top down"):
        LayerGraph(skipnet, ["block1", "block3"])
    with pytest.raises(NeurFlowError, match="contain each other"):
        LayerGraph(skipnet, ["head", "block3", "block3.0"])


def test_model_left_as_found(skipnet, tiny_images):
    skipnet.train()
    skipnet.block1[0].weight.requires_grad_(False)
    before = model_state(skipnet)
    g = LayerGraph(skipnet, SKIP_LAYERS)
    chain(g, SKIP_LAYERS, tiny_images).sum().backward()
    assert_same_state(before, model_state(skipnet))


def test_token_response_is_mean_over_tokens():
    t = torch.arange(24.0).view(1, 4, 6)
    assert torch.equal(response(t), t.mean(1))
    with pytest.raises(NeurFlowError):
        response(torch.zeros(2, 2, 2, 2, 2))


CASES = [
    ("resnet18", ["fc", "layer4.1", "layer4.0", "layer3.1"], 64),
    ("resnet50", ["fc", "layer4.2", "layer4.1", "layer3.5", "layer2.3"], 64),
    ("googlenet", ["fc", "inception5b", "inception4e", "inception3a", "maxpool2"], 64),
    ("alexnet", ["classifier.6", "classifier.5", "classifier.2", "features.12", "features.5"], 224),
    ("vgg11", ["classifier.6", "classifier.3", "features.20", "features.10"], 64),
    (
        "vit_b_16",
        ["heads.head", "encoder.ln", "encoder.layers.encoder_layer_11", "encoder.layers.encoder_layer_6"],
        224,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,layers,size", CASES, ids=[c[0] for c in CASES])
def test_prefix_then_segments_reproduce_torchvision(name, layers, size):
    torch.manual_seed(0)
    kw = {"init_weights": True} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, **kw).eval()
    before = model_state(model)
    x = torch.randn(2, 3, size, size)
    g = LayerGraph(model, layers)
    with torch.no_grad():
        ref = model(x)
        out = chain(g, layers, x)
        rec = g.recorder(layers)(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(rec[0], ref, atol=1e-5, rtol=1e-4)
    if name == "vit_b_16":  # token layer: [B, T, D] -> response is the mean over the 197 tokens
        assert rec[2].shape == (2, 197, 768)
        assert torch.allclose(response(rec[2]), rec[2].mean(1))
    assert_same_state(before, model_state(model))


@pytest.mark.slow
def test_googlenet_input_transform_is_honoured():
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, init_weights=True, transform_input=True).eval()
    x = torch.randn(2, 3, 64, 64)
    g = LayerGraph(model, ["fc", "inception5b", "conv1"])
    with torch.no_grad():
        assert torch.allclose(chain(g, ["fc", "inception5b", "conv1"], x), model(x), atol=1e-5)
        # the conv1 output depends on the transform, which lives in forward()
        assert not torch.allclose(g.prefix("conv1", "inception5b")(x)[0], model.conv1(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "googlenet", "alexnet"])
def test_paper_layer_lists_are_valid(name):
    from neurflow.sources.models import load_model
    from neurflow.sources.torchvision import PAPER_LAYERS

    loaded = load_model(f"torchvision:{name}")
    assert loaded.default_layers == PAPER_LAYERS[name]
    LayerGraph(loaded.model, loaded.default_layers)


class BatchSizeNet(torch.nn.Module):
    """forward() reads the batch size from the input after the analysed layer (as EfficientNet)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 14 * 14, 3)

    def forward(self, x):
        bs = x.size(0)
        return self.fc(self.conv(x).view(bs, -1))


def test_batch_size_read_in_forward_follows_the_segment_batch():
    torch.manual_seed(0)
    m = BatchSizeNet().eval()
    g = LayerGraph(m, ["fc", "conv"])
    assert g.extras("conv", "fc") == []
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        (acts,) = g.prefix("conv", "fc")(x)
        # the segment runs on another batch size than the model input had
        assert torch.allclose(g.segment("conv", "fc")(acts[:2]), m(x[:2]), atol=1e-6)
