import numpy as np
import torch
from torch import nn

from neurflow.attribution import gauss_legendre, integrated_gradients
from neurflow.neurons import response
from neurflow.slicing import LayerGraph

from conftest import SKIP_LAYERS, import_oracle


class Resp(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *a):
        return response(self.f(*a))


def test_matches_captum_on_a_sliced_segment(skipnet, tiny_images):
    captum = import_oracle("captum.attr")
    g = LayerGraph(skipnet, SKIP_LAYERS)
    with torch.no_grad():
        acts, *extras = g.prefix("block2", "block3")(tiny_images[:3])
    assert len(extras) == 1  # the skip connection
    seg = g.segment("block2", "block3")
    requests = [[0, 3], [5], [15, 2, 7]]
    res = integrated_gradients(seg, acts, extras, requests, steps=50, batch_size=7)
    for row, req in enumerate(requests):
        for j, n in enumerate(req):
            ig = captum.IntegratedGradients(Resp(seg))
            ref = ig.attribute(
                acts[row : row + 1],
                baselines=torch.zeros_like(acts[row : row + 1]),
                target=n,
                additional_forward_args=tuple(e[row : row + 1] for e in extras),
            )
            np.testing.assert_allclose(res.scores[row][j], response(ref)[0].double().numpy(), rtol=1e-4, atol=1e-6)


def test_exact_on_a_linear_map():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    acts = torch.randn(5, 6)
    res = integrated_gradients(lin, acts, [], [[0, 1, 2, 3]] * 5, steps=3)
    for row in range(5):
        expected = acts[row].double().numpy()[None, :] * lin.weight.double().detach().numpy()
        np.testing.assert_allclose(res.scores[row], expected, rtol=1e-6, atol=1e-7)
    # completeness holds exactly for a linear map (bias cancels in h(A) - h(0))
    assert np.abs(res.gaps()).max() < 1e-5


def test_exact_on_spatial_mean_of_a_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 1, bias=False)
    acts = torch.randn(2, 3, 4, 4)
    res = integrated_gradients(conv, acts, [], [[0, 1], [1]], steps=2)
    w = conv.weight.detach().double().numpy()[:, :, 0, 0]
    # h = mean_hw(sum_c w_c A_c): attribution map A * w_c / HW, its spatial mean w_c * mean(A_c) / HW
    mean = acts.double().mean((2, 3)).numpy() / 16
    np.testing.assert_allclose(res.scores[0], mean[0][None] * w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res.scores[1][0], mean[1] * w[1], rtol=1e-6, atol=1e-8)


def test_completeness_gap_shrinks_with_steps():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 3, 1), nn.Softplus())
    acts = 2 * torch.randn(4, 4, 6, 6)
    reqs = [[0, 1, 2]] * 4
    gaps = [np.abs(integrated_gradients(f, acts, [], reqs, steps=s).gaps()).mean() for s in (2, 4, 8, 16)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[3] < 1e-3 * gaps[0]


def test_quadrature_is_captums():
    alphas, weights = gauss_legendre(50)
    captum = import_oracle("captum.attr._utils.approximation_methods")
    step_sizes, alpha_fn = captum.approximation_parameters("gausslegendre")
    np.testing.assert_allclose(alphas, alpha_fn(50))
    np.testing.assert_allclose(weights, step_sizes(50))
