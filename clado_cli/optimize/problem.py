"""The option space and the matrices the programs minimize (docs/methods.md, "CLADO" and "Sizes and budgets").

An option `i = l*B + k` is decided layer `l` at candidate `k`: weight width `candidates[k]` and,
when the space has activation widths, input-activation width `act_bits[k]` (the pairs are
distinct and sorted by (weight, activation) bits). Without `act_bits` the candidates are distinct
ascending weight widths and every layer keeps the model's one activation width.
A choice is one candidate index per layer; its one-hot vector `x` has `L` ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, UsageError


@dataclass
class OptionSpace:
    layer_names: List[str]
    candidates: List[int]
    numel: List[int]
    act_bits: Optional[List[int]] = None

    def __post_init__(self):
        self.layer_names = list(self.layer_names)
        self.candidates = [int(b) for b in self.candidates]
        self.numel = [int(n) for n in self.numel]
        if not self.layer_names:
            raise InputError("no decided layers: the option space is empty")
        if len(self.numel) != len(self.layer_names):
            raise InputError(f"{len(self.layer_names)} decided layers but {len(self.numel)} weight counts")
        if self.act_bits is None:
            if not self.candidates or any(b <= 0 for b in self.candidates) or self.candidates != sorted(set(self.candidates)):
                raise InputError(f"candidate bit widths {self.candidates} must be positive, distinct and ascending")
        else:
            self.act_bits = [int(a) for a in self.act_bits]
            pairs = list(zip(self.candidates, self.act_bits))
            if (not pairs or len(self.act_bits) != len(self.candidates) or any(w <= 0 or a <= 0 for w, a in pairs)
                    or pairs != sorted(set(pairs))):
                raise InputError(f"options (weight, activation bits) {pairs} must be positive, distinct and sorted")
        if any(n <= 0 for n in self.numel):
            raise InputError(f"every decided layer needs at least one weight; got weight counts {self.numel}")

    @property
    def pairs(self) -> List[Tuple[int, Optional[int]]]:
        """(weight bits, activation bits or None) of every candidate."""
        acts = self.act_bits if self.act_bits is not None else [None] * len(self.candidates)
        return list(zip(self.candidates, acts))

    def label(self, k: int) -> str:
        """How candidate k is written: `4` (weight bits), or `w4a8` with activation widths."""
        w, a = self.pairs[k]
        return f"{w}" if a is None else f"w{w}a{a}"

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def n_options(self) -> int:
        return self.n_layers * len(self.candidates)

    def option(self, i: int) -> Tuple[int, int]:
        """(layer index, candidate index) of option i."""
        if not 0 <= i < self.n_options:
            raise IndexError(f"option {i} outside 0..{self.n_options - 1}")
        return divmod(i, len(self.candidates))

    def option_layers(self) -> np.ndarray:
        """Layer index of every option."""
        return np.repeat(np.arange(self.n_layers), len(self.candidates))

    def sizes(self) -> np.ndarray:
        """Bytes of every option: numel * bits / 8."""
        return np.outer(self.numel, self.candidates).ravel() / 8.0

    def activation_bytes(self, elements: Sequence[int], a_bits: Optional[int] = None) -> np.ndarray:
        """Bytes of every option's input activation per sample: elements[l] * a / 8, with `elements`
        the input-activation elements of each decided layer (in layer order; the cache's
        `load_act_elements`) and a the option's activation width, or `a_bits` (the one width)
        for a space without activation widths."""
        if len(elements) != self.n_layers:
            raise InputError(f"{len(elements)} activation element counts for {self.n_layers} decided layers")
        if self.act_bits is None and a_bits is None:
            raise InputError("this option space has no activation widths: give the one activation width")
        acts = self.act_bits if self.act_bits is not None else [int(a_bits)] * len(self.candidates)
        return np.outer(np.asarray(elements, dtype=float), acts).ravel() / 8.0

    def min_bytes(self) -> float:
        """Decided bytes with every layer at the narrowest candidate."""
        return sum(self.numel) * min(self.candidates) / 8.0

    def max_bytes(self) -> float:
        """Decided bytes with every layer at the widest candidate."""
        return sum(self.numel) * max(self.candidates) / 8.0

    def _checked(self, choice: Sequence[int]) -> List[int]:
        choice = [int(k) for k in choice]
        if len(choice) != self.n_layers or any(not 0 <= k < len(self.candidates) for k in choice):
            raise InputError(f"a choice needs one candidate index in 0..{len(self.candidates) - 1} for each of {self.n_layers} layers; got {choice}")
        return choice

    def bits_of(self, choice: Sequence[int]) -> List[int]:
        return [self.candidates[k] for k in self._checked(choice)]

    def size_of(self, choice: Sequence[int]) -> float:
        """Decided bytes of a choice."""
        return self.total_bits(choice) / 8.0

    def total_bits(self, choice: Sequence[int]) -> int:
        """Decided weight bits of a choice, as an exact integer."""
        return sum(n * b for n, b in zip(self.numel, self.bits_of(choice)))

    def fits(self, choice: Sequence[int], budget_bytes: int) -> bool:
        """Whether a choice's decided bytes are within the budget, compared exactly in bits."""
        return self.total_bits(choice) <= 8 * int(budget_bytes)

    def one_hot(self, choice: Sequence[int]) -> np.ndarray:
        x = np.zeros(self.n_options)
        x[np.arange(self.n_layers) * len(self.candidates) + np.asarray(self._checked(choice), dtype=int)] = 1.0
        return x

    def choice_of(self, x: np.ndarray) -> List[int]:
        """The candidate index per layer of a (nearly) one-hot vector: the largest entry wins."""
        x = np.asarray(x, dtype=float).reshape(self.n_layers, len(self.candidates))
        return [int(k) for k in np.argmax(x, axis=1)]


def finite_array(M: np.ndarray, shape: Tuple[int, ...], name: str) -> np.ndarray:
    """M as a float array of the expected shape with only finite entries, else InputError."""
    M = np.asarray(M, dtype=float)
    if M.shape != tuple(shape):
        raise InputError(f"{name} has shape {M.shape}, expected {tuple(shape)} (decided layers x candidates)")
    if not np.all(np.isfinite(M)):
        raise InputError(f"{name} has {int(np.sum(~np.isfinite(M)))} entries that are not finite")
    return M


def g_from_ltilde(Ltilde: np.ndarray, space: OptionSpace) -> np.ndarray:
    """The program's matrix G from the measured Ltilde (docs/methods.md, "CLADO").

    G[i,i] = 2 Lt[i,i];  G[i,j] = Lt[i,j] - Lt[i,i] - Lt[j,j] for options of different layers;
    G[i,j] = 0 for options of the same layer. For one-hot x, x'Gx/2 estimates the loss increase.
    """
    Lt = finite_array(Ltilde, (space.n_options, space.n_options), "Ltilde")
    if not np.allclose(Lt, Lt.T, rtol=1e-9, atol=1e-12):
        raise InputError("Ltilde is not symmetric")
    d = np.diag(Lt)
    G = Lt - d[:, None] - d[None, :]
    layers = space.option_layers()
    G[layers[:, None] == layers[None, :]] = 0.0
    np.fill_diagonal(G, 2.0 * d)
    return G


def clip_psd(G: np.ndarray) -> np.ndarray:
    """The release's treatment: symmetrize, set negative eigenvalues to 0, rebuild."""
    S = (np.asarray(G, dtype=float) + np.asarray(G, dtype=float).T) / 2.0
    w, V = np.linalg.eigh(S)
    C = (V * np.clip(w, 0.0, None)) @ V.T
    return (C + C.T) / 2.0


def shift_lambda(G: np.ndarray) -> float:
    """λ such that G + λI is positive semidefinite: max(0, -λmin) plus a tiny margin.

    For one-hot x, x'(G+λI)x = x'Gx + λL, so the shift leaves the argmin unchanged.
    """
    S = (np.asarray(G, dtype=float) + np.asarray(G, dtype=float).T) / 2.0
    margin = 1e-9 * max(1.0, float(np.max(np.abs(S))) if S.size else 1.0)
    return max(0.0, -float(np.linalg.eigvalsh(S)[0])) + margin


def predicted_increase_quadratic(G: np.ndarray, x: np.ndarray) -> float:
    """x'Gx / 2: CLADO's pairwise-additive estimate of the loss increase."""
    x = np.asarray(x, dtype=float)
    return float(x @ np.asarray(G, dtype=float) @ x) / 2.0


def predicted_increase_linear(s: np.ndarray, x: np.ndarray) -> float:
    """s'x: the per-layer methods' (MPQCO, HAWQ, naive) estimate."""
    return float(np.asarray(s, dtype=float) @ np.asarray(x, dtype=float))


def _bytes_text(n: float) -> str:
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"


def check_budget(space: OptionSpace, budget_bytes: int) -> None:
    """UsageError when no choice fits the budget (it is below every layer at the narrowest width)."""
    low, high = space.min_bytes(), space.max_bytes()
    if budget_bytes < low:
        raise UsageError(
            f"size budget {budget_bytes} bytes is below the smallest possible decided size {_bytes_text(low)} bytes "
            f"(all layers at {min(space.candidates)} bits); feasible range: {_bytes_text(low)}..{_bytes_text(high)} bytes"
        )
