import pytest
import torch
from torch import nn

from neurflow.errors import NeurFlowError
from neurflow.method.probe import logits, top_k, zeroed

from conftest import assert_same_state, model_state, skipnet_zeroed


def test_zeroing_matches_a_hand_written_forward_and_leaves_the_model(skipnet, tiny_images):
    before = model_state(skipnet)
    got = logits(skipnet, tiny_images, {"block3": [3, 0, 7]}, batch_size=4)
    with torch.no_grad():
        want = skipnet_zeroed(skipnet, tiny_images, [0, 3, 7])
        plain = skipnet(tiny_images)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-3)
    assert torch.allclose(logits(skipnet, tiny_images), plain, atol=1e-6)
    assert_same_state(before, model_state(skipnet))


def test_hook_is_removed_on_error_and_train_mode_restored(skipnet, tiny_images):
    skipnet.train()
    before = model_state(skipnet)
    with pytest.raises(RuntimeError):
        with zeroed(skipnet, "block3", [1]):
            raise RuntimeError("boom")
    with pytest.raises(NeurFlowError, match="channel indices below 16"):
        logits(skipnet, tiny_images, {"block3": [99]})
    assert_same_state(before, model_state(skipnet))


def test_token_outputs_zero_the_hidden_unit():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(6, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):  # x [B, C, H, W] -> tokens [B, H*W, C]
            t = self.mix(x.flatten(2).transpose(1, 2))
            return self.head(t.mean(1))

    torch.manual_seed(0)
    m, x = Tok().eval(), torch.randn(2, 6, 4, 4)
    got = logits(m, x, {"mix": [2]})
    with torch.no_grad():
        t = m.mix(x.flatten(2).transpose(1, 2))
        t[..., 2] = 0
        want = m.head(t.mean(1))
    assert torch.allclose(got, want, atol=1e-6)


def test_unknown_layer_names_close_matches(skipnet, tiny_images):
    with pytest.raises(NeurFlowError, match="did you mean block3"):
        logits(skipnet, tiny_images, {"blok3": [0]})


def test_top_k():
    row = torch.tensor([0.0, 3.0, 1.0])
    top = top_k(row, 2, ["a", "b", "c"])
    assert [t["class"] for t in top] == [1, 2] and top[0]["name"] == "b"
    assert abs(top[0]["prob"] - torch.softmax(row, 0)[1].item()) < 1e-7


def test_on_device_puts_parameters_and_buffers_back(skipnet):
    from neurflow._state import on_device

    bn = nn.BatchNorm2d(4)
    skipnet.add_module("extra_bn", bn)  # a module with buffers (BatchNorm statistics)
    bn.running_mean.uniform_()
    skipnet.double()  # computed in float32 within the block: storage replaced, no GPU needed
    params = {n: (p, p.detach().clone()) for n, p in skipnet.named_parameters()}
    buffers = {n: (b, b.clone()) for n, b in skipnet.named_buffers()}
    skipnet.stem[0].weight.grad = torch.ones_like(skipnet.stem[0].weight)
    grad = skipnet.stem[0].weight.grad
    with on_device(skipnet, "cpu"):
        assert all(p.dtype == torch.float32 for p in skipnet.parameters())
        assert all(b.dtype in (torch.float32, torch.long) for b in skipnet.buffers())
    for n, p in skipnet.named_parameters():
        assert p is params[n][0] and p.dtype == torch.float64 and torch.equal(p, params[n][1])
    for n, b in skipnet.named_buffers():
        assert b is buffers[n][0] and b.dtype == buffers[n][1].dtype and torch.equal(b, buffers[n][1])
    assert skipnet.stem[0].weight.grad is grad and grad.dtype == torch.float64


def test_channel_axis_and_masks():
    from neurflow.neurons import channel_axis, channel_mask, masks_for, width

    x4, x3 = torch.randn(2, 5, 3, 3), torch.randn(2, 7, 5)
    assert (channel_axis(x4), width(x4), channel_axis(x3), width(x3)) == (1, 5, -1, 5)
    m = masks_for([[0, 2], [4]], 5)
    out = channel_mask(x4, m).view(2, 2, 5, 3, 3)
    assert torch.equal(out[0][:, [0, 2]], torch.zeros(2, 2, 3, 3)) and torch.equal(out[0][:, 1], x4[:, 1])
    assert torch.equal(out[1][:, 4], torch.zeros(2, 3, 3)) and torch.equal(out[1][:, :4], x4[:, :4])
    tok = channel_mask(x3, masks_for([[1]], 5)).view(1, 2, 7, 5)
    assert torch.equal(tok[0][..., 1], torch.zeros(2, 7)) and torch.equal(tok[0][..., 0], x3[..., 0])
