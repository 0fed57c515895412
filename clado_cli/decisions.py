"""Decision files: the one schema (clado_cli/schemas/decision.schema.json, its method list taken
from the method registry), reading and validating them, the one writer of decision files and
their index, and the config a decision was made with."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .errors import InputError

SCHEMA_ID = "clado.decision/1"


def sizes_triple(decided_bytes: float, fixed_bytes: float) -> Dict[str, float]:
    """The sizes every result reports: decided layers, fixed layers, and their total
    (docs/methods.md, "Sizes and budgets")."""
    return {"decided_bytes": float(decided_bytes), "fixed_bytes": float(fixed_bytes),
            "total_bytes": float(decided_bytes) + float(fixed_bytes)}


def bops_report(macs: Mapping[str, int], bits_by_layer: Mapping[str, int], a_bits: Union[int, Mapping[str, int]],
                fixed: Sequence[str], fixed_w_bits: int, fixed_a_bits: int) -> Dict[str, Dict[str, int]]:
    """MACs and BOPs (MACs · weight bits · activation bits) of the decided layers at their
    widths and of the fixed layers at theirs (docs/methods.md, "Sizes and budgets"). `a_bits`:
    the decided layers' one activation width, or each layer's."""
    act = a_bits if isinstance(a_bits, Mapping) else {n: a_bits for n in bits_by_layer}
    decided = sum(macs[n] * int(b) * int(act[n]) for n, b in bits_by_layer.items())
    fixed_bops = sum(macs[n] * fixed_w_bits * fixed_a_bits for n in fixed)
    return {"macs": {"decided": sum(macs[n] for n in bits_by_layer), "fixed": sum(macs[n] for n in fixed)},
            "bops": {"decided": decided, "fixed": fixed_bops, "total": decided + fixed_bops}}


def option_keys(decision: Mapping[str, Any], act_options: bool) -> Dict[str, Any]:
    """Each decided layer's option as QuantModel applies it: its weight width, or, when the
    options differ in activation width, the pair (weight bits, activation bits)."""
    if act_options:
        return {n: (int(s["w_bits"]), int(s["a_bits"])) for n, s in decision["layers"].items()}
    return {n: int(s["w_bits"]) for n, s in decision["layers"].items()}


def schema() -> Dict[str, Any]:
    """The decision JSON Schema, with `method` restricted to the registered methods."""
    from .methods import method_names

    s = json.loads(resources.files("clado_cli.schemas").joinpath("decision.schema.json").read_text())
    s["properties"]["method"] = {"enum": method_names()}
    return s


def validate_decision(d: Any, where: str = "decision") -> Dict[str, Any]:
    from .plaindata import validate_schema

    return validate_schema(d, schema(), f"{where} is not a valid clado decision", InputError)


def read_decision(path) -> Dict[str, Any]:
    from .plaindata import load_json_text

    p = Path(path)
    if "\x00" in str(path) or not p.is_file():
        raise InputError(f"decision file not found: {str(path)!r}")
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise InputError(f"decision file {p} is not valid JSON: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError(f"cannot read decision file {p}: {exc.strerror or exc}") from None
    return validate_decision(load_json_text(text, f"decision file {p}", InputError), str(p))


def decision_file_name(d: Mapping[str, Any]) -> str:
    """`decision-<method>-<budget>.json`, the budget as given without colons."""
    return f"decision-{d['method']}-{d['budget']['given'].replace(':', '').replace('/', '_')}.json"


def write_decisions(out_dir: Path, decisions: Sequence[Mapping[str, Any]], fingerprint: str) -> List[Path]:
    """Write each decision as `decision_file_name(d)` under out_dir, and index.json listing
    them (file, method, budget, sizes, predicted loss increase, optimal)."""
    from .jsonio import write_json

    out_dir = Path(out_dir)
    paths, index = [], []
    for d in decisions:
        name = decision_file_name(d)
        write_json(out_dir / name, d)
        paths.append(out_dir / name)
        index.append({"file": name, "method": d["method"], "budget": d["budget"], "sizes": d["sizes"],
                      "predicted_loss_increase": d["predicted_loss_increase"], "optimal": d["solver"]["optimal"]})
    write_json(out_dir / "index.json", {"fingerprint": fingerprint, "decisions": index})
    return paths


def flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"data": {"bs": 8}} -> {"data.bs": 8}."""
    flat: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


# keys of a decision's embedded config that a shared file must not set: where clado writes
# (the cache) is the user's choice, never the file's
UNTRUSTED_KEYS = ("cache_dir",)


def config_of_decision(d: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None,
                       flags: Optional[Mapping[str, str]] = None, where: str = "decision"):
    """The set-up a decision was made with (its `config`), as far as a data file may choose it,
    with dotted `overrides` (the user's flags) on top.

    A decision is a file people share, so opening one must never run code or write where the
    user did not choose: a model given as a factory (`file.py:fn`, `pkg.mod:fn`) is refused
    unless the user names that model in `overrides["model.name"]`, and the cache directory is
    the user's (`overrides["cache_dir"]` or the default), never the file's. A decision solved on
    sensitivities from a file names no model: the user names it."""
    from .config import Config, load_config
    from .errors import UsageError

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    src = d.get("sensitivities") or {}
    if src.get("source") == "file" and "model.name" not in overrides:
        raise UsageError(f"{where} was solved on sensitivities from the file {src.get('file')} and names no "
                         f"network: pass model or a config", params=("model",))
    flat = flatten(d["config"])
    for key in UNTRUSTED_KEYS:
        flat.pop(key, None)
    model = flat.get("model.name", Config().model.name)
    if isinstance(model, str) and ":" in model and overrides.get("model.name") != model:
        raise UsageError(f"{where} names the factory {model!r} to build its network, which would import and run "
                         f"code: pass it yourself (model {model}, or a config) if you trust it", params=("model",))
    flat.update(overrides)
    return load_config(None, flat, flags=flags, where=f"{where}: config")
