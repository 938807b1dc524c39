"""What the report needs to be read without help: a legend, the class name never cut, an index of the
sections on the first screen, a reason for an empty trace, and a caption check on the crops the
label was chosen from.  Browser tests drive Debian's chromium (as tests/test_report.py does)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurflow import load
from neurflow.analysis.labels import get_labeler, label_run
from neurflow.analysis.labels.base import caption_check
from neurflow.analysis.report import write_report
from neurflow.analysis.summary import debug_summary
from neurflow.circuit import Circuit, Group, Layer, Node, SubConcept
from neurflow.store import RunStore, atomic_write, write_json

from conftest import tiny_net, tiny_run

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<script>alert(1)</script> & "q"'

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="browser test needs /usr/bin/chromium and the playwright package; .ci/run installs both",
)


# ---------------------------------------------------------------------------------------------
# a small synthetic run: class layer "fc", one analysed layer "block" (groups 0 and 1), input "stem"
N_CROPS = 400
G0 = list(range(100, 191))  # group 0's 91 exemplar crops: node 0 has 100..145, node 1 has 146..190
SHOWN = [100, 101, 102, 146, 147]  # its 5 display exemplars (3 of node 0, 2 of node 1)
MARKED = [c for c in G0 if c not in SHOWN][:47]  # 47 of the 91 carry the mark, none of the 5 shown


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value % 256, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _sub(exemplars, shown, core, group) -> SubConcept:
    w = {j: 1.0 / len(core) for j in core}
    return SubConcept(0, tuple(exemplars), tuple(shown), 1.0, w, w, group)


def synthetic_run(out: Path, target_name: str = "Sneaker") -> Circuit:
    fc = Layer(
        "fc",
        "block",
        {
            7: Node(
                7, (0, 1, 2, 3), (_sub(range(50), range(5), (0, 1, 2, 3), 0),), tuple(range(50)), (0.4, 0.3, 0.2, 0.1)
            )
        },
        (Group(0, ((7, 0),), (7,)),),
        {0: {0: 1.0, 1: -0.25}},
    )
    spans = {0: (100, 146, 3), 1: (146, 191, 2), 2: (200, 230, 3), 3: (230, 261, 3)}
    nodes = {
        n: Node(
            n, (n, n + 4), (_sub(range(a, b), range(a, a + k), (n, n + 4), n // 2),), tuple(range(a, b)), (0.6, 0.4)
        )
        for n, (a, b, k) in spans.items()
    }
    block = Layer("block", "stem", nodes, (Group(0, ((0, 0), (1, 0)), (0, 1)), Group(1, ((2, 0), (3, 0)), (2, 3))))
    circuit = Circuit(
        7,
        (fc, block),
        "stem",
        (("fc", (0,)), ("block", (0, 1))),
        {"tau": 4, "top_n": 3, "layers": ["fc", "block", "stem"]},
        {
            "model": "synthetic",
            "data": "synthetic",
            "target_name": target_name,
            "n_crops": N_CROPS,
            "image_size": 16,
            "run_hash": "x",
        },
        {
            "crop_image": np.arange(N_CROPS, dtype=np.int64),  # one crop per image: tags by image are tags by crop
            "crop_box": np.tile(np.array([[0, 0, 16, 16]], dtype=np.int64), (N_CROPS, 1)),
        },
    )
    shown = {
        c for layer in circuit.layers for n in layer.nodes.values() for s in n.sub_concepts for c in s.display_exemplars
    }
    RunStore(out, digest="x").finish(circuit, thumbnails={c: _png(c) for c in shown | set(range(300, 340))})
    return circuit


def _mark_file(path: Path) -> str:
    # the mark on 47 of group 0's crops and on 10 crops elsewhere (the random crops may carry it too)
    rows = ["image,tag"] + [f"{c},mark" for c in MARKED + list(range(300, 310))] + [f"{c},round" for c in range(0, 60)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------
# the caption check of the annotations labeler
def test_annotation_check_uses_the_crops_the_label_was_chosen_from(tmp_path):
    synthetic_run(tmp_path / "run")
    labeler = get_labeler("annotations", annotations=_mark_file(tmp_path / "tags.csv"))
    label_run(tmp_path / "run", labeler, which="all")
    g = load(tmp_path / "run").layer("block").groups[0].label
    assert g["text"] == "mark" and g["evidence"]["hits"] == 47 and g["evidence"]["n_exemplars"] == 91
    check = g["check"]
    # the 5 displayed exemplars carry no mark: a check on them scored 0.00 / 0.00 before
    assert sorted(check["true"]) == G0 and check["n_true"] == 91
    assert check["recall"] == pytest.approx(47 / 91) and check["precision"] > 0.8
    assert check["true_from"].startswith("exemplar crops")
    # the old rule, reproduced: the display exemplars as the true crops give 0.00 and 0.00
    from neurflow.analysis.labels.base import Labeler
    from neurflow.analysis.run import Run

    run = Run(tmp_path / "run")
    layer = run.circuit.layer("block")
    old = caption_check(
        _DisplayOnly(labeler), run, layer, layer.groups[0], "mark", np.random.RandomState(0)
    )  # the default check_crops
    assert sorted(old["true"]) == SHOWN and old["recall"] == 0.0 and old["precision"] == 0.0
    assert Labeler.check_from == "display exemplars"


class _DisplayOnly:
    """The annotations labeler's answers with the default choice of true crops (display exemplars)."""

    check_from = "display exemplars"

    def __init__(self, inner):
        self.inner = inner

    def check_crops(self, run, layer, group, n_true):
        from neurflow.analysis.labels.base import Labeler

        return Labeler.check_crops(self, run, layer, group, n_true)

    def pick(self, run, text, crops):
        return self.inner.pick(run, text, crops)


# ---------------------------------------------------------------------------------------------
# debug: the empty trace says why
def _debug_lowest(run: Path):
    from neurflow.analysis.debug import debug_image, image_png

    c = tiny_run(run)
    torch.manual_seed(0)
    model = tiny_net().eval()
    image = torch.rand(3, 16, 16)
    res = debug_image(c, model, image, layer=c.layers[-1].name, threshold=0.3, source={"source": EVIL, "name": "x"})
    write_json(run / "debug" / "x.json", res)
    atomic_write(run / "debug" / "x.png", image_png(image))
    return c, res


def test_empty_trace_is_explained_in_the_text(tmp_path):
    c, res = _debug_lowest(tmp_path / "run")
    assert res["trace"] == []
    text = debug_summary(res)
    assert f"nothing to trace down: {c.layers[-1].name} is the lowest layer" in text


# ---------------------------------------------------------------------------------------------
# browser
@pytest.fixture
def page():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.errors = []
        pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        yield pg
        browser.close()


def _open(page, path: Path) -> None:
    page.goto(path.resolve().as_uri())
    page.wait_for_function("window.__nfReady !== undefined", timeout=60_000)


def _until(page, predicate: str, seconds: float = 10) -> None:
    """Poll ``predicate`` (a JS function) until true; the report's CSP forbids wait_for_function's eval."""
    import time

    end = time.monotonic() + seconds
    while not page.evaluate(predicate):
        assert time.monotonic() < end, predicate
        time.sleep(0.05)


def _in_viewport(page, selector: str) -> bool:
    return page.evaluate(
        """s => { const r = document.querySelector(s).getBoundingClientRect();
                  return r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0 &&
                         r.bottom <= innerHeight && r.right <= innerWidth; }""",
        selector,
    )


@needs_browser
@pytest.mark.parametrize("name", ["Sneaker", "Ankle boot with a rather long name", EVIL + " " + "x" * 70])
def test_class_name_is_never_cut(tmp_path, page, name):
    synthetic_run(tmp_path / "run", target_name=name)
    _open(page, write_report(tmp_path / "run"))
    box = page.locator('[data-group="fc/0"]')
    cap = box.locator(".gcap")
    assert cap.inner_text().strip() == f"class 7 {name}".strip()  # the full name, as text (escaped)
    clipped = page.evaluate(
        """() => { const b = document.querySelector('[data-group="fc/0"]'), c = b.querySelector('.gcap');
                   const br = b.getBoundingClientRect(), cr = c.getBoundingClientRect();
                   return {over: c.scrollWidth > c.clientWidth + 1 || c.scrollHeight > c.clientHeight + 1,
                           inside: cr.left >= br.left - 1 && cr.right <= br.right + 1 && cr.bottom <= br.bottom + 1,
                           ellipsis: getComputedStyle(c).textOverflow === 'ellipsis' && c.scrollWidth > c.clientWidth,
                           rowLabelRight: document.querySelector('.rowlabel').getBoundingClientRect().right,
                           boxLeft: br.left}; }"""
    )
    assert not clipped["over"] and clipped["inside"] and not clipped["ellipsis"], clipped
    assert clipped["boxLeft"] >= clipped["rowLabelRight"]  # the wider box does not cover the layer names
    assert page.evaluate("document.querySelectorAll('script').length") == 2
    assert not page.errors, page.errors


@needs_browser
def test_legend_explains_edges_and_boxes(tmp_path, page):
    synthetic_run(tmp_path / "run")
    _open(page, write_report(tmp_path / "run"))
    assert _in_viewport(page, "#legend")
    text = page.inner_text("#legend")
    for words in ("positive weight", "negative weight", "width", "strongest edge", "G3 · 8 n", "8 neurons"):
        assert words in text, words
    colours = page.evaluate("[...document.querySelectorAll('#legend line')].map(l => l.getAttribute('stroke'))")
    drawn = page.evaluate(
        "[...new Set([...document.querySelectorAll('#graph path')].map(p => p.getAttribute('stroke')))]"
    )
    assert set(drawn) <= set(colours) and {"#1e88e5", "#e53935"} <= set(colours)  # the legend's colours are the graph's
    assert "G1 · 2 n" in page.inner_text('[data-group="block/1"]')


@needs_browser
def test_index_of_sections_on_the_first_screen(tmp_path, page):
    from neurflow.analysis.audit import audit

    run = tmp_path / "run"
    c, _ = _debug_lowest(run)
    torch.manual_seed(0)
    model = tiny_net().eval()
    images = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::2] = (c.target + 1) % 4
    write_json(run / "audit.json", audit(c, model, images, labels))
    write_json(run / "eval" / "fidelity.json", {"experiment": EVIL, "target": c.target, "notes": [], "layers": []})
    _open(page, write_report(run))
    assert page.evaluate("scrollY") == 0
    for section in ("debugging", "audit", "evaluation", "facts"):
        link = f'#index a[data-nav="{section}"]'
        assert _in_viewport(page, link), section
        page.click(link)
        _until(page, f"() => document.getElementById('{section}').getBoundingClientRect().top < 200")
        top = page.evaluate(f"document.getElementById('{section}').getBoundingClientRect().top")
        assert 0 <= top < 900, (section, top)
        assert _in_viewport(page, link), section  # the index stays on screen (sticky header)
        page.click('#index a[data-nav="circuit"]')
        _until(page, "() => scrollY < 2")
    assert "image debugging (1)" in page.inner_text("#index") and "evaluation (1)" in page.inner_text("#index")
    # the empty trace says why, in the report too
    note = page.inner_text("#debugging [data-trace-note]")
    assert f"{c.layers[-1].name} is the lowest analysed layer" in note and c.input_layer in note
    assert page.locator("#debugging table").count() == 2  # group scores and verification; no empty trace table
    assert not page.errors, page.errors


@needs_browser
def test_index_names_the_sections_a_run_lacks(tmp_path, page):
    synthetic_run(tmp_path / "run")
    _open(page, write_report(tmp_path / "run"))
    missing = page.evaluate(
        "[...document.querySelectorAll('#index [data-nav-missing]')].map(e => e.dataset.navMissing)"
    )
    assert missing == ["debugging", "audit", "evaluation"]
    assert "neurflow debug" in page.locator('#index [data-nav-missing="debugging"]').get_attribute("title")
    assert page.locator("#index a").count() == 2  # circuit and run facts


@needs_browser
def test_report_shows_what_the_check_ran_on(tmp_path, page):
    synthetic_run(tmp_path / "run")
    label_run(tmp_path / "run", get_labeler("annotations", annotations=_mark_file(tmp_path / "tags.csv")), which="all")
    _open(page, write_report(tmp_path / "run"))
    page.click('[data-group="block/0"]')
    info = page.inner_text("#details [data-label-info]")
    assert "caption check: precision" in info and "recall 0.5165" in info
    assert "91 exemplar crops (all of the group's) + 91 random crops" in info
    data = json.loads(
        page.evaluate("document.getElementById('circuit-data').textContent")
    )  # the check's source went through the JSON
    assert data["layers"][1]["groups"][0]["label_info"]["check"]["true_from"].startswith("exemplar crops")
