"""``neurflow atlas`` (issue 17): every class of a model, serially or on Ray workers, and the atlas.

The fast tier runs serially (``--workers 0``) on a seeded 3-class toy: the atlas's numbers against
a brute-force computation from the circuits' JSON, a class equal to ``neurflow run``'s and to
``neurflow demo``'s, user errors (one line, exit 2, nothing written), a class that fails alone.
The Ray tier shares one local Ray instance (2 CPUs): serial vs 2 workers identical, a worker
killed mid-class, a killed driver resumed, and ``index.html`` in headless Chromium.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurflow import load
from neurflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

# a seeded 3-class CNN whose predictions are spread over the three classes on uniform noise
TOY_PY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 3)
        self.class_names = ["cat", "dog", "bird"]
        with torch.no_grad():
            self.head.bias += torch.tensor([0.0049, -0.1341, -0.1821])

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))).mean((2, 3)))

def build():
    torch.manual_seed(3)
    return Net()
"""
NAMES = ["cat", "dog", "bird"]
DIRS = ["0-cat", "1-dog", "2-bird"]
# settings under which a class takes ~2 s (each layer ~0.5-1 s: long enough to kill a worker mid-class)
SETTINGS = ["--layers", "head,block2,block1,stem", "--tau", "6", "--top-k", "40", "--ig-steps", "128"]


def _toy(ws: Path) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "toy.py").write_text(TOY_PY)
    namespace: dict = {}
    exec(TOY_PY, namespace)  # noqa: S102 - our own test source
    model = namespace["build"]().eval()
    torch.manual_seed(0)
    x = torch.rand(240, 3, 16, 16)
    with torch.no_grad():
        pred = model(x).argmax(1)
    labels = pred.clone()
    labels[::5] = (labels[::5] + 1) % 3  # every 5th image mislabelled: a confusion to correlate with
    torch.save({"images": x, "labels": labels, "class_names": NAMES}, ws / "data.pt")
    return ws


def _args(ws: Path, out: str, *extra) -> list[str]:
    return ["atlas", "--model", f"{ws}/toy.py:build", "--data", f"{ws}/data.pt", *SETTINGS, "--out", str(ws / out),
            "--quiet", *extra]  # fmt: skip


def _circuit(path: Path) -> dict:
    """circuit.json without its timings (meta.timings_s and each layer's seconds)."""
    doc = json.loads((path / "circuit.json").read_text())
    doc["meta"].pop("timings_s")
    for layer in doc["layers"]:
        layer.pop("seconds")
    return doc


def _same_classes(a: Path, b: Path, dirs=DIRS) -> None:
    for d in dirs:
        assert _circuit(a / "classes" / d) == _circuit(b / "classes" / d), d
        assert (a / "classes" / d / "arrays.npz").read_bytes() == (b / "classes" / d / "arrays.npz").read_bytes(), d


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The toy's atlas, serially with one thread (the reference of the Ray tests)."""
    ws = _toy(tmp_path_factory.mktemp("atlas"))
    assert main(_args(ws, "serial", "--workers", "0", "--threads-per-worker", "1")) == 0
    return ws


# ---------------------------------------------------------------------------------------------
# fast tier: serial
def test_serial_atlas_layout_and_numbers_against_brute_force(serial, capsys):
    out = serial / "serial"
    atlas = json.loads((out / "atlas.json").read_text())
    assert atlas["schema"] == "neurflow.atlas" and atlas["layers"] == ["head", "block2", "block1", "stem"]
    assert [(c["target"], c["name"], c["dir"]) for c in atlas["classes"]] == [
        (i, n, f"classes/{d}") for i, (n, d) in enumerate(zip(NAMES, DIRS))
    ]
    assert atlas["failed"] == []
    circuits = []
    for c in atlas["classes"]:
        d = out / c["dir"]
        circuit = load(d)  # a normal run directory
        circuits.append(json.loads((d / "circuit.json").read_text()))
        assert (d / "report.html").is_file() and c["report"] == f"{c['dir']}/report.html"
        assert c["n_class_images"] == circuit.meta["n_class_images"]
        assert c["nodes"] == {l.name: len(l.nodes) for l in circuit.layers}
        assert main(["show", str(d)]) == 0
    capsys.readouterr()

    # brute force, from the JSON: each layer's core weights, then the weighted Jaccard by its definition
    def weights(doc: dict, lower: str) -> dict:
        layer = next(l for l in doc["layers"] if l["lower"] == lower)
        w: dict = {}
        for node in layer["nodes"].values():
            imp = node["importance"]
            for j, v in zip(node["core"], imp):
                w[j] = w.get(j, 0.0) + (v / sum(imp)) / len(layer["nodes"])
        return w

    lowers = ["block2", "block1", "stem"]
    brute = np.eye(3)
    for a, b in itertools.combinations(range(3), 2):
        js = []
        for lower in lowers:
            wa, wb = weights(circuits[a], lower), weights(circuits[b], lower)
            neurons = set(wa) | set(wb)
            top = sum(min(wa.get(j, 0), wb.get(j, 0)) for j in neurons)
            js.append(top / sum(max(wa.get(j, 0), wb.get(j, 0)) for j in neurons))
        brute[a, b] = brute[b, a] = sum(js) / len(js)
    assert np.allclose(atlas["similarity"], brute, atol=1e-6)
    for lower in lowers:  # the incidence: every class's weights at every neuron
        inc = atlas["incidence"][lower]
        for i in range(3):
            w = weights(circuits[i], lower)
            assert np.allclose(inc["weights"][i], [w.get(j, 0.0) for j in inc["neurons"]], atol=1e-6)
        shared = atlas["shared"][lower]
        assert shared and all(
            s["classes"] == [i for i in range(3) if s["neuron"] in weights(circuits[i], lower)] for s in shared
        )

    # the confusion rate from the model and the labels, image by image
    data = torch.load(serial / "data.pt", weights_only=True)
    namespace: dict = {}
    exec(TOY_PY, namespace)  # noqa: S102
    with torch.no_grad():
        pred = namespace["build"]().eval()(data["images"]).argmax(1).tolist()
    labels = data["labels"].tolist()
    rate = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            mine = [p for p, y in zip(pred, labels) if y == a]
            rate[a, b] = sum(p == b for p in mine) / len(mine)
    conf = (rate + rate.T) / 2
    assert np.allclose(atlas["confusion"]["symmetrised_rate"], conf, atol=1e-6)
    from scipy.stats import spearmanr

    pairs = list(itertools.combinations(range(3), 2))
    rho = spearmanr([brute[p] for p in pairs], [conf[p] for p in pairs])[0]
    cc = atlas["confusion_correlation"]
    assert cc["spearman"] == pytest.approx(rho, abs=1e-6) and cc["pairs"] == 3
    # the exact permutation p-value (all 3! relabellings of the classes) vs the sampled one
    hits = 0
    for perm in itertools.permutations(range(3)):
        s = brute[np.ix_(perm, perm)]
        hits += abs(spearmanr([s[p] for p in pairs], [conf[p] for p in pairs])[0]) >= abs(rho) - 1e-12
    assert cc["p_value"] == pytest.approx(hits / 6, abs=0.03)
    assert sorted(atlas["order"]) == [0, 1, 2]


def test_a_class_equals_neurflow_run(serial, capsys):
    args = ["run", "--model", f"{serial}/toy.py:build", "--data", f"{serial}/data.pt", *SETTINGS,
            "--target", "dog", "--threads", "1", "--out", str(serial / "single"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert _circuit(serial / "single") == _circuit(serial / "serial" / "classes" / "1-dog")


def test_a_class_directory_works_with_the_run_commands(serial, capsys):
    d = str(serial / "serial" / "classes" / "1-dog")
    assert main(["debug", d, "--image", "0", "--json"]) == 0
    assert main(["audit", d, "--json"]) == 0
    assert main(["report", d]) == 0
    capsys.readouterr()


def test_atlas_help_imports_neither_torch_nor_ray():
    code = (
        "import contextlib, io, json, sys\nfrom neurflow.cli import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n    try:\n        main(['atlas', '--help'])\n"
        "    except SystemExit:\n        pass\n"
        "print(json.dumps([[m for m in ('torch', 'ray', 'scipy.stats') if m in sys.modules], out.getvalue()]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    loaded, text = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [] and "--ray-address" in text and "--top-k" in text and "--threads-per-worker" in text


def test_the_default_atlas_is_the_demo_per_class(tmp_path, monkeypatch, capsys):
    """`neurflow atlas` without arguments uses `neurflow demo`'s settings: a class's circuit is
    `neurflow demo --target CLASS`'s (the demo's data and settings shrunk here, for time, in both)."""
    from neurflow import demo
    from neurflow.sources.datasets import Dataset, load_data
    from neurflow.sources.schemes import register_data_scheme, unregister_data_scheme

    fashion = load_data("zoo:fashion-mnist")

    def first(n: str) -> Dataset:  # its first n images, for time
        k = int(n)
        return dataclasses.replace(
            fashion, images=fashion.images.decoded()[:k], labels=fashion.labels[:k], spec=f"few:{n}"
        )

    register_data_scheme("few", first, "few:N - the first N Fashion-MNIST test images")
    small = dataclasses.replace(
        demo.DEMOS["fashion-cnn"],
        data="few:1000",
        layers=("head", "block4", "block3"),
        settings={"tau": 3, "adaptive_eps": 0.2, "top_k": 8, "ig_steps": 8, "granularities": (1.0,), "batch_size": 256},
    )
    monkeypatch.setitem(demo.DEMOS, "fashion-cnn", small)
    try:
        assert main(["demo", "--target", "Bag", "--out", str(tmp_path / "demo"), "--quiet", "--threads", "2"]) == 0
        atlas = [
            "atlas",
            "--targets",
            "Bag",
            "--workers",
            "0",
            "--threads-per-worker",
            "2",
            "--out",
            str(tmp_path / "a"),
        ]
        assert main([*atlas, "--quiet"]) == 0
    finally:
        unregister_data_scheme("few")
    capsys.readouterr()
    assert _circuit(tmp_path / "demo") == _circuit(tmp_path / "a" / "classes" / "8-bag")


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--targets", "cat,zebra"], "--targets: expected a known name, got 'zebra'"),
        (["--targets", "7"], "--targets: expected a class index in 0..2, got 7"),
        (["--tau", "0"], "--tau: expected an integer >= 1"),
        (["--layers", "head,nope"], "nope"),
        (["--ray-address", "not an address"], "--ray-address: expected auto, HOST:PORT or ray://HOST:PORT"),
        (["--ray-address", "127.0.0.1:1"], "cannot connect"),
        (["--workers", "-1"], "--workers: expected an integer >= 0"),
    ],
)
def test_user_errors_one_line_exit_2_nothing_written(tmp_path, capsys, extra, needle):
    ws = _toy(tmp_path)
    args = _args(ws, "out", *extra)
    if "--layers" in extra:
        i = args.index("--layers")
        del args[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("neurflow: error:"), err
    assert not (ws / "out").exists()


def test_an_empty_class_is_refused(tmp_path, capsys):
    ws = _toy(tmp_path)
    data = torch.load(ws / "data.pt", weights_only=True)
    namespace: dict = {}
    exec(TOY_PY, namespace)  # noqa: S102
    with torch.no_grad():
        keep = namespace["build"]().eval()(data["images"]).argmax(1) != 2  # no image predicted as bird
    torch.save({"images": data["images"][keep], "labels": data["labels"][keep]}, ws / "data.pt")
    assert main(_args(ws, "out", "--workers", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert "classes with at least one image predicted as them, got '2 (bird)'" in err and len(err.splitlines()) == 1
    assert not (ws / "out").exists()


def test_a_failing_class_is_reported_once_and_the_others_complete(serial, capsys):
    out = serial / "partly"
    shutil.copytree(serial / "serial" / "classes" / "0-cat", out / "classes" / "1-dog")  # another run in dog's dir
    assert main(_args(serial, "partly", "--workers", "0", "--threads-per-worker", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurflow: error: class 1 (dog): out: expected a directory holding")
    atlas = json.loads((out / "atlas.json").read_text())
    assert [c["name"] for c in atlas["classes"]] == ["cat", "bird"] and [f["target"] for f in atlas["failed"]] == [1]
    _same_classes(out, serial / "serial", ["0-cat", "2-bird"])


def test_without_ray_the_workers_flag_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    ws = _toy(tmp_path)
    assert main(_args(ws, "out", "--workers", "2")) == 2
    err = capsys.readouterr().err
    assert "pip install 'neurflow[ray]'" in err and "--workers 0" in err and len(err.strip().splitlines()) == 1
    assert not (ws / "out").exists()


# ---------------------------------------------------------------------------------------------
# Ray tier: one local instance for the module
@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


EMBEDDED_RAY = """
import json, os, socket, sys
import ray
from neurflow.atlas.driver import _connect
os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
assert _connect(ray, None, 1, 1, 0.0)
try:
    url = ray.get_runtime_context().worker.node.webui_url
    try:
        socket.create_connection(("127.0.0.1", 8265), timeout=2).close()
        served = True
    except OSError:
        served = False
    print(json.dumps({"url": url, "served": served, "usage_stats": os.environ.get("RAY_USAGE_STATS_ENABLED")}))
finally:
    ray.shutdown()
"""


def test_the_embedded_ray_serves_no_dashboard_and_reports_no_usage(tmp_path):
    """Issue 24 item 6: ``include_dashboard=False`` holds (no URL, nothing on port 8265; Ray 2.60's
    API-server process itself cannot be switched off, docs/atlas.md says so) and Ray's usage-stats
    reporting, the one part that would talk to the network, is off for the embedded instance (with
    Ray's client extra alone the dashboard's UI could not start anyway: the usage line is what fails
    here if neurflow stops switching it off)."""
    proc = subprocess.run(
        [sys.executable, "-c", EMBEDDED_RAY], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["url"] and res["served"] is False and res["usage_stats"] == "0", res


def test_two_ray_workers_equal_serial(serial, ray_local, capsys):
    assert main(_args(serial, "ray2", "--workers", "2", "--threads-per-worker", "1")) == 0
    capsys.readouterr()
    _same_classes(serial / "ray2", serial / "serial")
    a = json.loads((serial / "ray2" / "atlas.json").read_text())
    b = json.loads((serial / "serial" / "atlas.json").read_text())
    assert a["similarity"] == b["similarity"] and a["confusion_correlation"] == b["confusion_correlation"]


def test_a_worker_killed_mid_class_is_restarted_and_the_class_completes(serial, ray_local):
    from neurflow.atlas import run_atlas
    from neurflow.atlas.plan import Plan, parse_targets
    from neurflow.config import NeurFlowConfig

    out = serial / "killed"
    cfg = NeurFlowConfig(tau=6, top_k=40, ig_steps=128)
    plan = Plan(f"{serial}/toy.py:build", f"{serial}/data.pt", ("head", "block2", "block1", "stem"), cfg,
                parse_targets("dog"), str(out))  # fmt: skip
    killed: list = []

    def kill_mid_class(actors):
        pid = ray_local.get(actors[0].pid.remote())  # the worker's process, through the actor

        def watch():
            manifest = out / "classes" / "1-dog" / "manifest.json"
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    m = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    m = {}
                if m.get("complete"):
                    return
                if len(m.get("layers_done", [])) == 1:  # the first layer saved, the second running
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.01)

        threading.Thread(target=watch, daemon=True).start()

    atlas = run_atlas(plan, workers=1, threads=1, quiet=True, on_workers=kill_mid_class)
    assert killed, "the worker was not killed mid-class"
    assert atlas["failed"] == [] and [c["name"] for c in atlas["classes"]] == ["dog"]
    _same_classes(out, serial / "serial", ["1-dog"])


def test_a_killed_driver_resumes_without_recomputing_finished_classes(serial):
    out = serial / "driver"
    cmd = [
        sys.executable,
        "-m",
        "neurflow.cli",
        *_args(serial, "driver", "--workers", "2", "--threads-per-worker", "1"),
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        done: list = []
        while time.time() < deadline and not done and proc.poll() is None:
            done = [d for d in DIRS if '"complete": true' in _read(out / "classes" / d / "manifest.json")]
            time.sleep(0.05)
        assert done and proc.poll() is None, "no class finished while the driver ran"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _kill_group(proc.pid)  # Ray's processes of that driver (they share its session)
    first = {d: (out / "classes" / d / "circuit.json").stat().st_mtime_ns for d in done}
    assert not (out / "atlas.json").exists()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
    _kill_group(None)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {d: (out / "classes" / d / "circuit.json").stat().st_mtime_ns for d in done} == first  # not recomputed
    _same_classes(out, serial / "serial")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _kill_group(pgid: int | None) -> None:
    if pgid is None:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)")
def test_index_html_in_headless_chromium(serial):
    from playwright.sync_api import sync_playwright

    out = serial / "serial"
    atlas = json.loads((out / "atlas.json").read_text())
    n = len(atlas["classes"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "index.html").resolve().as_uri())
        page.wait_for_function("window.__atlasReady === true", timeout=60_000)
        links = page.eval_on_selector_all("a.report-link", "els => els.map(e => e.getAttribute('href'))")
        assert len(links) == n and all((out / href).is_file() for href in links), links
        side = int(page.get_attribute("#heatmap", "data-cell-width"))
        assert page.eval_on_selector("#heatmap", "c => [c.width, c.height]") == [n * side, n * side]
        box = page.locator("#heatmap").bounding_box()
        page.mouse.move(box["x"] + side / 2, box["y"] + 1.5 * side)  # row 1, column 0 of the ordered matrix
        i, j = (atlas["order"][1], atlas["order"][0])
        assert page.get_attribute("#heatmap", "data-cell") == "1,0"
        tip = page.inner_text("#tip")
        assert f"similarity {atlas['similarity'][i][j]:.3f}" in tip, tip
        text = page.inner_text("body")
        assert all(name in text for name in NAMES) and "Spearman" in text
        imgs = page.eval_on_selector_all(".card img", "els => els.map(e => e.naturalWidth)")
        assert imgs and all(w > 0 for w in imgs)
        page.click("a.report-link >> nth=1")  # a class's report opens from the atlas
        page.wait_for_load_state()
        assert page.url.endswith("classes/1-dog/report.html")
        browser.close()
    assert not errors, errors
    offsite = [u for u in requests if not (u.startswith("file://") or u.startswith("data:"))]
    assert not offsite, offsite


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (make test installs it)")
def test_index_html_of_1000_classes_draws_on_canvases(tmp_path):
    """A synthetic atlas of 1,000 classes: the similarity matrix and the incidence are canvases (no DOM
    element per cell: a million would freeze the page), each cell painted with its value's colour."""
    from playwright.sync_api import sync_playwright

    from neurflow.atlas.page import render

    n, k = 1000, 64
    rng = np.random.RandomState(0)
    sim = rng.rand(n, n).round(3)
    sim = ((sim + sim.T) / 2).round(3)
    np.fill_diagonal(sim, 1.0)
    weights = (rng.rand(n, k) * (rng.rand(n, k) < 0.1)).round(4)
    atlas = {
        "model": "synthetic", "data": "synthetic", "layers": ["fc", "layer4", "layer3"], "failed": [],
        "classes": [{"target": i, "name": f"class {i}", "n_class_images": 5, "nodes": {"fc": 1, "layer4": 8},
                     "report": f"classes/{i}/report.html"} for i in range(n)],
        "order": list(range(n))[::-1], "similarity": sim.tolist(), "confusion": None,
        "confusion_correlation": {}, "incidence": {"layer4": {"neurons": list(range(k)), "weights": weights.tolist()}},
        "shared": {"layer4": []},
    }  # fmt: skip
    (tmp_path / "index.html").write_text(render(atlas, {}))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "index.html").resolve().as_uri())
        page.wait_for_function("window.__atlasReady === true", timeout=120_000)
        assert page.evaluate("document.querySelectorAll('*').length") < 20 * n  # the table's rows, not n * n cells
        assert page.eval_on_selector("#heatmap", "c => [c.width, c.height]") == [n, n]  # 1 px a cell
        # the cell (row 10, column 20) of the ordered matrix holds similarity[order[10]][order[20]]
        painted = page.eval_on_selector(
            "#heatmap", "c => Array.from(c.getContext('2d').getImageData(20, 10, 1, 1).data)"
        )
        expected = page.evaluate(
            "v => { const c = document.createElement('canvas').getContext('2d'); "
            "c.fillStyle = `hsl(210, 70%, ${Math.round(97 - 62 * v)}%)`; c.fillRect(0, 0, 1, 1); "
            "return Array.from(c.getImageData(0, 0, 1, 1).data); }",
            float(sim[n - 1 - 10][n - 1 - 20]),
        )
        assert painted == expected
        inc = page.eval_on_selector("canvas.inc", "c => [c.width, c.height]")
        assert inc == [k * 8, n]
        browser.close()
    assert not errors, errors
