"""The audit's candidates: each layer group and the finer sub-clusters of the layer's Ward tree.

The layer groups are a cut of one Ward tree over the layer's (node, sub-concept) concept vectors
(``groups.layer_groups``).  The same tree, rebuilt deterministically from the saved arrays
(``concept_keys/<layer>``, ``concept_vectors/<layer>``), holds finer candidates: cutting it into
one more cluster at a time splits the latest merge into its two children.  ``layer_candidates``
lists, per layer, every group (``kind`` ``group``) and then the clusters those finer cuts create,
in that order (biggest first), down to single sub-concepts; a cluster whose sub-concepts belong
to one neuron is a ``neuron`` candidate, else a ``subgroup``.  Candidates with the neuron set of
an earlier one are dropped; at most ``max_candidates`` sub-clusters per layer are kept (the
groups always are).  ``group`` is the layer group whose tree node holds the candidate.

``zeroed_logits`` measures every candidate of a layer with one pass up to the layer and one pass
of the rest of the model per candidate (the layer's channels masked), when the rest of the model
ends in the class layer's output; otherwise with forward hooks (``probe.logits``).
"""

from __future__ import annotations

import numpy as np
import torch

from .._state import preserved
from ..circuit import Group, Layer
from ..config import DEFAULTS
from ..errors import NeurFlowError
from ..method.clustering import linkage_tree
from ..method.crops import CropPool
from ..method.groups import nearest_first
from ..method.probe import logits
from ..neurons import channel_mask, masks_for, response
from ..slicing import LayerGraph
from ..sources.stream import TensorImages, as_source
from ..store import display_range, to_uint8

KINDS = ("group", "subgroup", "neuron")
CHUNK_ELEMENTS = 2**24


def layer_candidates(layer: Layer, keys: np.ndarray | None, vectors: np.ndarray | None, max_candidates: int) -> list:
    """[(kind, group id, Group-like members/neurons)] of one layer, groups first (see the module doc)."""
    out: list = []
    seen: set = set()

    def add(kind: str, gid: int, members: list) -> bool:
        neurons = tuple(dict.fromkeys(int(n) for n, _ in members))
        key = frozenset(neurons)
        if not neurons or key in seen:
            return False
        seen.add(key)
        if kind != "group":
            kind = "neuron" if len(neurons) == 1 else "subgroup"
        out.append({"kind": kind, "group": int(gid), "members": members, "neurons": neurons})
        return True

    for g in layer.groups:
        add("group", g.id, [tuple(m) for m in g.members])
    if keys is None or vectors is None or len(keys) < 2 or max_candidates <= 0:
        return out
    leaf_keys = [(int(k[0]), int(k[1])) for k in np.asarray(keys)]
    group_of = {}
    for n, node in layer.nodes.items():
        for sc in node.sub_concepts:
            group_of[(int(n), sc.id)] = sc.group
    n_leaves = len(leaf_keys)
    children = linkage_tree(np.asarray(vectors, dtype=np.float64))
    leaves: dict = {}  # tree node -> leaf indices, filled bottom up (merge order)
    for i, (a, b) in enumerate(children):
        leaves[n_leaves + i] = leaves.get(int(a), [int(a)]) + leaves.get(int(b), [int(b)])
    added = 0
    # finer cuts split the latest merges first: internal nodes in descending index order
    for node in range(n_leaves + len(children) - 1, n_leaves - 1, -1):
        owners = {group_of.get(leaf_keys[j]) for j in leaves[node]}
        gid = owners.pop() if len(owners) == 1 else None
        if gid is None:
            continue  # above the cut: spans several groups (or holds a sub-concept of none)
        for child in children[node - n_leaves]:
            child = int(child)
            rows = leaves.get(child, [child])
            members = [
                leaf_keys[rows[j]] for j in nearest_first(np.asarray(vectors)[rows], [leaf_keys[r] for r in rows])
            ]
            if add("subgroup", gid, members):
                added += 1
                if added >= max_candidates:
                    return out
    return out


def exemplars(layer: Layer, cand: dict, limit: int = 12) -> list[int]:
    """A candidate's display exemplars: its members', members nearest its centre first."""
    return layer.group_exemplars(
        Group(id=cand["group"], members=tuple(cand["members"]), neurons=cand["neurons"]), limit
    )


def _graph(model, upper: str, lower: str, channel_axis: str):
    """The two layers' graph (the run's ``--channel-axis``), or None where they do not slice."""
    try:
        return LayerGraph(model, [upper, lower], channel_axis=channel_axis)
    except NeurFlowError:
        return None


def _segment(graph, upper: str, lower: str, x: torch.Tensor, reference: torch.Tensor, batch_size: int, device):
    """(prefix outputs on ``x``, segment) when the model's output equals the ``upper`` layer's
    output fed from ``lower`` (checked on ``x`` against ``reference``), else None."""
    model = graph.model
    prefix, segment = graph.prefix(lower, upper), graph.segment(lower, upper)
    if graph.axes.get(lower) == -1:  # channels-last output: let the hooks find the channels
        return None
    parts: list = []
    with preserved(model), torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            parts.append([t.cpu() for t in prefix(x[s : s + batch_size].to(device))])
        acts = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        out = _run(segment, acts, None, batch_size, device)
    if out.shape != reference.shape or not torch.allclose(out, reference, rtol=1e-4, atol=1e-4):
        return None
    return acts, segment


def _run(segment, acts: list, mask: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
    outs = []
    for s in range(0, acts[0].shape[0], batch_size):
        a = acts[0][s : s + batch_size].to(device)
        if mask is not None:
            a = channel_mask(a, mask.to(device)[None])
        outs.append(segment(a, *[e[s : s + batch_size].to(device) for e in acts[1:]]).float().cpu())
    return torch.cat(outs)


def zeroed_logits(
    model,
    class_layer: str,
    layer: str,
    x: torch.Tensor,
    reference: torch.Tensor,
    sets: list,
    batch_size: int,
    device,
    channel_axis: str = DEFAULTS.channel_axis,
):
    """Yield the model's logits on ``x`` with each channel set of ``sets`` zeroed at ``layer``
    (its channels where ``channel_axis``, the run's setting, puts them)."""
    graph = _graph(model, class_layer, layer, channel_axis)
    fast = _segment(graph, class_layer, layer, x, reference, batch_size, device) if graph else None
    if fast is None:
        axes = graph.axes if graph else None
        for s in sets:
            yield logits(model, x, {layer: s}, batch_size=batch_size, device=device, axes=axes)
        return
    acts, segment = fast
    masks = masks_for(sets, acts[0].shape[1 if acts[0].ndim != 3 else -1])
    # the rest of the model runs fastest on big batches: as many images as hold CHUNK_ELEMENTS
    # activations of the layer (never fewer than ``batch_size``)
    chunk = max(batch_size, CHUNK_ELEMENTS // max(1, acts[0][0].numel()))
    with preserved(model), torch.no_grad():
        for m in masks:
            yield _run(segment, acts, m, chunk, device)


def fp_exemplars(circuit, model, images: torch.Tensor, indices, rows: list, k: int, batch_size: int, device) -> None:
    """Give each row ``fp_exemplars``: the ``k`` crops of the false positives ``images`` (data
    indices ``indices``), cut as the run cuts its crops, that activate the row's neurons most, at
    most one per image.  A crop's activation is the mean over the neurons of their response
    divided by that neuron's largest response over all these crops (so each neuron counts alike).
    Each entry: ``index`` (into the data), ``box`` [top, left, height, width], ``activation``."""
    if not rows or not len(indices):
        return
    cfg = circuit.config
    pool = CropPool(images, tuple(cfg.granularities), cfg.stride_ratio)
    names = [layer.name for layer in circuit.layers]
    wanted = sorted({r["layer"] for r in rows}, key=names.index)
    graph = LayerGraph(model, [names[0], *wanted])
    boxes = pool.boxes()
    for name in wanted:
        rec = graph.recorder([name])
        parts = []
        with preserved(model), torch.no_grad():
            for _, crops in pool.batches(batch_size):
                parts.append(response(rec(crops.to(device))[0]).float().cpu())
        resp = torch.cat(parts).clamp_min(0)
        resp = resp / resp.max(0).values.clamp_min(1e-6)
        for r in rows:
            if r["layer"] != name:
                continue
            act = resp[:, r["neurons"]].mean(1).numpy()
            picked, used = [], set()
            for c in np.argsort(-act, kind="stable"):
                img = int(pool.image_index[c])
                if img in used:
                    continue
                used.add(img)
                picked.append(
                    {"index": int(indices[img]), "box": [int(v) for v in boxes[c]], "activation": float(act[c])}
                )
                if len(picked) >= k:
                    break
            r["fp_exemplars"] = picked


def fp_crop_name(entry: dict) -> str:
    """File name of a false-positive exemplar's thumbnail (in ``DIR/audit-crops/``)."""
    t, l, h, w = (int(v) for v in entry["box"])
    return f"fp-{int(entry['index'])}-{t}-{l}-{h}-{w}.png"


def fp_thumbnails(images, rows: list, max_px: int = 64) -> dict:
    """{file name: PNG bytes} of the rows' false-positive exemplars, cut from ``images`` (the
    audited data, a tensor or a source: only the exemplars' images are decoded), shown as the
    run's thumbnails are (``store.display_range``, over those images)."""
    import io

    from PIL import Image

    wanted = sorted({int(e["index"]) for r in rows for e in r.get("fp_exemplars", [])})
    if not wanted:
        return {}
    source = as_source(images)
    taken, kept = source.take(wanted)
    at = {int(i): k for k, i in enumerate(kept)}
    lo, hi = display_range(source.tensor if isinstance(source, TensorImages) else taken)
    out = {}
    for r in rows:
        for e in r.get("fp_exemplars", []):
            name = fp_crop_name(e)
            if name in out:
                continue
            t, l, h, w = (int(v) for v in e["box"])
            k = at[int(e["index"])]
            img = Image.fromarray(to_uint8(taken[k : k + 1, :, t : t + h, l : l + w], lo, hi)[0])
            if max(img.size) > max_px:
                img = img.resize((max_px, max_px), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out[name] = buf.getvalue()
    return out
