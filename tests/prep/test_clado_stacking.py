"""The parts of the fast CLADO engine's stacking, alone: `auto_max_batch` as arithmetic on
memory sizes, and `StackPlan`'s chunking of the work (no model needed)."""
import itertools

import pytest

from clado_cli.prep.clado import STACK_MEMORY_TARGET, StackPlan, auto_max_batch
from clado_cli.prep.clado.stacking import chunks

T = STACK_MEMORY_TARGET
MB = 1 << 20


def _within(M, S, F, Fm):
    """The two memory models of auto_max_batch's docstring, for M stacked perturbations."""
    Fm = min(F, Fm)
    fast = (1 + 1.5 * M * Fm / F) * F
    return S + fast <= T * (S + 2 * F) and fast <= T * 2 * F


@pytest.mark.parametrize("B", [1, 2, 3, 4])
@pytest.mark.parametrize("S", [0, 1 * MB, 50 * MB, 2000 * MB])
@pytest.mark.parametrize("F", [1 * MB, 8 * MB, 64 * MB])
@pytest.mark.parametrize("tail_frac", [0.001, 0.05, 0.3, 1.0, 2.0])
def test_auto_max_batch_is_the_largest_stack_within_both_bounds(B, S, F, tail_frac):
    Fm = int(F * tail_frac)
    M = auto_max_batch(B, S, F, Fm)
    assert 1 <= M <= B * B
    if M > 1:
        assert _within(M, S, F, Fm)
    if M < B * B:       # one more would break a bound (up to the rounding of the float bound)
        assert not _within(M + 1.001, S, F, Fm)


def test_auto_max_batch_by_hand():
    # a pass at the very end of the network (Fm tiny): every perturbation of a branch in one pass
    assert auto_max_batch(3, 0, 100 * MB, 1) == 9
    # a pass at the first layer (Fm = F) with nothing persistent: (2T - 1) / 1.5 = 1.87 -> 1
    assert auto_max_batch(3, 0, 100 * MB, 100 * MB) == 1
    # Fm = F / 4: transient bound (2T - 1)·4 / 1.5 = 7.47 -> 7; the total bound is looser
    assert auto_max_batch(3, 10 * MB, 100 * MB, 25 * MB) == 7
    # a tail larger than F counts as F; empty sizes count as one byte
    assert auto_max_batch(3, 0, 10 * MB, 50 * MB) == auto_max_batch(3, 0, 10 * MB, 10 * MB)
    assert auto_max_batch(2, 0, 0, 0) == 1
    # a tighter target stacks less
    assert auto_max_batch(3, 10 * MB, 100 * MB, 25 * MB, target=1.2) < 7


def test_auto_max_batch_is_monotone():
    F = 32 * MB
    for B in (2, 3, 4):
        by_tail = [auto_max_batch(B, 5 * MB, F, t) for t in range(MB, F + 1, MB)]
        assert by_tail == sorted(by_tail, reverse=True)          # more downstream: fewer
        by_persistent = [auto_max_batch(B, s * MB, F, F // 8) for s in range(0, 400, 20)]
        assert by_persistent == sorted(by_persistent)            # more resident: the total bound loosens


def test_plans_fixed_and_auto():
    assert StackPlan.fixed(3, 4, 5).per_layer == [5, 5, 5, 5]
    assert StackPlan.fixed(3, 2, 0).per_layer == [1, 1]        # at least one per pass
    tails = [40 * MB, 10 * MB, 1 * MB]
    plan = StackPlan.auto(3, 5 * MB, 40 * MB, tails)
    assert plan.per_layer == [auto_max_batch(3, 5 * MB, 40 * MB, t) for t in tails] == [1, 7, 9]


def test_chunks():
    assert chunks([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert chunks([0, 1, 2], 0) == [[0], [1], [2]]
    assert chunks([], 3) == []


def test_branch_chunks():
    plan = StackPlan(3, [2, 9, 1])
    assert plan.branch_chunks(0) == [[0, 1], [2]]
    assert plan.branch_chunks(1) == [[0, 1, 2]]                # never more widths than the layer has
    assert plan.branch_chunks(2) == [[0], [1], [2]]
    assert plan.branch_chunks(1, stackable=False) == [[0], [1], [2]]


def test_pass_chunks_by_hand():
    # 9 per pass, a branch of 3 variants: every width of m on every variant in one pass
    assert StackPlan(3, [9]).pass_chunks(0, 3) == [([0, 1, 2], 0, 3)]
    # 4 per pass: the 3 widths of m fit, one variant beside them
    assert StackPlan(3, [4]).pass_chunks(0, 2) == [([0, 1, 2], 0, 1), ([0, 1, 2], 1, 2)]
    # 2 per pass: two widths, then the last one; variants inner
    assert StackPlan(3, [2]).pass_chunks(0, 2) == [([0, 1], 0, 1), ([0, 1], 1, 2), ([2], 0, 1), ([2], 1, 2)]
    # 6 per pass on 3 variants: 3 widths x 2 variants, then the last variant
    assert StackPlan(3, [6]).pass_chunks(0, 3) == [([0, 1, 2], 0, 2), ([0, 1, 2], 2, 3)]


@pytest.mark.parametrize("B,M,P", list(itertools.product([1, 2, 3, 4], [1, 2, 3, 5, 8, 16, 17], [1, 2, 3, 4])))
def test_pass_chunks_cover_every_perturbation_once_within_the_limit(B, M, P):
    plan = StackPlan(B, [M])
    seen = []
    for mk, p0, p1 in plan.pass_chunks(0, P):
        assert 0 <= p0 < p1 <= P and mk
        assert len(mk) * (p1 - p0) <= M
        seen += [(k, p) for k in mk for p in range(p0, p1)]
    assert sorted(seen) == sorted(itertools.product(range(B), range(P)))
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("ks,p0,p1", [([0, 1, 2], 0, 3), ([0, 1], 2, 3), ([2], 0, 4), ([1], 1, 4), ([0, 1, 2, 3], 0, 1)])
def test_halves_keep_the_rows_and_their_order(ks, p0, p1):
    rows = [(k, p) for k in ks for p in range(p0, p1)]
    parts = StackPlan.halves(ks, p0, p1)
    assert len(parts) == 2
    got = [(k, p) for k2, a, b in parts for k in k2 for p in range(a, b)]
    assert got == rows
    assert all(0 < len(k2) * (b - a) < len(rows) for k2, a, b in parts)


def test_a_single_perturbation_cannot_be_halved():
    with pytest.raises(ValueError):
        StackPlan.halves([1], 2, 3)


def test_memory_bookkeeping_keeps_the_peak():
    plan = StackPlan(2, [1])
    for b in (5, 12, 3):
        plan.note_memory(b)
    assert plan.peak_env_bytes == 12
