"""Exhaustive search over every choice: the reference the solvers are tested against.

L layers with B candidates have B**L choices, so this is for small spaces only.
"""
from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..errors import UsageError
from .constraints import Constraints, size_row
from .problem import OptionSpace, check_budget

MAX_CHOICES = 2_000_000


def brute_force(space: OptionSpace, budget_bytes: Optional[int], objective_fn: Callable[[np.ndarray], float],
                constraints: Optional[Constraints] = None) -> Tuple[Optional[List[int]], float]:
    """The choice minimizing objective_fn(one-hot x) among those within the size budget (when
    given) and the other constraints, and its value; (None, inf) when no choice admits them.

    Ties go to the first choice in lexicographic order of candidate indices.
    """
    n_choices = len(space.candidates) ** space.n_layers
    if n_choices > MAX_CHOICES:
        raise UsageError(f"brute force over {n_choices} choices is too many (at most {MAX_CHOICES})")
    cons = constraints or Constraints()
    if budget_bytes is not None:
        check_budget(space, budget_bytes)
        cons = cons.with_row(size_row(space, budget_bytes))
    best_choice, best_value = None, np.inf
    for choice in itertools.product(range(len(space.candidates)), repeat=space.n_layers):
        if cons.admits(space, choice):
            value = float(objective_fn(space.one_hot(choice)))
            if value < best_value:
                best_choice, best_value = list(choice), value
    return best_choice, best_value
