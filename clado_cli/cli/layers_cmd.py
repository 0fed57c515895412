from pathlib import Path
from typing import List, Optional

from rich.table import Table

from ..console import out
from .common import (ConfigOpt, CostOpt, DataOpt, DeviceOpt, InputSizeOpt, JsonOpt, ModelOpt, NormalizeOpt, QuietOpt,
                     ThreadsOpt, WeightsOpt, boundary, load, print_json, session_for)


@boundary
def layers(config: Optional[Path] = ConfigOpt, model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt,
           data: Optional[str] = DataOpt, normalize: Optional[str] = NormalizeOpt,
           input_size: Optional[int] = InputSizeOpt, device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt,
           cost: Optional[List[str]] = CostOpt,
           as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """List decided, fixed and skipped layers with sizes per candidate width, uniform model
    sizes, and the cost of one CLADO prep batch.

    Example: clado layers --model resnet18 --weights none --data imagefolder:/data/imagenet --json
    """
    from ..layers_report import layers_report
    from ..optimize.budget import format_bytes

    cfg = load(config, quiet, model=model, weights=weights, data=data, device=device, threads=threads,
               normalize=normalize, input_size=input_size)
    from ..usercosts import parse_cost_options

    costs = parse_cost_options(cost or [])
    rep = layers_report(session_for(cfg), costs)
    if as_json:
        print_json(rep)
        return
    cands = rep["candidates"]
    cons = rep["constraints"]
    # the widths and tie columns appear only when some layer is restricted or tied
    extra = (["widths"] if cons["restricted"] else []) + (["tie"] if cons["ties"] else [])
    t = Table(title=f"{rep['model']} on {rep['data']}: layers")
    for col in ["#", "layer", "type", "role", "params", "MACs", *[f"{b}-bit" for b in cands], *extra, "note"]:
        # layer names are never cut: they wrap (fold) at narrow widths; numbers stay on one line
        t.add_column(col, justify="right" if col not in ("layer", "type", "role", "note") else "left",
                     overflow="fold" if col in ("layer", "note") else "ellipsis",
                     no_wrap=col not in ("layer", "type", "note"), min_width=12 if col == "layer" else None)
    for i, l in enumerate(rep["layers"]):
        sizes = [format_bytes(l["bytes"][str(b)]) if l.get("bytes") and str(b) in l["bytes"] else "" for b in cands]
        note = l["reason"] + (f" groups={l['groups']}" if l.get("groups", 1) > 1 else "")
        macs = f"{l['macs']:,}" if "macs" in l else ""
        more = []
        if "widths" in extra:
            allowed = l.get("allowed_widths")
            more.append(",".join(map(str, allowed)) if allowed is not None and len(allowed) < len(cands) else "")
        if "tie" in extra:
            more.append(str(l["tie"]) if l.get("tie") is not None else "")
        t.add_row(str(i), l["name"], l["kind"], l["role"], f"{l['numel']:,}", macs, *sizes, *more, note)
    out.print(t)
    if cons["restricted"]:
        out.print("widths: the widths the program may give a layer (those of the last layers.widths entry that "
                  "matches it; a tied layer only those its whole group allows); blank: every candidate")
    if cons["ties"]:
        out.print("tie groups (every layer of a group takes one width):")
        for g in cons["ties"]:
            out.print(f"  {g['group']}: {', '.join(g['layers'])} ({', '.join(g['sources'])})", soft_wrap=True)
    for note in cons["notes"]:
        out.print(f"note: {note}")
    fr = rep["fixed_rule"]
    out.print(f"fixed layers: first and last by {fr['first_last_by']} ({fr['rule']})"
              + (f"; layers.fixed: {', '.join(fr['globs'])}" if fr["globs"] else "")
              + "; the note column says why each is fixed or skipped")
    if rep.get("transform"):
        from ..data import Transform

        tr = {k: v for k, v in rep["transform"].items()}
        t_obj = Transform(**{**tr, "input_size": tuple(tr["input_size"]),
                             "resize": tuple(tr["resize"]) if tr["resize"] else None,
                             "mean": tuple(tr["mean"]), "std": tuple(tr["std"])})
        out.print(f"preprocessing: {t_obj.describe()}")
        from_model = sorted(k for k, v in tr["origin"].items() if v == "model")
        from_cfg = sorted(k for k, v in tr["origin"].items() if v == "config")
        if from_model or from_cfg:
            out.print("  from the model: " + (", ".join(from_model) or "-") + "; from data.transform: "
                      + (", ".join(from_cfg) or "-"))
    u = Table(title="uniform sizes (fixed layers at their fixed precision)")
    for col in ["weights", "decided", "fixed", "total"]:
        u.add_column(col, justify="right")
    for b, s in rep["uniform_sizes"].items():
        u.add_row(f"{b}-bit", format_bytes(s["decided_bytes"]), format_bytes(s["fixed_bytes"]), format_bytes(s["total_bytes"]))
    out.print(u)
    out.print(f"options per decided layer ({len(rep['options'])}): " + ", ".join(
        o if "a" in o else f"{o}-bit" for o in rep["options"])
        + (f"; inputs at {rep['activation_bits']} bits" if rep["activation_bits"] is not None else ""))
    for name, ct in rep["costs"].items():
        out.print(f"cost {name} ({ct['file']}), decided layers at one width: "
                  + ", ".join(f"{b}-bit {v:.6g}" if b.isdigit() else f"{b} {v:.6g}" for b, v in ct["uniform"].items()),
                  soft_wrap=True)
    c = rep["clado_prep_per_batch"]
    out.print(f"{rep['counts']['decided']} decided, {rep['counts']['fixed']} fixed, {rep['counts']['skipped']} skipped; "
              f"CLADO prep: {c['forward_passes']:,} forward passes per batch ({c['singles']} singles, {c['pairs']:,} pairs)")
