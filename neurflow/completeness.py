"""Warnings read from a layer's completeness facts, one wording for the run, ``neurflow show`` and
the report: a relative completeness gap above ``COMPLETENESS_WARN_RELATIVE`` (integrated gradients
missed part of h(A) - h(0), typically behind a normalisation layer; see docs/method.md) and nodes
whose attributions are all zero (their core sets are then only the tie order)."""

from __future__ import annotations

from typing import Mapping

from .config import COMPLETENESS_WARN_RELATIVE


def gap_warnings(facts: Mapping, threshold: float = COMPLETENESS_WARN_RELATIVE) -> list[str]:
    """The warnings for one layer's ``completeness_gap`` facts (empty when there is nothing to say)."""
    out = []
    rel = facts.get("relative")
    if isinstance(rel, (int, float)) and rel > threshold:
        out.append(
            f"relative completeness gap {rel:.3g} is above {threshold:g}: the attributions miss part of "
            "h(A) - h(0), so the core sets may be wrong (a LayerNorm/GroupNorm between the two layers "
            "differentiated through under --norm-rule plain, or too few --ig-steps; see docs/method.md)"
        )
    zero = facts.get("zero_attribution_nodes")
    if isinstance(zero, (int, float)) and zero > 0:
        out.append(
            f"{int(zero)} node(s) with all-zero attributions: their core sets are only the tie order "
            "(e.g. a zero-initialised head with untrained weights)"
        )
    return out
