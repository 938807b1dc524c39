"""``neurflow report``: the self-contained HTML viewer, checked in headless Chromium (Playwright).

The browser tests need Debian's /usr/bin/chromium and the ``playwright`` package (``make test`` /
.ci/run install both); they are skipped, with the reason, when either is missing.
Load time of the synthetic ResNet50-sized artifact:
``.venv/bin/python -m pytest -q -s tests/test_report.py -k resnet50`` (see docs/report.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurflow import load
from neurflow.analysis.report import AUDIT_ROWS, write_report
from neurflow.circuit import Circuit, Group, Layer, Node, SubConcept
from neurflow.cli import main
from neurflow.store import RunStore

from conftest import TINY_NET_PY as MODEL_PY
from conftest import tiny_net, tiny_run

REPORT = "report.html"

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script> \"q\" 'a' & ünï\u202ecode \U0001f600 </script>"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="browser test needs /usr/bin/chromium (apt-get install chromium) and the playwright package "
    "(pip install playwright); .ci/run installs both",
)


# ---------------------------------------------------------------------------------------------
# artifacts
def _png(rgb, size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(int(v) for v in rgb)).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_circuit(
    out: Path,
    n_layers: int = 10,
    nodes: int = 800,
    groups: int = 80,
    tau: int = 16,
    subs: int = 3,
    n_thumbs: int = 300,
    width: int = 2048,
    top_n: int = 3,
    meta: dict | None = None,
    label: str | None = None,
    seed: int = 0,
    settings: dict | None = None,
) -> Circuit:
    """A fake circuit of ResNet50 size (defaults: 10 analysed layers, 7,201 nodes, 80 groups per
    layer, 16 core neurons per node, 3 sub-concepts each), saved as a finished run in ``out``.
    ``n_thumbs`` distinct crops (tiny PNGs) are shared by all display exemplars; ``settings`` are added
    to the circuit's settings (``edge_norm``...)."""
    rng = np.random.default_rng(seed)
    target = 7
    names = ["fc"] + [f"layer{4 - i // 3}.{2 - i % 3}" for i in range(n_layers - 1)] + ["input"]
    layers = []
    neurons = [target]
    for li in range(n_layers):
        n_groups = 1 if li == 0 else groups
        lower_neurons = (
            sorted(rng.choice(width, size=nodes, replace=False).tolist()) if li + 1 < n_layers else list(range(width))
        )
        node_map, members = {}, [[] for _ in range(n_groups)]
        for n in neurons:
            core = [int(j) for j in rng.choice(lower_neurons, size=tau, replace=False)]
            sc = []
            for s in range(subs):
                w = rng.normal(0.5, 1.0, size=tau)
                w = w / np.abs(w).sum()
                g = 0 if li == 0 else int(rng.integers(n_groups))
                members[g].append((n, s))
                ex = tuple(int(e) for e in rng.choice(n_thumbs, size=8, replace=False))
                sc.append(
                    SubConcept(
                        s,
                        ex,
                        ex[:5],
                        float(rng.uniform(0.5, 5)),
                        {j: float(v) for j, v in zip(core, w)},
                        {j: float(v) for j, v in zip(core, w)},
                        g,
                    )
                )
            node_map[n] = Node(
                n,
                tuple(core),
                tuple(sc),
                tuple(int(e) for e in rng.choice(n_thumbs, 10)),
                tuple(float(v) for v in np.sort(rng.uniform(0, 1, tau))[::-1]),
            )
        grps = tuple(Group(g, tuple(m), tuple(dict.fromkeys(n for n, _ in m))) for g, m in enumerate(members))
        edges = {}
        if li + 1 < n_layers:
            edges = {g: {h: float(v) for h, v in enumerate(rng.normal(1.0, 1.0, groups))} for g in range(n_groups)}
        layers.append(
            Layer(
                names[li],
                names[li + 1],
                node_map,
                grps,
                edges,
                {"relative": float(rng.uniform(0, 1e-3)), "mean_abs": 0.0},
                float(rng.uniform(1, 60)),
            )
        )
        neurons = lower_neurons
    trace, kept = [], [0]
    for li, layer in enumerate(layers):
        if li > 0:
            score = {h: sum(layers[li - 1].group_edges[g][h] for g in kept) for h in range(len(layer.groups))}
            kept = sorted(score, key=lambda h: (-score[h], h))[:top_n]
        trace.append((layer.name, tuple(kept)))
    arrays = {
        "crop_image": np.arange(n_thumbs, dtype=np.int64) // 4,
        "crop_box": np.tile(np.array([[0, 0, 112, 112]], dtype=np.int64), (n_thumbs, 1)),
    }
    base_meta = {
        "model": "synthetic:resnet50-sized",
        "data": "synthetic",
        "target_name": "goldfish",
        "n_crops": n_thumbs,
        "image_size": 224,
        "files": [f"img{i}.jpg" for i in range(n_thumbs // 4)],
        "timings_s": {"total_s": 1.0},
    }
    circuit = Circuit(
        target,
        tuple(layers),
        names[n_layers],
        tuple(trace),
        {"tau": tau, "top_n": top_n, "layers": names, **(settings or {})},
        {**base_meta, **(meta or {})},
        arrays,
    )
    thumbs = {i: _png(rng.integers(0, 256, 3)) for i in range(n_thumbs)}
    RunStore(out, digest="x").finish(circuit, thumbnails=thumbs)
    if label is not None:  # a later schema may give groups a label; the report shows it
        doc = json.loads((out / "circuit.json").read_text())
        for layer in doc["layers"]:
            for g in layer["groups"]:
                g["label"] = label
        (out / "circuit.json").write_text(json.dumps(doc))
    return circuit


def traced_count(c: Circuit) -> int:
    return sum(len(groups) for _, groups in c.trace)


# ---------------------------------------------------------------------------------------------
# browser
class Browser:
    """A headless Chromium page that records console errors, requests and dialogs."""

    def __init__(self, pw):
        self.browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors, self.requests, self.dialogs = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, path: Path) -> float:
        """Load the report; returns the seconds until the graph is drawn."""
        t0 = time.perf_counter()
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_function("window.__nfReady !== undefined", timeout=60_000)
        return time.perf_counter() - t0

    def groups(self) -> int:
        return self.page.locator("[data-group]").count()

    def check_clean(self):
        assert not self.errors, self.errors
        offsite = [u for u in self.requests if not (u.startswith("file://") or u.startswith("data:"))]
        assert not offsite, offsite
        assert not self.dialogs, self.dialogs

    def close(self):
        self.browser.close()


@pytest.fixture
def browser():
    with sync_playwright() as pw:
        b = Browser(pw)
        yield b
        b.close()


def check_report(b: Browser, path: Path, circuit: Circuit, screenshot: Path) -> float:
    seconds = b.open(path)
    assert b.groups() == traced_count(circuit)
    # click a group below the class layer: its exemplar images load in the details panel
    name, ids = circuit.trace[1]
    b.page.click(f'[data-group="{name}/{ids[0]}"]')
    imgs = b.page.locator("#details img")
    assert imgs.count() > 0
    b.page.wait_for_function("[...document.querySelectorAll('#details img')].every(i => i.complete)")
    widths = b.page.evaluate("[...document.querySelectorAll('#details img')].map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths), widths
    assert f"{name} / group {ids[0]}" in b.page.inner_text("#details")
    # clicking a neuron shows its sub-concepts and core neurons
    b.page.locator("#details a.link", has_text=re.compile(r"^\d+$")).first.click()
    text = b.page.inner_text("#details")
    assert "sub-concepts" in text and "core neurons" in text
    b.page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 0
    b.check_clean()
    return seconds


# ---------------------------------------------------------------------------------------------
# tests
def test_report_is_self_contained(tmp_path, capsys):
    c = tiny_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "run" / REPORT
    text = path.read_text()
    assert text.count("<script") == 2 and 'type="application/json"' in text
    assert "data:image/png;base64," in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and '<link rel="stylesheet"' not in text
    data = json.loads(re.search(r'<script id="circuit-data" type="application/json">(.*?)</script>', text, re.S)[1])
    assert data["target"] == c.target and [t[0] for t in data["trace"]] == [t[0] for t in c.trace]
    shown = {e for layer in c.layers for n in layer.nodes.values() for s in n.sub_concepts for e in s.display_exemplars}
    assert {int(k) for k in data["crops"]} == shown
    assert all(v["src"].startswith("data:image/png;base64,") for v in data["crops"].values())
    assert write_report(tmp_path / "run") == path  # rewriting is fine (atomic replace)


def test_report_escapes_data(tmp_path):
    synthetic_circuit(
        tmp_path / "evil",
        n_layers=3,
        nodes=6,
        groups=3,
        tau=3,
        n_thumbs=12,
        meta={"model": EVIL, "target_name": EVIL, "files": [EVIL] * 3},
        label=EVIL,
    )
    text = write_report(tmp_path / "evil").read_text()
    assert "<script>alert" not in text
    assert text.count("</script>") == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text.split("</title>")[0]  # the title, html-escaped


def test_cli_run_writes_report(tmp_path, capsys):
    torch.manual_seed(0)
    model_py = tmp_path / "m.py"
    model_py.write_text(MODEL_PY)
    torch.save({"images": torch.rand(8, 3, 16, 16), "labels": torch.arange(8) % 4}, tmp_path / "data.pt")
    assert (
        main(
            [
                "run",
                "--model",
                f"{model_py}:build",
                "--data",
                str(tmp_path / "data.pt"),
                "--target",
                "1",
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
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    assert f"report: {tmp_path / 'out' / REPORT}" in capsys.readouterr().out
    assert (tmp_path / "out" / REPORT).stat().st_size > 0


@needs_browser
def test_browser_tiny_run(tmp_path, browser):
    c = tiny_run(tmp_path / "run")
    check_report(browser, write_report(tmp_path / "run"), c, tmp_path / "tiny.png")
    # the controls: all groups, then one group per layer
    browser.page.check("#showall")
    assert browser.groups() == sum(len(layer.groups) for layer in c.layers)
    browser.page.fill("#ngroups", "1")
    assert browser.groups() == len(c.layers)
    browser.page.click("#reset")
    assert browser.groups() == traced_count(c)
    browser.check_clean()


@needs_browser
def test_browser_escaping(tmp_path, browser):
    synthetic_circuit(
        tmp_path / "evil",
        n_layers=3,
        nodes=6,
        groups=3,
        tau=3,
        n_thumbs=12,
        meta={"model": EVIL, "target_name": EVIL, "files": [EVIL] * 3},
        label=EVIL,
    )
    c = load(tmp_path / "evil")
    path = write_report(tmp_path / "evil")
    browser.open(path)
    assert browser.groups() == traced_count(c)
    name, ids = c.trace[1]
    browser.page.click(f'[data-group="{name}/{ids[0]}"]')
    body = browser.page.inner_text("body")
    assert EVIL.split(" </script>")[0].split(' "q"')[0] in body  # "<script>alert(1)</script>" as text
    assert "ünï" in body and "\U0001f600" in body
    assert browser.page.evaluate("document.querySelectorAll('script').length") == 2
    assert browser.page.locator("#details .label").first.inner_text().strip() == EVIL.strip()
    assert browser.page.title().startswith("NeurFlow circuit: class 7 (<script>")
    browser.check_clean()


@needs_browser
def test_browser_resnet50_sized(tmp_path, browser):
    t0 = time.perf_counter()
    c = synthetic_circuit(tmp_path / "big")
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = write_report(tmp_path / "big")
    written = time.perf_counter() - t0
    n_nodes = sum(len(layer.nodes) for layer in c.layers)
    n_groups = sum(len(layer.groups) for layer in c.layers)
    seconds = check_report(browser, path, c, tmp_path / "big.png")
    t0 = time.perf_counter()
    browser.page.check("#showall")
    all_seconds = time.perf_counter() - t0
    assert browser.groups() == n_groups
    browser.check_clean()
    print(
        f"\nsynthetic ResNet50-sized artifact: {len(c.layers)} analysed layers, {n_nodes} nodes, "
        f"{n_groups} groups; built in {built:.1f} s; report {path.stat().st_size / 1e6:.1f} MB written in "
        f"{written:.2f} s; loaded and drawn (traced path) in {seconds:.2f} s; 'show all groups' in "
        f"{all_seconds:.2f} s"
    )
    assert seconds < 30 and all_seconds < 30


@pytest.mark.slow
@needs_browser
def test_browser_demo(tmp_path, browser):
    from neurflow.demo import run_demo

    nf, out, _, _ = run_demo(out=tmp_path / "demo", quiet=True)
    shot = tmp_path / "demo.png"
    check_report(browser, write_report(out), nf.circuit_, shot)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # tests never write into the source tree; refreshing the docs' screenshot is opt-in:
    # NEURFLOW_UPDATE_DOCS=1 .venv/bin/python -m pytest -m slow tests/test_report.py -k demo
    if os.environ.get("NEURFLOW_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "report-screenshot.png")


@needs_browser
def test_browser_debug_and_audit_sections(tmp_path, browser):
    from neurflow.analysis.audit import audit
    from neurflow.analysis.debug import debug_image, image_png
    from neurflow.store import atomic_write, write_json

    run = tmp_path / "run"
    c = tiny_run(run)
    torch.manual_seed(0)
    model = tiny_net().eval()
    images = torch.rand(8, 3, 16, 16)
    res = debug_image(c, model, images[0], threshold=0.3, source={"source": EVIL, "name": EVIL})
    write_json(run / "debug" / "evil.json", res)
    atomic_write(run / "debug" / "evil.png", image_png(images[0]))
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::2] = (c.target + 1) % 4
    audited = audit(c, model, images, labels)
    write_json(run / "audit.json", audited)
    from neurflow.analysis.candidates import fp_thumbnails

    for name, png in fp_thumbnails(images, audited["groups"]).items():
        atomic_write(run / "audit-crops" / name, png)
    path = write_report(run)
    browser.open(path)
    assert browser.groups() == traced_count(c)  # the graph is unchanged
    boxes = browser.page.locator("#debugging .box")
    assert boxes.count() == sum(len(g["crops"]) for g in res["groups"] if g["strong"]) > 0
    box = boxes.first.get_attribute("data-box").split(",")
    first = next(g for g in res["groups"] if g["strong"])["crops"][0]["box"]
    assert [int(v) for v in box] == first
    # the box is drawn where the crop lies: 224 px display of a 16 px image
    style = boxes.first.get_attribute("style")
    assert f"width:{first[3] * 14}px" in style.replace(" ", "")
    browser.page.wait_for_function("document.querySelector('#debugging .shot img').complete")
    assert browser.page.evaluate("document.querySelector('#debugging .shot img').naturalWidth") == 16
    text = browser.page.inner_text("#debugging")
    assert "<script>alert(1)</script>" in text and "verification" in text and "top-5 after" in text
    rows = browser.page.locator("#audit-table tr")
    audited = json.loads((run / "audit.json").read_text())["groups"]
    assert rows.count() == 1 + min(len(audited), AUDIT_ROWS)
    kinds = browser.page.locator("#audit-table tr td:nth-child(3)").all_inner_texts()
    assert kinds == [r["kind"] for r in audited[:AUDIT_ROWS]]
    shown_fp = sum(len(r.get("fp_exemplars", [])) for r in audited[:AUDIT_ROWS])
    assert shown_fp > 0 and browser.page.locator("#audit-table img[data-fp]").count() == shown_fp
    browser.page.wait_for_function("[...document.querySelectorAll('#audit-table img')].every(i => i.complete)")
    widths = browser.page.evaluate("[...document.querySelectorAll('#audit-table img')].map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    # a group link in the audit table opens the group in the details panel
    browser.page.locator("#audit-table a.link").first.click()
    assert "group" in browser.page.inner_text("#details")
    browser.check_clean()


@needs_browser
def test_browser_shows_labels_checks_and_relations(tmp_path, browser):
    from neurflow.analysis.labels import label_run
    from neurflow.analysis.labels.base import Label, Labeler

    class Evil(Labeler):
        """Labels every group with EVIL, picks the first two crops, captions relations with EVIL."""

        name, can_check, can_relate = "evil", True, True

        def label_group(self, run, layer, group):
            return Label(EVIL, self.name, 0.5, {"why": EVIL})

        def pick(self, run, text, crops):
            return [0, 1]

        def label_relation(self, run, layer, group, lower, feeders):
            return {
                "text": EVIL + "\nline 2",
                "labeler": self.name,
                "lower_layer": lower.name,
                "lower": [g.id for g in feeders],
            }

    c = tiny_run(tmp_path / "run")
    label_run(tmp_path / "run", Evil())
    path = write_report(tmp_path / "run")
    browser.open(path)
    name, ids = c.trace[1]
    node = browser.page.locator(f'[data-group="{name}/{ids[0]}"]')
    assert EVIL.strip()[:20] in node.inner_text()
    node.click()
    details = browser.page.inner_text("#details")
    assert "label by evil, confidence 0.5; caption check: precision" in details
    assert browser.page.locator("#details .label").first.inner_text().strip() == EVIL.strip()
    rel = load(tmp_path / "run").layer(name).groups[ids[0]].relation
    if rel is not None:
        assert browser.page.locator("#details .relation").inner_text().startswith(EVIL.split("\u202e")[0].strip()[:10])
    assert browser.page.evaluate("document.querySelectorAll('script').length") == 2
    browser.check_clean()


@needs_browser
def test_browser_eval_section(tmp_path, browser):
    from neurflow.store import write_json

    c = tiny_run(tmp_path / "run")
    write_json(
        tmp_path / "run" / "eval" / "fidelity.json",
        {
            "experiment": EVIL,
            "target": c.target,
            "notes": [EVIL],
            "layers": [
                {"layer": EVIL, "n_neurons": 3, "core_mask_accuracy": 0.25},
                {"layer": "b", "n_neurons": 4, "core_mask_accuracy": 0.5},
            ],
        },
    )
    write_json(tmp_path / "run" / "eval" / "fidelity.partial.json", {"options": {}, "units": {}})
    browser.open(write_report(tmp_path / "run"))
    sec = browser.page.locator('[data-eval="fidelity"]')
    assert sec.count() == 1 and browser.page.locator("[data-eval]").count() == 1  # the partial file is not shown
    assert sec.locator("tr").count() == 3
    text = sec.inner_text()
    assert "<script>alert(1)</script>" in text and "0.25" in text
    browser.check_clean()
