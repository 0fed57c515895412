"""The values of one run of the fast engine (the float trunk, or a branch that applies one
decided layer's widths), computed on demand by the shared interpreter and freed as soon as no
later step reads them."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch.fx as fx

from .interpreter import tensor_bytes


def rep(v, k: int):
    """v repeated k times along the batch dimension."""
    return v.repeat(k, *([1] * (v.dim() - 1))) if k > 1 else v


class Env:
    """The trunk (every layer float, batch N), or a branch (layer l at P widths, stacked as
    P·N rows; only the nodes of D(l), everything else read from the trunk).
    `keep`/`keep_anc`: the values later steps read, and the nodes that compute them."""

    def __init__(self, runner, x, trunk: Optional["Env"] = None, l: Optional[int] = None,
                 bits: Sequence[int] = ()):
        self.r, self.x, self.trunk, self.l, self.bits = runner, x, trunk, l, tuple(bits)
        self.P = 1 if trunk is None else len(self.bits)
        self.domain = None if trunk is None else runner.down[l]
        self.fork = None if trunk is None else runner.fork_nodes[l]
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
        return rep(v, self.P) if n in self.r.batched else v

    def _eval(self, n: fx.Node):
        if n is self.fork:      # the branch's own layer, at its widths, on the trunk's input
            return self.r.forks[self.l](self.trunk.get(n.args[0]), self.bits)
        return self.r.interp.eval(n, self.get, self.x)

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
            self.vals[n] = self._eval(n)
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
        return tensor_bytes(self.vals.values())
