"""Tracing rules on hand-made group-edge tables, and per-layer group counts (issue 15, items 1 and 4)."""

import itertools
import json

import numpy as np
import pytest

from neurflow.circuit import Circuit, Group, Layer, Node, SubConcept
from neurflow.cli import build_parser, from_flags
from neurflow.config import NeurFlowConfig, count_or_counts, groups_per_layer
from neurflow.errors import NeurFlowError
from neurflow.method.groups import assemble, trace

RUN = ["run", "--model", "m", "--data", "d", "--layers", "a,b", "--target", "0", "--out", "o"]


def brute_published(rows: list[dict], n: int) -> set:
    """The published rule by its definition: the union over kept groups of the n best lower groups."""
    out = set()
    for row in rows:
        best = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        out |= {g for g, _ in best}
    return out


def brute_sum(rows: list[dict], n: int) -> set:
    """The sum rule: the subset of connected groups of size min(n, count) with the largest summed score
    (ties: the lexicographically smallest ids)."""
    score: dict = {}
    for row in rows:
        for g, w in row.items():
            score[g] = score.get(g, 0.0) + w
    k = min(n, len(score))
    best = max(itertools.combinations(sorted(score), k), key=lambda c: (sorted(score[g] for g in c), [-g for g in c]))
    return set(best)


# -- item 1: the rules ---------------------------------------------------------------------------
def test_the_issue_example_published_keeps_each_groups_best():
    # upper kept {A, B} (the first layer keeps all its groups); W[A] = {1: 5, 2: 4}, W[B] = {3: 6}; n = 1
    edges = {0: {1: 5.0, 2: 4.0}, 1: {3: 6.0}}
    pair = [
        Layer("u", "l", {}, groups=(Group(0, (), ()), Group(1, (), ())), group_edges=edges),
        Layer("l", "x", {}, groups=tuple(Group(g, (), ()) for g in range(4))),
    ]
    assert trace(pair, 1, "published") == [("u", (0, 1)), ("l", (1, 3))]
    assert trace(pair, 1) == trace(pair, 1, "published")  # the default
    assert trace(pair, 1, "sum") == [("u", (0, 1)), ("l", (3,))]


def test_published_union_order_and_size():
    edges = {0: {0: 1.0, 1: 3.0, 2: 2.0}, 1: {2: 9.0, 3: 8.0, 4: 7.0}}
    pair = [
        Layer("u", "l", {}, groups=(Group(0, (), ()), Group(1, (), ())), group_edges=edges),
        Layer("l", "x", {}, groups=tuple(Group(g, (), ()) for g in range(6))),
    ]
    # group 0 picks 1, 2; group 1 picks 2, 3: the union in order of first pick, at most n x kept
    assert trace(pair, 2, "published") == [("u", (0, 1)), ("l", (1, 2, 3))]
    assert trace(pair, 2, "sum") == [("u", (0, 1)), ("l", (2, 3))]  # 2: 11, 3: 8, 4: 7, 1: 3


def test_ties_go_to_the_smaller_id():
    edges = {0: {3: 1.0, 1: 1.0, 2: 1.0}}
    pair = [
        Layer("u", "l", {}, groups=(Group(0, (), ()),), group_edges=edges),
        Layer("l", "x", {}, groups=tuple(Group(g, (), ()) for g in range(4))),
    ]
    assert trace(pair, 2, "published")[1] == ("l", (1, 2))
    assert trace(pair, 2, "sum")[1] == ("l", (1, 2))


def test_unconnected_groups_are_never_picked_even_over_negative_weights():
    # lower groups 0 and 3 have no edge from the kept group; 1 and 2 are connected with negative weights
    edges = {0: {1: -0.5, 2: -2.0}}
    pair = [
        Layer("u", "l", {}, groups=(Group(0, (), ()),), group_edges=edges),
        Layer("l", "x", {}, groups=tuple(Group(g, (), ()) for g in range(4))),
    ]
    for rule in ("published", "sum"):
        assert trace(pair, 1, rule)[1] == ("l", (1,))
        assert trace(pair, 3, rule)[1] == ("l", (1, 2))  # fewer than n connected: only those
    # a kept group with no edges at all contributes nothing
    empty = [Layer("u", "l", {}, groups=(Group(0, (), ()),), group_edges={}), pair[1]]
    assert trace(empty, 2, "published")[1] == ("l", ()) == trace(empty, 2, "sum")[1]


def test_sum_is_the_former_rule_on_connected_groups():
    # the former trace (tests/test_groups.py): every edge present, so sum reproduces it exactly
    l0 = Layer("a", "b", {}, groups=(Group(0, (), ()),), group_edges={0: {0: 0.1, 1: 0.9, 2: 0.5}})
    l1 = Layer(
        "b",
        "c",
        {},
        groups=tuple(Group(i, (), ()) for i in range(3)),
        group_edges={0: {0: 5.0, 1: 0.0}, 1: {0: 0.0, 1: 1.0}, 2: {0: 0.0, 1: 0.2}},
    )
    l2 = Layer("c", "d", {}, groups=(Group(0, (), ()), Group(1, (), ())))
    assert trace([l0, l1, l2], 2, "sum") == [("a", (0,)), ("b", (1, 2)), ("c", (1, 0))]
    # published: group 1 picks 1 then 0 (tie on 0.0 to the smaller id), group 2 picks 1, 0
    assert trace([l0, l1, l2], 2, "published") == [("a", (0,)), ("b", (1, 2)), ("c", (1, 0))]
    assert trace([l0, l1, l2], 1, "published") == [("a", (0,)), ("b", (1,)), ("c", (1,))]


@pytest.mark.parametrize("seed", range(40))
def test_random_tables_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    width_up, width_low = int(rng.integers(1, 4)), int(rng.integers(1, 7))
    edges = {}
    for G in range(width_up):
        connected = rng.random(width_low) < 0.6
        # integer weights in -3..3 make ties (and zeros) common
        edges[G] = {g: float(rng.integers(-3, 4)) for g in range(width_low) if connected[g]}
    pair = [
        Layer("u", "l", {}, groups=tuple(Group(G, (), ()) for G in range(width_up)), group_edges=edges),
        Layer("l", "x", {}, groups=tuple(Group(g, (), ()) for g in range(width_low))),
    ]
    rows = [edges[G] for G in range(width_up)]
    for n in (1, 2, 3):
        pub = trace(pair, n, "published")[1][1]
        assert set(pub) == brute_published(rows, n) and len(pub) == len(set(pub)) <= n * width_up
        summed = trace(pair, n, "sum")[1][1]
        assert set(summed) == brute_sum(rows, n) and len(summed) <= n
        connected = set().union(*map(set, rows))
        assert set(pub) <= connected and set(summed) <= connected


def test_trace_rule_setting_reaches_the_trace():
    assert NeurFlowConfig().trace_rule == "published"
    with pytest.raises(NeurFlowError, match="trace_rule"):
        NeurFlowConfig(trace_rule="mean")
    args = build_parser().parse_args([*RUN, "--trace-rule", "sum"])
    assert from_flags(NeurFlowConfig, args).trace_rule == "sum"
    # circuits saved before the setting were traced by summing
    assert Circuit(0, (), "x", settings={"tau": 4}).config.trace_rule == "sum"
    assert Circuit(0, (), "x", settings=NeurFlowConfig().method_dict()).config.trace_rule == "published"


# -- item 4: group counts per layer --------------------------------------------------------------
def test_n_groups_accepts_one_count_or_one_per_layer():
    assert NeurFlowConfig(n_groups=4).n_groups == 4
    assert NeurFlowConfig(n_groups=[10, 5, 3]).n_groups == (10, 5, 3)
    for bad in (0, (3, 0), (), "4", (2.5,), True):
        with pytest.raises(NeurFlowError, match="n_groups"):
            NeurFlowConfig(n_groups=bad)
    assert groups_per_layer(None, 2) == [None, None]
    assert groups_per_layer(4, 3) == [4, 4, 4]
    assert groups_per_layer((10, 5, 3), 3) == [10, 5, 3]
    with pytest.raises(NeurFlowError) as err:
        groups_per_layer((10, 5), 3)
    line = str(err.value)
    assert "\n" not in line and line.startswith("n_groups: expected") and "3 comma-separated" in line
    assert "'10,5'" in line


def test_n_groups_flag_and_round_trip():
    parse = build_parser().parse_args
    base = RUN
    assert from_flags(NeurFlowConfig, parse([*base, "--n-groups", "10,5,3"])).n_groups == (10, 5, 3)
    assert from_flags(NeurFlowConfig, parse([*base, "--n-groups", "4"])).n_groups == 4
    assert from_flags(NeurFlowConfig, parse(base)).n_groups is None
    assert count_or_counts(" 10, 5 ,3 ") == (10, 5, 3) and count_or_counts("7,") == (7,)
    with pytest.raises(SystemExit):
        parse([*base, "--n-groups", "ten"])
    cfg = NeurFlowConfig(n_groups=(10, 5, 3), trace_rule="sum")
    d = json.loads(json.dumps(cfg.to_dict()))  # as circuit.json stores it
    assert d["n_groups"] == [10, 5, 3]
    assert NeurFlowConfig.from_dict(d) == cfg
    assert NeurFlowConfig.from_dict(json.loads(json.dumps(NeurFlowConfig(n_groups=4).to_dict()))).n_groups == 4


def _blobs(centres: int, per: int, seed: int) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = np.concatenate([rng.normal(10.0 * c, 0.1, size=(per, 3)) for c in range(centres)])
    keys = [(i, 0) for i in range(len(vectors))]
    return keys, vectors


def test_assemble_uses_one_count_per_layer():
    def fitted_layer(name: str, keys: list, vectors: np.ndarray):
        nodes = {n: Node(n, (), (SubConcept(0, (), (), 0.0, {}, {}),), (), ()) for n, _ in keys}
        return Layer(name, "x", nodes), {"keys": np.array(keys), "vectors": vectors}

    fitted = [fitted_layer("top", [(0, 0)], np.zeros((1, 3)))]
    for name in ("a", "b", "c"):
        fitted.append(fitted_layer(name, *_blobs(6, 4, seed=len(fitted))))
    layers, _, _ = assemble(fitted, 100, (5, 3, 2), "published", 3)
    assert [len(l.groups) for l in layers] == [1, 5, 3, 2]
    layers, _, _ = assemble(fitted, 100, 4, "published", 3)
    assert [len(l.groups) for l in layers] == [1, 4, 4, 4]
    with pytest.raises(NeurFlowError, match="n_groups"):
        assemble(fitted, 100, (5, 3), "published", 3)


def test_fit_refuses_a_count_list_of_the_wrong_length_before_any_work():
    import torch
    from torch import nn

    from neurflow import NeurFlow

    with pytest.raises(NeurFlowError) as err:
        # three layers: one analysed layer below the class layer, so one count (the model is never run)
        NeurFlow(n_groups=(10, 5, 3)).fit(nn.Identity(), torch.zeros(1, 3, 8, 8), 0, ["fc", "b", "c"])
    line = str(err.value)
    assert err.value.parameter == "n_groups" and "one number (1 analysed layer" in line and "10,5,3" in line
