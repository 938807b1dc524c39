"""A text summary of a circuit (``neurflow show``)."""

from __future__ import annotations

from ..circuit import Circuit, gap_warnings
from ..errors import counted
from ..store import RunDir


def summary(c: Circuit, directory=None) -> str:
    """The circuit's summary; with ``directory`` (the run's), also the best candidates of its
    ``neurflow audit`` (DIR/audit.json), when there is one for this target."""
    name = f" ({c.target_name})" if c.target_name else ""
    meta = c.meta
    lines = [
        f"NeurFlow circuit for class {c.target}{name}",
        f"model: {meta.get('model', '?')}   data: {meta.get('data', '?')}   "
        f"class images: {meta.get('n_class_images', '?')} of {meta.get('n_images', '?')}   "
        f"crops: {meta.get('n_crops', '?')}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in c.settings.items() if k not in ("layers",)),
        "",
        f"{'layer':<28}{'nodes':>7}{'groups':>8}{'sub-concepts':>14}{'IG gap (rel)':>14}{'seconds':>9}",
    ]
    warnings = []
    for layer in c.layers:
        subs = sum(len(n.sub_concepts) for n in layer.nodes.values())
        gap = layer.completeness_gap.get("relative", 0.0)
        found = gap_warnings(layer.completeness_gap)
        warnings += [(layer.name, text) for text in found]
        lines.append(
            f"{layer.name:<28}{len(layer.nodes):>7}{len(layer.groups):>8}{subs:>14}{gap:>14.2e}{layer.seconds:>9.2f}"
            + ("  WARNING (see below)" if found else "")
        )
    lowest = {j for node in c.layers[-1].nodes.values() for j in node.core} if c.layers else set()
    lines.append(f"{c.input_layer:<28}{len(lowest):>7}{'-':>8}{'-':>14}{'':>14}{'':>9}  (input layer)")
    if warnings:
        lines += ["", "warnings:"] + [f"  WARNING {name}: {text}" for name, text in warnings]
    lines += ["", "traced top path (groups, top down):"]
    for layer_name, groups in c.trace:
        layer = c.layer(layer_name)
        parts = []
        for g in groups:
            grp = layer.groups[g]
            neurons = ",".join(str(n) for n in grp.neurons[:6]) + ("..." if len(grp.neurons) > 6 else "")
            parts.append(f"G{g}[{neurons}]")
        lines.append(f"  {layer_name:<26} " + "  ".join(parts))
    labelled = [(layer.name, g) for layer in c.layers for g in layer.groups if g.label is not None]
    if labelled:
        lines += ["", "labels:"]
        for name, g in labelled:
            lines.append(f"  {name}/G{g.id}: {_label_line(dict(g.label))}")
            if g.relation is not None:
                rel = g.relation
                lines.append(
                    f"      fed by {rel.get('lower_layer')} groups {list(rel.get('lower', []))}: "
                    + str(rel.get("text", "")).replace("\n", " / ")
                )
    timings = meta.get("timings_s") or {}
    if timings:
        lines += ["", "timings (s): " + ", ".join(f"{k}={v}" for k, v in timings.items())]
    audit = saved_audit(directory, c.target) if directory is not None else None
    if audit:
        try:
            lines += ["", "dataset audit (audit.json), best candidates:", audit_summary(audit, limit=5)]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # a damaged file
            lines += ["", f"dataset audit: audit.json is damaged ({type(exc).__name__}: {exc}); rerun `neurflow audit`"]
    return "\n".join(lines)


def saved_audit(directory, target: int) -> dict | None:
    """DIR/audit.json when it is readable, has candidate rows and is about ``target``."""
    import json

    try:
        res = json.loads(RunDir(directory).audit.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("target") != target or not res.get("groups"):
        return None
    return res


def split_names(d: dict) -> str:
    return f"{d['target']}" + (f" ({d['target_name']})" if d.get("target_name") else "")


def _cls(e: dict) -> str:
    return f"{e['name'] or e['class']} {e['logit']:.2f} ({e['prob'] * 100:.0f} %)"


def _reps(d: dict) -> str:
    n = d.get("representatives")
    if n is None:  # a result written before representatives were recorded
        return ""
    return ", all members per group" if n == "all" else f", {n} representatives per group"


def debug_summary(d: dict) -> str:
    """Text form of ``neurflow debug``'s result."""
    v = d["verification"]
    img = d.get("image") or {}
    lines = [
        f"debug of {img.get('source', '?')} for class {split_names(d)} at layer {d['layer']} "
        f"({counted(d['n_crops'], 'crop')}, threshold {d['threshold']}, ranked by the {d['score_variant']} score"
        f"{_reps(d)})",
        f"prediction: {_cls(d['prediction'])}",
        "",
        f"{'group':>6}{'score':>10}{'clipped':>9}{'strong':>8}  triggering crops (top, left, size: score)",
    ]
    for g in d["groups"]:
        crops = ", ".join(f"({c['box'][0]},{c['box'][1]},{c['box'][2]}: {c['score']:.2f})" for c in g["crops"][:4])
        more = f" +{len(g['crops']) - 4}" if len(g["crops"]) > 4 else ""
        lines.append(
            f"{'G' + str(g['group']):>6}{g['score']:>10.3f}{g['score_clipped']:>9.3f}"
            f"{'yes' if g['strong'] else '-':>8}  {crops if g['strong'] else '-'}{more if g['strong'] else ''}"
        )
    lines += ["", f"trace down from G{d['strongest']} (weight x clipped score on this image):"]
    for step in d["trace"]:
        parts = [f"G{r['group']} (w {r['weight']:.3f}, score {r['score_clipped']:.2f})" for r in step["groups"]]
        lines.append(f"  {step['layer']:<24} " + ("  ".join(parts) or "no groups at this layer: the trace stops"))
    if not d["trace"]:
        lines.append(
            f"  nothing to trace down: {d['layer']} is the lowest layer of the circuit with groups (below it lies "
            "the input layer, whose neurons form no groups); debug a higher layer with --layer to follow the image"
        )
    lines += [
        "",
        f"verification: zeroing G{v['group']} at {v['layer']} ({counted(len(v['neurons']), 'neuron')}) changes "
        f"the class logit {v['target_logit_before']:.3f} -> {v['target_logit_after']:.3f} "
        f"({v['target_logit_change']:+.3f})",
        "  top-5 before: " + "; ".join(_cls(e) for e in v["top5_before"]),
        "  top-5 after:  " + "; ".join(_cls(e) for e in v["top5_after"]),
    ]
    return "\n".join(lines)


def audit_summary(d: dict, limit: int = 20) -> str:
    """Text form of ``neurflow audit``'s result (the ranked table of candidates, with their kind)."""
    lines = [
        f"audit for class {split_names(d)}: {d['n_false_positives']} false positives "
        f"(of {d['false_positives']}) against {d['n_true_positives']} true positives (of {d['true_positives']})",
        f"mean class logit: false positives {d['mean_target_logit']['false_positives']:.3f}, "
        f"true positives {d['mean_target_logit']['true_positives']:.3f}",
    ]
    if d.get("candidates"):
        lines.append("candidates: " + ", ".join(f"{n} {k}s" for k, n in d["candidates"].items()))
    lines += [
        "score = share of the false positives' class margin removed minus the same for the true positives",
        "",
        f"{'rank':>4}  {'layer':<20}{'kind':<9}{'group':>6}{'neurons':>8}{'score':>8}{'logit sc':>9}"
        f"{'fp fixed':>10}{'tp kept':>9}{'joint fp fixed':>16}",
    ]
    for k, r in enumerate(d["groups"][:limit], 1):
        joint = f"{r['joint_fp_fixed'] * 100:>15.1f}%" if "joint_fp_fixed" in r else ""
        kind = r.get("kind", "group")
        neurons = str(len(r["neurons"])) if kind != "neuron" else f"#{r['neurons'][0]}"
        lines.append(
            f"{k:>4}  {r['layer']:<20}{kind:<9}{'G' + str(r['group']):>6}{neurons:>8}"
            f"{r['score']:>8.3f}{r.get('logit_score', float('nan')):>9.3f}"
            f"{r['fp_fixed'] * 100:>9.1f}%{r['tp_kept'] * 100:>8.1f}%{joint}"
        )
    if len(d["groups"]) > limit:
        lines.append(f"  ... {len(d['groups']) - limit} more candidates in the JSON")
    if any("joint_fp_fixed" in r for r in d["groups"]):
        lines.append("joint fp fixed: false positives fixed with the neurons of rows 1..rank zeroed together")
    return "\n".join(lines)


def _label_line(lab: dict) -> str:
    conf = lab.get("confidence")
    check = lab.get("check")
    extra = [
        f"confidence {conf:.2f}" if isinstance(conf, (int, float)) else None,
        f"check precision {check['precision']:.2f} recall {check['recall']:.2f}" if check else None,
    ]
    return f'"{lab.get("text")}" ({lab.get("labeler", "?")}' + "".join(f", {e}" for e in extra if e) + ")"


def labels_summary(result: dict) -> str:
    """Text form of ``neurflow label``'s result."""
    lines = [
        f"{result['labels']} group label(s) and {result['relations']} relation caption(s) "
        f"from the {result['labeler']} labeler:"
    ]
    for g in result["groups"]:
        lines.append(f"  {g['layer']}/G{g['group']}: {_label_line(g)}")
        if g.get("relation"):
            lines.append(
                f"      fed by {g['relation']['lower_layer']} groups {g['relation']['lower']}: "
                + g["relation"]["text"].replace("\n", " / ")
            )
    return "\n".join(lines)


EVAL_SKIP = {"points", "random", "mct_neurons", "core_neurons", "layers_intervened", "share"}


def eval_tables(r: dict) -> list[tuple[str, list, list]]:
    """The main tables of an eval result: (name, columns, rows of values)."""
    out = []
    for key in ("layers", "multi_layer", "nodes", "methods", "ks"):
        rows = r.get(key)
        if not rows:
            continue
        cols = [c for c in rows[0] if c not in EVAL_SKIP]
        if rows and "share" in rows[0]:
            cols += [f"{s} px" for s in rows[0]["share"]]
            rows = [{**row, **{f"{s} px": v for s, v in row["share"].items()}} for row in rows]
        out.append((key, cols, [[row.get(c) for c in cols] for row in rows]))
    return out


def eval_summary(name: str, r: dict) -> str:
    """Text form of one ``neurflow eval`` result: its main tables and notes."""
    lines = [f"== {r.get('experiment', name)} (class {r.get('target')})"]

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    for key, cols, rows in eval_tables(r):
        widths = [max(len(c), *(len(fmt(row[i])) for row in rows)) for i, c in enumerate(cols)]
        lines.append(f"[{key}]")
        lines.append("  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
        lines += ["  " + "  ".join(f"{fmt(v):>{w}}" for v, w in zip(row, widths)) for row in rows]
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
