"""Which layers clado quantizes, decides, fixes, or skips (and why).

Quantizable: every module that is an nn.Conv1d/2d/3d or nn.Linear, subclasses included
(depthwise and grouped convs too). Order: the order in which a forward pass calls them
(= the traced graph's order for traceable models). Nothing is dropped silently: every other
module holding a weight matrix, and every other parameter of two or more dimensions (position
embeddings, class tokens), is listed as skipped with its reason.

Fixed layers (layers.fix_first_last, on by default) follow `layers.first_last_by`:
  call_order: the first and the last quantizable layer a forward pass calls (the release's rule);
  type:       the first-called convolution (Conv1d/2d/3d) and the last-called Linear; a model
              without a convolution fixes its first-called layer, one without a Linear its
              last-called layer.
Then layers.fixed globs, then layers.include/exclude; each fixed layer carries its reason.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..config import LayersConfig
from ..errors import UsageError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerInfo:
    name: str
    kind: str            # class name, e.g. Conv2d, or a user's subclass name
    numel: int           # weight elements
    shape: List[int]
    role: str            # decided | fixed | skipped
    reason: str = ""     # why fixed or skipped
    groups: int = 1
    calls: int = 1

    def to_dict(self):
        return asdict(self)


@dataclass
class LayerPlan:
    decided: List[LayerInfo] = field(default_factory=list)
    fixed: List[LayerInfo] = field(default_factory=list)
    skipped: List[LayerInfo] = field(default_factory=list)

    @property
    def decided_names(self) -> List[str]:
        return [l.name for l in self.decided]

    @property
    def fixed_names(self) -> List[str]:
        return [l.name for l in self.fixed]

    def all(self) -> List[LayerInfo]:
        return self.decided + self.fixed + self.skipped


def _matches(name: str, patterns: List[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def run_with_hooks(model: nn.Module, example: torch.Tensor, hooks, pre: bool = False) -> None:
    """One forward pass of `example` (no grad) with `hooks` {module name: hook} registered on the
    named modules (forward hooks, or forward pre-hooks with `pre`), removed afterwards."""
    handles = []
    for name, mod in model.named_modules():
        if name in hooks:
            register = mod.register_forward_pre_hook if pre else mod.register_forward_hook
            handles.append(register(hooks[name]))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()


def call_order(model: nn.Module, example: torch.Tensor) -> Dict[str, int]:
    """Names of quantizable modules -> number of calls, in the order of their first call."""
    order: Dict[str, int] = {}

    def counter(name):
        def hook(_m, _inp):
            order[name] = order.get(name, 0) + 1
        return hook

    run_with_hooks(model, example, {n: counter(n) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)},
                   pre=True)
    return order


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def first_and_last(called: List[str], modules: Dict[str, nn.Module], by: str):
    """(first, last, first_reason, last_reason) by the rule `by` (call_order or type)."""
    if not called:
        return None, None, "", ""
    if by == "type":
        convs = [n for n in called if isinstance(modules[n], CONVS)]
        linears = [n for n in called if isinstance(modules[n], nn.Linear)]
        first = convs[0] if convs else called[0]
        last = linears[-1] if linears else called[-1]
        fr = "first layer (the first-called convolution)" if convs else "first layer (no convolution: the first called)"
        lr = "last layer (the last-called Linear: the classifier)" if linears else "last layer (no Linear: the last called)"
        return first, last, fr, lr
    return called[0], called[-1], "first layer", "last layer (classifier)"


FIRST_LAST_RULES = {
    "call_order": "the first and the last quantizable layer a forward pass calls",
    "type": "the first-called convolution and the last-called Linear",
}


def plan_layers(model: nn.Module, example: torch.Tensor, cfg: LayersConfig) -> LayerPlan:
    modules = dict(model.named_modules())
    order = call_order(model, example)
    plan = LayerPlan()
    called = [n for n in order]
    first, last, first_reason, last_reason = first_and_last(called, modules, cfg.first_last_by)
    for name in called:
        mod = modules[name]
        info = LayerInfo(name=name, kind=type(mod).__name__, numel=mod.weight.numel(),
                         shape=list(mod.weight.shape), role="decided",
                         groups=getattr(mod, "groups", 1), calls=order[name])
        if cfg.fix_first_last and name == first:
            info.role, info.reason = "fixed", first_reason
        elif cfg.fix_first_last and name == last:
            info.role, info.reason = "fixed", last_reason
        elif _matches(name, cfg.fixed):
            info.role, info.reason = "fixed", "layers.fixed"
        elif not _matches(name, cfg.include):
            info.role, info.reason = "fixed", "not in layers.include"
        elif _matches(name, cfg.exclude):
            info.role, info.reason = "fixed", "layers.exclude"
        (plan.decided if info.role == "decided" else plan.fixed).append(info)
    for name, mod in modules.items():
        if name in order:
            continue
        weight = getattr(mod, "weight", None)
        if isinstance(mod, QUANTIZABLE):
            reason = "never called in a forward pass"
        elif isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            reason = f"{type(mod).__name__} is not a quantizable type (Conv1d/2d/3d, Linear)"
        else:
            continue
        plan.skipped.append(LayerInfo(name=name, kind=type(mod).__name__, numel=weight.numel(),
                                      shape=list(weight.shape), role="skipped", reason=reason, calls=0))
    for pname, p in model.named_parameters():
        if p.dim() >= 2 and pname.rpartition(".")[2] != "weight":
            owner = pname.rpartition(".")[0]
            plan.skipped.append(LayerInfo(
                name=pname, kind=f"{type(modules.get(owner, model)).__name__} parameter", numel=p.numel(),
                shape=list(p.shape), role="skipped", calls=0,
                reason="a parameter, not a layer weight (stays float; e.g. a position embedding or class token)"))
    if not plan.decided:
        raise UsageError("no decided layers: the model has no Conv/Linear layers left after "
                         "layers.include/exclude and the fixed first and last layers")
    return plan
