"""Fuzzing the inputs a user can hand clado: valid configs, decisions and cache sidecars,
mutated (keys dropped or added, values swapped for hostile ones: wrong types, huge integers,
NUL characters, deep nesting, factory specs, paths outside), each run through the command
that reads it. Every run must end in success or in exactly one `Error:` line with a documented
exit code (2 usage, 3 input, 4 solver, 5 environment), never a traceback or exit 1, and leave
no temporary or partial file behind."""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any, List

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clado_cli.cli import app

from .test_bad_input import SMALL_YAML, Ctx, ctx, prepared  # noqa: F401

HOSTILE = [None, True, False, -1, 0, 1, 3, 2 ** 70, -(2 ** 70), 1e308, float("nan"), "", "lots", "a\x00b",
           "../../outside", "evil.py:build", "os:system", [], {}, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
           {"x": {"y": {"z": "deep"}}}, [1, 2, 3], "imagefolder:/nonexistent", "cuda", 64, 2, 8]
OPS = ["replace", "delete", "add", "wrap"]
MUTATION = st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(OPS), st.integers(0, len(HOSTILE) - 1)),
                    min_size=1, max_size=3)
EXAMPLES = 40
TRIED = {"config": 0, "decision": 0, "sidecar": 0}


def _nodes(doc: Any, path=()) -> List[tuple]:
    """Every (container, key) place in a JSON-like tree, in a fixed order."""
    out = []
    if isinstance(doc, dict):
        for k in sorted(doc, key=str):
            out.append((doc, k))
            out += _nodes(doc[k])
    elif isinstance(doc, list):
        for i in range(len(doc)):
            out.append((doc, i))
            out += _nodes(doc[i])
    return out


def mutate(doc: Any, steps) -> Any:
    doc = copy.deepcopy(doc)
    for where, op, value in steps:
        places = _nodes(doc)
        if not places:
            return HOSTILE[value]
        container, key = places[where % len(places)]
        new = copy.deepcopy(HOSTILE[value])
        if op == "replace":
            container[key] = new
        elif op == "delete":
            if isinstance(container, dict):
                del container[key]
            else:
                container.pop(key)
        elif op == "add":
            if isinstance(container, dict):
                container[f"unknown_{where % 7}"] = new
            else:
                container.append(new)
        else:
            container[key] = [container[key]]
    return doc


def check(result, tmp: Path, out: Path) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2, 3, 4, 5), (result.exit_code, result.stderr)
    if result.exit_code:
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), lines
        assert not out.exists()
    assert not [p for p in tmp.rglob("*") if ".tmp" in p.name], list(tmp.rglob("*.tmp*"))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(steps=MUTATION)
def test_mutated_configs(ctx: Ctx, steps):
    base = yaml.safe_load(SMALL_YAML + f"cache_dir: {ctx.cache_dir}\n")
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as d:
        tmp = Path(d)
        doc = mutate(base, steps)
        f = tmp / "c.yaml"
        f.write_text(yaml.safe_dump(doc))
        out = tmp / "never.json"
        check(invoke("prep", "clado", "-c", f, "--dry-run", "-q", "--json"), tmp, out)
        TRIED["config"] += 1


@FUZZ
@given(steps=MUTATION)
def test_mutated_decisions(ctx: Ctx, steps):
    base = json.loads(ctx.decision.read_text())
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as d:
        tmp = Path(d)
        f = tmp / "d.json"
        f.write_text(json.dumps(mutate(base, steps)))
        out = tmp / "out" / "results.json"
        check(invoke("evaluate", f, "-c", ctx.cfg, "--eval-size", "16", "-q", "-o", out), tmp, out)
        TRIED["decision"] += 1


@FUZZ
@given(steps=MUTATION)
def test_mutated_cache_sidecars(ctx: Ctx, steps):
    side = ctx.cache / "Ltilde" / "batch_00000.json"
    original = side.read_text()
    try:
        side.write_text(json.dumps(mutate(json.loads(original), steps)))
        out = ctx.tmp / "never" / "d.json"
        check(invoke("cache", "verify", "--cache-dir", ctx.cache_dir), ctx.tmp, out)
        check(invoke("optimize", *ctx.c(), "-m", "clado", "--avg-bits", "4", "-o", out), ctx.tmp, out)
        if out.exists():
            out.unlink()
        TRIED["sidecar"] += 1
    finally:
        side.write_text(original)


def test_fuzz_tried_them_all():
    """Runs last in this module: how many mutated inputs were tried (reported in the log)."""
    print(f"fuzz: mutated inputs tried: {TRIED}")
    if all(TRIED.values()):
        assert sum(TRIED.values()) >= 3 * EXAMPLES
