"""CLADO sensitivities for one batch: the Ltilde matrix of SPEC.

    L0 = L(∅);  Ltilde[i,i] = L({i}) − L0;  Ltilde[i,j] = L({i,j}) − L0 for options of different
    layers;  0 for two options of the same layer.

Two engines with the same numbers (docs/performance.md has the measurements):
  - `reference`: one full forward pass per measurement, weights fake-quantized on the fly.
  - `fast` (`FastRunner`, the default): the model is traced once with torch.fx. For every
    decided layer m the runner knows D(m), the graph nodes downstream of m, and its frontier
    F(m), the values D(m) reads from outside it.
      * Weights: each option's quantized weight comes from the per-option cache (quantized
        once, swapped in); no fake-quant of weights runs during prep.
      * Reuse: a run perturbed at layer m computes D(m) only; every other value is read from
        the float trunk or from the branch it belongs to, never recomputed.
      * Order: for each decided layer l, a branch applies l's widths and is computed lazily up
        to each later layer m, where one pass of D(m) per chunk measures the pairs (l, m);
        the branch's own output gives the singles of l. Trunk and branch values are freed as
        soon as no later step reads them, so only "cut" values stay alive.
      * Stacking: the widths of l (a branch) and the widths of m (a pass) are stacked along
        the batch dimension, up to `max_batch` perturbations per pass (default: per layer
        from `auto_max_batch`, which keeps the peak memory within 2x of the reference's). The
        first stacked pass of each layer is checked against its separate passes; a model
        that mixes samples across the batch is caught there and run one at a time.
      * Python overhead: each D(m) is one generated straight-line function (torch.fx code
        generation, values freed after last use); stock layers are called as functions.
    The graph is made safe first: in-place ops become out-of-place (a run must never mutate a
    value that another run reuses); a model whose in-place op would be observable is refused.
    `make_runner` falls back to `BranchingRunner` (node-by-node, the run forks at each decided
    layer and re-runs everything after it) when a decided layer is called more than once, and
    to None (the caller uses the reference engine) when the model cannot be traced.
"""
from __future__ import annotations

import inspect
import operator
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..quant.model import QLayer, QuantModel
from .losses import make_loss


def measurement_count(n_layers: int, n_bits: int) -> int:
    """Forward passes per batch: L0, L·B singles, B²·L(L−1)/2 pairs."""
    return 1 + n_layers * n_bits + n_bits * n_bits * n_layers * (n_layers - 1) // 2


def _same_layer_mask(n_layers: int, n_bits: int) -> np.ndarray:
    layer = np.repeat(np.arange(n_layers), n_bits)
    return layer[:, None] == layer[None, :]


def _row_set(rows: Optional[Sequence[int]], n_layers: int) -> set:
    return set(range(n_layers)) if rows is None else {int(r) for r in rows}


@torch.no_grad()
def clado_reference(qm: QuantModel, x: torch.Tensor, y: torch.Tensor, loss_kind: str = "ce",
                    tick: Optional[Callable[[int], None]] = None,
                    rows: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """One full forward pass per measurement. `rows`: compute only the singles of these
    decided layers and their pairs with later layers (the rest stays 0), so that the
    matrices of a partition of the layers sum to the full matrix."""
    options = qm.options
    P, L, B = len(options), len(qm.decided), len(qm.candidates)
    mine = _row_set(rows, L)
    qm.set_cached(False)
    try:
        qm.reset()
        float_logits = qm(x)
        loss = make_loss(loss_kind, y, float_logits)
        L0 = float(loss(float_logits))
        Lt = np.zeros((P, P), dtype=np.float64)
        for i, opt in enumerate(options):
            if i // B not in mine:
                continue
            qm.apply([opt])
            Lt[i, i] = float(loss(qm(x))) - L0
            if tick:
                tick(1)
        for i in range(P):
            if i // B not in mine:
                continue
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


def _trace(qm: QuantModel) -> fx.Graph:
    return _LeafTracer().trace(qm.model)


def _fetch_attr(root: torch.nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------
# Fallback: node-by-node branching (handles a decided layer that is called more than once)
# ------------------------------------------------------------------------------------------

class BranchingRunner:
    """Runs a traced QuantModel node by node, so a run can fork at any decided layer."""

    def __init__(self, qm: QuantModel):
        self.qm = qm
        self.prep = _prepare(qm, functional_qlayers=False)
        self.graph = self.prep.graph
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
        return self.prep.resolve(target)

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
            val = self.prep.resolve(n.target)(*load(n.args), **load(n.kwargs))
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


def _clado_branching(qm: QuantModel, runner: BranchingRunner, x, y, loss_kind, tick, mine: set):
    cands = qm.candidates
    B = len(cands)
    index = {q.name: l for l, q in enumerate(qm.decided)}
    P = len(qm.decided) * B
    # the float logits are needed before any branch (KL target), so run the trunk once first
    float_logits = runner.run({}, 0, x)
    loss = make_loss(loss_kind, y, float_logits)
    L0 = float(loss(float_logits))
    Lt = np.zeros((P, P), dtype=np.float64)

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

    env: Dict[fx.Node, object] = {}
    for pos in range(len(runner.nodes)):
        q = runner.decided_at.get(pos)
        if q is not None and index[q.name] in mine:
            l = index[q.name]
            for k, bits in enumerate(cands):
                q.w_bits, q.a_on = bits, True
                i = l * B + k
                Lt[i, i] = float(loss(branch_pairs(env, pos, i))) - L0
                if tick:
                    tick(1)
            q.w_bits, q.a_on = None, False
        runner.step(pos, env, x)
        if runner.nodes[pos].op == "output":
            break
    return Lt, L0


# ------------------------------------------------------------------------------------------
# Graph preparation shared by both runners
# ------------------------------------------------------------------------------------------

_INPLACE_OPS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                operator.itruediv: operator.truediv, torch.relu_: torch.relu}
_NOT_INPLACE_METHODS = {"requires_grad_", "share_memory_", "retain_grad", "record_stream"}
_REFUSED_METHODS = {"resize_", "resize_as_", "set_", "copy_", "zero_", "fill_"}
_VIEW_OPS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
             "transpose", "permute", "t", "narrow", "select", "expand", "expand_as", "chunk", "split",
             "unbind", "diagonal", "as_strided", "unfold", "detach", "__getitem__", "contiguous"}
_CONV_FN = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _is_view(n: fx.Node) -> bool:
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    return n.op in ("call_method", "call_function") and (name in _VIEW_OPS or n.target is operator.getitem)


class _Prepared:
    """The traced graph made safe to share values between runs and cheaper to run:
      - in-place ops become out-of-place (a run must never mutate a value another run reuses),
        and whatever read the mutated value afterwards reads the new value; an in-place op on
        the input, on a view, or on a value that has views, and item assignment, are refused;
      - stock layers become direct functional calls (fewer Python frames per node): float
        Conv/Linear inside QLayers, eval BatchNorm, ReLU, Identity/Dropout (eval) dropped.
    `objs` resolves every call_module/get_attr target; `qnode[name]` is each QLayer's node."""

    def __init__(self, qm: QuantModel, graph: fx.Graph, functional_qlayers: bool = True):
        self.root = qm.model
        self.graph = graph
        self.objs: Dict[str, object] = {}
        modules = dict(self.root.named_modules())
        self.qnode: Dict[str, fx.Node] = {}
        self.qcalls: Dict[str, int] = {}
        for n in list(graph.nodes):
            if n.op == "call_module":
                mod = modules.get(n.target)
                if isinstance(mod, QLayer):
                    self.qcalls[mod.name] = self.qcalls.get(mod.name, 0) + 1
                    new = self._qlayer(n, mod) if functional_qlayers else n
                    self.qnode[mod.name] = new
                else:
                    self._module(n, mod)
            elif n.op == "call_function":
                self._function(n)
            elif n.op == "call_method":
                self._method(n)
        graph.lint()

    def resolve(self, target: str):
        if target not in self.objs:
            self.objs[target] = _fetch_attr(self.root, target)
        return self.objs[target]

    def _attr(self, n: fx.Node, target: str) -> fx.Node:
        obj = _fetch_attr(self.root, target)
        if obj is None:
            return None
        with self.graph.inserting_before(n):
            return self.graph.get_attr(target)

    def _replace(self, n: fx.Node, fn, args, kwargs=None) -> fx.Node:
        with self.graph.inserting_before(n):
            new = self.graph.call_function(fn, tuple(args), kwargs or {})
        n.replace_all_uses_with(new)
        self.graph.erase_node(n)
        return new

    def _qlayer(self, n: fx.Node, q: QLayer) -> fx.Node:
        lay = q.layer
        if q._plain is None or n.kwargs or len(n.args) != 1:
            return n
        t = f"{n.target}.layer"
        if type(lay) in _CONV_FN and lay.padding_mode == "zeros":
            return self._replace(n, _CONV_FN[type(lay)], [n.args[0], self._attr(n, t + ".weight"),
                                 self._attr(n, t + ".bias"), lay.stride, lay.padding, lay.dilation, lay.groups])
        if type(lay) is nn.Linear:
            return self._replace(n, F.linear, [n.args[0], self._attr(n, t + ".weight"), self._attr(n, t + ".bias")])
        return n

    def _functionalize(self, n: fx.Node, new: Optional[fx.Node] = None) -> None:
        """n mutates its first argument a in place; from now on it is computed out of place as
        `new` (default n itself), so every later reader of a must read `new` instead. Refused
        when the mutation would reach another value: a is the input, a view, or has views."""
        new = new or n
        a = n.args[0] if n.args else None
        if not isinstance(a, fx.Node):
            return
        order = {m: i for i, m in enumerate(self.graph.nodes)}
        if a.op == "placeholder" or _is_view(a) or any(_is_view(u) for u in a.users if u is not n):
            raise RuntimeError(f"in-place op {n.format_node()} mutates a value other values alias; "
                               "the fast engine cannot run it out of place")
        for u in list(a.users):
            if u is not n and u is not new and order[u] > order[n]:
                u.replace_input_with(a, new)

    def _module(self, n: fx.Node, mod: nn.Module) -> None:
        t = type(mod)
        if n.kwargs or len(n.args) != 1:
            if getattr(mod, "inplace", False):
                raise RuntimeError(f"in-place module {n.target} called with extra arguments")
            return
        x = n.args[0]
        if t in (nn.Identity,) or (t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d) and not mod.training):
            n.replace_all_uses_with(x)
            self.graph.erase_node(n)
        elif t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and not mod.training \
                and mod.running_mean is not None:
            self._replace(n, F.batch_norm, [x, self._attr(n, n.target + ".running_mean"),
                          self._attr(n, n.target + ".running_var"), self._attr(n, n.target + ".weight"),
                          self._attr(n, n.target + ".bias"), False, 0.0, mod.eps])
        elif t is nn.ReLU:
            if mod.inplace:
                self._functionalize(n)
            self._replace(n, torch.relu, [x])
        elif getattr(mod, "inplace", False):
            import copy

            self._functionalize(n)
            clone = copy.copy(mod)
            clone.inplace = False
            name = f"__clado_out_of_place_{len(self.objs)}"
            self.objs[name] = clone
            n.target = name

    def _function(self, n: fx.Node) -> None:
        if "out" in n.kwargs or n.target is operator.setitem:
            raise RuntimeError(f"{n.format_node()} writes into an existing tensor")
        if n.target in _INPLACE_OPS:
            self._functionalize(n)
            n.target = _INPLACE_OPS[n.target]
            return
        name = getattr(n.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):       # torch.relu_, F.elu_, ...
            owner = F if getattr(F, name, None) is n.target else torch
            base = getattr(owner, name[:-1], None)
            if getattr(owner, name, None) is not n.target or not callable(base):
                raise RuntimeError(f"in-place function {name} has no out-of-place form")
            self._functionalize(n)
            n.target = base
            return
        try:
            sig = inspect.signature(n.target)
        except (TypeError, ValueError):
            return
        if "inplace" in sig.parameters:
            try:
                ba = sig.bind(*n.args, **n.kwargs)
            except TypeError:
                return
            if ba.arguments.get("inplace"):
                self._functionalize(n)
                ba.arguments["inplace"] = False
                n.args, n.kwargs = tuple(ba.args), dict(ba.kwargs)

    def _method(self, n: fx.Node) -> None:
        name = n.target
        if name.endswith("_") and not name.endswith("__"):
            base = name[:-1]
            if name in _NOT_INPLACE_METHODS:
                return
            if name in _REFUSED_METHODS or not hasattr(torch.Tensor, base) or not callable(getattr(torch.Tensor, base)):
                raise RuntimeError(f"in-place method {name} has no out-of-place form")
            self._functionalize(n)
            n.target = base


def _prepare(qm: QuantModel, functional_qlayers: bool = True) -> _Prepared:
    return _Prepared(qm, _trace(qm), functional_qlayers)


# ------------------------------------------------------------------------------------------
# Fast runner: generated per-layer functions over D(m), values reused, perturbations stacked
# ------------------------------------------------------------------------------------------

class _Fork(torch.nn.Module):
    """Decided layer `q` applied at each of several widths to the same input: SPEC's
    "option applied" (input activation fake-quantized, weights at b bits from the quantized
    weight cache), one output per width, stacked along the batch dimension in order."""

    def __init__(self, q: QLayer):
        super().__init__()
        self.q = q

    def forward(self, x, bits: Tuple[int, ...]):
        q = self.q
        xq = q.a_fq(x)
        outs = []
        try:
            for b in bits:
                q.w_bits, q.a_on = b, False   # the input is already quantized above
                outs.append(q(xq))
        finally:
            q.w_bits, q.a_on = None, False
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


def _rep(v, k: int):
    return v.repeat(k, *([1] * (v.dim() - 1))) if k > 1 else v


class _Env:
    """The values of one run, computed on demand and freed as soon as no later step needs
    them: the trunk (every layer float, batch N), or a branch (layer l at P widths, stacked
    as P·N rows; only the nodes of D(l), everything else read from the trunk).
    `keep`/`keep_anc`: the values later steps read, and the nodes that compute them."""

    def __init__(self, runner: "FastRunner", x, trunk: Optional["_Env"] = None, l: Optional[int] = None,
                 bits: Sequence[int] = ()):
        self.r, self.x, self.trunk, self.l, self.bits = runner, x, trunk, l, tuple(bits)
        self.P = 1 if trunk is None else len(self.bits)
        self.domain = None if trunk is None else runner.down[l]
        self.vals: Dict[fx.Node, object] = {}
        self.done: set = set()       # computed (and maybe freed since)
        self.keep: Optional[set] = None
        self.keep_anc: set = set()

    def owns(self, n: fx.Node) -> bool:
        return n.op != "get_attr" and (self.domain is None or n in self.domain)

    def get(self, n: fx.Node):
        if n.op == "get_attr":
            return self.r.prep.resolve(n.target)
        if self.owns(n):
            if n not in self.vals:
                self.ensure([n])
            return self.vals[n]
        v = self.trunk.get(n)
        return _rep(v, self.P) if n in self.r.batched else v

    def ensure(self, nodes) -> None:
        todo, stack = set(), [n for n in nodes if self.owns(n) and n not in self.vals]
        while stack:
            n = stack.pop()
            if n in todo:
                continue
            if n in self.done:
                raise RuntimeError(f"{n.name} was freed but is needed again")  # pragma: no cover
            todo.add(n)
            stack.extend(a for a in n.all_input_nodes if self.owns(a) and a not in self.vals and a not in todo)
        for n in sorted(todo, key=self.r.index.__getitem__):
            self.vals[n] = self.r.eval_node(n, self)
            self.done.add(n)
            if self.keep is not None:
                for a in n.all_input_nodes:
                    if a in self.vals and self._dead(a):
                        del self.vals[a]

    def _dead(self, n: fx.Node) -> bool:
        return n not in self.keep and not any(u in self.keep_anc and u not in self.done for u in n.users)

    def set_keep(self, keep: set, keep_anc: set) -> None:
        """From now on keep only what later steps read; drop the rest now."""
        self.keep, self.keep_anc = keep, keep_anc
        for n in [n for n in self.vals if self._dead(n)]:
            del self.vals[n]

    def nbytes(self) -> int:
        seen, tot = set(), 0
        for v in self.vals.values():
            if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
                seen.add(v.untyped_storage().data_ptr())
                tot += v.untyped_storage().nbytes()
        return tot


class FastRunner:
    """Everything the fast engine derives from the traced graph, once per QuantModel.

    `max_batch`: most perturbations stacked into one pass (None: automatic, see
    `auto_max_batch`). `verify_tol`: a layer's first stacked pass must give the losses of
    its separate passes within this, or the layer is run one perturbation per pass."""

    def __init__(self, qm: QuantModel, max_batch: Optional[int] = None, verify_tol: float = 1e-6):
        self.qm = qm
        self.prep = _prepare(qm)
        self.graph = self.prep.graph
        self.max_batch = max_batch
        self.verify_tol = verify_tol
        nodes = list(self.graph.nodes)
        self.nodes = nodes
        self.index = {n: i for i, n in enumerate(nodes)}
        outputs = [n for n in nodes if n.op == "output"]
        if len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
            raise RuntimeError("the model's graph must return one tensor")
        self.output = outputs[0]
        self.out_node: fx.Node = outputs[0].args[0]
        self.placeholders = [n for n in nodes if n.op == "placeholder"]
        if any(not p.args for p in self.placeholders[1:]):
            raise RuntimeError("the model takes more than one input")
        self.fork_nodes: List[fx.Node] = []
        for q in qm.decided:
            if self.prep.qcalls.get(q.name, 0) != 1:
                raise RuntimeError(f"decided layer {q.name} is called {self.prep.qcalls.get(q.name, 0)} "
                                   "times in the traced graph")
            n = self.prep.qnode[q.name]
            if not n.args or not isinstance(n.args[0], fx.Node):
                raise RuntimeError(f"decided layer {q.name} is not called on a tensor")
            self.fork_nodes.append(n)
        self.forks = [_Fork(q) for q in qm.decided]
        self.batched = self._descendants(self.placeholders[:1])
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
                    env[a] = g.call_function(_rep, (env[a], k))
            if n in D:
                env[n] = g.call_module(fork, (raw, bits)) if n is f else self._copy(g, n, env)
        if self.out_node in slot:   # layer l does not reach the output
            env[self.out_node] = g.call_function(_rep, (env[self.out_node], g.call_function(
                operator.getitem, (reps, slot.pop(self.out_node)))))
        g.output(env[self.out_node])
        return self._module(g)

    # -- running ---------------------------------------------------------------------------
    def eval_node(self, n: fx.Node, env: _Env):
        if env.l is not None and n is self.fork_nodes[env.l]:
            return self.forks[env.l](env.trunk.get(n.args[0]), env.bits)
        load = lambda a: fx.node.map_arg(a, env.get)
        if n.op == "placeholder":
            return env.x if n is self.placeholders[0] else n.args[0]
        if n.op == "get_attr":
            return self.prep.resolve(n.target)
        if n.op == "call_function":
            return n.target(*load(n.args), **load(n.kwargs))
        if n.op == "call_method":
            args = load(n.args)
            return getattr(args[0], n.target)(*args[1:], **load(n.kwargs))
        if n.op == "call_module":
            return self.prep.resolve(n.target)(*load(n.args), **load(n.kwargs))
        raise RuntimeError(f"unknown fx op {n.op}")  # pragma: no cover

    def probe(self, x: torch.Tensor) -> None:
        """One float forward, node by node, values freed after their last use (as an eager
        forward frees them). Records which values are batch-first tensors: a value that
        carries the batch but is not one (say a size read off an activation) cannot be
        stacked, so the layers that read it run one perturbation per pass. Also records the
        peak bytes of live values (`forward_live_bytes`, an estimate of what one plain
        forward pass holds)."""
        N = x.shape[0]
        if self._probed == N:
            return
        last = {n: max((self.index[u] for u in n.users), default=-1) for n in self.nodes}
        env = _Env(self, x)
        batch_first, peak = {}, 0
        live = [0] * len(self.nodes)
        for i, n in enumerate(self.nodes):
            if n.op == "output":
                break
            if n.op == "get_attr":
                continue
            v = env.vals[n] = self.eval_node(n, env)
            batch_first[n] = isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == N
            live[i] = env.nbytes()
            peak = max(peak, live[i])
            for a in n.all_input_nodes:
                if last[a] == i:
                    env.vals.pop(a, None)
        self.forward_live_bytes = peak
        # per decided layer: the most bytes a plain forward holds from that layer on (what
        # one row of a pass at the layer holds, roughly)
        self.tail_live_bytes = [max(live[self.index[f]:]) for f in self.fork_nodes]
        for l in range(len(self.fork_nodes)):
            reads = set(self.frontier[l])
            if any(n in self.batched and not batch_first.get(n, False) for n in reads):
                self.stack_ok[l] = False
        self._probed = N

    def run_pass(self, m: int, bits: Sequence[int], trunk: _Env, parent: _Env, p0: int, p1: int, N: int):
        """Logits of layer m at each width in `bits` on parent variants p0..p1: rows ordered
        (width, parent variant, sample)."""
        K = len(bits)

        def value(n, rep):
            if parent is not trunk and parent.owns(n):
                v = parent.get(n)
                if parent.P > 1 and n in self.batched and (p1 - p0) < parent.P:
                    v = v[p0 * N:p1 * N]
            else:
                v = trunk.get(n)
                rep *= p1 - p0
            return v, rep

        raw = _rep(*value(self.fork_nodes[m].args[0], 1))
        vals, reps = [], []
        for a in self.frontier[m]:
            v, r = value(a, K)
            vals.append(v)
            reps.append(r)
        self.stats["passes"] += 1
        self.stats["rows"] += K * (p1 - p0) * N
        return self.pass_fn[m](tuple(bits), tuple(reps), raw, *vals)


def persistent_bytes(qm: QuantModel) -> int:
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


# auto stacking aims at this fraction of the reference engine's peak memory: 2x, less a margin
# for what the fitted model below does not see
STACK_MEMORY_TARGET = 1.9


def auto_max_batch(runner: FastRunner, n_bits: int, layer: int) -> int:
    """How many perturbations to stack per pass at decided layer `layer` so that the fast
    engine's peak memory stays within 2x of the reference's (aiming at
    T = STACK_MEMORY_TARGET = 1.9x), counted both ways: the total (the QuantModel's persistent
    tensors plus what a pass allocates) and the transient part alone.

    With S the persistent bytes and F the bytes one plain forward pass holds at its peak, the
    reference's transient peak is near 2F; the fast engine's is near (1 + 1.5·M·Fm/F)·F, where
    Fm ≤ F is what a plain forward holds from layer m on (a pass at m computes only the nodes
    downstream of m, M perturbations stacked): the trunk and branch values plus the pass. F and
    Fm are measured by `probe`; both models were fitted to measured peaks (docs/performance.md).
        total:      S + (1 + 1.5·M·Fm/F)·F ≤ T·(S + 2F)  ⇔  M ≤ ((T−1)·S/F + 2T − 1)·F / (1.5·Fm)
        transient:      (1 + 1.5·M·Fm/F)·F ≤ T·2F        ⇔  M ≤ (2T − 1)·F / (1.5·Fm)
    Capped at B² (every width of a layer on every width of the branch). `--stack N`
    (prep.stack) sets one M for every layer instead: more is faster on small inputs and needs
    more memory."""
    T = STACK_MEMORY_TARGET
    F = max(1, runner.forward_live_bytes)
    Fm = max(1, min(F, runner.tail_live_bytes[layer]))
    total = ((T - 1) * runner.persistent / F + 2 * T - 1) * F / (1.5 * Fm)
    transient = (2 * T - 1) * F / (1.5 * Fm)
    return max(1, min(n_bits * n_bits, int(total), int(transient)))


def make_runner(qm: QuantModel, max_batch: Optional[int] = None):
    """A runner for the fast engine (`FastRunner`, or `BranchingRunner` for models where a
    decided layer is called more than once), or None when the model cannot be traced or
    its graph cannot be run safely with shared values."""
    try:
        return FastRunner(qm, max_batch=max_batch)
    except Exception:
        pass
    try:
        return BranchingRunner(qm)
    except Exception:
        return None


def _chunks(seq: Sequence, size: int) -> List[Sequence]:
    size = max(1, size)
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def _losses(loss, out: torch.Tensor, n_rows: int, N: int) -> List[float]:
    return [float(loss(out[r * N:(r + 1) * N])) for r in range(n_rows)]


def _clado_stacked(qm: QuantModel, runner: FastRunner, x, y, loss_kind, tick, max_batch, mine: set):
    cands = list(qm.candidates)
    B = len(cands)
    L = len(qm.decided)
    N = x.shape[0]
    float_logits = runner.trunk_fn(x)
    loss = make_loss(loss_kind, y, float_logits)
    L0 = float(loss(float_logits))
    del float_logits
    Lt = np.zeros((L * B, L * B), dtype=np.float64)
    runner.probe(x)
    M = max_batch if max_batch is not None else runner.max_batch
    if M is None:
        Ms = [auto_max_batch(runner, B, m) for m in range(L)]
    else:
        Ms = [max(1, int(M))] * L
    runner.stats["stack_per_layer"] = Ms
    trunk = _Env(runner, x)
    stats = runner.stats

    def note_memory(*envs):
        stats["peak_env_bytes"] = max(stats["peak_env_bytes"], sum(e.nbytes() for e in envs))

    def stacked(m, ks, parent, p0, p1):
        """Losses of layer m at widths ks on parent variants p0..p1 (width-major) in one
        pass, or None when layer m cannot be stacked. A layer's first stacked pass is
        checked against separate passes."""
        bits = [cands[k] for k in ks]
        rows = len(ks) * (p1 - p0)
        if rows > 1 and runner.stack_ok[m] is False:
            return None
        try:
            out = runner.run_pass(m, bits, trunk, parent, p0, p1, N)
            vals = _losses(loss, out, rows, N)
            del out
        except Exception:
            if rows == 1:
                raise
            runner.stack_ok[m] = False
            return None
        if rows > 1 and runner.stack_ok[m] is None:
            # the first and the last stacked perturbation against their own passes: stacking
            # that mixes samples across the batch changes every row
            combos = [(r, k, p) for r, (k, p) in enumerate((k, p) for k in ks for p in range(p0, p1))]
            worst = 0.0
            for r, k, p in (combos[0], combos[-1]):
                sep = float(loss(runner.run_pass(m, [cands[k]], trunk, parent, p, p + 1, N)))
                worst = max(worst, abs(vals[r] - sep))
            runner.stack_ok[m] = worst <= runner.verify_tol
            if not runner.stack_ok[m]:
                return None
        return vals

    def pairs(l, ks, br: _Env, m):
        P = br.P
        kc = min(B, Ms[m])
        pc = max(1, Ms[m] // kc)
        for mk in _chunks(list(range(B)), kc):
            for p0 in range(0, P, pc):
                p1 = min(P, p0 + pc)
                pv = stacked(m, mk, br, p0, p1)
                if pv is None:          # one perturbation per pass
                    pv = [stacked(m, [k2], br, p, p + 1)[0] for k2 in mk for p in range(p0, p1)]
                r = 0
                for k2 in mk:
                    for p in range(p0, p1):
                        i, j = l * B + ks[p], m * B + k2
                        Lt[i, j] = Lt[j, i] = pv[r] - L0
                        r += 1
                if tick:
                    tick(len(mk) * (p1 - p0))

    def branch(l, ks):
        """Layer l at widths ks (stacked): every pair with a later layer, then the singles."""
        if len(ks) > 1 and runner.stack_ok[l] is None:
            if stacked(l, ks, trunk, 0, 1) is None:     # verifies the stacked run of layer l
                for k in ks:
                    branch(l, [k])
                return
        br = _Env(runner, x, trunk, l, [cands[k] for k in ks])
        D = runner.down[l]
        for m in range(l + 1, L):
            br.set_keep(*runner.branch_keep[l][m - 1 - l])
            br.ensure([n for n in runner.frontier[m] if n in D])
            note_memory(trunk, br)
            pairs(l, ks, br, m)
        br.set_keep(*runner.branch_keep[l][L - 1 - l])
        out = br.get(runner.out_node)
        note_memory(trunk, br)
        for r, v in enumerate(_losses(loss, out, len(ks), N)):
            Lt[l * B + ks[r], l * B + ks[r]] = v - L0
        if tick:
            tick(len(ks))

    for l in range(L):
        if l not in mine:
            continue
        trunk.set_keep(*runner.trunk_keep[l])
        size = min(B, Ms[l]) if runner.stack_ok[l] is not False else 1
        for chunk in _chunks(list(range(B)), size):
            branch(l, chunk)
    trunk.vals.clear()
    return Lt, L0


@torch.no_grad()
def clado_fast(qm: QuantModel, x: torch.Tensor, y: torch.Tensor, loss_kind: str = "ce",
               tick: Optional[Callable[[int], None]] = None,
               runner=None, max_batch: Optional[int] = None,
               rows: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """The fast engine. `max_batch`: most perturbations stacked in one pass (default: the
    runner's, else `auto_max_batch`). `rows`: as for `clado_reference`."""
    runner = runner or make_runner(qm, max_batch=max_batch)
    if runner is None:
        raise RuntimeError("the model cannot be traced by torch.fx; use the reference engine")
    qm.reset()
    qm.set_cached(True)
    try:
        mine = _row_set(rows, len(qm.decided))
        if isinstance(runner, FastRunner):
            Lt, L0 = _clado_stacked(qm, runner, x, y, loss_kind, tick, max_batch, mine)
        else:
            Lt, L0 = _clado_branching(qm, runner, x, y, loss_kind, tick, mine)
    finally:
        qm.reset()
    return {"Ltilde": Lt, "L0": np.float64(L0)}
