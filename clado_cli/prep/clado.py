"""CLADO sensitivities for one batch: the Ltilde matrix of SPEC.

    L0 = L(∅);  Ltilde[i,i] = L({i}) − L0;  Ltilde[i,j] = L({i,j}) − L0 for options of different
    layers;  0 for two options of the same layer.

Two engines with the same numbers:
  - `reference`: one full forward pass per measurement, weights fake-quantized on the fly.
  - `fast`: the graph (torch.fx) is run once as a trunk; at each decided layer the run branches
    with that option applied, and each branch branches again at every later decided layer. Every
    value upstream of a perturbed layer is reused, quantized weights are computed once, and values
    are freed after their last use, so at most three partial runs are alive at once.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.fx as fx

from ..quant.model import QLayer, QuantModel
from .losses import make_loss


def measurement_count(n_layers: int, n_bits: int) -> int:
    """Forward passes per batch: L0, L·B singles, B²·L(L−1)/2 pairs."""
    return 1 + n_layers * n_bits + n_bits * n_bits * n_layers * (n_layers - 1) // 2


def _same_layer_mask(n_layers: int, n_bits: int) -> np.ndarray:
    layer = np.repeat(np.arange(n_layers), n_bits)
    return layer[:, None] == layer[None, :]


@torch.no_grad()
def clado_reference(qm: QuantModel, x: torch.Tensor, y: torch.Tensor, loss_kind: str = "ce",
                    tick: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    options = qm.options
    P, L, B = len(options), len(qm.decided), len(qm.candidates)
    qm.set_cached(False)
    try:
        qm.reset()
        float_logits = qm(x)
        loss = make_loss(loss_kind, y, float_logits)
        L0 = float(loss(float_logits))
        Lt = np.zeros((P, P), dtype=np.float64)
        for i, opt in enumerate(options):
            qm.apply([opt])
            Lt[i, i] = float(loss(qm(x))) - L0
            if tick:
                tick(1)
        for i in range(P):
            for j in range(i + 1, P):
                if i // B == j // B:
                    continue
                qm.apply([options[i], options[j]])
                Lt[i, j] = Lt[j, i] = float(loss(qm(x))) - L0
                if tick:
                    tick(1)
    finally:
        qm.reset()
        qm.set_cached(True)
    return {"Ltilde": Lt, "L0": np.float64(L0)}


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, QLayer) or super().is_leaf_module(m, qualname)


class BranchingRunner:
    """Runs a traced QuantModel node by node, so a run can fork at any decided layer."""

    def __init__(self, qm: QuantModel):
        self.qm = qm
        self.graph = _LeafTracer().trace(qm.model)
        self.root = qm.model
        self.nodes: List[fx.Node] = list(self.graph.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in self.nodes}
        self.frees: List[List[fx.Node]] = [[] for _ in self.nodes]
        for n, last in self.last_use.items():
            self.frees[last].append(n)
        self.modules = dict(self.root.named_modules())
        # position of each decided layer's first call, in graph order
        self.first_call: Dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if n.op == "call_module" and isinstance(self.modules.get(n.target), QLayer):
                name = self.modules[n.target].name
                self.first_call.setdefault(name, i)
        decided = [q.name for q in qm.decided]
        missing = [d for d in decided if d not in self.first_call]
        if missing:
            raise RuntimeError(f"decided layer {missing[0]} does not appear in the traced graph")
        self.decided_at = {self.first_call[d]: qm.qlayers[d] for d in decided}

    def _fetch_attr(self, target: str):
        obj = self.root
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def step(self, i: int, env: Dict[fx.Node, object], x: torch.Tensor):
        n = self.nodes[i]
        load = lambda a: fx.node.map_arg(a, lambda m: env[m])
        if n.op == "placeholder":
            val = x
        elif n.op == "get_attr":
            val = self._fetch_attr(n.target)
        elif n.op == "call_function":
            val = n.target(*load(n.args), **load(n.kwargs))
        elif n.op == "call_method":
            args = load(n.args)
            val = getattr(args[0], n.target)(*args[1:], **load(n.kwargs))
        elif n.op == "call_module":
            val = self.modules[n.target](*load(n.args), **load(n.kwargs))
        elif n.op == "output":
            return load(n.args[0])
        else:  # pragma: no cover
            raise RuntimeError(f"unknown fx op {n.op}")
        env[n] = val
        for dead in self.frees[i]:
            env.pop(dead, None)
        return None

    def run(self, env, start: int, x: torch.Tensor):
        for i in range(start, len(self.nodes)):
            out = self.step(i, env, x)
            if self.nodes[i].op == "output":
                return out
        raise RuntimeError("graph has no output")


def make_runner(qm: QuantModel) -> Optional[BranchingRunner]:
    """A runner for the fast engine, or None when the model cannot be traced by torch.fx."""
    try:
        return BranchingRunner(qm)
    except Exception:
        return None


@torch.no_grad()
def clado_fast(qm: QuantModel, x: torch.Tensor, y: torch.Tensor, loss_kind: str = "ce",
               tick: Optional[Callable[[int], None]] = None,
               runner: Optional[BranchingRunner] = None) -> Dict[str, np.ndarray]:
    runner = runner or BranchingRunner(qm)
    qm.reset()
    qm.set_cached(True)
    cands = qm.candidates
    B = len(cands)
    index = {q.name: l for l, q in enumerate(qm.decided)}
    P = len(qm.decided) * B
    # the float logits are needed before any branch (KL target), so run the trunk once first
    float_logits = runner.run({}, 0, x)
    loss = make_loss(loss_kind, y, float_logits)
    L0 = float(loss(float_logits))
    Lt = np.zeros((P, P), dtype=np.float64)
    positions = sorted(runner.decided_at)

    def branch_pairs(env, start: int, i: int):
        """Run on from `start` with option i applied; fork at each later decided layer."""
        env = dict(env)
        for pos in range(start, len(runner.nodes)):
            q = runner.decided_at.get(pos)
            if q is not None and pos > start:
                m = index[q.name]
                for k, bits in enumerate(cands):
                    q.w_bits, q.a_on = bits, True
                    j = m * B + k
                    Lt[i, j] = Lt[j, i] = float(loss(runner.run(dict(env), pos, x))) - L0
                    if tick:
                        tick(1)
                q.w_bits, q.a_on = None, False
            out = runner.step(pos, env, x)
            if runner.nodes[pos].op == "output":
                return out
        raise RuntimeError("graph has no output")

    try:
        env: Dict[fx.Node, object] = {}
        for pos in range(len(runner.nodes)):
            q = runner.decided_at.get(pos)
            if q is not None:
                l = index[q.name]
                for k, bits in enumerate(cands):
                    q.w_bits, q.a_on = bits, True
                    i = l * B + k
                    Lt[i, i] = float(loss(branch_pairs(env, pos, i))) - L0
                    if tick:
                        tick(1)
                q.w_bits, q.a_on = None, False
            out = runner.step(pos, env, x)
            if runner.nodes[pos].op == "output":
                break
    finally:
        qm.reset()
    return {"Ltilde": Lt, "L0": np.float64(L0)}
