"""A text summary of a circuit (``neurflow show``)."""
from __future__ import annotations

from .circuit import Circuit


def summary(c: Circuit) -> str:
    name = f" ({c.target_name})" if c.target_name else ""
    meta = c.meta
    lines = [f"NeurFlow circuit for class {c.target}{name}",
             f"model: {meta.get('model', '?')}   data: {meta.get('data', '?')}   "
             f"class images: {meta.get('n_class_images', '?')} of {meta.get('n_images', '?')}   "
             f"crops: {meta.get('n_crops', '?')}",
             "settings: " + ", ".join(f"{k}={v}" for k, v in c.settings.items() if k not in ("layers",)),
             "", f"{'layer':<28}{'nodes':>7}{'groups':>8}{'sub-concepts':>14}{'IG gap (rel)':>14}{'seconds':>9}"]
    for layer in c.layers:
        subs = sum(len(n.sub_concepts) for n in layer.nodes.values())
        gap = layer.completeness_gap.get("relative", 0.0)
        lines.append(f"{layer.name:<28}{len(layer.nodes):>7}{len(layer.groups):>8}{subs:>14}{gap:>14.2e}"
                     f"{layer.seconds:>9.2f}")
    lowest = {j for node in c.layers[-1].nodes.values() for j in node.core} if c.layers else set()
    lines.append(f"{c.input_layer:<28}{len(lowest):>7}{'-':>8}{'-':>14}{'':>14}{'':>9}  (input layer)")
    lines += ["", "traced top path (groups, top down):"]
    for layer_name, groups in c.trace:
        layer = c.layer(layer_name)
        parts = []
        for g in groups:
            grp = layer.groups[g]
            neurons = ",".join(str(n) for n in grp.neurons[:6]) + ("..." if len(grp.neurons) > 6 else "")
            parts.append(f"G{g}[{neurons}]")
        lines.append(f"  {layer_name:<26} " + "  ".join(parts))
    timings = meta.get("timings_s") or {}
    if timings:
        lines += ["", "timings (s): " + ", ".join(f"{k}={v}" for k, v in timings.items())]
    return "\n".join(lines)
