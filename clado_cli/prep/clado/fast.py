"""The fast runner: the traced graph cut into one generated function per decided layer m
that computes only D(m), the nodes downstream of m, from its frontier F(m), the values D(m)
reads from outside it; values are reused between runs, perturbations stacked along the batch
(docs/methods.md, "CLADO"; the design and its measurements in docs/performance.md)."""
from __future__ import annotations

import operator
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx

from ...console import warn
from ..losses import make_loss
from .env import Env, rep
from .graph import Fork, NotTraceable, prepare
from .interpreter import Interpreter, tensor_bytes
from .stacking import StackPlan, persistent_bytes


class FastRunner:
    """Everything the fast engine derives from the traced graph, once per QuantModel.

    `max_batch`: most perturbations stacked into one pass (None: automatic, see
    `auto_max_batch`). `verify_tol`: a layer's first stacked pass must give the losses of
    its separate passes within this, or the layer is run one perturbation per pass.
    Raises NotTraceable for a model it cannot run: untraceable, a decided layer called other
    than once (`BranchingRunner` handles that), more than one output."""

    def __init__(self, qm, max_batch: Optional[int] = None, verify_tol: float = 1e-6):
        self.qm = qm
        self.prep = prepare(qm)
        self.graph = self.prep.graph
        self.interp = Interpreter(self.prep)
        self.max_batch = max_batch
        self.verify_tol = verify_tol
        nodes = self.interp.nodes
        self.nodes = nodes
        self.index = self.interp.index
        outputs = [n for n in nodes if n.op == "output"]
        if len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
            raise NotTraceable("the model's graph must return one tensor")
        self.output = outputs[0]
        self.out_node: fx.Node = outputs[0].args[0]
        self.fork_nodes: List[fx.Node] = []
        for q in qm.decided:
            if self.prep.qcalls.get(q.name, 0) != 1:
                raise NotTraceable(f"decided layer {q.name} is called {self.prep.qcalls.get(q.name, 0)} "
                                   "times in the traced graph")
            n = self.prep.qnode[q.name]
            if not n.args or not isinstance(n.args[0], fx.Node):
                raise NotTraceable(f"decided layer {q.name} is not called on a tensor")
            self.fork_nodes.append(n)
        self.forks = [Fork(q) for q in qm.decided]
        self.batched = self._descendants([self.prep.input])
        L = len(self.fork_nodes)
        self.down: List[set] = [self._descendants([f]) for f in self.fork_nodes]
        self.frontier: List[List[fx.Node]] = []
        for l in range(L):
            D = self.down[l]
            fr = {a for n in D for a in n.all_input_nodes if a not in D and a.op != "get_attr"}
            if self.out_node not in D:
                fr.add(self.out_node)
            self.frontier.append(sorted(fr, key=self.index.__getitem__))
        self._schedule()
        self._flat: Dict[str, str] = {}
        self._gobjs: Dict[str, object] = {}
        self.trunk_fn = self._build_trunk()
        self.pass_fn = [self._build_pass(l) for l in range(L)]
        self.stack_ok: List[Optional[bool]] = [None] * L   # None: not verified yet
        self.stats = {"passes": 0, "rows": 0, "peak_env_bytes": 0}
        self._probed: Optional[int] = None
        self.forward_live_bytes = 0
        self.tail_live_bytes: List[int] = [0] * L
        self.persistent = persistent_bytes(qm)

    # -- graph analysis --------------------------------------------------------------------
    def _descendants(self, starts) -> set:
        seen, todo = set(), list(starts)
        while todo:
            n = todo.pop()
            if n in seen or n.op == "output":
                continue
            seen.add(n)
            todo.extend(n.users)
        return seen

    def _ancestors(self, nodes, domain: Optional[set] = None) -> set:
        seen, todo = set(), [n for n in nodes if domain is None or n in domain]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo.extend(a for a in n.all_input_nodes if domain is None or a in domain)
        return seen

    def _schedule(self) -> None:
        """What the trunk must keep while branch l runs, and what branch l must keep after
        its pass at layer m: the values later steps read, and what computes them."""
        L = len(self.fork_nodes)
        F = [set(f) for f in self.frontier]
        outside = [set().union(F[l], *[F[m] - self.down[l] for m in range(l + 1, L)]) for l in range(L)]
        self.trunk_keep: List[Tuple[set, set]] = []
        for l in range(L):
            keep = set().union(*outside[l:]) if l < L else set()
            self.trunk_keep.append((keep, self._ancestors(keep)))
        self.branch_keep: List[List[Tuple[set, set]]] = []
        for l in range(L):
            D = self.down[l]
            row = []
            for m in range(l, L):   # after the pass at m (m == l: before any pass)
                keep = set().union(*[F[m2] & D for m2 in range(m + 1, L)])
                if self.out_node in D:
                    keep.add(self.out_node)
                row.append((keep, self._ancestors(keep, D)))
            self.branch_keep.append(row)

    # -- code generation -------------------------------------------------------------------
    def _target(self, target: str, obj) -> str:
        name = self._flat.get(target)
        if name is None:
            name = self._flat[target] = f"t{len(self._flat)}"
            self._gobjs[name] = obj
        return name

    def _copy(self, g: fx.Graph, n: fx.Node, env: Dict[fx.Node, fx.Node]) -> fx.Node:
        new = g.node_copy(n, lambda a: env[a])
        if n.op in ("call_module", "get_attr"):
            new.target = self._target(n.target, self.prep.resolve(n.target))
        return new

    def _module(self, g: fx.Graph) -> fx.GraphModule:
        used = {n.target for n in g.nodes if n.op in ("call_module", "get_attr")}
        return fx.GraphModule({k: v for k, v in self._gobjs.items() if k in used}, g)

    def _build_trunk(self) -> fx.GraphModule:
        g = fx.Graph()
        env: Dict[fx.Node, fx.Node] = {}
        for n in self.nodes:
            if n.op != "output":
                env[n] = self._copy(g, n, env)
        g.output(env[self.out_node])
        return self._module(g)

    def _build_pass(self, l: int) -> fx.GraphModule:
        """fn(bits, reps, fork_input, *frontier) -> logits: D(l) with layer l at every width in
        `bits`. Frontier value i is repeated reps[i] times along the batch right before its
        first use, so the copy lives only as long as it is needed."""
        g = fx.Graph()
        f = self.fork_nodes[l]
        D = self.down[l]
        env: Dict[fx.Node, fx.Node] = {}
        bits = g.placeholder("bits")
        reps = g.placeholder("reps")
        raw = g.placeholder("fork_input")
        slot: Dict[fx.Node, int] = {}
        for i, a in enumerate(self.frontier[l]):
            env[a] = g.placeholder(f"v{i}")
            if a in self.batched:
                slot[a] = i
        body = [n for n in self.nodes if n in D]
        for n in body:
            for a in n.all_input_nodes:
                if a.op == "get_attr" and a not in env:
                    env[a] = self._copy(g, a, env)
        fork = self._target(f"__fork__{l}", self.forks[l])
        for n in body + [self.out_node]:
            for a in n.all_input_nodes:
                if a in slot and (n is not f):
                    k = g.call_function(operator.getitem, (reps, slot.pop(a)))
                    env[a] = g.call_function(rep, (env[a], k))
            if n in D:
                env[n] = g.call_module(fork, (raw, bits)) if n is f else self._copy(g, n, env)
        if self.out_node in slot:   # layer l does not reach the output
            env[self.out_node] = g.call_function(rep, (env[self.out_node], g.call_function(
                operator.getitem, (reps, slot.pop(self.out_node)))))
        g.output(env[self.out_node])
        return self._module(g)

    # -- running ---------------------------------------------------------------------------
    def probe(self, x: torch.Tensor) -> None:
        """One float forward, node by node, values freed after their last use (as an eager
        forward frees them). Records which values are batch-first tensors: a value that
        carries the batch but is not one (say a size read off an activation) cannot be
        stacked, so the layers that read it run one perturbation per pass. Also records the
        peak bytes of live values (`forward_live_bytes`, an estimate of what one plain
        forward pass holds) and, per decided layer, the most bytes a plain forward holds from
        that layer on (`tail_live_bytes`: what one row of a pass at the layer holds, roughly)."""
        N = x.shape[0]
        if self._probed == N:
            return
        vals: Dict[fx.Node, object] = {}
        batch_first: Dict[fx.Node, bool] = {}
        live = [0] * len(self.nodes)

        def seen(i, n, v):
            batch_first[n] = isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == N
            live[i] = tensor_bytes(vals.values())

        self.interp.run(vals, x, seen=seen)
        vals.clear()
        self.forward_live_bytes = max(live)
        self.tail_live_bytes = [max(live[self.index[f]:]) for f in self.fork_nodes]
        for l in range(len(self.fork_nodes)):
            reads = set(self.frontier[l])
            if any(n in self.batched and not batch_first.get(n, False) for n in reads):
                self.stack_ok[l] = False
        self._probed = N

    def run_pass(self, m: int, bits: Sequence[int], trunk: Env, parent: Env, p0: int, p1: int, N: int):
        """Logits of layer m at each width in `bits` on parent variants p0..p1: rows ordered
        (width, parent variant, sample)."""
        K = len(bits)

        def value(n, k):
            if parent is not trunk and parent.owns(n):
                v = parent.get(n)
                if parent.P > 1 and n in self.batched and (p1 - p0) < parent.P:
                    v = v[p0 * N:p1 * N]
            else:
                v = trunk.get(n)
                k *= p1 - p0
            return v, k

        raw = rep(*value(self.fork_nodes[m].args[0], 1))
        vals, reps = [], []
        for a in self.frontier[m]:
            v, r = value(a, K)
            vals.append(v)
            reps.append(r)
        self.stats["passes"] += 1
        self.stats["rows"] += K * (p1 - p0) * N
        return self.pass_fn[m](tuple(bits), tuple(reps), raw, *vals)


def _losses(loss, out: torch.Tensor, n_rows: int, N: int) -> List[float]:
    return [float(loss(out[r * N:(r + 1) * N])) for r in range(n_rows)]


_OOM = object()     # what a stacked pass that ran out of memory returns


class StackedRun:
    """The CLADO matrix of one batch on a FastRunner: for each decided layer l (of `mine`),
    branches of l at up to per_layer[l] widths; in each, passes at every later layer m with
    up to per_layer[m] perturbations (pairs (l, m)); the branch's own output gives the
    singles of l. `run()` returns (Ltilde, L0)."""

    def __init__(self, qm, runner: FastRunner, x: torch.Tensor, y: torch.Tensor, loss_kind: str,
                 tick: Optional[Callable[[int], None]], max_batch: Optional[int], mine: set):
        self.qm, self.r, self.x, self.tick, self.mine = qm, runner, x, tick, mine
        self.cands = list(qm.keys)   # option keys: weight widths or (weight, activation) pairs
        self.B, self.L, self.N = len(self.cands), len(qm.decided), x.shape[0]
        float_logits = runner.trunk_fn(x)
        self.loss = make_loss(loss_kind, y, float_logits)
        self.L0 = float(self.loss(float_logits))
        del float_logits
        self.Lt = np.zeros((self.L * self.B, self.L * self.B), dtype=np.float64)
        runner.probe(x)
        M = max_batch if max_batch is not None else runner.max_batch
        if M is None:
            self.plan = StackPlan.auto(self.B, runner.persistent, runner.forward_live_bytes, runner.tail_live_bytes)
        else:
            self.plan = StackPlan.fixed(self.B, self.L, M)
        runner.stats["stack_per_layer"] = list(self.plan.per_layer)
        self.trunk = Env(runner, x)

    def run(self) -> Tuple[np.ndarray, float]:
        r = self.r
        for l in range(self.L):
            if l not in self.mine:
                continue
            self.trunk.set_keep(*r.trunk_keep[l])
            for ks in self.plan.branch_chunks(l, r.stack_ok[l] is not False):
                self.branch(l, ks)
        self.trunk.vals.clear()
        r.stats["peak_env_bytes"] = max(r.stats["peak_env_bytes"], self.plan.peak_env_bytes)
        return self.Lt, self.L0

    def stacked(self, m: int, ks: Sequence[int], parent: Env, p0: int, p1: int) -> Optional[List[float]]:
        """Losses of layer m at widths ks on parent variants p0..p1 (widths outer) in one
        pass, or None when layer m cannot be stacked. A layer's first stacked pass is checked
        against separate passes: stacking that mixes samples across the batch changes every
        row."""
        r, N, loss = self.r, self.N, self.loss
        rows = len(ks) * (p1 - p0)
        if rows > 1 and r.stack_ok[m] is False:
            return None
        out = r.run_pass(m, [self.cands[k] for k in ks], self.trunk, parent, p0, p1, N)
        vals = _losses(loss, out, rows, N)
        del out
        if rows > 1 and r.stack_ok[m] is None:
            # the first and the last stacked perturbation against their own passes
            combos = [(i, k, p) for i, (k, p) in enumerate((k, p) for k in ks for p in range(p0, p1))]
            worst = 0.0
            for i, k, p in (combos[0], combos[-1]):
                sep = float(loss(r.run_pass(m, [self.cands[k]], self.trunk, parent, p, p + 1, N)))
                worst = max(worst, abs(vals[i] - sep))
            r.stack_ok[m] = worst <= r.verify_tol
            if not r.stack_ok[m]:
                return None
        return vals

    def try_stacked(self, m: int, ks: Sequence[int], parent: Env, p0: int, p1: int):
        """`stacked`, or _OOM when a pass of several perturbations ran out of memory (said
        on stderr; the caller retries smaller). Out of memory on one perturbation, and any
        other error, propagates."""
        rows = len(ks) * (p1 - p0)
        try:
            return self.stacked(m, ks, parent, p0, p1)
        except torch.OutOfMemoryError:
            if rows == 1:
                raise
        # out of the except block: the failed pass's tensors are released before the retry
        warn(f"out of memory in a pass of {rows} stacked perturbations at decided layer "
             f"{self.qm.decided[m].name}; retrying as two smaller passes")
        return _OOM

    def measure(self, m: int, ks: Sequence[int], parent: Env, p0: int, p1: int) -> List[float]:
        """Losses of layer m at widths ks on parent variants p0..p1 (widths outer): stacked
        when the layer stacks, else one pass each; halved on out of memory."""
        vals = self.try_stacked(m, ks, parent, p0, p1)
        if vals is _OOM:
            return [v for k2, a, b in StackPlan.halves(ks, p0, p1) for v in self.measure(m, k2, parent, a, b)]
        if vals is None:            # one perturbation per pass
            vals = [self.stacked(m, [k], parent, p, p + 1)[0] for k in ks for p in range(p0, p1)]
        return vals

    def pairs(self, l: int, ks: Sequence[int], br: Env, m: int) -> None:
        B, L0, Lt = self.B, self.L0, self.Lt
        for mk, p0, p1 in self.plan.pass_chunks(m, br.P):
            pv = self.measure(m, mk, br, p0, p1)
            i = 0
            for k2 in mk:
                for p in range(p0, p1):
                    a, b = l * B + ks[p], m * B + k2
                    Lt[a, b] = Lt[b, a] = pv[i] - L0
                    i += 1
            if self.tick:
                self.tick(len(mk) * (p1 - p0))

    def branch(self, l: int, ks: Sequence[int]) -> None:
        """Layer l at widths ks (stacked): every pair with a later layer, then the singles."""
        r, B = self.r, self.B
        if len(ks) > 1 and r.stack_ok[l] is None:
            ok = self.try_stacked(l, ks, self.trunk, 0, 1)     # verifies the stacked run of layer l
            if ok is _OOM:
                for part, _, _ in StackPlan.halves(ks, 0, 1):
                    self.branch(l, part)
                return
            if ok is None:
                for k in ks:
                    self.branch(l, [k])
                return
        br = Env(r, self.x, self.trunk, l, [self.cands[k] for k in ks])
        D = r.down[l]
        for m in range(l + 1, self.L):
            br.set_keep(*r.branch_keep[l][m - 1 - l])
            br.ensure([n for n in r.frontier[m] if n in D])
            self.plan.note_memory(self.trunk.nbytes() + br.nbytes())
            self.pairs(l, ks, br, m)
        br.set_keep(*r.branch_keep[l][self.L - 1 - l])
        out = br.get(r.out_node)
        self.plan.note_memory(self.trunk.nbytes() + br.nbytes())
        for i, v in enumerate(_losses(self.loss, out, len(ks), self.N)):
            self.Lt[l * B + ks[i], l * B + ks[i]] = v - self.L0
        if self.tick:
            self.tick(len(ks))
