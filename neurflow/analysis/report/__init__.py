"""``neurflow report DIR``: one self-contained HTML file (``DIR/report.html``) that draws the circuit.

Everything is inline: the viewer (``template.html``: CSS and vanilla JS), the circuit data (JSON in a
``<script type="application/json">`` tag, with ``<``, ``>`` and ``&`` written as ``\\u003c``...) and
the crop thumbnails (``data:image/png;base64`` URIs).  The page loads nothing from the network.
See docs/report.md.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ...circuit import Circuit, gap_warnings
from ...store import RunDir, atomic_write
from ..candidates import fp_crop_name
from ..summary import eval_tables

log = logging.getLogger(__name__)

_META_KEYS = (
    "model",
    "weights",
    "data",
    "demo",
    "note",
    "neurflow",
    "torch",
    "n_images",
    "n_class_images",
    "n_crops",
    "image_size",
    "crop_sizes",
    "data_skipped",
    "timings_s",
)


def _num(x, digits: int = 4):
    """A float rounded to ``digits`` significant digits (keeps the embedded JSON small)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _label_fields(g) -> dict:
    """The label of a group for the viewer: ``label`` (text), ``label_info`` and ``relation``."""
    out: dict[str, Any] = {}
    if g.label is not None:
        lab = dict(g.label)
        out["label"] = str(lab.get("text"))
        info: dict[str, Any] = {
            "labeler": lab.get("labeler"),
            "confidence": _num(lab["confidence"]) if isinstance(lab.get("confidence"), (int, float)) else None,
        }
        check = lab.get("check")
        if check is not None:
            info["check"] = {k: _num(check[k]) for k in ("precision", "recall") if k in check}
            info["check"].update({k: int(check[k]) for k in ("n_true", "n_random") if k in check})
            if check.get("true_from") is not None:
                info["check"]["true_from"] = str(check["true_from"])
        out["label_info"] = info
    if g.relation is not None:
        rel = dict(g.relation)
        out["relation"] = {
            "text": str(rel.get("text", "")),
            "labeler": rel.get("labeler"),
            "lower_layer": rel.get("lower_layer"),
            "lower": [int(x) for x in rel.get("lower", [])],
        }
    return out


def report_data(directory, circuit: Circuit | None = None) -> dict:
    """The data the viewer draws, as plain JSON-able objects."""
    d = RunDir(directory)
    c = circuit if circuit is not None else d.read_circuit()
    used: set = set()  # the crops the page shows
    layers = [_layer_entry(layer, used) for layer in c.layers]
    debug = _debug_entries(d)
    audit = _audit_entry(d, c)
    if audit:
        for row in audit["groups"]:
            used.update(row.get("exemplars", []))
    crops = _crop_entries(d, c, sorted(used))
    meta = {k: c.meta[k] for k in _META_KEYS if c.meta.get(k) is not None}
    class_names = c.meta.get("class_names") or None
    return {
        "target": c.target,
        "target_name": c.target_name,
        "input_layer": c.input_layer,
        "trace": [[name, list(groups)] for name, groups in c.trace],
        "settings": {k: v for k, v in c.settings.items()},
        "meta": meta,
        "n_classes": len(class_names) if class_names else None,
        "layers": layers,
        "crops": crops,
        "debug": debug,
        "audit": audit,
        "eval": _eval_entries(d),
    }


def _layer_entry(layer, used: set) -> dict:
    """One layer for the viewer: its nodes with their sub-concepts, groups, group edges and facts;
    the display exemplars it shows are added to ``used``."""
    nodes = {}
    for idx, node in layer.nodes.items():
        subs = []
        for s in node.sub_concepts:
            used.update(s.display_exemplars)
            sub = {
                "id": s.id,
                "a": _num(s.activation),
                "g": s.group,
                "x": list(s.display_exemplars),
                "n": len(s.exemplars),
                "w": [[int(j), _num(w)] for j, w in s.weights.items()],
            }
            label = getattr(s, "label", None)
            if label is not None:
                sub["label"] = str(label)
            subs.append(sub)
        nodes[str(idx)] = {"core": list(node.core), "imp": [_num(v) for v in node.importance], "subs": subs}
    groups = []
    for g in layer.groups:
        grp = {"id": g.id, "members": [list(m) for m in g.members], "neurons": list(g.neurons)}
        grp.update(_label_fields(g))
        groups.append(grp)
    return {
        "name": layer.name,
        "lower": layer.lower,
        "nodes": nodes,
        "groups": groups,
        "edges": {str(a): {str(b): _num(w) for b, w in row.items()} for a, row in layer.group_edges.items()},
        "gap": {k: _num(v) for k, v in layer.completeness_gap.items()},
        "warnings": gap_warnings(layer.completeness_gap),
        "seconds": _num(layer.seconds),
        "n_subs": sum(len(n.sub_concepts) for n in layer.nodes.values()),
    }


def _crop_entries(d: RunDir, c: Circuit, crops: list) -> dict:
    """crop index -> its thumbnail (inlined as a data URL), source image, file and box."""
    crop_image = c.arrays.get("crop_image")
    crop_box = c.arrays.get("crop_box")
    files = c.meta.get("files") or None
    out = {}
    for i in crops:
        entry: dict[str, Any] = {}
        png = d.crop(i)
        if png.is_file():
            entry["src"] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        if crop_image is not None and 0 <= i < len(crop_image):
            img = int(crop_image[i])
            entry["image"] = img
            if files and 0 <= img < len(files):
                entry["file"] = str(files[img])
        if crop_box is not None and 0 <= i < len(crop_box):
            entry["box"] = [int(v) for v in crop_box[i]]
        out[str(i)] = entry
    return out


def _result(d: RunDir, path: Path) -> dict | None:
    """A saved result (debug, audit, eval) as a JSON object; None, with a warning, where the file
    cannot be read (the report shows the rest)."""
    try:
        res = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        res = None
    if not isinstance(res, dict):
        log.warning("left %s out of the report: it is damaged (not a JSON object); rerun its command", path)
        return None
    return res


def _damaged(path: Path, exc: Exception) -> None:
    log.warning("left %s out of the report: it is damaged (%s: %s); rerun its command", path, type(exc).__name__, exc)


def _eval_entries(d: RunDir) -> list:
    """The results of ``neurflow eval`` in DIR/eval/: main tables, notes and the plot."""
    out = []
    for path in d.eval_results():
        res = _result(d, path)
        if res is None:
            continue
        try:
            notes = res.get("notes", [])
            entry = {
                "name": path.stem,
                "experiment": str(res.get("experiment", path.stem)),
                "notes": [str(n) for n in notes] if isinstance(notes, list) else [str(notes)],
                "tables": [
                    {
                        "name": k,
                        "columns": list(cols),
                        "rows": [[_num(v) if isinstance(v, float) else v for v in row] for row in rows],
                        "int_columns": _int_columns(rows),
                    }
                    for k, cols, rows in eval_tables(res)
                ],
            }
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            _damaged(path, exc)
            continue
        png = path.with_suffix(".png")
        if png.is_file():
            entry["src"] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(entry)
    return out


def _int_columns(rows: list) -> list[int]:
    """The columns of a table whose values are all integers (counts: the page prints them as
    ``10,000``, where a float of the same size is printed ``1.00e+4``; JSON alone cannot tell them apart)."""
    width = max((len(r) for r in rows), default=0)

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return [
        k
        for k in range(width)
        if any(k < len(r) and r[k] is not None for r in rows)
        and all(k >= len(r) or r[k] is None or is_int(r[k]) for r in rows)
    ]


AUDIT_ROWS = 30


def _debug_entries(d: RunDir) -> list:
    """The results of ``neurflow debug`` saved in DIR/debug/, each with its image."""
    out = []
    for path in sorted(d.debug.glob("*.json")) if d.debug.is_dir() else []:
        res = _result(d, path)
        if res is None:
            continue
        if not _debug_readable(res):
            _damaged(path, ValueError("not a neurflow debug result"))
            continue
        png = path.with_suffix(".png")
        if png.is_file():
            res["src"] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        res["file_name"] = path.name
        out.append(res)
    return out


def _audit_entry(d: RunDir, c: Circuit) -> dict | None:
    """DIR/audit.json trimmed to its best rows (the full table stays in the file)."""
    res = _result(d, d.audit)
    if res is None or res.get("target") != c.target:
        return None
    res = {k: v for k, v in res.items() if k not in ("false_positive_indices", "true_positive_indices")}
    groups = res.get("groups", [])
    if not isinstance(groups, list) or not all(_audit_row(row) for row in groups):
        _damaged(d.audit, ValueError("groups: expected rows with crop indices as exemplars"))
        return None
    res["n_groups"] = len(groups)
    res["groups"] = groups[:AUDIT_ROWS]
    for row in res["groups"]:
        for e in row.get("fp_exemplars", []):
            try:
                png = d.audit_crop(fp_crop_name(e))
            except (KeyError, TypeError, ValueError):
                continue
            if png.is_file():
                e["src"] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    return res


def _audit_row(row) -> bool:
    """An audit row the report can show: exemplars are crop indices, fp_exemplars a list."""
    if not isinstance(row, dict) or not isinstance(row.get("fp_exemplars", []), list):
        return False
    ex = row.get("exemplars", [])
    return isinstance(ex, list) and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ex)


def _debug_readable(res: dict) -> bool:
    """A debug result with the fields the viewer draws, of the types it needs."""
    groups, trace, v = res.get("groups"), res.get("trace"), res.get("verification")
    crops_ok = isinstance(groups, list) and all(
        isinstance(g, dict)
        and isinstance(g.get("crops", []), list)
        and all(
            isinstance(c, dict) and isinstance(c.get("box"), list) and len(c["box"]) == 4 for c in g.get("crops", [])
        )
        for g in groups
    )
    return (
        crops_ok
        and isinstance(res.get("layer"), str)
        and isinstance(res.get("image", {}), dict)
        and isinstance(trace, list)
        and all(isinstance(t, dict) and isinstance(t.get("groups"), list) for t in trace)
        and isinstance(v, dict)
        and isinstance(v.get("neurons"), list)
    )


def _json_for_script(obj) -> str:
    """JSON that cannot end its ``<script>`` tag: ``<``, ``>``, ``&`` as \\u escapes."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_report(directory, circuit: Circuit | None = None) -> str:
    """The report page for a finished run directory, as a string."""
    data = report_data(directory, circuit)
    template = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    name = f" ({data['target_name']})" if data["target_name"] else ""
    title = f"NeurFlow circuit: class {data['target']}{name} - {data['meta'].get('model', '')}"
    parts = {"__TITLE__": html.escape(title, quote=True), "__DATA__": _json_for_script(data)}
    # one pass, so a title containing "__DATA__" (or data containing "__TITLE__") is left alone
    return re.sub(r"__(?:TITLE|DATA)__", lambda m: parts[m.group(0)], template)


def write_report(directory, circuit: Circuit | None = None) -> Path:
    """Write ``DIR/report.html`` (atomically) for the finished run in ``directory``.

    Parameters
    ----------
    directory : path
        A finished run directory; its debug, audit and eval results there are shown too.
    circuit : Circuit, optional
        The run's circuit when already loaded; default: read from ``directory``.

    Returns
    -------
    Path
        The path of the report written.
    """
    d = RunDir(directory)
    with d.updating():  # the run as it is now (a label written meanwhile included), one writer at a time
        atomic_write(d.report, render_report(directory, circuit).encode("utf-8"))
    return d.report
