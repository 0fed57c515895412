"""Export one decision of a session as ONNX (QDQ), encodings JSON or dequantized weights, and
report the file sizes beside the decision's budgeted size."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch

from ..errors import UsageError
from ..jsonio import dumps
from ..store.files import atomic_write
from .encodings import encodings_doc, metadata
from .module import build_quantized_module
from .quantizers import QuantizerSpec, dequantized_weight, integer_weight, packed_bytes, quantizer_specs

FORMATS = ("onnx", "encodings", "weights")
SUFFIX = {"onnx": ".onnx", "encodings": ".encodings.json", "weights": ".safetensors"}


def decision_specs(session, decision: Mapping[str, Any], where: str = "decision"
                   ) -> Tuple[List[QuantizerSpec], Dict[str, torch.Tensor]]:
    """The decision's quantizers and dequantized weights (per layer), after the same checks
    `clado evaluate` makes (layers, candidates, cache fingerprint)."""
    from ..evaluate import check_decision

    check_decision(session, dict(decision), where)
    qm = session.qmodel
    specs = quantizer_specs(qm, decision)
    deq = {sp.layer: dequantized_weight(qm, sp.layer, sp.bits) for sp in specs if sp.tensor == "weight"}
    return specs, deq


def quantized_module(session, decision: Mapping[str, Any], where: str = "decision") -> torch.nn.Module:
    """A plain PyTorch module (CPU) computing clado's fake-quant model of the decision."""
    specs, deq = decision_specs(session, decision, where)
    return build_quantized_module(session.float_model, specs, deq).cpu()


def onnx_bytes(session, decision: Mapping[str, Any], where: str = "decision") -> Tuple[bytes, List[QuantizerSpec]]:
    from .onnx_graph import build_onnx

    specs, deq = decision_specs(session, decision, where)
    module = build_quantized_module(session.float_model, specs, deq).cpu()
    ints = {sp.layer: integer_weight(sp, deq[sp.layer]).numpy() for sp in specs if sp.tensor == "weight"}
    data = build_onnx(module, session.example_input, specs, ints, metadata(specs, decision), session.cfg.model.name)
    return data, specs


def export_decision(session, decision: Mapping[str, Any], fmt: str, out, where: str = "decision") -> Dict[str, Any]:
    """Write the decision in `fmt` to `out` (every file atomically: a failure leaves no partial
    file) and return what was written with its sizes. `weights` also writes the encodings
    beside the weights (`<stem>.encodings.json`)."""
    from .weights import encodings_path_for, weights_bytes

    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r}: one of {', '.join(FORMATS)}", params=("format",))
    out = Path(out)
    files: List[Path] = []
    if fmt == "onnx":
        data, specs = onnx_bytes(session, decision, where)
        atomic_write(out, data)
        files.append(out)
    else:
        specs, deq = decision_specs(session, decision, where)
        enc = dumps(encodings_doc(specs, decision)).encode()
        if fmt == "encodings":
            atomic_write(out, enc)
            files.append(out)
        else:
            data = weights_bytes(session.float_model, deq, metadata(specs, decision))
            enc_path = encodings_path_for(out)
            atomic_write(out, data)
            atomic_write(enc_path, enc)
            files += [out, enc_path]
    return size_report(fmt, files, specs, decision)


def size_report(fmt: str, files: List[Path], specs: List[QuantizerSpec], decision: Mapping[str, Any]) -> Dict[str, Any]:
    sizes = decision.get("sizes", {})
    return {"format": fmt, "path": str(files[0]), "files": [str(f) for f in files],
            "file_bytes": sum(f.stat().st_size for f in files),
            **packed_bytes(specs),
            "budget_bytes": decision["budget"]["bytes"], "budget": decision["budget"]["given"],
            "decision_total_bytes": sizes.get("total_bytes"), "decision_decided_bytes": sizes.get("decided_bytes"),
            "method": decision["method"], "layers": len({sp.layer for sp in specs}), "quantizers": len(specs)}


def export_all(session, decisions: List[Mapping[str, Any]], out_dir, formats=("onnx", "encodings")) -> List[Dict[str, Any]]:
    """`clado run --export DIR`: each decision in each format, named after its decision file."""
    from ..decisions import decision_file_name

    out_dir = Path(out_dir)
    reports = []
    for d in decisions:
        stem = decision_file_name(d)[: -len(".json")]
        for fmt in formats:
            reports.append(export_decision(session, d, fmt, out_dir / f"{stem}{SUFFIX[fmt]}", where=stem))
    return reports
