"""Debug one image through a circuit (method.md section 4).

For an image and a layer L of the circuit: cut the image into crops the way the run did, read
every crop's layer-L responses a(p), and score each group G of L on its *representatives* (as
published: its ``representatives`` members (neuron, sub-concept) nearest the group centre in
concept-vector space, default 5, or all members).  A neuron j enters the mean once per
representative sub-concept of it, with reference r_j = the mean activation of those sub-concepts:

    s_G(p) = mean over the representatives (j, s) of log(max(a_j(p), 0) / (|r_j| + 1e-6) + 1e-6)
    score_G = exp(max_p s_G(p))                      (``published``: unbounded above)
    score_G = the same with each ratio clipped at 1  (``clipped``: in (0, 1], one neuron far
                                                      above its reference cannot carry the group)

The crops of a strong group (score >= threshold) whose own score passes the threshold are the
*triggering crops*.  From the strongest group the circuit is traced down: at each lower layer the
groups are ranked by edge weight from the groups kept above times their clipped score on this
image (how much of the edge this image actually uses).  The verification zeroes the strongest
group's neurons at L and reports the class logit and the top-5 predictions before and after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..circuit import Circuit, Layer
from ..errors import NeurFlowError, unknown_name
from ..method.crops import CropPool
from ..method.probe import logits, pool_responses, top_k
from ..options import SCORES, DebugOptions
from ..slicing import LayerGraph
from ..store import RunDir, display_range, to_uint8

log = logging.getLogger(__name__)
DEBUG = DebugOptions()  # the defaults of debug_image (and of neurflow debug's flags)
EPS = 1e-6


def representatives_count(value) -> int | None:
    """``--representatives``: a positive integer, or ``all`` / None (every member)."""
    if value is None or str(value).strip().lower() == "all":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise NeurFlowError(
            "representatives",
            f"a positive integer or all (published default: {DEBUG.representatives})",
            value,
            "e.g. --representatives 5",
        )
    return int(text)


REPRESENTATIVES = representatives_count(DEBUG.representatives)  # 5, the published num_top_vecs


def representative_members(group, representatives: int | None) -> tuple:
    """The group's first ``representatives`` members (they are stored nearest the centre first;
    None: all of them)."""
    return tuple(group.members if representatives is None else group.members[:representatives])


def group_references(layer: Layer, representatives: int | None = REPRESENTATIVES) -> dict:
    """group id -> (scored neurons [m], reference values r_j [m]): one entry per representative
    (the first ``representatives`` members, nearest the centre; None: all), so a neuron appears
    once per representative sub-concept of it, with r_j = the mean activation of those."""
    out = {}
    for g in layer.groups:
        members = representative_members(g, representatives)
        acts: dict = {}
        for n, s in members:
            acts.setdefault(int(n), []).append(float(layer.nodes[n].sub_concepts[s].activation))
        neurons = np.asarray([int(n) for n, _ in members], dtype=np.int64)
        out[g.id] = (neurons, np.asarray([np.mean(acts[int(n)]) for n in neurons], dtype=np.float64))
    return out


def crop_scores(resp: np.ndarray, neurons: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(published, clipped) score of every crop: exp(s_G(p)) for responses ``resp`` [P, C]."""
    ratio = np.maximum(resp[:, neurons].astype(np.float64), 0.0) / (np.abs(refs) + EPS)
    published = np.exp(np.log(ratio + EPS).mean(axis=1))
    clipped = np.exp(np.log(np.minimum(ratio, 1.0) + EPS).mean(axis=1))
    return published, clipped


def image_name(image) -> str:
    """The file stem under DIR/debug/ for an --image argument (a path or an index)."""
    text = str(image)
    if text.lstrip("-").isdigit():
        return f"index-{int(text)}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return stem.strip("-.") or "image"


def image_origin(info: dict) -> str:
    """What tells two debugged images apart, from ``Run.image``'s description ``info``: a hash of
    the image file's resolved path, or of DATA[i] (the data's path resolved) for an index."""
    source = str(info.get("source"))
    if info.get("index") is None:
        where = str(Path(source).resolve())
    else:
        spec = source.rsplit("[", 1)[0]
        where = f"{Path(spec).resolve() if spec and Path(spec).exists() else spec}[{info['index']}]"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def debug_name(run_dir: RunDir, image, info: dict) -> str:
    """The file stem under DIR/debug/ for the ``image`` argument described by ``info``:
    ``image_name(image)`` when that is free or holds this image's result (a rerun replaces it),
    else, for another image of the same name (another folder, an index into other data), that
    name and 8 hex digits of the image's origin: ``cat-1f0e3d2a``."""
    stem, origin = image_name(image), image_origin(info)
    try:
        saved = json.loads(run_dir.debug_file(stem).read_bytes()).get("image")
    except (OSError, ValueError, AttributeError, RecursionError):  # none, or damaged: the name is free
        return stem
    if not isinstance(saved, dict):
        return stem
    mine = saved.get("origin") == origin if "origin" in saved else saved.get("source") == info.get("source")
    return stem if mine else f"{stem}-{origin[:8]}"


def _check_layer(circuit: Circuit, layer: str | None) -> int:
    names = [l.name for l in circuit.layers]
    if len(names) < 2:
        raise NeurFlowError(
            "layer",
            "a circuit with a layer below the class layer",
            ",".join(names),
            "rerun with at least three layers (class layer, one analysed layer, input layer)",
        )
    if layer is None:
        return 1
    if layer not in names:
        if layer == circuit.input_layer:
            raise NeurFlowError(
                "layer",
                "a layer of the circuit with groups",
                layer,
                "the lowest (input) layer has no groups; pick one of " + ", ".join(names[1:]),
            )
        raise unknown_name("layer", layer, names[1:], "pick a layer of the circuit below the class layer")
    i = names.index(layer)
    if i == 0:
        raise NeurFlowError(
            "layer",
            "a layer below the class layer",
            layer,
            "the class layer's only group is the class itself; pick one of " + ", ".join(names[1:]),
        )
    return i


def _crop_entry(pool: CropPool, p: int, pub: np.ndarray, clip: np.ndarray) -> dict:
    return {
        "crop": int(p),
        "box": [int(v) for v in pool.boxes()[p]],
        "score": float(pub[p]),
        "score_clipped": float(clip[p]),
    }


def score_groups(
    layer: Layer,
    resp: np.ndarray,
    pool: CropPool,
    threshold: float,
    score: str,
    representatives: int | None = REPRESENTATIVES,
) -> list[dict]:
    """One entry per group, strongest first (by the ``score`` variant).  ``neurons``: all the
    group's neurons (the verification zeroes them); ``representatives``: the scored members."""
    key = "score" if score == "published" else "score_clipped"
    out: list[dict[str, Any]] = []
    by_id = {g.id: g for g in layer.groups}
    for gid, (neurons, refs) in group_references(layer, representatives).items():
        pub, clip = crop_scores(resp, neurons, refs)
        ranking = pub if score == "published" else clip
        order = np.argsort(-ranking, kind="stable")
        strong = bool(ranking[order[0]] >= threshold)
        picked = [p for p in order if ranking[p] >= threshold] if strong else list(order[:1])
        out.append(
            {
                "group": int(gid),
                "neurons": [int(n) for n in by_id[gid].neurons],
                "representatives": [[int(n), int(s)] for n, s in representative_members(by_id[gid], representatives)],
                "score": float(pub.max()),
                "score_clipped": float(clip.max()),
                "best_crop": int(order[0]),
                "strong": strong,
                "crops": [_crop_entry(pool, p, pub, clip) for p in picked],
            }
        )
    out.sort(key=lambda e: (-e[key], e["group"]))
    return out


def trace_down(
    circuit: Circuit,
    start: int,
    groups: list,
    responses: dict,
    pool: CropPool,
    threshold: float,
    top_n: int,
    representatives: int | None = REPRESENTATIVES,
) -> list[dict]:
    """From ``groups`` of layer ``start`` down to the lowest layer with groups."""
    out, kept = [], list(groups)
    for i in range(start, len(circuit.layers) - 1):
        upper, lower = circuit.layers[i], circuit.layers[i + 1]
        refs = group_references(lower, representatives)
        rows: list[dict[str, Any]] = []
        for gid, (neurons, r) in refs.items():
            weight = sum(upper.group_edges.get(G, {}).get(gid, 0.0) for G in kept)
            pub, clip = crop_scores(responses[lower.name], neurons, r)
            best = int(np.argmax(pub))
            rows.append(
                {
                    "group": int(gid),
                    "weight": float(weight),
                    "score": float(pub.max()),
                    "score_clipped": float(clip.max()),
                    "contribution": float(weight * clip.max()),
                    "crops": [
                        _crop_entry(pool, p, pub, clip)
                        for p in np.argsort(-pub, kind="stable")[:3]
                        if pub[p] >= threshold or p == best
                    ],
                }
            )
        rows.sort(key=lambda e: (-e["contribution"], e["group"]))
        rows = rows[:top_n]
        out.append({"layer": lower.name, "from": kept, "groups": rows})
        kept = [r["group"] for r in rows]
    return out


def debug_image(
    circuit: Circuit,
    model,
    image: torch.Tensor,
    layer: str | None = DEBUG.layer,
    threshold: float = DEBUG.threshold,
    score: str = DEBUG.score,
    class_names=None,
    batch_size: int | None = None,
    device: str | None = None,
    leaf_modules=(),
    source: str | None = None,
    representatives: int | str | None = DEBUG.representatives,
) -> dict:
    """Debug one image through the circuit: score the groups of ``layer`` on the image's crops,
    trace the circuit down from the strongest one, and zero its neurons to verify it.

    Parameters
    ----------
    circuit : Circuit
        The fitted circuit (``NeurFlow.circuit_``, or ``neurflow.load(DIR)``).
    model : nn.Module
        The classifier the circuit was computed on; left as it was found.
    image : torch.Tensor
        ``[C, S, S]``, prepared (normalised, resized) like the run's inputs.
    layer : str, optional
        The circuit layer whose groups are scored; default: the highest below the class layer.
    threshold : float
        Strong groups and their triggering crops score at least this (above 1: published only).
    score : {"published", "clipped"}
        Rank and threshold by the unbounded score, or by the one with each ratio clipped at 1.
    class_names : sequence of str, optional
        Class names by index, for the top-5 predictions; default: the run's.
    batch_size : int, optional
        Crops per forward pass; default: the run's.
    device : str, optional
        Where the model runs (``cpu``, ``cuda``); default: the run's.
    leaf_modules : sequence of type
        Module types torch.fx keeps whole (as given to ``NeurFlow.fit``).
    source : str, optional
        Where the image came from (a path or an index), recorded as the result's ``image``.
    representatives : int or "all"
        Members scored per group, nearest the group centre first (published: 5), or ``"all"``.

    Returns
    -------
    dict
        The JSON-able result: ``groups`` strongest first (scores, triggering crops), the
        ``strongest``, the ``trace`` below it and the ``verification`` (target logit and top 5
        before and after zeroing the strongest group's neurons).
    """
    n_rep = _check_options(threshold, score, representatives)
    i = _check_layer(circuit, layer)
    batch_size, device = batch_size or circuit.config.batch_size, device or circuit.config.device
    _check_image(circuit, image)
    cfg, L = circuit.config, circuit.layers[i]
    pool = CropPool(image[None].float(), cfg.granularities, cfg.stride_ratio)
    graph = LayerGraph(model, circuit.layer_names, leaf_modules, cfg.channel_axis)
    responses = pool_responses(graph, pool, [l.name for l in circuit.layers[i:]], batch_size, device)
    groups = score_groups(L, responses[L.name], pool, threshold, score, n_rep)
    trace = trace_down(circuit, i, [groups[0]["group"]], responses, pool, threshold, cfg.top_n, n_rep)
    names = class_names or circuit.provenance.class_names
    checked = verify(model, image, L.name, groups[0], circuit.target, names, device, graph.axes)
    return _result(circuit, source, L.name, threshold, score, n_rep, len(pool), groups, trace, checked)


def _result(circuit: Circuit, source, layer: str, threshold, score, n_rep, n_crops, groups, trace, checked) -> dict:
    """``debug_image``'s result, in the order its JSON has always had."""
    return {
        "image": source,
        "target": circuit.target,
        "target_name": circuit.target_name,
        "layer": layer,
        "threshold": threshold,
        "score_variant": score,
        "representatives": "all" if n_rep is None else n_rep,
        "n_crops": n_crops,
        "prediction": checked["top5_before"][0],
        "groups": groups,
        "strongest": groups[0]["group"],
        "trace": trace,
        "verification": checked,
    }


def _check_options(threshold: float, score: str, representatives) -> int | None:
    """The representatives count (None: all), once ``score`` and ``threshold`` are checked; a
    threshold above 1 is refused for the clipped score and warned about for the published one."""
    n_rep = representatives_count(representatives)
    if score not in SCORES:
        raise NeurFlowError("score", " or ".join(SCORES), score)
    if not (isinstance(threshold, (int, float)) and threshold > 0 and np.isfinite(threshold)):
        raise NeurFlowError(
            "threshold", f"a positive number ({DEBUG.threshold:g} default, 0.6 in the paper's example)", threshold
        )
    if threshold > 1:
        if score == "clipped":  # clipped scores lie in (0, 1]: no group could ever be strong
            raise NeurFlowError(
                "threshold", "a number in (0, 1] for the clipped score", threshold, "clipped scores never exceed 1"
            )
        log.warning(
            "threshold %g is above 1: a group is strong only where its neurons respond above their references "
            "(the published score is unbounded; the usual range is (0, 1], default %g)",
            threshold,
            DEBUG.threshold,
        )
    return n_rep


def _check_image(circuit: Circuit, image) -> None:
    """``image`` is one image tensor [C, S, S] of the run's channels and size."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise NeurFlowError("image", "an image tensor [C, H, W]", getattr(image, "shape", type(image)))
    size, channels = circuit.provenance.image_size, circuit.provenance.image_channels
    if (size and image.shape[-1] != size) or (channels and image.shape[0] != channels):
        raise NeurFlowError(
            "image", f"an image [{channels or 'C'}, {size}, {size}] like the run's inputs", list(image.shape)
        )


def verify(
    model, image: torch.Tensor, layer: str, group: dict, target: int, class_names, device, axes: dict | None = None
) -> dict:
    """The verification: the target logit and the top-5 predictions on ``image`` before and after
    zeroing ``group``'s neurons at ``layer`` (``axes``: where each layer's channels lie)."""
    before = logits(model, image[None], batch_size=1, device=device)[0]
    after = logits(model, image[None], {layer: group["neurons"]}, batch_size=1, device=device, axes=axes)[0]
    top_before, top_after = top_k(before, 5, class_names), top_k(after, 5, class_names)
    return {
        "layer": layer,
        "group": group["group"],
        "neurons": group["neurons"],
        "target_logit_before": float(before[target]),
        "target_logit_after": float(after[target]),
        "target_logit_change": float(after[target] - before[target]),
        "top5_before": top_before,
        "top5_after": top_after,
        "prediction_changed": top_before[0]["class"] != top_after[0]["class"],
    }


def image_png(image: torch.Tensor) -> bytes:
    """The image as the model saw it, as PNG (grey or RGB; min-max scaled unless in [0, 1])."""
    import io

    from PIL import Image

    lo, hi = display_range(image[None])
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image[None], lo, hi)[0]).save(buf, format="PNG")
    return buf.getvalue()
