"""The fallback runner for models where a decided layer is called more than once: the graph
run node by node by the shared interpreter, forking at each decided layer and re-running
everything after it (no reuse below the fork, no stacking)."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.fx as fx

from ...quant.model import QLayer
from ..losses import make_loss
from .graph import NotTraceable, prepare
from .interpreter import Interpreter


class BranchingRunner:
    """Runs a traced QuantModel node by node, so a run can fork at any decided layer.
    `decided_at[i]`: the QLayer whose first call is node i. Raises NotTraceable when the
    model cannot be traced or a decided layer does not appear in its graph."""

    def __init__(self, qm):
        self.qm = qm
        self.prep = prepare(qm, functional_qlayers=False)
        self.graph = self.prep.graph
        self.interp = Interpreter(self.prep)
        self.nodes: List[fx.Node] = self.interp.nodes
        modules = dict(qm.model.named_modules())
        first_call: Dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if n.op == "call_module" and isinstance(modules.get(n.target), QLayer):
                first_call.setdefault(modules[n.target].name, i)
        missing = [q.name for q in qm.decided if q.name not in first_call]
        if missing:
            raise NotTraceable(f"decided layer {missing[0]} does not appear in the traced graph")
        self.decided_at = {first_call[q.name]: qm.qlayers[q.name] for q in qm.decided}
        self.forks: List[int] = sorted(self.decided_at)

    def run(self, vals: Dict[fx.Node, object], x: torch.Tensor, start: int = 0, stop: Optional[int] = None):
        """Nodes start..stop-1 into `vals` (see `Interpreter.run`); the output when reached."""
        return self.interp.run(vals, x, start, stop)


def clado_branching(qm, runner: BranchingRunner, x, y, loss_kind: str,
                    tick: Optional[Callable[[int], None]], mine: set) -> Tuple[np.ndarray, float]:
    """The CLADO matrix of one batch on a BranchingRunner: (Ltilde, L0)."""
    cands = qm.keys
    B = len(cands)
    index = {q.name: l for l, q in enumerate(qm.decided)}
    P = len(qm.decided) * B
    # the float logits are needed before any branch (KL target), so run the trunk once first
    float_logits = runner.run({}, x)
    loss = make_loss(loss_kind, y, float_logits)
    L0 = float(loss(float_logits))
    Lt = np.zeros((P, P), dtype=np.float64)

    def measure(q, k: int, env, pos: int):
        """q at its k-th width from node pos on; env holds what the run reads from before."""
        q.select(cands[k])
        return float(loss(runner.run(env, x, pos))) - L0

    def branch_pairs(env, start: int, i: int):
        """Run on from `start` (option i applied); fork at each later decided layer."""
        env = dict(env)
        pos = start
        for fork in (f for f in runner.forks if f > start):
            runner.run(env, x, pos, fork)
            q = runner.decided_at[fork]
            m = index[q.name]
            for k in range(B):
                j = m * B + k
                Lt[i, j] = Lt[j, i] = measure(q, k, dict(env), fork)
                if tick:
                    tick(1)
            q.w_bits, q.a_on = None, False
            pos = fork
        return runner.run(env, x, pos)

    env: Dict[fx.Node, object] = {}
    pos = 0
    for fork in runner.forks:
        runner.run(env, x, pos, fork)
        pos = fork
        q = runner.decided_at[fork]
        l = index[q.name]
        if l not in mine:
            continue
        for k in range(B):
            q.select(cands[k])
            i = l * B + k
            Lt[i, i] = float(loss(branch_pairs(env, fork, i))) - L0
            if tick:
                tick(1)
        q.w_bits, q.a_on = None, False
    return Lt, L0
