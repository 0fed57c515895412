"""Refinement by measured loss (docs/methods.md, "Refinement by measured loss").

The programs choose by a model of the loss (CLADO's x'Gx/2, the linear methods' s'x). Refining
takes the K best distinct choices the program admits within the budgets (decide_alternatives:
the program solved again with a no-good row for every earlier choice), applies each to the model,
measures its loss increase on the sensitivity batches, and keeps the one that measured lowest.
The decision records every candidate (rank by the program, predicted, measured) and whether the
kept one differs from the program's optimum.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Sequence

from .decisions import option_keys
from .measure import loss_increases


def refine(session, groups: Sequence[Sequence[Dict[str, Any]]], k_best: int) -> List[Dict[str, Any]]:
    """One decision per group (the alternatives of one method and budget, best predicted first):
    the one with the lowest measured loss increase on the sensitivity batches its sensitivities
    came from (ties: the program's order). Decisions on the same batches share each batch's pass."""
    by_batches: Dict[tuple, List[int]] = {}
    for g, group in enumerate(groups):
        by_batches.setdefault(tuple(group[0]["cache"]["batches"]), []).append(g)
    values_of: Dict[int, List[float]] = {}
    for ks, members in by_batches.items():
        flat = [d for g in members for d in groups[g]]
        measured = loss_increases(session, [option_keys(d, session.qmodel.act_options) for d in flat], list(ks))
        at = 0
        for g in members:
            values_of[g] = [m["loss_increase"] for m in measured[at:at + len(groups[g])]]
            at += len(groups[g])
    out = []
    for g, group in enumerate(groups):
        values = values_of[g]
        ks = group[0]["cache"]["batches"]
        best = min(range(len(group)), key=lambda r: (values[r], r))
        d = copy.deepcopy(group[best])
        d["refine"] = {
            "k": int(k_best), "found": len(group), "chosen_rank": best, "changed": best != 0,
            "batches": list(ks),
            "candidates": [{"rank": r, "predicted_loss_increase": g["predicted_loss_increase"],
                            "measured_loss_increase": values[r],
                            "w_bits": {n: v["w_bits"] for n, v in g["layers"].items()},
                            "a_bits": {n: v["a_bits"] for n, v in g["layers"].items()}} for r, g in enumerate(group)],
        }
        if len(group) < k_best:
            d["warnings"].append(f"refine: the budgets admit only {len(group)} distinct choice(s) of the {k_best} asked "
                                 f"(or the solver found no more in time)")
        out.append(d)
    return out


def summary(decisions: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How often refinement kept a choice other than the program's optimum."""
    refined = [d for d in decisions if d.get("refine")]
    return {"k": max((d["refine"]["k"] for d in refined), default=1), "decisions": len(refined),
            "changed": sum(d["refine"]["changed"] for d in refined)}
