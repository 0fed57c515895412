"""Which decided layers read the same input tensor (`layers.tie_shared_input`), and the program's
constraints of one set-up: tie groups and allowed widths (clado_cli.layer_constraints).

Shared inputs are found with forward pre-hooks on one forward pass of the example input, by the
identity of each layer's input tensor: a layer reads "the same input" as another when some call
of each receives the very same tensor object. Hooks see every nn.Conv/Linear subclass and any
branching graph, traceable by torch.fx or not. In a torchvision ResNet block with a downsample,
conv1 and downsample.0 both read the block's input (HAWQ-V3's ties); a view or a copy of a
tensor is another tensor, so layers reading `x` and `x.flatten(1)` are not tied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..layer_constraints import resolve_ties, resolve_widths, tie_of, tie_widths
from .layers import run_with_hooks


def shared_input_groups(model: nn.Module, decided_names: Sequence[str],
                        example_input: torch.Tensor) -> List[List[str]]:
    """Groups (two or more names, in `decided_names`' order; groups ordered by their first
    member) of decided layers whose input is the same tensor in one forward pass of
    `example_input`. Layers sharing inputs in a chain (a with b in one call, b with c in another)
    form one group."""
    wanted = list(decided_names)
    seen: Dict[int, List[str]] = {}
    held: List[torch.Tensor] = []   # every input stays alive during the pass: ids stay unique

    def hook(name):
        def pre(_m, inputs):
            x = inputs[0] if inputs else None
            if isinstance(x, torch.Tensor):
                held.append(x)
                seen.setdefault(id(x), []).append(name)
        return pre

    run_with_hooks(model, example_input, {n: hook(n) for n in wanted}, pre=True)
    index = {n: i for i, n in enumerate(wanted)}
    parent = list(range(len(wanted)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for names in seen.values():
        roots = sorted({find(index[n]) for n in names})
        for r in roots[1:]:
            parent[r] = roots[0]
    groups: Dict[int, List[str]] = {}
    for n in wanted:
        groups.setdefault(find(index[n]), []).append(n)
    held.clear()
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: index[g[0]])


@dataclass
class LayerConstraints:
    """One set-up's program constraints, over its decided layers in order.

    `ties`: groups of decided-layer indices (resolve_ties); `allowed`: per decided layer the
    widths the program may give it (layers.widths, narrowed by its tie group: tie_widths);
    `sources`: per tie group where it comes from ("layers.tie[i]", "shared input");
    `notes`: lines worth showing (a tie group that ties nothing)."""

    ties: List[List[int]]
    allowed: List[List[int]]
    sources: List[List[str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def tie_of(self) -> List[Optional[int]]:
        """Per decided layer: its tie group's number (1, 2, ...) or None."""
        return tie_of(self.ties, len(self.allowed))


def layer_constraints(model: nn.Module, decided_names: Sequence[str], layers_cfg, candidates: Sequence[int],
                      example_input: Optional[torch.Tensor] = None) -> LayerConstraints:
    """The constraints `layers_cfg` (a LayersConfig) puts on the decided layers. The forward pass
    for shared inputs runs only with `layers_cfg.tie_shared_input` (then `example_input` is needed)."""
    names = list(decided_names)
    shared: List[List[str]] = []
    if layers_cfg.tie_shared_input:
        if example_input is None:
            raise ValueError("tie_shared_input needs the example input")
        shared = shared_input_groups(model, names, example_input)
    notes: List[str] = []
    ties = resolve_ties(names, layers_cfg.tie, shared, notes=notes)
    allowed = tie_widths(names, resolve_widths(names, candidates, layers_cfg.widths), ties)
    index = {n: i for i, n in enumerate(names)}
    sources: List[List[str]] = []
    for members in ties:
        mine = set(members)
        src = [f"layers.tie[{g}]" for g, globs in enumerate(layers_cfg.tie)
               if len({i for i in mine if any(_match(names[i], gl) for gl in globs)}) > 1]
        if any(len(mine & {index[n] for n in grp}) > 1 for grp in shared):
            src.append("shared input")
        sources.append(src)
    return LayerConstraints(ties, allowed, sources, notes)


def _match(name: str, glob: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, glob)
