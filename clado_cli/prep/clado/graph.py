"""Graph preparation shared by both fast runners: the QuantModel traced once with torch.fx
(QLayers kept as leaves), then made safe to share values between runs and cheaper to run.

Whatever makes a model unfit for the fast engine is raised as `NotTraceable(reason)`: torch.fx
cannot trace its forward, or its graph does something a run cannot do with shared values (an
observable in-place op, a write into an existing tensor). Any other exception is a bug and
propagates.
"""
from __future__ import annotations

import copy
import inspect
import operator
from typing import Dict, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ...quant.model import QLayer


class NotTraceable(RuntimeError):
    """The fast engine cannot run this model; the message says why. The caller uses the
    reference engine, which needs no graph."""


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, QLayer) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    """The model's graph, QLayers as leaves. Symbolic tracing runs the model's own forward on
    proxies, and torch.fx reports what it cannot follow in several ways (TraceError for
    control flow on a value, RuntimeError for len(), TypeError where a proxy meets an API that
    wants a number, ...): whatever that forward raises while being traced means the model
    cannot be traced, and becomes NotTraceable with the original text. The same forward runs
    eagerly in the reference engine, where a genuine error of the model still surfaces."""
    try:
        return _LeafTracer().trace(model)
    except Exception as e:  # noqa: BLE001  (see above: only the symbolic run of the forward)
        raise NotTraceable(f"{type(e).__name__}: {e}") from e


def fetch_attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


_INPLACE_OPS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                operator.itruediv: operator.truediv, torch.relu_: torch.relu}
_NOT_INPLACE_METHODS = {"requires_grad_", "share_memory_", "retain_grad", "record_stream"}
_REFUSED_METHODS = {"resize_", "resize_as_", "set_", "copy_", "zero_", "fill_"}
_VIEW_OPS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
             "transpose", "permute", "t", "narrow", "select", "expand", "expand_as", "chunk", "split",
             "unbind", "diagonal", "as_strided", "unfold", "detach", "__getitem__", "contiguous"}
_CONV_FN = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_view(n: fx.Node) -> bool:
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    return n.op in ("call_method", "call_function") and (name in _VIEW_OPS or n.target is operator.getitem)


class Prepared:
    """The traced graph made safe to share values between runs and cheaper to run:
      - in-place ops become out-of-place (a run must never mutate a value another run reuses),
        and whatever read the mutated value afterwards reads the new value; an in-place op on
        the input, on a view, or on a value that has views, and item assignment, are refused;
      - stock layers become direct functional calls (fewer Python frames per node): float
        Conv/Linear inside QLayers (`functional_qlayers`), eval BatchNorm, ReLU,
        Identity/Dropout (eval) dropped.
    `objs` resolves every call_module/get_attr target; `qnode[name]` is each QLayer's node,
    `qcalls[name]` how many times the graph calls it; `input` is the model's one input."""

    def __init__(self, qm, graph: fx.Graph, functional_qlayers: bool = True):
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
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if not placeholders:
            raise NotTraceable("the model takes no input")
        if any(not p.args for p in placeholders[1:]):
            raise NotTraceable("the model takes more than one input")
        self.input: fx.Node = placeholders[0]

    def resolve(self, target: str):
        if target not in self.objs:
            self.objs[target] = fetch_attr(self.root, target)
        return self.objs[target]

    def _attr(self, n: fx.Node, target: str) -> Optional[fx.Node]:
        obj = fetch_attr(self.root, target)
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
        if a.op == "placeholder" or is_view(a) or any(is_view(u) for u in a.users if u is not n):
            raise NotTraceable(f"in-place op {n.format_node()} mutates a value other values alias; "
                               "the fast engine cannot run it out of place")
        for u in list(a.users):
            if u is not n and u is not new and order[u] > order[n]:
                u.replace_input_with(a, new)

    def _module(self, n: fx.Node, mod: nn.Module) -> None:
        t = type(mod)
        if n.kwargs or len(n.args) != 1:
            if getattr(mod, "inplace", False):
                raise NotTraceable(f"in-place module {n.target} called with extra arguments")
            return
        x = n.args[0]
        if t in (nn.Identity,) or (t in _DROPOUT and not mod.training):
            n.replace_all_uses_with(x)
            self.graph.erase_node(n)
        elif t in _BATCHNORM and not mod.training and mod.running_mean is not None:
            self._replace(n, F.batch_norm, [x, self._attr(n, n.target + ".running_mean"),
                          self._attr(n, n.target + ".running_var"), self._attr(n, n.target + ".weight"),
                          self._attr(n, n.target + ".bias"), False, 0.0, mod.eps])
        elif t is nn.ReLU:
            if mod.inplace:
                self._functionalize(n)
            self._replace(n, torch.relu, [x])
        elif getattr(mod, "inplace", False):
            self._functionalize(n)
            clone = copy.copy(mod)
            clone.inplace = False
            name = f"__clado_out_of_place_{len(self.objs)}"
            self.objs[name] = clone
            n.target = name

    def _function(self, n: fx.Node) -> None:
        if "out" in n.kwargs or n.target is operator.setitem:
            raise NotTraceable(f"{n.format_node()} writes into an existing tensor")
        if n.target in _INPLACE_OPS:
            self._functionalize(n)
            n.target = _INPLACE_OPS[n.target]
            return
        name = getattr(n.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):       # torch.relu_, F.elu_, ...
            owner = F if getattr(F, name, None) is n.target else torch
            base = getattr(owner, name[:-1], None)
            if getattr(owner, name, None) is not n.target or not callable(base):
                raise NotTraceable(f"in-place function {name} has no out-of-place form")
            self._functionalize(n)
            n.target = base
            return
        try:
            sig = inspect.signature(n.target)
        except (TypeError, ValueError):     # a builtin without a signature: no `inplace`
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
                raise NotTraceable(f"in-place method {name} has no out-of-place form")
            self._functionalize(n)
            n.target = base


def prepare(qm, functional_qlayers: bool = True) -> Prepared:
    """`qm`'s model traced and prepared (raises NotTraceable when it cannot be)."""
    return Prepared(qm, trace(qm.model), functional_qlayers)


class Fork(nn.Module):
    """Decided layer `q` applied at each of several widths to the same input: an option
    applied as in docs/methods.md, "CLADO" (input activation fake-quantized, weights at b bits
    from the quantized weight cache), one output per width, stacked along the batch dimension
    in order."""

    def __init__(self, q: QLayer):
        super().__init__()
        self.q = q

    def forward(self, x, bits: Tuple[object, ...]):
        """`bits`: option keys, weight widths or (weight bits, activation bits) pairs; the input
        is quantized once per activation width."""
        q = self.q
        xqs = {}
        outs = []
        try:
            for b in bits:
                a = b[1] if isinstance(b, tuple) else None
                if a not in xqs:
                    xqs[a] = q.act_fq(a)(x)
                q.w_bits, q.a_on = (b[0] if isinstance(b, tuple) else b), False   # the input is quantized above
                outs.append(q(xqs[a]))
        finally:
            q.w_bits, q.a_on = None, False
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)
