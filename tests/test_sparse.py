"""The channel-sparse IG engine: which segments it takes, and the same numbers as the dense path
and as captum (the independent oracle)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neurflow._state import preserved
from neurflow.attribution import integrated_gradients, integrated_gradients_sparse, plan_segment
from neurflow.neurons import response
from neurflow.slicing import LayerGraph

from conftest import SKIP_LAYERS, SkipNet, import_oracle


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)  # reads its input twice: not channel-sparse


class Bottleneck(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus a projection shortcut (1x1 conv, BN), then ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Conv2d(6, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out))  # fmt: skip
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class Blocks(nn.Module):
    """VGG-like blocks (conv, BN, ReLU, max-pool), a residual block and a pooled linear head."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(6, 10, 3, padding=2, dilation=2), nn.BatchNorm2d(10), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block3 = nn.Sequential(nn.Conv2d(10, 12, 3, stride=2, padding=1), nn.SiLU(), nn.Dropout(0.1))
        self.res = Residual(12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        r = self.res(self.block3(self.block2(self.block1(x))))
        return self.head(torch.flatten(self.pool(r), 1))


LAYERS = ["head", "res", "block3", "block2", "block1"]


@pytest.fixture
def blocks():
    torch.manual_seed(0)
    m = Blocks()
    for bn in (m.block1[1], m.block2[1], m.res.bn):  # non-trivial BN statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    return m.eval()


def _segment(model, layers, lower, upper, images):
    g = LayerGraph(model, layers)
    with torch.no_grad():
        acts, *extras = g.prefix(lower, upper)(images)
    return g.segment(lower, upper), acts, extras


def test_plans_follow_the_structure(blocks):
    g = LayerGraph(blocks, LAYERS)
    kinds = {}
    for upper, lower in zip(LAYERS, LAYERS[1:]):
        p = plan_segment(g.segment(lower, upper))
        kinds[upper] = None if p is None else (type(p.last).__name__, p.direct, len(p.sources), p.linear_front)
    assert kinds == {
        "block2": ("Conv2d", True, 1, False),  # conv -> BN -> ReLU -> pool on the lower output itself
        "block3": ("Conv2d", True, 1, False),  # conv -> SiLU -> dropout
        # relu(bn(conv(x)) + x): the conv and the identity shortcut, both read x: the steps sum first
        "res": ("Conv2d", False, 2, True),
        "head": ("Linear", False, 1, False),  # pooling and flatten before the linear map (not a linear front)
    }
    # SkipNet: block3's conv reads block2 + the held skip (pre-part); block2's conv reads block1
    s = LayerGraph(SkipNet(), SKIP_LAYERS)
    assert plan_segment(s.segment("block2", "block3")).direct is False
    assert plan_segment(s.segment("block1", "block2")).direct is True


@pytest.mark.parametrize(
    "upper,lower", [("block2", "block1"), ("block3", "block2"), ("res", "block3"), ("head", "res")]
)
def test_sparse_equals_dense(blocks, upper, lower):
    torch.manual_seed(1)
    images = torch.randn(5, 3, 16, 16)
    with preserved(blocks, freeze=True):
        seg, acts, extras = _segment(blocks, LAYERS, lower, upper, images)
        width = response(seg(acts, *extras)).shape[1]
        rng = np.random.RandomState(0)
        requests = [sorted(rng.choice(width, size=rng.randint(0, 4), replace=False).tolist()) for _ in range(5)]
        requests[0] = list(range(width))  # every channel of one crop
        dense = integrated_gradients(seg, acts, extras, requests, steps=12, batch_size=7)
        fast = integrated_gradients_sparse(plan_segment(seg), acts, extras, requests, steps=12, batch_size=7)
    for a, b in zip(dense.scores, fast.scores):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    for a, b in zip(dense.totals, fast.totals):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(fast.deltas), np.concatenate(dense.deltas), rtol=1e-6, atol=1e-7)


def test_sparse_matches_captum(blocks):
    captum = import_oracle("captum.attr")
    torch.manual_seed(2)
    images = torch.randn(3, 3, 16, 16)
    with preserved(blocks, freeze=True):
        seg, acts, _ = _segment(blocks, LAYERS, "block1", "block2", images)
        node = 7
        fast = integrated_gradients_sparse(plan_segment(seg), acts, [], [[node]] * 3, steps=20, batch_size=16)
        ig = captum.IntegratedGradients(lambda a: response(seg(a)))
        want = ig.attribute(acts, baselines=torch.zeros_like(acts), target=node, n_steps=20, method="gausslegendre")
    for i in range(3):
        np.testing.assert_allclose(fast.scores[i][0], want[i].mean((1, 2)).double().numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(fast.totals[i][0], want[i].sum().item(), rtol=1e-4, atol=1e-6)


def test_pipeline_engines_agree(blocks):
    import neurflow

    torch.manual_seed(3)
    images = torch.randn(10, 3, 16, 16)
    with torch.no_grad():
        target = int(blocks(images).argmax(1).mode().values)
    settings = dict(tau=3, top_k=4, ig_steps=8, granularities=(1.0, 0.5))
    auto = neurflow.NeurFlow(**settings).fit(blocks, images, target, LAYERS).circuit_
    dense = neurflow.NeurFlow(engine="dense", **settings).fit(blocks, images, target, LAYERS).circuit_
    for a, b in zip(auto.layers, dense.layers):
        assert {n: v.core for n, v in a.nodes.items()} == {n: v.core for n, v in b.nodes.items()}
        for n in a.nodes:
            np.testing.assert_allclose(a.nodes[n].importance, b.nodes[n].importance, rtol=1e-5, atol=1e-8)
    assert auto.settings == dense.settings  # the engine changes how, never what: same run identity


@pytest.mark.parametrize("upper,lower", [("block2", "block1"), ("block3", "block2")])
def test_prefix_masks_equal_masking_the_input(blocks, upper, lower):
    from neurflow.attribution import masked_prefix_responses
    from neurflow.method.crops import CropPool
    from neurflow.method.probe import masked_responses
    from neurflow.neurons import masks_for

    torch.manual_seed(4)
    pool = CropPool(torch.randn(3, 3, 16, 16), (1.0, 0.5))
    g = LayerGraph(blocks, LAYERS)
    ranked = [(0, [3, 1, 4]), (5, [2]), (2, [0, 5, 1, 2])]
    sets = [js[:r] for _, js in ranked for r in range(1, len(js) + 1)]
    with preserved(blocks):
        width = g.recorder([lower])(pool.get([0]))[0].shape[1]
        want = masked_responses(g, pool, upper, lower, [n for n, js in ranked for _ in js], masks_for(sets, width))
        p = plan_segment(g.segment(lower, upper))
        with torch.no_grad():
            acts, *extras = g.prefix(lower, upper)(pool.get(range(len(pool))))
        got = masked_prefix_responses(p, acts, extras, ranked, p.tail())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_projection_shortcut_block_equals_dense():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), Bottleneck(5, 7)).eval()
    for bn in (m[2].body[1], m[2].body[4], m[2].down[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    g = LayerGraph(m, ["2", "1"])
    seg = g.segment("1", "2")
    p = plan_segment(seg)
    assert p is not None and len(p.sources) == 2 and not p.direct  # body's last conv, the 1x1 projection
    with preserved(m, freeze=True), torch.no_grad():
        acts = g.prefix("1", "2")(torch.randn(4, 3, 12, 12))[0]
    requests = [[0, 3], [6], [], [1, 2, 4, 5]]
    with preserved(m, freeze=True):
        dense = integrated_gradients(seg, acts, [], requests, steps=10, batch_size=8)
        fast = integrated_gradients_sparse(p, acts, [], requests, steps=10, batch_size=8)
    for a, b in zip(dense.scores, fast.scores):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


class SameConv(nn.Conv2d):
    """A Conv2d with its own forward (EfficientNet's static-same-padding convolution): traced to a
    ``conv2d`` call on the module's parameters, which the plan turns back into a map."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad = nn.ZeroPad2d(self.kernel_size[0] // 2)

    def forward(self, x):
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Expand (1x1) -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> project (1x1) -> BN, + input."""

    def __init__(self, c: int, expand: int = 3):
        super().__init__()
        e = c * expand
        self.expand, self.bn0 = SameConv(c, e, 1, bias=False), nn.BatchNorm2d(e)
        self.dw, self.bn1 = SameConv(e, e, 3, groups=e, bias=False), nn.BatchNorm2d(e)
        self.project, self.bn2 = SameConv(e, c, 1, bias=True), nn.BatchNorm2d(c)
        self.act = nn.ReLU6()

    def forward(self, x):
        h = self.act(self.bn1(self.dw(self.act(self.bn0(self.expand(x))))))
        return self.bn2(self.project(h)) + x


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block with an identity shortcut."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class Exits(nn.Module):
    """relu(x) feeds both the tail and (through conv1) the block's second conv: not a linear front."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = torch.relu(x)
        return self.conv2(torch.relu(self.conv1(y))) + y


def _randomize_bn(m: nn.Module) -> None:
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)


@pytest.mark.parametrize(
    "block,front",
    [(MBConv(4), True), (BasicBlock(4), True), (Bottleneck(4, 4), True), (Residual(4), True), (Exits(4), False)],
    ids=["mbconv", "basic", "projection", "conv-identity", "around-the-front"],
)
def test_linear_front_equals_dense(block, front):
    """Blocks whose input reaches the tail only through linear maps sum the quadrature steps
    before the transposed maps; the numbers stay the dense path's."""
    torch.manual_seed(6)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), block).eval()
    _randomize_bn(m)
    g = LayerGraph(m, ["2", "1"])
    seg = g.segment("1", "2")
    p = plan_segment(seg)
    assert p is not None and p.linear_front is front
    with preserved(m, freeze=True), torch.no_grad():
        acts = g.prefix("1", "2")(torch.randn(4, 3, 10, 10))[0]
    requests = [[0, 3], [2], [], [1, 2, 3, 0]]
    with preserved(m, freeze=True):
        dense = integrated_gradients(seg, acts, [], requests, steps=10, batch_size=7)
        fast = integrated_gradients_sparse(p, acts, [], requests, steps=10, batch_size=7)
    for a, b in zip(dense.scores, fast.scores):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    for a, b in zip(dense.totals, fast.totals):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_functional_convolutions_become_maps_sharing_the_parameters():
    torch.manual_seed(7)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), MBConv(4)).eval()
    before = {k: (v.data_ptr(), v.clone()) for k, v in m.state_dict().items()}
    g = LayerGraph(m, ["2", "1"])
    p = plan_segment(g.segment("1", "2"))
    assert isinstance(p.last, nn.Conv2d) and p.last.weight is m[2].project.weight
    assert p.front[0].weight is m[2].expand.weight and p.front[0].groups == 1
    assert {k: v.data_ptr() for k, v in m.state_dict().items()} == {k: v[0] for k, v in before.items()}
    assert all(torch.equal(m.state_dict()[k], v[1]) for k, v in before.items())
    assert not any(name.startswith("_nf_map") for name, _ in m.named_modules())


@pytest.mark.parametrize("block", [MBConv(4), BasicBlock(4), Bottleneck(4, 4)], ids=["mbconv", "basic", "projection"])
def test_every_path_runs_under_bf16_autocast(block):
    """--precision bf16: the sparse paths mix bfloat16 and float tensors; the scores stay close to fp32's."""
    from neurflow._state import precision

    torch.manual_seed(8)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), block).eval()
    _randomize_bn(m)
    g = LayerGraph(m, ["2", "1"])
    p = plan_segment(g.segment("1", "2"))
    with preserved(m, freeze=True), torch.no_grad():
        acts = g.prefix("1", "2")(torch.randn(4, 3, 10, 10))[0]
    requests = [[0, 3], [2], [1], [1, 2, 3, 0]]
    with preserved(m, freeze=True):
        exact = integrated_gradients_sparse(p, acts, [], requests, steps=10, batch_size=7)
        with precision("bf16"):
            fast = integrated_gradients_sparse(p, acts, [], requests, steps=10, batch_size=7)
    a, b = np.concatenate(exact.scores).ravel(), np.concatenate(fast.scores).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99


class ScaledConv(nn.Conv2d):
    """A leaf convolution with its own forward (like fake quantisation): not a plain map."""

    def forward(self, x):
        return F.conv2d(x, self.weight * 0.5, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_only_plain_maps_are_planned():
    """Convolutions whose own forward changes the weights, or with string padding, keep the dense
    path; a Linear front map is not taken as a linear front (its bias axis varies)."""
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(ScaledConv(4, 5, 3), nn.ReLU())).eval()
    g = LayerGraph(seq, ["2", "1"])
    assert plan_segment(g.segment("1", "2"), leaf_modules=(ScaledConv,)) is None
    same = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 5, 3, padding="same"), nn.ReLU())
    )
    g = LayerGraph(same.eval(), ["2", "1"])
    assert plan_segment(g.segment("1", "2")) is None

    class LinearFront(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), LinearFront()).eval()
    p = plan_segment(LayerGraph(m, ["2", "1"]).segment("1", "2"))
    assert p is not None and not p.linear_front


def test_a_layernorm_over_several_axes_does_not_say_channels_last():
    from neurflow.slicing import module_axis

    assert module_axis(nn.LayerNorm(8), lambda m: None) == -1
    assert module_axis(nn.LayerNorm([4, 6, 6]), lambda m: None) is None
