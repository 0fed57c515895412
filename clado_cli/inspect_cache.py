"""`clado inspect`: per-layer sensitivities of each cached method, and the CLADO cross-layer
interaction terms G[(l,b),(m,b)] between layers l≠m at one width b (the paper's Figure 1), or,
with activation options, at one option pair (w4a8), or at two (`w4a8:w2a8`: rows at the first,
columns at the second)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import UsageError
from .methods import get_method, load_sensitivities, prep_method_names, space_of
from .store import Cache


def _option_index(space, text: str) -> int:
    labels = [space.label(k) for k in range(len(space.candidates))]
    if text not in labels:
        raise UsageError(f"bits {text}: not one of the options {', '.join(labels)}", params=("bits",))
    return labels.index(text)


def inspect(cache: Cache, bits=None, ks: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """`bits`: the option of the interaction heatmap, a width (4, or "4") or a pair label
    ("w4a8"), or "A:B" for rows at option A and columns at option B (default: the first)."""
    space = space_of(cache.manifest)
    B = len(space.candidates)
    parts = str(bits).split(":") if bits is not None else [space.label(0)]
    if len(parts) > 2:
        raise UsageError(f"bits {bits}: give one option or two as A:B", params=("bits",))
    k, k2 = _option_index(space, parts[0]), _option_index(space, parts[-1])
    shown = int(parts[0]) if space.act_bits is None and len(parts) == 1 else ":".join(parts)
    per_layer: Dict[str, Dict[str, List[float]]] = {}
    out: Dict[str, Any] = {"fingerprint": cache.fingerprint, "layers": space.layer_names,
                           "candidates": space.candidates, "options": [space.label(i) for i in range(B)],
                           "methods": {}}
    for method in prep_method_names():
        m = get_method(method)
        if not cache.batches(m.stored):
            continue
        sens = load_sensitivities(cache, m, ks)
        out["methods"][method] = {"batches": list(sens.batches), "samples": sens.samples,
                                  "per_layer": sens.singles.reshape(-1, B).tolist(),
                                  # standard error across the batches (docs/methods.md, "Noise")
                                  "per_layer_se": None if sens.singles_se is None
                                  else sens.singles_se.reshape(-1, B).tolist()}
        if getattr(sens, "traces", None) is not None:
            out["methods"][method]["traces"] = sens.traces.tolist()
        if getattr(sens, "G", None) is not None:
            idx = np.arange(space.n_layers) * B
            inter = sens.G[np.ix_(idx + k, idx + k2)].copy()
            np.fill_diagonal(inter, 0.0)
            out["interaction"] = {"bits": shown, "matrix": inter.tolist(),
                                  "definition": "G[(l,b),(m,b)] = L(l,m) - L(l) - L(m) + L0, diagonal blanked"}
    if not out["methods"]:
        raise UsageError(f"cache {cache.fingerprint} holds no sensitivities yet (run clado prep)")
    return out


def write_csv(rep: Dict[str, Any], path) -> None:
    """The per-layer sensitivities of `inspect`'s report as CSV: method,layer,<b>bit..."""
    from pathlib import Path

    from .store import atomic_write

    heads = rep.get("options") or [str(b) for b in rep["candidates"]]
    lines = ["method,layer," + ",".join(f"{b}bit" if b.isdigit() else b for b in heads)]
    for m, info in rep["methods"].items():
        for name, vals in zip(rep["layers"], info["per_layer"]):
            lines.append(f"{m},{name}," + ",".join(f"{v:.9g}" for v in vals))
    atomic_write(Path(path), ("\n".join(lines) + "\n").encode())


def cache_listing(cache_dir) -> List[Dict[str, Any]]:
    """`clado cache ls`: every cache under cache_dir with its model, data and, per method, the
    cached batches, samples and bytes."""
    from .methods import get_method, prep_method_names
    from .store import list_caches

    rows = []
    for c in list_caches(cache_dir):
        m = c.manifest
        entry = {"fingerprint": c.fingerprint, "path": str(c.root),
                 "model": m.get("model", {}).get("name"), "data": m.get("data", {}).get("dataset"),
                 "bs": m.get("data", {}).get("bs"), "methods": {}}
        for method in prep_method_names():
            infos = c.batch_infos(get_method(method).stored)
            if infos:
                entry["methods"][method] = {"batches": [i.k for i in infos], "samples": sum(i.n for i in infos),
                                            "bytes": sum(i.bytes for i in infos)}
        rows.append(entry)
    return rows
