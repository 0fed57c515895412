"""The encodings file (`clado.encodings/1`, schema clado_cli/schemas/encodings.schema.json,
documented in docs/export.md): every quantizer of a decision, enough for another toolchain to
re-create the same quantization; and the decision metadata every export carries."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from .. import __version__
from ..errors import InputError
from .quantizers import QuantizerSpec

VERSION = "clado.encodings/1"
FORMULA = "x_int = clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax); x_q = (x_int - zero_point) * scale"


def schema() -> Dict[str, Any]:
    return json.loads(resources.files("clado_cli.schemas").joinpath("encodings.schema.json").read_text())


def decision_summary(decision: Mapping[str, Any]) -> Dict[str, Any]:
    return {"method": decision["method"], "budget": dict(decision["budget"]),
            "fingerprint": decision["cache"]["fingerprint"], "sizes": dict(decision.get("sizes", {}))}


def encodings_doc(specs: List[QuantizerSpec], decision: Mapping[str, Any]) -> Dict[str, Any]:
    doc = {"version": VERSION, "clado_version": __version__, "model": decision.get("model"),
           "decision": decision_summary(decision), "formula": FORMULA,
           "quantizers": [sp.to_dict() for sp in specs]}
    validate_encodings(doc)
    return doc


def validate_encodings(doc: Any, where: str = "encodings") -> Dict[str, Any]:
    from ..plaindata import validate_schema

    return validate_schema(doc, schema(), f"{where} is not a valid clado encodings file", InputError)


def read_encodings(path) -> Tuple[Dict[str, Any], List[QuantizerSpec]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"encodings file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"encodings file {p} is not valid JSON: {exc}") from None
    validate_encodings(doc, str(p))
    return doc, [QuantizerSpec.from_dict(q) for q in doc["quantizers"]]


def widths(specs: List[QuantizerSpec]) -> Dict[str, Dict[str, Any]]:
    """Per quantized layer: role, weight and input widths."""
    out: Dict[str, Dict[str, Any]] = {}
    for sp in specs:
        d = out.setdefault(sp.layer, {"role": sp.role})
        d["w_bits" if sp.tensor == "weight" else "a_bits"] = sp.bits
    return out


def metadata(specs: List[QuantizerSpec], decision: Mapping[str, Any]) -> Dict[str, str]:
    """String key/values for ONNX metadata_props and safetensors metadata: the decision (method,
    budget, widths per layer, clado version, cache fingerprint) and the whole decision JSON (its
    config lets `clado evaluate model.onnx` rebuild the data set-up)."""
    return {
        "clado.format": "clado.onnx/1",
        "clado.version": __version__,
        "clado.method": str(decision["method"]),
        "clado.budget": json.dumps(decision["budget"], sort_keys=True),
        # empty for a decision solved on sensitivities from a file (it has no cache)
        "clado.fingerprint": str(decision["cache"]["fingerprint"] or ""),
        "clado.widths": json.dumps(widths(specs)),
        "clado.sizes": json.dumps(decision.get("sizes", {}), sort_keys=True),
        "clado.decision": json.dumps(decision, sort_keys=True),
    }
