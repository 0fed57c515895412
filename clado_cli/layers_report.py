"""What `clado layers` reports: decided, fixed and skipped layers, sizes per candidate width,
uniform model sizes, and the cost of one CLADO prep batch."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from .prep.clado import measurement_count


def layers_report(session, costs: Sequence[Tuple[str, str]] = ()) -> Dict[str, Any]:
    """`costs`: user cost tables (name, file) to read against the set-up (clado_cli.usercosts):
    each decided layer then carries its cost per candidate width, and the report the sum per
    uniform width."""
    from .usercosts import read_cost_table

    plan = session.plan
    cfg = session.cfg
    cands = cfg.quant.weight_widths()
    pairs = cfg.quant.pairs()
    fixed_bits = cfg.layers.fixed_weight_bits
    decided_numel = sum(l.numel for l in plan.decided)
    fixed_bytes = sum(l.numel * fixed_bits / 8 for l in plan.fixed)
    # cost tables per option: its weight width (and activation width, with activation options)
    labels = [cfg.quant.option_label(w, a) for w, a in pairs]
    acts = [a for _, a in pairs] if cfg.quant.act_options else pairs[0][1]
    tables = [read_cost_table(path, name, plan.decided_names, [w for w, _ in pairs], a_bits=acts,
                              fixed_names=plan.fixed_names) for name, path in costs]
    layers = []
    macs = session.layer_macs
    cons = session.constraints
    index = {n: i for i, n in enumerate(plan.decided_names)}
    tie_of = cons.tie_of()
    for l in plan.all():
        d = l.to_dict()
        if l.name in macs:
            d["macs"] = macs[l.name]
            d["act_elements"] = session.layer_act_elements[l.name]
        if l.role == "decided":
            d["bytes"] = {str(b): l.numel * b / 8 for b in cands}
            # the widths the program may give it (layers.widths, narrowed by its tie group) and
            # the number of its tie group (None: not tied)
            d["allowed_widths"] = cons.allowed[index[l.name]]
            d["tie"] = tie_of[index[l.name]]
            if tables:
                d["costs"] = {t.name: {lab: float(v) for lab, v in zip(labels, t.values[index[l.name]])}
                              for t in tables}
        elif l.role == "fixed":
            d["bytes"] = {str(fixed_bits): l.numel * fixed_bits / 8}
        layers.append(d)
    L, B = len(plan.decided), len(pairs)
    from .quant.layers import FIRST_LAST_RULES

    return {
        "model": cfg.model.name,
        "data": cfg.data.dataset,
        "input_shape": list(session.data.input_shape),
        # the resolved preprocessing of file-backed data (None: digits, synthetic)
        "transform": session.transform,
        "fixed_rule": {"fix_first_last": cfg.layers.fix_first_last, "first_last_by": cfg.layers.first_last_by,
                       "rule": FIRST_LAST_RULES[cfg.layers.first_last_by] if cfg.layers.fix_first_last
                       else "off: no layer is fixed for being first or last",
                       "globs": list(cfg.layers.fixed)},
        "candidates": cands,
        # program constraints (not in the cache fingerprint): tie groups, numbered from 1, and
        # how many decided layers may take fewer than every candidate width
        # user cost tables: the file, whether it has an a_bits column, the decided layers' sum per uniform width
        "costs": {t.name: {"file": t.path, "has_a_bits": t.has_a_bits,
                           "uniform": {lab: float(t.values[:, k].sum()) for k, lab in enumerate(labels)}}
                  for t in tables},
        "constraints": {
            "tie_shared_input": cfg.layers.tie_shared_input,
            "widths_rule": "a layer takes the widths of the last layers.widths entry whose glob matches it",
            "ties": [{"group": g, "layers": [plan.decided_names[i] for i in members], "sources": src}
                     for g, (members, src) in enumerate(zip(cons.ties, cons.sources), start=1)],
            "restricted": sum(len(a) < len(cands) for a in cons.allowed),
            "notes": list(cons.notes),
        },
        # the decided layers' one input width, or None when the options carry their own
        "activation_bits": None if cfg.quant.act_options else pairs[0][1],
        # every option of a decided layer: its weight width, or a w4a8-style pair (quant.options)
        "options": [cfg.quant.option_label(w, a) for w, a in pairs],
        "fixed_precision": {"weight_bits": fixed_bits, "activation_bits": cfg.layers.fixed_activation_bits},
        "layers": layers,
        "counts": {"decided": L, "fixed": len(plan.fixed), "skipped": len(plan.skipped), "options": L * B},
        "decided_numel": decided_numel,
        # multiply-accumulates per sample at the data's input shape (BOPs = MACs · w · a)
        "macs": {"decided": sum(macs[l.name] for l in plan.decided), "fixed": sum(macs[l.name] for l in plan.fixed)},
        "uniform_sizes": {str(b): {"decided_bytes": decided_numel * b / 8, "fixed_bytes": fixed_bytes,
                                   "total_bytes": decided_numel * b / 8 + fixed_bytes} for b in cands},
        "clado_prep_per_batch": {"forward_passes": measurement_count(L, B), "singles": L * B,
                                 "pairs": B * B * L * (L - 1) // 2},
    }
