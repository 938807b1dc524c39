"""The report's and the atlas page's small things (issue 24, item 6): counts as integers, the circuit
fitting a 900-px window, ``G<id>`` kept next to a label, the atlas's "shared" heading only when a
neuron is shared, and what an edge weight's number is.  Browser tests drive Debian's chromium
(as tests/test_report.py does)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from test_report import EVIL, synthetic_circuit
from test_report_legibility import _mark_file, synthetic_run

from neurflow.analysis.labels import get_labeler, label_run
from neurflow.analysis.report import report_data, write_report
from neurflow.store import write_json

from conftest import tiny_run

CHROMIUM = Path("/usr/bin/chromium")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="browser test needs /usr/bin/chromium and the playwright package; .ci/run installs both",
)


@pytest.fixture
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def _page(browser, width: int = 1400, height: int = 900):
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.set_default_timeout(10_000)
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    return pg


def _open(pg, path: Path, ready: str = "window.__nfReady !== undefined"):
    pg.goto(path.resolve().as_uri())
    pg.wait_for_function(ready, timeout=60_000)
    return pg


# ---------------------------------------------------------------------------------------------
# 1. counts are integers with thousands separators; real values keep their notation
def _big_counts(run: Path):
    c = synthetic_circuit(
        run,
        n_layers=3,
        nodes=6,
        groups=3,
        tau=3,
        n_thumbs=12,
        meta={"n_images": 10_000, "n_class_images": 1_000, "n_crops": 123_456, "image_size": 224},
    )
    write_json(
        run / "eval" / "fidelity.json",
        {
            "experiment": "fidelity",
            "target": c.target,
            "notes": [],
            "layers": [
                {"layer": "a", "n_neurons": 10_000, "core_mask_accuracy": 0.25, "logit": 20_000.5},
                {"layer": "b", "n_neurons": 12, "core_mask_accuracy": 0.5, "logit": 3.0},
            ],
        },
    )
    return c


def test_eval_tables_mark_their_integer_columns(tmp_path):
    _big_counts(tmp_path / "run")
    (table,) = report_data(tmp_path / "run")["eval"][0]["tables"]
    assert table["columns"] == ["layer", "n_neurons", "core_mask_accuracy", "logit"]
    assert table["int_columns"] == [1]  # n_neurons; not the floats (3.0 included), not the names


@needs_browser
def test_counts_are_printed_as_integers(tmp_path, browser):
    _big_counts(tmp_path / "run")
    pg = _open(_page(browser), write_report(tmp_path / "run"))
    facts = pg.inner_text("#facts")
    assert "1,000 class images of 10,000" in facts and "123,456 (image size 224 px)" in facts
    assert "1.00e+4" not in facts and "1.23e+5" not in facts
    rows = pg.locator('[data-eval="fidelity"] tr').all_inner_texts()
    assert rows[1].split("\t") == ["a", "10,000", "0.25", "2.00e+4"]  # a count, then real values as before
    assert rows[2].split("\t") == ["b", "12", "0.5", "3"]
    assert not pg.errors, pg.errors


# ---------------------------------------------------------------------------------------------
# 2. the circuit fits the window: no sideways scroll, every group box in view
FITS = """() => {
  const wrap = document.getElementById('graphwrap'), w = wrap.getBoundingClientRect();
  const label = document.querySelector('.rowlabel').getBoundingClientRect().right;
  const boxes = [...document.querySelectorAll('[data-group]')].map(e => {
    const r = e.getBoundingClientRect();
    return {id: e.dataset.group, left: r.left, right: r.right, top: r.top, bottom: r.bottom};
  });
  const bad = boxes.filter(b => b.left < 0 || b.right > innerWidth || b.left < w.left || b.left < label ||
                                b.right > w.left + wrap.clientWidth);
  const overlap = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach(b => {
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlap.push([a.id, b.id]);
  }));
  return {n: boxes.length, bad, overlap, page: document.scrollingElement.scrollWidth, inner: innerWidth,
          wrapScroll: wrap.scrollWidth, wrapClient: wrap.clientWidth};
}"""


def _check_fits(pg, n_boxes: int) -> None:
    res = pg.evaluate(FITS)
    assert res["n"] == n_boxes, res
    assert not res["bad"] and not res["overlap"], res
    assert res["page"] <= res["inner"], res  # the page does not scroll sideways
    assert res["wrapScroll"] <= res["wrapClient"], res  # nor does the circuit's pane


@needs_browser
@pytest.mark.parametrize("width", [900, 1400])
def test_circuit_fits_the_window(tmp_path, browser, width):
    c = synthetic_circuit(tmp_path / "run", n_layers=4, nodes=30, groups=10, tau=4, n_thumbs=40, top_n=6)
    traced = sum(len(g) for _, g in c.trace)
    assert max(len(g) for _, g in c.trace) == 6  # 6 boxes a row: wider than the pane at 900 px
    pg = _open(_page(browser, width, 800), write_report(tmp_path / "run"))
    _check_fits(pg, traced)
    pg.check("#showall")  # 10 boxes a row
    _check_fits(pg, 1 + 3 * 10)
    assert not pg.errors, pg.errors


@needs_browser
def test_circuit_is_laid_out_again_when_the_window_narrows(tmp_path, browser):
    c = synthetic_circuit(tmp_path / "run", n_layers=4, nodes=30, groups=10, tau=4, n_thumbs=40, top_n=6)
    pg = _open(_page(browser, 1400, 800), write_report(tmp_path / "run"))
    pg.check("#showall")
    pg.set_viewport_size({"width": 900, "height": 800})
    end = time.monotonic() + 10
    while pg.evaluate(FITS)["bad"] and time.monotonic() < end:
        time.sleep(0.05)
    _check_fits(pg, 1 + 3 * 10)
    assert pg.is_checked("#showall")  # the view is kept
    assert len(c.trace) == 4 and not pg.errors, pg.errors


# ---------------------------------------------------------------------------------------------
# 3. a labelled group box shows its id and its label
@needs_browser
def test_labelled_box_shows_its_id_and_label(tmp_path, browser):
    synthetic_run(tmp_path / "run")
    label_run(tmp_path / "run", get_labeler("annotations", annotations=_mark_file(tmp_path / "tags.csv")), which="all")
    pg = _open(_page(browser), write_report(tmp_path / "run"))
    cap = pg.locator('[data-group="block/0"] .gcap').inner_text().strip()
    assert cap == "G0 · mark"
    assert "2 neurons" in pg.locator('[data-group="block/0"]').get_attribute("title")
    assert pg.locator('[data-group="block/1"] .gcap').inner_text().startswith("G1 · ")
    assert pg.locator('[data-group="fc/0"] .gcap').inner_text().strip() == "class 7 Sneaker"
    assert not pg.errors, pg.errors


@needs_browser
def test_labelled_box_escapes_its_label(tmp_path, browser):
    synthetic_circuit(tmp_path / "evil", n_layers=3, nodes=6, groups=3, tau=3, n_thumbs=12, label=EVIL)
    pg = _open(_page(browser), write_report(tmp_path / "evil"))
    box = pg.locator("[data-group]").nth(1)
    gid = box.get_attribute("data-group").split("/")[1]
    assert box.locator(".gcap").inner_text().startswith(f"G{gid} · <script>alert(1)</script>")
    assert pg.evaluate("document.querySelectorAll('script').length") == 2
    assert not pg.errors, pg.errors


# ---------------------------------------------------------------------------------------------
# 5. what an edge weight's number is, for the run's settings
@needs_browser
@pytest.mark.parametrize(
    "settings,legend_words,words,absent",
    [
        ({"edge_norm": "l1", "group_edge_rule": "published"},
         ["(edge_norm l1: its |weights| sum to 1)", "group_edge_rule published"],
         ["(edge_norm l1)", "of one sub-concept sum to 1", "once per sub-concept", "(group_edge_rule published)"],
         ["reference", "do not sum to 1"]),
        ({"edge_norm": "reference", "group_edge_rule": "once"},
         ["(edge_norm reference: its |weights| do not sum to 1)", "group_edge_rule once"],
         ["(edge_norm reference", "plus 1e-7", "do not sum to 1", "(group_edge_rule once)"],
         ["edge_norm l1", "once per sub-concept"]),
        ({}, ["edge_norm not recorded", "group_edge_rule not recorded"],
         ["edge_norm not recorded", "group_edge_rule not recorded"], ["sum to 1"]),
    ],
)  # fmt: skip
def test_edge_weights_say_what_they_are(tmp_path, browser, settings, legend_words, words, absent):
    c = synthetic_circuit(tmp_path / "run", n_layers=3, nodes=6, groups=3, tau=3, n_thumbs=12, settings=settings)
    pg = _open(_page(browser), write_report(tmp_path / "run"))
    legend = pg.inner_text('#legend [data-edge-scale="legend"]')
    assert legend.startswith("Numbers: a group edge is the sum of its members' edge weights") and "exceed 1" in legend
    for w in legend_words:
        assert w in legend, (w, legend)
    name, ids = c.trace[1]
    pg.click(f'[data-group="{name}/{ids[0]}"]')
    assert "incoming weights" in pg.inner_text("#details")  # the panel lists the weights the note explains
    group_note = pg.inner_text('#details [data-edge-scale="details"]')
    pg.locator("#details a.link", has_text=re.compile(r"^\d+$")).first.click()  # a neuron: its sub-concepts' weights
    neuron_note = pg.inner_text('#details [data-edge-scale="details"]')
    assert "w sub 0" in pg.inner_text("#details")
    for text in (group_note, neuron_note):
        assert text.startswith("Edge weights: a sub-concept's weight to a core neuron")
        assert "mean integrated-gradients attribution" in text and "can exceed 1" in text
        for w in words:
            assert w in text, (w, text)
        for w in absent:
            assert w not in text, (w, text)
    # the thickness legend is there: thin = weak, thick = strong, relative to the strongest edge
    widths = pg.evaluate("[...document.querySelectorAll('#legend line')].map(l => +l.getAttribute('stroke-width'))")
    assert widths == [3, 3, 1, 7] and "relative to the strongest edge" in pg.inner_text("#legend")
    assert not pg.errors, pg.errors


@needs_browser
def test_edge_scale_of_a_real_run(tmp_path, browser):
    c = tiny_run(tmp_path / "run")
    assert c.settings["edge_norm"] == "l1"
    pg = _open(_page(browser), write_report(tmp_path / "run"))
    text = pg.inner_text('#legend [data-edge-scale="legend"]')
    assert (
        "(edge_norm l1: its |weights| sum to 1)" in text and f"group_edge_rule {c.settings['group_edge_rule']})" in text
    )


# ---------------------------------------------------------------------------------------------
# 4. the atlas page says so when no neuron is shared
def _atlas(shared_b: list) -> dict:
    classes = [
        {"target": t, "name": n, "dir": f"classes/{t}-{n}", "report": f"classes/{t}-{n}/report.html",
         "n_class_images": 10, "nodes": {"head": 1, "b": 2}, "input_neurons": 3}
        for t, n in ((0, "cat"), (1, EVIL))
    ]  # fmt: skip
    return {
        "schema": "neurflow.atlas",
        "model": "toy",
        "data": "toy",
        "layers": ["head", "b", "stem"],
        "classes": classes,
        "failed": [],
        "similarity": [[1.0, 0.0], [0.0, 1.0]],
        "order": [0, 1],
        "confusion": None,
        "confusion_correlation": {"spearman": None, "p_value": None, "pairs": 0, "permutations": 0},
        "incidence": {
            "b": {"neurons": [1, 2, 3], "weights": [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]},
            "stem": {"neurons": [4, 5], "weights": [[1.0, 0.0], [0.0, 1.0]]},
        },
        "shared": {
            "b": shared_b,
            "stem": [
                {"neuron": 4, "classes": [0], "weight": 1.0, "exemplars": {}},
                {"neuron": 5, "classes": [1], "weight": 1.0, "exemplars": {}},
            ],
        },
    }


def _atlas_page(browser, tmp_path: Path, atlas: dict):
    from neurflow.atlas.page import render

    path = tmp_path / "index.html"
    path.write_text(render(atlas, {}))
    return _open(_page(browser), path, "window.__atlasReady === true")


@needs_browser
def test_atlas_says_when_no_neuron_is_shared(tmp_path, browser):
    one = [{"neuron": n, "classes": [c], "weight": 0.5, "exemplars": {}} for n, c in ((1, 0), (2, 0), (3, 1))]
    pg = _atlas_page(browser, tmp_path, _atlas(one))
    text = pg.inner_text("#layers")
    assert "Neurons shared by the most classes" not in text
    assert text.count("No neuron is a core neuron of more than one class at this layer.") == 2  # b and stem
    assert pg.locator(".card").count() == 0
    assert not pg.errors, pg.errors


@needs_browser
def test_atlas_heading_and_cards_only_for_shared_neurons(tmp_path, browser):
    rows = [
        {"neuron": 2, "classes": [0, 1], "weight": 0.7, "exemplars": {}},
        {"neuron": 1, "classes": [0], "weight": 0.5, "exemplars": {}},
    ]
    pg = _atlas_page(browser, tmp_path, _atlas(rows))
    assert pg.inner_text('[data-shared-heading="b"]').startswith("Neurons shared by the most classes")
    assert pg.locator('[data-shared="b"] .card').count() == 1 and pg.locator('[data-neuron="b/2"]').count() == 1
    assert "core for 2 of 2 classes" in pg.inner_text('[data-neuron="b/2"]')
    assert "<script>alert(1)</script>" in pg.inner_text('[data-neuron="b/2"]')  # a class name, as text
    assert (
        pg.inner_text('[data-shared-heading="stem"]')
        == "No neuron is a core neuron of more than one class at this layer."
    )
    assert pg.evaluate("document.querySelectorAll('script').length") == 3  # 2 data + the viewer
    assert not pg.errors, pg.errors


@needs_browser
def test_atlas_of_one_class_says_nothing_can_be_shared(tmp_path, browser):
    atlas = _atlas([{"neuron": 1, "classes": [0], "weight": 0.5, "exemplars": {}}])
    atlas["classes"] = atlas["classes"][:1]
    atlas["similarity"], atlas["order"] = [[1.0]], [0]
    for inc in atlas["incidence"].values():
        inc["weights"] = inc["weights"][:1]
    atlas["shared"]["stem"] = atlas["shared"]["stem"][:1]
    pg = _atlas_page(browser, tmp_path, atlas)
    assert pg.inner_text("#layers").count("Only one class: no neuron can be shared between classes.") == 2
    assert not pg.errors, pg.errors


# ---------------------------------------------------------------------------------------------
# 5. one of a thing is singular ("1 group", "1 class"), on the report and the atlas page
@needs_browser
def test_counts_of_one_are_singular(tmp_path, browser):
    synthetic_circuit(tmp_path / "run", n_layers=3, nodes=6, groups=3, tau=3, n_thumbs=12)
    pg = _open(_page(browser), write_report(tmp_path / "run"))
    labels = pg.locator(".rowlabel").all_inner_texts()
    assert labels[0].endswith("1 of 1 group") and labels[1].endswith("of 3 groups"), labels
    text = pg.inner_text("body")
    assert not re.search(r"(?<![\d,.])1 (groups|neurons|edges|sub-concepts|classes)\b", text), text
    atlas = _atlas([{"neuron": 1, "classes": [0], "weight": 0.5, "exemplars": {}}])
    atlas["classes"] = atlas["classes"][:1]
    atlas["similarity"], atlas["order"] = [[1.0]], [0]
    for inc in atlas["incidence"].values():
        inc["weights"] = inc["weights"][:1]
    atlas["incidence"]["stem"] = {"neurons": [4], "weights": [[1.0]]}
    atlas["shared"]["stem"] = atlas["shared"]["stem"][:1]
    page = _atlas_page(browser, tmp_path, atlas)
    assert page.inner_text("#facts").startswith("1 class; layers head, b, stem")
    assert "stem: 1 neuron core for at least one class" in page.inner_text("#layers")
    assert not pg.errors and not page.errors, (pg.errors, page.errors)
