"""Bad input through the command line: every case must end in exactly one `Error: ...` line on
stderr that names the problem, the documented exit code (clado_cli/errors.py: 2 usage, 3 input
data, 4 solver, 5 environment), no traceback, and no file left half-written (no temp files, no
partial outputs, and the cache files that were there before are untouched).

The commands run in-process through Typer's CliRunner, so a case may monkeypatch (solver
availability) and costs no interpreter start. One module-level fixture prepares a small cache
(embedded model on digits, bs 16, one CLADO and one MPQCO batch) and a decision JSON; every case
works on its own copy of them.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
from typer.testing import CliRunner

from clado_cli.cli import app

SMALL_YAML = """\
data:
  bs: 16
  sb: 0
  eb: 0
  calibration_size: 128
  eval_size: 64
device: cpu
"""

USAGE, INPUT, SOLVER, ENVIRONMENT = 2, 3, 4, 5


def invoke(*args) -> "object":
    return CliRunner().invoke(app, [str(a) for a in args])


def _installed(name: str) -> bool:
    try:
        import cvxpy

        return name.upper() in cvxpy.installed_solvers()
    except Exception:  # pragma: no cover
        return False


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread for this module's in-process commands: with two, a 2-core machine that is
    busy with anything else spends most of its time spinning (prep measured 8x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_session):
    """A config, a cache (calibration reused from the shared session), CLADO and MPQCO batch 0,
    and a decision for that cache."""
    base = tmp_path_factory.mktemp("bad_input")
    cache_dir = base / "cache"
    cfg = base / "small.yaml"
    cfg.write_text(SMALL_YAML + f"cache_dir: {cache_dir}\n")
    from clado_cli.config import load_config
    from clado_cli.session import Session

    fp = Session(load_config(cfg)).fingerprint
    if fp == shared_session.fingerprint:  # reuse the shared session's calibration when it is this config's
        (cache_dir / fp).mkdir(parents=True)
        for name in ("manifest.json", "quant_state.safetensors", "quant_state.json"):
            shutil.copy(shared_session.cache.root / name, cache_dir / fp / name)
    for method in ("clado", "mpqco"):
        r = invoke("prep", method, "-c", cfg, "--cache-dir", cache_dir, "-q", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["fingerprint"] == fp
    decision = base / "decision.json"
    r = invoke("optimize", "-c", cfg, "--cache-dir", cache_dir, "-m", "clado", "--avg-bits", "4",
               "-o", decision, "-q")
    assert r.exit_code == 0, r.output
    state = base / "embedded-state.pt"  # the float weights, to build weights files from
    torch.save(shared_session.float_model.state_dict(), state)
    return {"cfg": cfg, "cache_dir": cache_dir, "fp": fp, "decision": decision, "state": state}


@dataclass
class Ctx:
    """One case's private copy of the prepared files."""

    tmp: Path
    cfg: Path
    cache_dir: Path
    fp: str
    decision: Path
    state: Path

    @property
    def cache(self) -> Path:
        return self.cache_dir / self.fp

    @property
    def out(self) -> Path:  # where a command that would write an output is pointed
        return self.tmp / "out" / "result.json"

    def c(self) -> List[str]:
        return ["-c", str(self.cfg), "--cache-dir", str(self.cache_dir), "-q"]

    def write(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p

    def decision_with(self, edit: Callable[[dict], None]) -> Path:
        d = json.loads(self.decision.read_text())
        edit(d)
        return self.write("edited-decision.json", json.dumps(d))


@pytest.fixture
def ctx(prepared, tmp_path) -> Ctx:
    shutil.copytree(prepared["cache_dir"], tmp_path / "cache")
    (tmp_path / "small.yaml").write_text(SMALL_YAML + f"cache_dir: {tmp_path / 'cache'}\n")
    shutil.copy(prepared["decision"], tmp_path / "decision.json")
    return Ctx(tmp_path, tmp_path / "small.yaml", tmp_path / "cache", prepared["fp"], tmp_path / "decision.json",
               prepared["state"])


# -- inputs the cases build --------------------------------------------------------------------------------------

def _embedded_state(ctx: Ctx) -> Dict[str, torch.Tensor]:
    return torch.load(ctx.state, weights_only=True)


def _weights(ctx: Ctx, kind: str) -> Path:
    p = ctx.tmp / f"weights-{kind}.pt"
    sd = _embedded_state(ctx)
    if kind == "truncated":
        torch.save(sd, p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "wrong-shape":
        name = next(k for k, v in sd.items() if v.dim() == 4)
        sd[name] = torch.zeros(*sd[name].shape[:-1], sd[name].shape[-1] + 2)
        torch.save(sd, p)
    elif kind == "missing-key":
        sd.pop(next(iter(sd)))
        torch.save(sd, p)
    elif kind == "pickle-only":
        torch.save({"model": torch.nn.Linear(2, 2), "epoch": 3}, p)  # a whole module: needs pickle
    elif kind == "raw-pickle":  # not a torch file at all: a bare pickle of a dict
        p.write_bytes(pickle.dumps({k: v.numpy() for k, v in sd.items()}, protocol=4))
    elif kind == "nan":
        name = next(k for k, v in sd.items() if v.dim() == 4)
        sd[name] = sd[name].clone()
        sd[name].view(-1)[3] = float("nan")
        torch.save(sd, p)
    elif kind == "garbage-safetensors":
        p = ctx.tmp / "weights.safetensors"
        p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    return p


def _batch(ctx: Ctx, method_dir: str = "Ltilde", k: int = 0) -> Path:
    return ctx.cache / method_dir / f"batch_{k:05d}.npz"


def _rewrite_batch(ctx: Ctx, edit: Callable[[dict], None], method_dir: str = "Ltilde") -> None:
    """Change a cached batch's arrays and give it a matching checksum, as a careless or hostile
    edit would: the checksum alone then cannot catch it."""
    import io

    import numpy as np

    p = _batch(ctx, method_dir)
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    p.write_bytes(buf.getvalue())
    _edit_json(p.with_suffix(".json"), lambda s: s.update(sha256=hashlib.sha256(buf.getvalue()).hexdigest()))


def _rename_array(a: dict) -> None:
    a["Lt"] = a.pop("Ltilde")


def _nan_entry(a: dict) -> None:
    a["Ltilde"] = a["Ltilde"].copy()
    a["Ltilde"][0, 0] = float("nan")


def _clado_home_file(mp) -> None:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="clado-home-is-a-file-")
    os.close(fd)
    mp.setenv("CLADO_HOME", path)


def _images_link_outside(ctx: Ctx) -> List[str]:
    root = ctx.tmp / "imgs"
    root.mkdir()
    outside = ctx.tmp / "elsewhere"
    outside.mkdir()
    (root / "away").symlink_to(outside, target_is_directory=True)
    return ["layers", "--model", "resnet18", "--weights", "none", "--data", f"images:{root}", "-q"]


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _edit_json(p: Path, edit: Callable[[dict], None]) -> None:
    d = json.loads(p.read_text())
    edit(d)
    p.write_text(json.dumps(d))


def _other_fingerprint_cache(ctx: Ctx) -> Path:
    """A copy of the cache whose manifest differs (another loss), under its own fingerprint."""
    from clado_cli.store import fingerprint_of

    src = ctx.cache
    tmp = ctx.tmp / "other-cache" / "tmp"
    shutil.copytree(src, tmp)
    _edit_json(tmp / "manifest.json", lambda m: m.update(loss="kl"))
    fp = fingerprint_of(json.loads((tmp / "manifest.json").read_text()))
    return tmp.rename(tmp.parent / fp)


def _renamed_cache(ctx: Ctx) -> Path:
    """The cache copied under another fingerprint's name."""
    dst = ctx.tmp / "renamed" / ("0" * 16)
    shutil.copytree(ctx.cache, dst)
    return dst


def _read_only_dir(ctx: Ctx) -> Path:
    d = ctx.tmp / "read-only"
    d.mkdir()
    d.chmod(0o555)
    return d


def _file_in_the_way(ctx: Ctx) -> Path:
    f = ctx.tmp / "not-a-dir"
    f.write_text("a file where a directory should be\n")
    return f


# -- the matrix --------------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    args: Callable[[Ctx], List[str]]
    code: int
    pattern: str  # a regex the error line must contain (names the problem)
    patch: Optional[Callable[[pytest.MonkeyPatch], None]] = None
    marks: list = field(default_factory=list)


def _no_solvers(mp):
    import cvxpy

    mp.setattr(cvxpy, "installed_solvers", lambda: ["CLARABEL", "SCS", "OSQP"])


def _yaml(text):
    return lambda x: ["prep", "clado", "-c", x.write("bad.yaml", text), "--cache-dir", x.cache_dir, "-q"]


def _prep(*flags):
    return lambda x: ["prep", "clado", *x.c(), *flags]


def _opt(*flags):
    return lambda x: ["optimize", *x.c(), "-m", "clado", "-o", x.out, *flags]


def _eval_decision(edit):
    return lambda x: ["evaluate", x.decision_with(edit), "-c", x.cfg, "-q", "-o", x.out]


ROOT_ONLY_SKIP = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                                    reason="root writes into read-only directories")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")

CASES = [
    # --- configuration: usage errors (2), or a missing file (3) ---
    Case("config-missing", lambda x: ["prep", "clado", "-c", x.tmp / "nope.yaml", "-q"], INPUT,
         r"config file not found: .*nope\.yaml"),
    Case("config-missing-markup-like-name", lambda x: ["prep", "clado", "-c", x.tmp / "conf[/b][red].yaml", "-q"],
         INPUT, r"config file not found: .*conf\[/b\]\[red\]\.yaml"),
    Case("config-missing-long-path", lambda x: ["prep", "clado", "-c", x.tmp / ("d" * 200 + ".yaml"), "-q"],
         INPUT, r"config file not found: .*d{200}\.yaml"),
    Case("yaml-syntax-error", _yaml("data:\n  bs: [16\n"), USAGE, r"bad\.yaml: YAML syntax error at line \d+"),
    Case("yaml-tab-indent", _yaml("data:\n\tbs: 16\n"), USAGE, r"bad\.yaml: YAML syntax error"),
    Case("yaml-not-a-mapping", _yaml("- data\n- model\n"), USAGE, r"top level must be a mapping"),
    Case("yaml-python-tag", _yaml("data: !!python/object/apply:os.system ['true']\n"), USAGE,
         r"bad\.yaml: YAML syntax error"),
    Case("unknown-key", _yaml("data:\n  bss: 16\n"), USAGE, r"data\.bss: unknown key"),
    Case("unknown-section", _yaml("modle:\n  name: embedded\n"), USAGE, r"modle: unknown key"),
    Case("wrong-type-int", _yaml("data:\n  bs: sixteen\n"), USAGE, r"data\.bs: Input should be a valid integer"),
    Case("wrong-type-list", _yaml("quant:\n  weight_candidates: 4\n"), USAGE,
         r"quant\.weight_candidates: Input should be a valid list"),
    Case("wrong-type-section", _yaml("data: 16\n"), USAGE, r"data: Input should be"),
    Case("bs-zero-flag", _prep("--bs", "0"), USAGE, r"--bs: Input should be greater than 0"),
    Case("bs-negative-flag", _prep("--bs", "-16"), USAGE, r"--bs: Input should be greater than 0"),
    Case("bs-zero-file", _yaml("data:\n  bs: 0\n"), USAGE, r"bad\.yaml: data\.bs: Input should be greater than 0"),
    Case("stack-zero-flag", _prep("--stack", "0"), USAGE, r"--stack: .*must be auto or a positive integer, not 0"),
    Case("stack-word-flag", _prep("--stack", "lots"), USAGE, r"--stack 'lots': use auto or a positive integer"),
    Case("stack-string-file", _yaml("prep:\n  stack: '3'\n"), USAGE, r"bad\.yaml: prep\.stack: .*must be auto or a positive integer, not '3'"),
    Case("stack-on-hawq", lambda x: ["prep", "hawq", *x.c(), "--stack", "3"], USAGE,
         r"--stack does not apply to prep hawq \(only to prep clado\)"),
    Case("engine-on-hawq", lambda x: ["prep", "hawq", *x.c(), "--engine", "reference"], USAGE,
         r"--engine does not apply to prep hawq"),
    Case("estimator-on-clado", _prep("--estimator", "all-layers"), USAGE, r"--estimator does not apply to prep clado"),
    Case("sb-after-eb-flags", _prep("--sb", "3", "--eb", "1"), USAGE, r"sb \(3\) must not exceed eb \(1\)"),
    Case("sb-after-eb-file", _yaml("data:\n  sb: 5\n  eb: 2\n"), USAGE, r"sb \(5\) must not exceed eb \(2\)"),
    Case("eb-beyond-data", _prep("--eb", "5000"), USAGE, r"--eb 5000 is beyond the data: .*\(batches 0\.\.\d+\)"),
    Case("unknown-model", _prep("--model", "resnet_nonesuch"), USAGE, r"unknown model 'resnet_nonesuch'"),
    Case("unknown-dataset", _prep("--data", "cifar1000"), USAGE, r"unknown data set 'cifar1000'"),
    Case("dataset-without-path", _prep("--data", "idx"), USAGE, r"needs a path"),
    Case("threads-zero", _prep("--threads", "0"), USAGE, r"--threads: Input should be greater than 0"),
    Case("threads-negative", _prep("--threads", "-2"), USAGE, r"--threads: Input should be greater than 0"),
    Case("device-unknown", _prep("--device", "tpu"), USAGE, r"--device: Input should be 'cpu', 'cuda' or 'auto'"),
    Case("shard-malformed", _prep("--shard", "2/2"), USAGE, r"--shard '2/2': need 0 <= K < N"),
    # --- data and model files: input errors (3) ---
    Case("data-path-missing", lambda x: ["prep", "clado", *x.c(), "--data", f"idx:{x.tmp / 'no-mnist'}"], INPUT,
         r"data path not found: .*no-mnist"),
    Case("weights-missing", lambda x: ["prep", "clado", *x.c(), "--weights", x.tmp / "nope.pt"], INPUT,
         r"weights file not found: .*nope\.pt"),
    Case("weights-truncated", lambda x: ["prep", "clado", *x.c(), "--weights", _weights(x, "truncated")], INPUT,
         r"weights file .*weights-truncated\.pt is truncated or not a state_dict"),
    Case("weights-wrong-shapes", lambda x: ["prep", "clado", *x.c(), "--weights", _weights(x, "wrong-shape")], INPUT,
         r"does not fit the model: .* has shape \(.*\), the model expects \(.*\)"),
    Case("weights-missing-key", lambda x: ["prep", "clado", *x.c(), "--weights", _weights(x, "missing-key")], INPUT,
         r"does not fit the model: missing '"),
    Case("weights-pickle-only", lambda x: ["prep", "clado", *x.c(), "--weights", _weights(x, "pickle-only")], INPUT,
         r"needs pickle to load \(refused"),
    Case("weights-raw-pickle", lambda x: ["prep", "clado", *x.c(), "--weights", _weights(x, "raw-pickle")], INPUT,
         r"weights file .*weights-raw-pickle\.pt (needs pickle|is truncated or not a state_dict)"),
    Case("config-not-text", lambda x: ["prep", "clado", "-c", _weights(x, "truncated"), "-q"], USAGE,
         r"weights-truncated\.pt: not a YAML text file \(invalid UTF-8"),
    Case("weights-bad-safetensors",
         lambda x: ["prep", "clado", *x.c(), "--weights", _weights(x, "garbage-safetensors")], INPUT,
         r"not a readable safetensors file"),
    # --- budgets: usage errors (2) ---
    Case("budget-unparsable", _opt("--size-budget", "4XB"), USAGE, r"invalid size '4XB'"),
    Case("budget-zero", _opt("--size-budget", "0"), USAGE, r"invalid size '0': it must be at least 1 byte"),
    Case("budget-negative", _opt("--size-budget", "-2MB"), USAGE, r"invalid size '-2MB'"),
    Case("budget-infeasible", _opt("--size-budget", "1KB"), USAGE,
         r"size budget 1000 bytes is below the smallest possible decided size \d+ bytes"),
    Case("avg-bits-zero", _opt("--avg-bits", "0"), USAGE, r"invalid average bit width"),
    Case("avg-bits-infeasible", _opt("--budgets", "avg:1"), USAGE, r"below the smallest possible decided size"),
    Case("budget-two-given", _opt("--avg-bits", "4", "--size-budget", "40KB"), USAGE,
         r"give at most one of --size-budget, --avg-bits or --budgets"),
    Case("budget-none-given", _opt(), USAGE, r"give a budget: a size \(--size-budget/--budgets/--avg-bits\), --bops-budget or --budget NAME=VALUE"),
    Case("method-unknown", lambda x: ["optimize", *x.c(), "-m", "greedy", "--avg-bits", "4"], USAGE,
         r"--method 'greedy'"),
    Case("solver-unknown", _opt("--avg-bits", "4", "--solver", "cplexx"), USAGE, r"unknown solver 'cplexx'"),
    Case("time-limit-zero", _opt("--avg-bits", "4", "--time-limit", "0"), USAGE,
         r"--time-limit: Input should be greater than 0"),
    # --- caches: input errors (3) ---
    Case("cache-renamed-fingerprint", lambda x: ["optimize", *x.c(), "--cache", _renamed_cache(x), "-m", "clado",
                                                  "--avg-bits", "4", "-o", x.out], INPUT,
         r"manifest hashes to [0-9a-f]{16}, not to the directory name 0{16}"),
    Case("cache-manifest-of-another-config",
         lambda x: (_edit_json(x.cache / "manifest.json", lambda m: m.update(loss="kl")), _prep())[1](x), INPUT,
         r"holds a manifest that does not match this config"),
    Case("cache-batch-from-another-fingerprint",
         lambda x: (_edit_json(_batch(x).with_suffix(".json"), lambda s: s.update(fingerprint="0" * 16)),
                    _opt("--avg-bits", "4"))[1](x), INPUT,
         r"batch_00000\.npz belongs to fingerprint '0{16}'"),
    Case("cache-merge-other-fingerprint",
         lambda x: ["cache", "merge", x.cache, _other_fingerprint_cache(x), "--into", x.tmp / "merged", "-q"], INPUT,
         r"cannot merge caches of different fingerprints"),
    Case("cache-batch-truncated", lambda x: (_truncate(_batch(x)), _opt("--avg-bits", "4"))[1](x), INPUT,
         r"batch_00000\.npz fails its checksum"),
    Case("cache-batch-checksum", lambda x: (_flip_byte(_batch(x, "DELTAL")),
                                            _opt("--avg-bits", "4", "-m", "mpqco"))[1](x), INPUT,
         r"DELTAL/batch_00000\.npz fails its checksum"),
    Case("cache-sidecar-garbage", lambda x: (_batch(x).with_suffix(".json").write_text("{\"sha256\": "),
                                             _opt("--avg-bits", "4"))[1](x), INPUT,
         r"batch sidecar .*batch_00000\.json is not valid JSON"),
    Case("cache-quant-state-truncated",
         lambda x: (_truncate(x.cache / "quant_state.safetensors"),
                    ["evaluate", "-c", x.cfg, "--uniform", "8", "-q", "-o", x.out])[1], INPUT,
         r"quant_state\.safetensors fails its checksum"),
    Case("cache-verify-fails", lambda x: (_flip_byte(_batch(x)), ["cache", "verify", "--cache-dir", x.cache_dir])[1],
         INPUT, r"1 cache file\(s\) failed verification: .*fails its checksum"),
    Case("cache-batches-not-cached", _opt("--avg-bits", "4", "--sb", "3", "--eb", "4"), INPUT,
         r"batches 3\.\.4 of the CLADO sensitivities are not cached"),
    Case("cache-method-not-prepped", lambda x: ["optimize", *x.c(), "-m", "hawq", "--avg-bits", "4"], INPUT,
         r"no HAWQ-V3 traces are cached .*run clado prep hawq"),
    # --- decisions: input errors (3) ---
    Case("decision-missing", lambda x: ["evaluate", x.tmp / "nope.json", "-q"], INPUT, r"decision file not found"),
    Case("decision-not-json", lambda x: ["evaluate", x.write("d.json", "{\"schema\": "), "-q"], INPUT,
         r"decision file .*d\.json is not valid JSON"),
    Case("decision-schema", _eval_decision(lambda d: d.pop("layers")), INPUT,
         r"is not a valid clado decision: \(top level\): 'layers' is a required property"),
    Case("decision-another-model", _eval_decision(lambda d: (d["cache"].update(fingerprint="f" * 16),
                                                             d["model"].update(name="resnet18"))), INPUT,
         r"was made for another model or config \(cache fingerprint f{16}"),
    Case("decision-unknown-layer", _eval_decision(lambda d: d["layers"].update({"head.conv9": {"w_bits": 4, "a_bits": 8}})),
         INPUT, r"does not fit model embedded: unknown layer 'head\.conv9'"),
    Case("decision-missing-layer", _eval_decision(lambda d: d["layers"].pop(next(iter(d["layers"])))), INPUT,
         r"does not fit model embedded: no bits for layer"),
    Case("decision-bits-outside-candidates",
         _eval_decision(lambda d: next(iter(d["layers"].values())).update(w_bits=3)), INPUT,
         r"has w_bits 3, not one of the candidates \[2, 4, 8\]"),
    Case("uniform-not-a-candidate", lambda x: ["evaluate", "-c", x.cfg, "--uniform", "3", "-q", "-o", x.out], INPUT,
         r"--uniform 3: not one of the candidate widths"),
    # --- solvers (4) ---
    Case("solver-none-installed", _opt("--avg-bits", "4", "--psd", "clip"), SOLVER, r"no MIP solver installed",
         patch=_no_solvers),
    Case("solver-not-installed", _opt("--avg-bits", "4", "--solver", "highs"), SOLVER,
         r"solver highs is not installed", patch=_no_solvers),
    Case("solver-time-limit-no-solution", _opt("--avg-bits", "4", "--solver", "scip", "--time-limit", "1e-9",
                                               "--psd", "shift"),
         SOLVER, r"scip found no feasible solution within the time limit",
         marks=[pytest.mark.skipif(not _installed("scip"), reason="SCIP is not installed")]),
    # --- environment (5) ---
    Case("cache-dir-not-writable-file-in-the-way",
         lambda x: ["prep", "clado", "-c", x.cfg, "--cache-dir", _file_in_the_way(x) / "cache", "-q"],
         ENVIRONMENT, r"cache directory .*not-a-dir/cache is not writable"),
    Case("cache-dir-read-only",
         lambda x: ["prep", "clado", "-c", x.cfg, "--cache-dir", _read_only_dir(x) / "cache", "-q"],
         ENVIRONMENT, r"is not writable", marks=[ROOT_ONLY_SKIP]),
    Case("output-not-writable",
         lambda x: ["optimize", *x.c(), "-m", "clado", "--avg-bits", "4", "-o", _file_in_the_way(x) / "d.json"],
         ENVIRONMENT, r"cannot write .*not-a-dir/d\.json"),
    Case("device-cuda-without-gpu", _prep("--device", "cuda"), ENVIRONMENT, r"--device cuda: no CUDA GPU",
         marks=[NO_GPU]),
    # --- hardening, round 2 (issue 13): one case per class ---
    Case("decision-factory-not-run", lambda x: ["evaluate", x.decision_with(
        lambda d: d["config"]["model"].update(name=str(x.tmp / "evil.py") + ":build")), "-q", "-o", x.out],
         USAGE, r"names the factory .*evil\.py:build.*--model .*evil\.py:build"),
    Case("cache-batch-arrays-renamed", lambda x: (_rewrite_batch(x, _rename_array), _opt("--avg-bits", "4")(x))[1],
         INPUT, r"Ltilde/batch_00000\.npz lacks the array 'Ltilde' of the CLADO sensitivities"),
    Case("cache-batch-nan", lambda x: (_rewrite_batch(x, _nan_entry), _opt("--avg-bits", "4")(x))[1],
         INPUT, r"array 'Ltilde' has 1 entries that are not finite"),
    Case("cache-verify-checks-content", lambda x: (_rewrite_batch(x, _rename_array),
                                                   ["cache", "verify", "--cache-dir", x.cache_dir])[1],
         INPUT, r"failed verification: .*lacks the array 'Ltilde'"),
    Case("cache-sidecar-n-not-int", lambda x: (_edit_json(_batch(x).with_suffix(".json"),
                                                          lambda s: s.update(n="lots")), _opt("--avg-bits", "4")(x))[1],
         INPUT, r"sidecar says 'lots'"),
    Case("cache-verify-missing-dir", lambda x: ["cache", "verify", "--cache-dir", x.tmp / "missing"], INPUT,
         r"cache directory not found"),
    Case("weights-nan", lambda x: _prep("--weights", _weights(x, "nan"))(x), INPUT, r"NaN or inf"),
    Case("optimize-eb-huge", _opt("--avg-bits", "4", "--sb", "0", "--eb", str(10 ** 12)), INPUT,
         r"batches 0\.\.1000000000000 of the CLADO sensitivities are not cached"),
    Case("optimize-sb-negative", _opt("--avg-bits", "4", "--sb", "-1", "--eb", "0"), USAGE,
         r"--sb \(-1\) must be 0 or more"),
    Case("run-unknown-method", lambda x: ["run", *x.c(), "--methods", "clado,foo", "--budgets", "avg:4",
                                          "--out-dir", x.tmp / "run"], USAGE, r"unknown method 'foo'"),
    Case("run-infeasible-budget-before-prep", lambda x: ["run", *x.c(), "--methods", "hawq", "--budgets", "1B",
                                                         "--out-dir", x.tmp / "run"], USAGE, r"budget"),
    Case("run-out-dir-is-a-file", lambda x: ["run", *x.c(), "--budgets", "avg:4",
                                             "--out-dir", x.write("plain-file", "x")], ENVIRONMENT, r"is a file"),
    Case("prep-dry-run-shard-owns-nothing", _prep("--sb", "0", "--eb", "0", "--shard", "1/2", "--dry-run"), USAGE,
         r"owns none of batches 0\.\.0"),
    Case("config-nested-deeply", _yaml("data: " + "[" * 3000 + "]" * 3000 + "\n"), USAGE, r"nested"),
    Case("config-integer-beyond-64-bits", _yaml("data:\n  bs: 1" + "0" * 30 + "\n"), USAGE, r"beyond 64 bits"),
    Case("config-nul-in-path", _yaml('cache_dir: "cache\\0x"\n'), USAGE, r"NUL character"),
    Case("config-width-1", _yaml("quant:\n  weight_candidates: [1, 2]\n"), USAGE, r"widths must lie in 2\.\.16"),
    Case("heatmap-not-png", lambda x: ["inspect", *x.c(), "--heatmap", x.tmp / "out" / "h.txt"], USAGE,
         r"give a file name ending in \.png"),
    Case("decision-fixed-bits-not-int", _eval_decision(
        lambda d: next(iter(d["fixed_layers"].values())).update(w_bits="lots")), INPUT, r"not a valid clado decision"),
    Case("decision-a-bits-edited", _eval_decision(
        lambda d: next(iter(d["layers"].values())).update(a_bits=4)), INPUT, r"has a_bits 4"),
    Case("clado-home-is-a-file", lambda x: ["layers", "--model", "embedded", "-q"], ENVIRONMENT,
         r"CLADO_HOME", patch=_clado_home_file),
    Case("images-link-outside", _images_link_outside, INPUT, r"links outside the data directory"),
]


def _snapshot(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_error(result, code: int, pattern: str) -> str:
    """The common contract: exit code, one `Error:` line naming the problem, no traceback."""
    import re

    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}: {result.stderr!r}"
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    line = lines[0]
    assert line.startswith("Error: "), line
    assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
    return line


def test_cases_cover_every_exit_code():
    assert {c.code for c in CASES} == {USAGE, INPUT, SOLVER, ENVIRONMENT}
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, ctx: Ctx, monkeypatch):
    args = case.args(ctx)
    before = _snapshot(ctx.cache)
    if case.patch:
        case.patch(monkeypatch)
    result = invoke(*args)
    check_error(result, case.code, case.pattern)
    # nothing half-written: no temp files, no output, the cache as it was (lock files aside)
    assert not [p for p in ctx.tmp.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes], \
        list(ctx.tmp.rglob("*.tmp*"))
    assert not ctx.out.exists()
    after = {k: v for k, v in _snapshot(ctx.cache).items() if not k.endswith(".lock")}
    assert after == {k: v for k, v in before.items() if not k.endswith(".lock")}


def test_click_level_bad_value_is_a_usage_error(ctx: Ctx):
    """`--threads abc` and unknown options are refused by the option parser itself; they are
    still one `Error:` line naming the flag, exit 2, no traceback."""
    for args in (["--threads", "abc"], ["--bogus"]):
        r = invoke("prep", "clado", *ctx.c(), *args)
        assert r.exit_code == USAGE
        assert "Traceback" not in r.output
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and args[0] in lines[0]


def test_time_limit_with_an_incumbent_is_flagged_not_an_error(ctx: Ctx, monkeypatch):
    """A solver that stops at its time limit with a feasible incumbent gives a decision marked
    non-optimal (status time_limit, a warning), exit 0 -- here forced by reporting the solver's
    outcome as a time limit after a real solve."""
    from clado_cli.optimize.solvers import SOLVERS

    backend = SOLVERS.get("highs" if _installed("highs") else "scip")
    monkeypatch.setattr(backend, "outcome", lambda problem: ("time_limit", False, None))
    r = invoke("optimize", *ctx.c(), "-m", "clado,mpqco", "--avg-bits", "4", "--solver", backend.name,
               "--psd", "shift", "--out-dir", ctx.tmp / "decisions")
    assert r.exit_code == 0, r.output
    assert "NO (time_limit)" in r.stdout
    for name in ("decision-clado-avg4.json", "decision-mpqco-avg4.json"):
        d = json.loads((ctx.tmp / "decisions" / name).read_text())
        assert d["solver"]["status"] == "time_limit" and d["solver"]["optimal"] is False
        assert any("not proven optimal" in w for w in d["warnings"])
    index = json.loads((ctx.tmp / "decisions" / "index.json").read_text())
    assert [e["optimal"] for e in index["decisions"]] == [False, False]


def test_exact_without_any_solver_answers_with_the_heuristic_marked_not_optimal(ctx: Ctx, monkeypatch):
    _no_solvers(monkeypatch)
    r = invoke("optimize", *ctx.c(), "-m", "clado", "--avg-bits", "4", "--psd", "exact", "-o", ctx.out)
    assert r.exit_code == 0, r.output
    d = json.loads(ctx.out.read_text())
    assert d["solver"]["optimal"] is False and "heuristic" in (d["solver"]["solver"] + d["solver"]["status"])


@pytest.mark.skipif(not _installed("highs"), reason="HiGHS is not installed")
def test_real_time_limit_hit_with_incumbent_is_flagged(ctx: Ctx):
    """HiGHS with a time limit of a nanosecond stops with its heuristic's incumbent: the decision
    is written, flagged time_limit / not optimal."""
    r = invoke("optimize", *ctx.c(), "-m", "mpqco", "--avg-bits", "4", "--solver", "highs",
               "--time-limit", "1e-9", "-o", ctx.out)
    if r.exit_code == SOLVER:  # no incumbent at all is the other documented outcome
        check_error(r, SOLVER, r"found no feasible solution")
        return
    assert r.exit_code == 0, r.output
    d = json.loads(ctx.out.read_text())
    assert d["solver"]["optimal"] is False and d["solver"]["status"] == "time_limit"
    assert any("not proven optimal" in w for w in d["warnings"])


def test_error_line_is_literal_and_unwrapped(ctx: Ctx, monkeypatch):
    """Messages are printed as text, never as Rich markup, and never wrapped at the console width."""
    monkeypatch.setenv("COLUMNS", "40")
    name = "[bold]x[/bold] :smile: " + "w" * 120 + ".yaml"
    r = invoke("prep", "clado", "-c", ctx.tmp / name, "-q")
    line = check_error(r, INPUT, r"config file not found")
    assert line.endswith(name)


def test_unexpected_exception_is_one_line(ctx: Ctx, monkeypatch):
    """A bug (an exception clado did not anticipate) still ends in one line and exit 1."""
    from clado_cli.prep import PrepRun

    def boom(*a, **k):
        raise RuntimeError("something broke\nsecond line [/oops]")

    monkeypatch.setattr(PrepRun, "run", boom)
    r = invoke("prep", "clado", *ctx.c())
    check_error(r, 1, r"RuntimeError: something broke \(set CLADO_DEBUG=1 for the traceback\)$")
