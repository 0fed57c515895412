import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clado_cli.errors import InputError, UsageError
from clado_cli.optimize.brute import brute_force
from clado_cli.optimize.problem import (
    OptionSpace,
    check_budget,
    clip_psd,
    g_from_ltilde,
    predicted_increase_linear,
    predicted_increase_quadratic,
    shift_lambda,
)


def two_by_two():
    return OptionSpace(["conv1", "fc"], [2, 4], [8, 4])


def test_option_space_layout():
    space = OptionSpace(["a", "b", "c"], [2, 4, 8], [8, 16, 4])
    assert space.n_layers == 3 and space.n_options == 9
    assert [space.option(i) for i in (0, 1, 2, 3, 8)] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 2)]
    np.testing.assert_array_equal(space.sizes(), [2, 4, 8, 4, 8, 16, 1, 2, 4])
    assert space.min_bytes() == 7 and space.max_bytes() == 28
    assert space.bits_of([0, 2, 1]) == [2, 8, 4]
    assert space.size_of([0, 2, 1]) == 2 + 16 + 2
    np.testing.assert_array_equal(space.one_hot([0, 2, 1]), [1, 0, 0, 0, 0, 1, 0, 1, 0])
    assert space.choice_of(space.one_hot([2, 0, 1])) == [2, 0, 1]
    assert space.fits([0, 2, 1], 20) and not space.fits([0, 2, 1], 19)
    with pytest.raises(IndexError):
        space.option(9)


def test_choice_of_rounds_a_nearly_one_hot_vector():
    space = OptionSpace(["a", "b"], [2, 4, 8], [8, 8])
    assert space.choice_of([1e-7, 0.9999998, -1e-9, 0.0, 2e-6, 0.999997]) == [1, 2]


def test_fractional_bytes_are_compared_exactly():
    space = OptionSpace(["a"], [2, 4], [3])  # 3 weights at 2 bits = 0.75 bytes
    assert space.sizes().tolist() == [0.75, 1.5]
    assert space.fits([0], 1) and not space.fits([1], 1)


@pytest.mark.parametrize(
    "names, candidates, numel, match",
    [
        ([], [2, 4], [], "no decided layers"),
        (["a"], [2, 4], [1, 2], "weight counts"),
        (["a"], [4, 2], [1], "ascending"),
        (["a"], [2, 2], [1], "distinct"),
        (["a"], [0, 2], [1], "positive"),
        (["a"], [2, 4], [0], "at least one weight"),
    ],
)
def test_option_space_rejects(names, candidates, numel, match):
    with pytest.raises(InputError, match=match):
        OptionSpace(names, candidates, numel)


def test_choice_validation():
    with pytest.raises(InputError, match="one candidate index"):
        two_by_two().bits_of([0, 2])
    with pytest.raises(InputError, match="one candidate index"):
        two_by_two().size_of([0])


def test_g_from_ltilde_hand_example():
    # options: 0 = (conv1, 2b), 1 = (conv1, 4b), 2 = (fc, 2b), 3 = (fc, 4b)
    Lt = np.array(
        [
            [0.50, 0.70, 0.90, 0.60],  # the same-layer 0.70 must not reach G
            [0.70, 0.10, 0.45, 0.20],
            [0.90, 0.45, 0.30, 0.33],
            [0.60, 0.20, 0.33, 0.05],
        ]
    )
    expected = np.array(
        [
            [1.00, 0.00, 0.90 - 0.50 - 0.30, 0.60 - 0.50 - 0.05],
            [0.00, 0.20, 0.45 - 0.10 - 0.30, 0.20 - 0.10 - 0.05],
            [0.90 - 0.50 - 0.30, 0.45 - 0.10 - 0.30, 0.60, 0.00],
            [0.60 - 0.50 - 0.05, 0.20 - 0.10 - 0.05, 0.00, 0.10],
        ]
    )
    G = g_from_ltilde(Lt, two_by_two())
    np.testing.assert_allclose(G, expected, atol=1e-15)
    # with two layers, x'Gx/2 is exactly the measured pair loss L(i,j) - L0
    for a in range(2):
        for c in range(2):
            x = two_by_two().one_hot([a, c])
            assert predicted_increase_quadratic(G, x) == pytest.approx(Lt[a, 2 + c])


def test_quadratic_estimate_is_pairwise_additive():
    rng = np.random.default_rng(0)
    space = OptionSpace(list("abcd"), [2, 4, 8], [5, 6, 7, 8])
    Lt = rng.normal(size=(12, 12))
    Lt = (Lt + Lt.T) / 2
    G = g_from_ltilde(Lt, space)
    for choice in ([0, 1, 2, 0], [2, 2, 2, 2], [1, 0, 1, 2]):
        opts = [l * 3 + k for l, k in enumerate(choice)]
        singles = sum(Lt[i, i] for i in opts)
        pair_extra = sum(Lt[i, j] - Lt[i, i] - Lt[j, j] for n, i in enumerate(opts) for j in opts[n + 1:])
        assert predicted_increase_quadratic(G, space.one_hot(choice)) == pytest.approx(singles + pair_extra)


def test_g_from_ltilde_rejects_bad_input():
    space = two_by_two()
    with pytest.raises(InputError, match="shape"):
        g_from_ltilde(np.zeros((3, 3)), space)
    bad = np.zeros((4, 4))
    bad[0, 2] = np.nan
    with pytest.raises(InputError, match="not finite"):
        g_from_ltilde(bad, space)
    bad[0, 2] = 1.0
    with pytest.raises(InputError, match="not symmetric"):
        g_from_ltilde(bad, space)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=2, max_value=12))
def test_clip_psd_gives_psd_and_keeps_psd_matrices(seed, n):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    C = clip_psd(A)
    np.testing.assert_allclose(C, C.T, atol=1e-12)
    assert np.linalg.eigvalsh(C)[0] >= -1e-10 * max(1.0, np.abs(A).max())
    P = A @ A.T
    np.testing.assert_allclose(clip_psd(P), P, atol=1e-9 * np.abs(P).max())


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_shift_lambda_makes_psd_and_keeps_one_hot_differences(seed):
    rng = np.random.default_rng(seed)
    space = OptionSpace(list("abc"), [2, 4, 8], [1, 2, 3])
    Lt = rng.normal(size=(9, 9))
    G = g_from_ltilde((Lt + Lt.T) / 2, space)
    lam = shift_lambda(G)
    lam_min = np.linalg.eigvalsh(G)[0]
    assert lam == pytest.approx(max(0.0, -lam_min), abs=1e-8 * max(1, np.abs(G).max()))
    assert lam > max(0.0, -lam_min)  # the margin is there
    assert np.linalg.eigvalsh(G + lam * np.eye(9))[0] >= -1e-12
    for choice in ([0, 0, 0], [1, 2, 0], [2, 2, 2]):
        x = space.one_hot(choice)
        assert x @ (G + lam * np.eye(9)) @ x == pytest.approx(x @ G @ x + lam * space.n_layers)


def test_shift_lambda_of_psd_matrix_is_only_the_margin():
    lam = shift_lambda(np.diag([1.0, 2.0, 3.0]))
    assert 0 < lam <= 1e-8


def test_linear_estimate():
    assert predicted_increase_linear(np.array([1.0, 2.0, 3.0, 4.0]), two_by_two().one_hot([1, 0])) == 5.0


def test_check_budget_below_minimum():
    space = OptionSpace(list("ab"), [2, 4, 8], [1000, 3000])  # 1000..4000 bytes
    check_budget(space, 1000)
    check_budget(space, 10**9)
    with pytest.raises(UsageError) as err:
        check_budget(space, 999)
    message = str(err.value)
    assert message == (
        "size budget 999 bytes is below the smallest possible decided size 1000 bytes "
        "(all layers at 2 bits); feasible range: 1000..4000 bytes"
    )


def test_brute_force_respects_budget_and_finds_minimum():
    space = OptionSpace(list("ab"), [2, 4], [8, 8])  # sizes 2/4 bytes per layer
    s = np.array([5.0, 1.0, 3.0, 0.0])  # wider is better
    assert brute_force(space, 8, lambda x: s @ x) == ([1, 1], 1.0)
    assert brute_force(space, 6, lambda x: s @ x) == ([1, 0], 4.0)
    with pytest.raises(UsageError, match="below the smallest"):
        brute_force(space, 3, lambda x: s @ x)
