import numpy as np

from neurflow.circuit import Group, Layer, Node, SubConcept
from neurflow.method.groups import group_edges, layer_groups, trace


def sc(i, w, group):
    return SubConcept(i, (), (), 0.0, w, w, group)


def test_group_edges_published_and_once():
    lower = Layer(
        "low",
        "x",
        {
            7: Node(7, (), (sc(0, {}, 0), sc(1, {}, 0), sc(2, {}, 1)), (), ()),
            8: Node(8, (), (sc(0, {}, 1),), (), ()),
        },
        groups=(Group(0, ((7, 0), (7, 1)), (7,)), Group(1, ((7, 2), (8, 0)), (7, 8))),
    )
    upper = Layer(
        "up",
        "low",
        {
            1: Node(1, (7, 8), (sc(0, {7: 0.5, 8: -0.25}, 0), sc(1, {7: 0.1, 8: 0.2}, 0)), (), ()),
        },
        groups=(Group(0, ((1, 0), (1, 1)), (1,)),),
    )
    # published: j=7 has two sub-concepts in group 0 and one in group 1
    e = group_edges(upper, lower, "published")
    assert abs(e[0][0] - (0.5 * 2 + 0.1 * 2)) < 1e-12
    assert abs(e[0][1] - (0.5 - 0.25 + 0.1 + 0.2)) < 1e-12
    once = group_edges(upper, lower, "once")
    assert abs(once[0][0] - (0.5 + 0.1)) < 1e-12
    assert abs(once[0][1] - (0.5 - 0.25 + 0.1 + 0.2)) < 1e-12


def test_trace_follows_top_n():
    l0 = Layer("a", "b", {}, groups=(Group(0, (), ()),), group_edges={0: {0: 0.1, 1: 0.9, 2: 0.5}})
    l1 = Layer(
        "b",
        "c",
        {},
        groups=tuple(Group(i, (), ()) for i in range(3)),
        group_edges={0: {0: 5.0, 1: 0.0}, 1: {0: 0.0, 1: 1.0}, 2: {0: 0.0, 1: 0.2}},
    )
    l2 = Layer("c", "d", {}, groups=(Group(0, (), ()), Group(1, (), ())))
    assert trace([l0, l1, l2], 2) == [("a", (0,)), ("b", (1, 2)), ("c", (1, 0))]


def test_layer_groups_single_and_members_by_distance():
    keys = [(1, 0), (1, 1), (2, 0), (3, 0)]
    v = np.array([[0.0, 0], [0.1, 0], [5, 5], [5.2, 5]])
    labels, groups = layer_groups(keys, v)
    assert len(groups) == 2 and labels[0] == labels[1] and labels[2] == labels[3] != labels[0]
    labels, groups = layer_groups(keys, v, single=True)
    assert len(groups) == 1 and set(groups[0].members) == set(keys)


def test_members_equidistant_from_their_mean_go_in_key_order_whatever_the_rounding():
    """Two members are always equidistant from their mean: float rounding, which differs between
    machines (SIMD, BLAS), decided their order ([73, 61] on one machine, [61, 73] on another)."""
    from neurflow.method.groups import nearest_first

    rng = np.random.RandomState(0)
    a, b = rng.randn(8), rng.randn(8)
    keys = [(73, 0), (61, 1)]
    for eps in (0.0, 1e-12, -1e-12, 1e-9):  # noise of the size machines differ by
        got = nearest_first(np.stack([a + eps, b]), keys)
        assert got.tolist() == [1, 0]  # (61, 1) first: key order, not the rounding
        assert nearest_first(np.stack([b, a + eps]), keys[::-1]).tolist() == [0, 1]
    # distinct distances still go nearest first, whatever the keys
    v = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])  # mean (3.67, 0): 1 nearest, then 0, then 2
    assert nearest_first(v, [(2,), (1,), (0,)]).tolist() == [1, 0, 2]
