"""Constraints on the program from `layers.tie`, `layers.tie_shared_input` and `layers.widths`
(docs/methods.md, "Ties and per-layer widths"). No torch: layer names in, layer indices and
widths out. The shared-input groups come from clado_cli.quant.ties (one forward pass).

Conventions: layers are indices into `decided_names` (the program's layer order); a tie group
is a sorted list of two or more indices, groups are sorted by their first index; allowed widths
are sorted lists of candidate widths, one per decided layer.

- tie: a group's globs match decided layers (fixed and skipped layers are not in the program);
  a glob that matches no decided layer is an error naming it; a group whose globs match only one
  decided layer constrains nothing: it is dropped, with a note. Groups that share a layer, from
  the config or from shared inputs, merge (union-find): ties are transitive.
- widths: for each decided layer, the widths of the LAST entry (in the file's order) whose glob
  matches it; a layer no glob matches keeps every candidate. A glob that matches no decided
  layer, a width not among the candidates and an entry allowing nothing are errors.
- a tie group's layers can only share a width allowed in all of them: `tie_widths` narrows each
  member to that intersection, and an empty one is an error naming the group and its layers.
  Messages number tie groups from 1, in `resolve_ties`' order (as `clado layers` shows them).
"""
from __future__ import annotations

import fnmatch
from typing import Dict, List, Mapping, Optional, Sequence

from .errors import UsageError


def _matching(decided_names: Sequence[str], glob: str) -> List[int]:
    return [i for i, n in enumerate(decided_names) if fnmatch.fnmatchcase(n, glob)]


def _groups(parent: List[int], size: int) -> List[List[int]]:
    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_root: Dict[int, List[int]] = {}
    for i in range(size):
        by_root.setdefault(find(i), []).append(i)
    return sorted((g for g in by_root.values() if len(g) > 1), key=lambda g: g[0])


def resolve_ties(decided_names: Sequence[str], tie_globs: Sequence[Sequence[str]],
                 shared_groups: Sequence[Sequence[str]] = (),
                 notes: Optional[List[str]] = None) -> List[List[int]]:
    """The tie groups as decided-layer indices (see the module's conventions).

    `tie_globs`: the config's `layers.tie`; `shared_groups`: groups of layer names (e.g.
    `shared_input_groups(...)`; a name that is not decided is ignored). `notes`, when a list, gets
    one line per tie group that constrains nothing (its globs match a single decided layer)."""
    index = {n: i for i, n in enumerate(decided_names)}
    parent = list(range(len(decided_names)))

    def union(a: int, b: int) -> None:
        while parent[a] != a:
            a = parent[a]
        while parent[b] != b:
            b = parent[b]
        if a != b:
            parent[max(a, b)] = min(a, b)

    for g, globs in enumerate(tie_globs):
        members: List[int] = []
        for glob in globs:
            found = _matching(decided_names, glob)
            if not found:
                raise UsageError(f"layers.tie[{g}]: {glob!r} matches no decided layer")
            members += found
        members = sorted(set(members))
        if len(members) == 1 and notes is not None:
            notes.append(f"layers.tie[{g}] matches one decided layer ({decided_names[members[0]]}): "
                         f"it ties nothing")
        for m in members[1:]:
            union(members[0], m)
    for group in shared_groups:
        members = sorted({index[n] for n in group if n in index})
        for m in members[1:]:
            union(members[0], m)
    return _groups(parent, len(decided_names))


def resolve_widths(decided_names: Sequence[str], candidates: Sequence[int],
                   widths_cfg: Mapping[str, Sequence[int]]) -> List[List[int]]:
    """The widths allowed for each decided layer: the last matching `widths_cfg` entry's (in
    its order), else every candidate. Errors (one line): a glob matching no decided layer, a
    width not among `candidates`, an entry allowing nothing."""
    cands = sorted(int(b) for b in candidates)
    allowed = [list(cands) for _ in decided_names]
    for glob, ws in widths_cfg.items():
        ws = [int(b) for b in ws]
        if not ws:
            raise UsageError(f"layers.widths: {glob!r} allows no width")
        bad = [b for b in ws if b not in cands]
        if bad:
            raise UsageError(f"layers.widths: {glob!r}: width {bad[0]} is not among the candidates "
                             f"({', '.join(map(str, cands))})")
        found = _matching(decided_names, glob)
        if not found:
            raise UsageError(f"layers.widths: {glob!r} matches no decided layer")
        for i in found:
            allowed[i] = sorted(set(ws))
    return allowed


def tie_widths(decided_names: Sequence[str], allowed: Sequence[Sequence[int]],
               ties: Sequence[Sequence[int]]) -> List[List[int]]:
    """`allowed` with every tie group's members narrowed to the widths all of them allow (the
    widths the program can give them). An empty intersection is an error naming the group and
    each member's widths."""
    out = [sorted(set(int(b) for b in a)) for a in allowed]
    for g, members in enumerate(ties):
        common = set(out[members[0]])
        for m in members[1:]:
            common &= set(out[m])
        if not common:
            shown = ", ".join(f"{decided_names[m]} [{','.join(map(str, out[m]))}]" for m in members[:4])
            more = f" and {len(members) - 4} more" if len(members) > 4 else ""
            raise UsageError(f"tie group {g + 1} ({shown}{more}) has no width every layer allows (layers.widths)")
        for m in members:
            out[m] = sorted(common)
    return out


def tie_of(ties: Sequence[Sequence[int]], size: int) -> List[Optional[int]]:
    """Per decided layer: the number of its tie group (1, 2, ...: `ties`' order), or None."""
    out: List[Optional[int]] = [None] * size
    for g, members in enumerate(ties, start=1):
        for m in members:
            out[m] = g
    return out


def allowed_mask(allowed: Sequence[Sequence[int]], candidates: Sequence[int]) -> List[List[bool]]:
    """Per decided layer and candidate (in `candidates`' order): whether the program may take it."""
    return [[int(b) in set(a) for b in candidates] for a in allowed]
