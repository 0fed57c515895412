"""CLADO sensitivities for one batch: the Ltilde matrix (docs/methods.md, "CLADO").

    L0 = L(∅);  Ltilde[i,i] = L({i}) − L0;  Ltilde[i,j] = L({i,j}) − L0 for options of different
    layers;  0 for two options of the same layer.

Two engines with the same numbers (docs/performance.md has the measurements):
  - `reference` (reference.py): one full forward pass per measurement, weights fake-quantized
    on the fly.
  - `fast` (`clado_fast`, the default): the model is traced once with torch.fx and its graph
    made safe to share values between runs (graph.py: in-place ops become out-of-place; a
    model whose in-place op would be observable is refused). For every decided layer m the
    runner knows D(m), the graph nodes downstream of m, and its frontier F(m), the values
    D(m) reads from outside it (fast.py).
      * Weights: each option's quantized weight comes from the per-option cache (quantized
        once, swapped in); no fake-quant of weights runs during prep.
      * Reuse: a run perturbed at layer m computes D(m) only; every other value is read from
        the float trunk or from the branch it belongs to, never recomputed (env.py).
      * Order: for each decided layer l, a branch applies l's widths and is computed lazily up
        to each later layer m, where one pass of D(m) per chunk measures the pairs (l, m);
        the branch's own output gives the singles of l. Trunk and branch values are freed as
        soon as no later step reads them, so only "cut" values stay alive.
      * Stacking (stacking.py): the widths of l (a branch) and the widths of m (a pass) are
        stacked along the batch dimension, up to `max_batch` perturbations per pass (default:
        per layer from `auto_max_batch`, which keeps the peak memory within 2x of the
        reference's). The first stacked pass of each layer is checked against its separate
        passes; a model that mixes samples across the batch is caught there and run one at a
        time. A stacked pass that runs out of memory is retried as two smaller ones.
      * Python overhead: each D(m) is one generated straight-line function (torch.fx code
        generation, values freed after last use); stock layers are called as functions.
    `make_runner` (engine.py) falls back to `BranchingRunner` (branching.py: node by node, the
    run forks at each decided layer and re-runs everything after it) when a decided layer is
    called more than once, and to no runner, with the reason, when the model cannot be traced
    (the caller uses the reference engine). Both runners evaluate nodes with the one
    interpreter of interpreter.py.
"""
from .branching import BranchingRunner
from .engine import clado_fast, make_runner
from .fast import FastRunner
from .graph import NotTraceable
from .reference import clado_reference, measurement_count
from .stacking import STACK_MEMORY_TARGET, StackPlan, auto_max_batch, persistent_bytes

__all__ = ["BranchingRunner", "FastRunner", "NotTraceable", "STACK_MEMORY_TARGET", "StackPlan", "auto_max_batch",
           "clado_fast", "clado_reference", "make_runner", "measurement_count", "persistent_bytes"]
