"""`clado inspect`: per-layer sensitivities of each cached method, and the CLADO cross-layer
interaction terms G[(l,b),(m,b)] between layers l≠m at one width b (the paper's Figure 1), or,
with activation options, at one option pair (w4a8), or at two (`w4a8:w2a8`: rows at the first,
columns at the second); as CSV files that `clado optimize --sensitivities/--pairs` reads back
(clado_cli/sensfile.py; weight widths only: a set-up with activation options has no CSV form)."""
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


def inspect(cache: Cache, bits=None, ks: Optional[Sequence[int]] = None, pairs_csv=None) -> Dict[str, Any]:
    """The report. `bits`: the option of the interaction heatmap, a width (4, or "4") or a pair
    label ("w4a8"), or "A:B" for rows at option A and columns at option B (default: the first);
    `pairs_csv`: also write CLADO's pair terms there (`write_pairs_csv`)."""
    space = space_of(cache.manifest)
    B = len(space.candidates)
    parts = str(bits).split(":") if bits is not None else [space.label(0)]
    if len(parts) > 2:
        raise UsageError(f"bits {bits}: give one option or two as A:B", params=("bits",))
    k, k2 = _option_index(space, parts[0]), _option_index(space, parts[-1])
    shown = int(parts[0]) if space.act_bits is None and len(parts) == 1 else ":".join(parts)
    per_layer: Dict[str, Dict[str, List[float]]] = {}
    out: Dict[str, Any] = {"fingerprint": cache.fingerprint, "layers": space.layer_names,
                           "numel": space.numel, "candidates": space.candidates,
                           "act_bits": space.act_bits, "options": [space.label(i) for i in range(B)],
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
            if pairs_csv is not None:
                write_pairs_csv(space, sens.Ltilde, pairs_csv)
                out["pairs_csv"] = str(pairs_csv)
    if not out["methods"]:
        raise UsageError(f"cache {cache.fingerprint} holds no sensitivities yet (run clado prep)")
    if pairs_csv is not None and "pairs_csv" not in out:
        raise UsageError(f"cache {cache.fingerprint} holds no CLADO sensitivities, so no pair terms to write "
                         f"(run clado prep clado)", params=("pairs_csv",))
    return out


def write_csv(rep: Dict[str, Any], path) -> None:
    """The per-option sensitivities of `inspect`'s report as CSV, one row per method, layer and
    width: method,layer,numel,bits,value (clado_cli/sensfile.py; `clado optimize --sensitivities`
    reads it back exactly)."""
    from pathlib import Path

    from .optimize import OptionSpace
    from .sensfile import COLUMNS, csv_bytes, option_rows
    from .store import atomic_write

    if rep.get("act_bits") is not None:
        raise UsageError("--csv: the sensitivities file format has weight widths only, and this cache's options "
                         "differ in activation width", params=("csv",))
    space = OptionSpace(rep["layers"], rep["candidates"], rep["numel"])
    rows = [r for m, info in rep["methods"].items() for r in option_rows(m, space, info["per_layer"])]
    atomic_write(Path(path), csv_bytes(COLUMNS, rows))


def write_pairs_csv(space, Ltilde, path) -> None:
    """CLADO's pair terms as CSV: layer_a,bits_a,layer_b,bits_b,value (the measured Ltilde of
    every ordered pair of options of different layers)."""
    from pathlib import Path

    from .sensfile import PAIR_COLUMNS, csv_bytes, pair_rows
    from .store import atomic_write

    if space.act_bits is not None:
        raise UsageError("--csv-pairs: the pairs file format has weight widths only, and this cache's options "
                         "differ in activation width", params=("pairs_csv",))
    atomic_write(Path(path), csv_bytes(PAIR_COLUMNS, pair_rows(space, Ltilde)))


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
