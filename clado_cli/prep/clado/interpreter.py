"""The one node interpreter of the prepared graph, shared by both runners: `eval` computes one
node from its inputs (read through a function, so a run can take them from wherever it keeps
them), `run` computes a stretch of the graph in order, dropping each value after its last
reader as an eager forward does."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.fx as fx

from .graph import Prepared


def tensor_bytes(values: Iterable[object]) -> int:
    """Bytes of the distinct tensor storages among `values`."""
    seen, tot = set(), 0
    for v in values:
        if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
            seen.add(v.untyped_storage().data_ptr())
            tot += v.untyped_storage().nbytes()
    return tot


class Interpreter:
    """Runs the nodes of a prepared graph. `nodes` in graph order, `index[n]` a node's
    position; `dies_at[i]`: the values whose last reader is node i (a value nothing reads
    stays until its run is dropped)."""

    def __init__(self, prep: Prepared):
        self.prep = prep
        self.nodes: List[fx.Node] = list(prep.graph.nodes)
        self.index: Dict[fx.Node, int] = {n: i for i, n in enumerate(self.nodes)}
        self.dies_at: List[List[fx.Node]] = [[] for _ in self.nodes]
        for n in self.nodes:
            last = max((self.index[u] for u in n.users), default=-1)
            if last >= 0:
                self.dies_at[last].append(n)

    def eval(self, n: fx.Node, get: Callable[[fx.Node], object], x: torch.Tensor):
        """The value of node n (not the output node), its inputs read with `get`; the model's
        input is x, any other placeholder takes its default."""
        load = lambda a: fx.node.map_arg(a, get)
        if n.op == "placeholder":
            return x if n is self.prep.input else n.args[0]
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

    def get_from(self, vals: Dict[fx.Node, object]) -> Callable[[fx.Node], object]:
        """Reads a value from `vals`; parameters and buffers (get_attr) from the model."""
        resolve = self.prep.resolve
        return lambda a: resolve(a.target) if a.op == "get_attr" else vals[a]

    def run(self, vals: Dict[fx.Node, object], x: torch.Tensor, start: int = 0, stop: Optional[int] = None,
            seen: Optional[Callable[[int, fx.Node, object], None]] = None):
        """Compute nodes start..stop-1 into `vals` (which holds what they read from before
        `start`), each input dropped after its last reader; get_attr nodes are read from the
        model instead of stored. `seen(i, n, value)` is called after each node, before the
        drops. Returns the model's output when the output node is reached, else None."""
        get = self.get_from(vals)
        stop = len(self.nodes) if stop is None else stop
        for i in range(start, stop):
            n = self.nodes[i]
            if n.op == "output":
                return fx.node.map_arg(n.args[0], get)
            if n.op == "get_attr":
                continue
            vals[n] = v = self.eval(n, get, x)
            if seen is not None:
                seen(i, n, v)
            for a in self.dies_at[i]:
                vals.pop(a, None)
        return None
