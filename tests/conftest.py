import importlib
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import torch
from torch import nn

# golden files of the published code, kept in the repository (see tests/fixtures/README.md)
PARITY = pathlib.Path(__file__).resolve().parent / "fixtures" / "parity"

# the tests' own cache folder (trusted model specs, the vlm answer cache), inherited by the CLI
# processes they start: never the user's ~/.cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="neurflow-test-cache-")


class SkipNet(nn.Module):
    """Tiny CNN whose skip connection (stem -> after block2) jumps over the analysed block2."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        s = self.stem(x)
        a = self.block1(s)
        b = self.block2(a) + s
        c = self.block3(b)
        return self.head(torch.flatten(c.mean((2, 3)), 1))


SKIP_LAYERS = ["head", "block3", "block2", "block1"]


def skipnet_zeroed(model, x, idx):
    """SkipNet's forward written out, block3 channels ``idx`` zeroed: the ablation oracle."""
    s = model.stem(x)
    b = model.block2(model.block1(s)) + s
    c = model.block3(b).clone()
    c[:, idx] = 0
    return model.head(c.mean((2, 3)))


def import_oracle(module: str):
    """The independent implementation a test compares against (captum, torchvision), imported.

    Where it is not installed the test is skipped, except under CI (the environment variable ``CI``
    set, as ``.ci/run`` does), where that is a failure: a CI without the oracle must not pass."""
    if os.environ.get("CI", "") in ("", "0", "false"):
        return pytest.importorskip(module)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"CI is set but the oracle {module} cannot be imported ({exc}): pip install -e '.[test]'")


def one_line(argv, capsys=None, *, warnings: bool = False) -> str:
    """A CLI failure is one clear line: ``neurflow ARGV`` exits 2 and writes exactly one line to
    stderr, ``neurflow: error: ...`` (no traceback, nothing else); returns that line.

    With ``capsys``: ``neurflow.cli.main`` in this process; without: ``python -m neurflow.cli`` in a
    fresh one (what a shell user sees, start-up included).  ``warnings``: other lines (such as
    "skipped 1 unreadable image(s)") may come before the error, which is still the last and only one."""
    if capsys is None:
        proc = subprocess.run([sys.executable, "-m", "neurflow.cli", *argv], capture_output=True, text=True)
        code, err = proc.returncode, proc.stderr
    else:
        from neurflow.cli import main

        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("neurflow: error: ")]
    alone = len(lines) == 1 or (warnings and "Traceback" not in err)
    assert code == 2 and alone and len(errors) == 1 and errors[0] == lines[-1], (code, err)
    return errors[0]


# a tiny 4-class CNN as a Python file, for `path/file.py:build` model specs
TINY_NET_PY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 4)
        self.class_names = ["cat", "dog", "<b>bird</b>", "fish"]

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))).mean((2, 3)))

def build():
    return Net()
"""


def tiny_net() -> nn.Module:
    """An instance of TINY_NET_PY's ``Net``."""
    namespace: dict = {}
    exec(TINY_NET_PY, namespace)  # noqa: S102 - our own test source
    return namespace["build"]()


def tiny_run(out):
    """A small real run saved in ``out`` (seconds): TINY_NET_PY's seeded CNN, 8 random images."""
    from neurflow import NeurFlow

    torch.manual_seed(0)
    model = tiny_net().eval()
    images = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        target = int(torch.mode(model(images).argmax(1)).values)
    nf = NeurFlow(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5)).fit(
        model, images, target, ["head", "block2", "block1", "stem"], out=out
    )
    return nf.circuit_


@pytest.fixture
def skipnet():
    torch.manual_seed(0)
    return SkipNet().eval()


@pytest.fixture
def tiny_images():
    torch.manual_seed(1)
    return torch.randn(6, 3, 16, 16)


def majority_class(model, images):
    with torch.no_grad():
        return int(torch.mode(model(images).argmax(1)).values)


def model_state(model):
    """Everything fit() must leave as it was: parameters bitwise, hooks, flags."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
        "devices": {k: str(p.device) for k, p in model.named_parameters()},
    }


def assert_same_state(a, b):
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    for key in ("requires_grad", "training", "hooks", "devices"):
        assert a[key] == b[key], key


def golden_settings(cfg: dict) -> dict:
    """The NeurFlow settings of a golden parity setup (``golden["config"]``), as published."""
    return dict(
        tau=cfg["tau"],
        top_k=cfg["top_k"],
        granularities=cfg["granularities"],
        stride_ratio=cfg["stride_ratio"],
        ig_steps=50,
        max_sub_concepts=cfg["max_sub_concepts"],
        edge_norm="reference",
    )


def run_args(ws, out="out", extra=(), factory="build"):
    """`neurflow run` on the CLI tests' workspace (a model factory file and data.pt) with tiny settings."""
    return [
        "run",
        "--model",
        f"{ws}/mymodel.py:{factory}",
        "--data",
        f"{ws}/data.pt",
        "--target",
        "dog",
        "--layers",
        "head,block2,block1",
        "--tau",
        "3",
        "--top-k",
        "5",
        "--ig-steps",
        "8",
        "--granularities",
        "1,0.5",
        "--selection",
        "labelled",
        "--out",
        str(ws / out),
        "--quiet",
        *extra,
    ]
