"""How the fast engine groups perturbations into passes (docs/methods.md, "CLADO";
measurements in docs/performance.md).

A branch applies the widths `ks` of one decided layer l, stacked along the batch dimension
(P = len(ks) variants of the batch); a pass at a later layer m applies some of m's widths to
some of those variants, again stacked. `StackPlan` says how many perturbations go into one
pass at each layer and how the work is cut into chunks; `auto_max_batch` picks that number
from memory sizes alone. Both are plain arithmetic, testable without a model.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

# auto stacking aims at this fraction of the reference engine's peak memory: 2x, less a margin
# for what the fitted model below does not see
STACK_MEMORY_TARGET = 1.9


def persistent_bytes(qm) -> int:
    """Bytes of the tensors a QuantModel holds for its whole life: parameters, buffers and the
    per-option quantized-weight cache (every engine runs with all of them resident)."""
    seen, total = set(), 0
    tensors = list(qm.parameters()) + list(qm.buffers()) + [t for q in qm.qlayers.values() for t in q.qweight.values()]
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def auto_max_batch(n_bits: int, persistent: int, forward_bytes: int, tail_bytes: int,
                   target: float = STACK_MEMORY_TARGET) -> int:
    """How many perturbations to stack per pass at one decided layer m so that the fast
    engine's peak memory stays within 2x of the reference's (aiming at T = `target` = 1.9x),
    counted both ways: the total (the QuantModel's persistent tensors plus what a pass
    allocates) and the transient part alone.

    With S = `persistent` (bytes the QuantModel holds, `persistent_bytes`) and F =
    `forward_bytes` (what one plain forward pass holds at its peak), the reference's transient
    peak is near 2F; the fast engine's is near (1 + 1.5·M·Fm/F)·F, where Fm = `tail_bytes` ≤ F
    is what a plain forward holds from layer m on (a pass at m computes only the nodes
    downstream of m, M perturbations stacked): the trunk and branch values plus the pass. F
    and Fm are measured by `FastRunner.probe`; both models were fitted to measured peaks
    (docs/performance.md).
        total:      S + (1 + 1.5·M·Fm/F)·F ≤ T·(S + 2F)  ⇔  M ≤ ((T−1)·S/F + 2T − 1)·F / (1.5·Fm)
        transient:      (1 + 1.5·M·Fm/F)·F ≤ T·2F        ⇔  M ≤ (2T − 1)·F / (1.5·Fm)
    Capped at B² = `n_bits`² (every width of a layer on every width of the branch); at least
    1. `--stack N` (prep.stack) sets one M for every layer instead: more is faster on small
    inputs and needs more memory."""
    T = target
    F = max(1, forward_bytes)
    Fm = max(1, min(F, tail_bytes))
    total = ((T - 1) * persistent / F + 2 * T - 1) * F / (1.5 * Fm)
    transient = (2 * T - 1) * F / (1.5 * Fm)
    return max(1, min(n_bits * n_bits, int(total), int(transient)))


def chunks(seq: Sequence, size: int) -> List[Sequence]:
    """seq cut into consecutive pieces of `size` (the last may be shorter; size < 1 counts
    as 1)."""
    size = max(1, size)
    return [seq[i:i + size] for i in range(0, len(seq), size)]


class StackPlan:
    """`per_layer[m]`: the most perturbations stacked into one pass at decided layer m, for
    a layer with `n_bits` widths. Also the peak bytes the runs of one batch held at once
    (`peak_env_bytes`, noted by the caller)."""

    def __init__(self, n_bits: int, per_layer: Sequence[int]):
        self.n_bits = n_bits
        self.per_layer = [int(m) for m in per_layer]
        self.peak_env_bytes = 0

    @classmethod
    def fixed(cls, n_bits: int, n_layers: int, max_batch: int) -> "StackPlan":
        """The same number at every layer (`--stack N`; at least 1)."""
        return cls(n_bits, [max(1, int(max_batch))] * n_layers)

    @classmethod
    def auto(cls, n_bits: int, persistent: int, forward_bytes: int, tail_bytes: Sequence[int]) -> "StackPlan":
        """Per layer from `auto_max_batch`; `tail_bytes[m]` is Fm of layer m."""
        return cls(n_bits, [auto_max_batch(n_bits, persistent, forward_bytes, t) for t in tail_bytes])

    def branch_chunks(self, l: int, stackable: bool = True) -> List[List[int]]:
        """The widths of layer l grouped into branches: up to per_layer[l] widths per branch,
        one per branch when the layer cannot be stacked."""
        size = min(self.n_bits, self.per_layer[l]) if stackable else 1
        return chunks(list(range(self.n_bits)), size)

    def pass_chunks(self, m: int, n_variants: int) -> List[Tuple[List[int], int, int]]:
        """The passes at layer m over a branch of `n_variants` stacked variants, as
        (widths of m, first variant, end variant): up to per_layer[m] perturbations per pass,
        as many of m's widths as fit and then as many variants as fit beside them; widths
        outer, variants inner."""
        kc = min(self.n_bits, self.per_layer[m])
        pc = max(1, self.per_layer[m] // kc)
        return [(mk, p0, min(n_variants, p0 + pc)) for mk in chunks(list(range(self.n_bits)), kc)
                for p0 in range(0, n_variants, pc)]

    @staticmethod
    def halves(ks: Sequence[int], p0: int, p1: int) -> List[Tuple[Sequence[int], int, int]]:
        """A pass of widths ks on variants p0..p1 cut in two smaller ones whose rows, one after
        the other, are the rows of the whole (widths outer, variants inner): the widths are
        halved, or the variants when there is one width. Used to retry a pass that ran out of
        memory."""
        if len(ks) > 1:
            h = len(ks) // 2
            return [(ks[:h], p0, p1), (ks[h:], p0, p1)]
        if p1 - p0 > 1:
            mid = p0 + (p1 - p0) // 2
            return [(ks, p0, mid), (ks, mid, p1)]
        raise ValueError("a single perturbation cannot be split")

    def note_memory(self, nbytes: int) -> None:
        self.peak_env_bytes = max(self.peak_env_bytes, nbytes)
