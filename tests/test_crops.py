import numpy as np
import torch
import torch.nn.functional as F

from neurflow.method.crops import CropPool, window_grid


def published_pool(x, granularities=(1, 0.5, 0.25), ratio=0.5):
    """The published code's crops: unfold + view + bilinear resize, concatenated per granularity."""
    size = x.shape[-1]
    out = []
    for g in granularities:
        s = int(g * size)
        if s == size:
            out.append(x)
            continue
        stride = max(min(int(s * ratio), size - s), 1)
        c = F.unfold(x, kernel_size=s, stride=stride).transpose(1, 2).contiguous().view(-1, 3, s, s)
        out.append(F.interpolate(c, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out)


def test_pool_equals_published_unfold_order_bitwise():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    pool = CropPool(x, (1.0, 0.5, 0.25))
    assert torch.equal(pool.get(range(len(pool))), published_pool(x))


def test_counts_at_224_and_metadata():
    x = torch.zeros(2, 3, 224, 224)
    pool = CropPool(x, (1.0, 0.5, 0.25))
    assert len(pool) == 2 * 59  # 1 + 9 + 49 per image
    assert window_grid(224, 112, 0.5) == (56, 3)
    assert window_grid(224, 56, 0.5) == (28, 7)
    # order: granularity, then image, then row-major window
    assert list(pool.image_index[:2]) == [0, 1]
    assert list(pool.side[2:11]) == [112] * 9 and list(pool.image_index[2:11]) == [0] * 9
    assert list(pool.top[2:5]) == [0, 0, 0] and list(pool.left[2:5]) == [0, 56, 112]
    assert pool.boxes().shape == (len(pool), 4)


def test_random_access_matches_full_pool():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    pool = CropPool(x, (1.0, 0.5, 0.25))
    full = pool.get(range(len(pool)))
    idx = np.random.default_rng(0).permutation(len(pool))[:17]
    assert torch.equal(pool.get(idx), full[idx])
