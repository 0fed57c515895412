"""`clado inspect`: per-layer sensitivities of each cached method, and the CLADO cross-layer
interaction terms G[(l,b),(m,b)] between layers l≠m at one width b (the paper's Figure 1)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .decide import Sensitivities, space_of
from .errors import UsageError
from .prep.cache import Cache


def inspect(cache: Cache, bits: Optional[int] = None, ks: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    space = space_of(cache.manifest)
    B = len(space.candidates)
    bits = bits if bits is not None else space.candidates[0]
    if bits not in space.candidates:
        raise UsageError(f"--bits {bits}: not one of the candidates {space.candidates}")
    k = space.candidates.index(bits)
    per_layer: Dict[str, Dict[str, List[float]]] = {}
    out: Dict[str, Any] = {"fingerprint": cache.fingerprint, "layers": space.layer_names,
                           "candidates": space.candidates, "methods": {}}
    for method in ("clado", "mpqco", "hawq"):
        if not cache.batches(method):
            continue
        sens = Sensitivities(cache, method, ks)
        out["methods"][method] = {"batches": list(sens.batches), "samples": sens.samples,
                                  "per_layer": sens.singles.reshape(-1, B).tolist()}
        if method == "hawq":
            out["methods"][method]["traces"] = sens.traces.tolist()
        if method == "clado":
            idx = np.arange(space.n_layers) * B + k
            inter = sens.G[np.ix_(idx, idx)].copy()
            np.fill_diagonal(inter, 0.0)
            out["interaction"] = {"bits": bits, "matrix": inter.tolist(),
                                  "definition": "G[(l,b),(m,b)] = L(l,m) - L(l) - L(m) + L0, diagonal blanked"}
    if not out["methods"]:
        raise UsageError(f"cache {cache.fingerprint} holds no sensitivities yet (run clado prep)")
    return out
