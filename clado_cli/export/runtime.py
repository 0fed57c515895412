"""Run an exported ONNX model with ONNX Runtime: read its clado metadata, and evaluate it on a
session's evaluation split with the same metrics and row shape as `clado evaluate` gives any
decision (docs/methods.md, "Evaluate")."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


def read_metadata(path) -> Dict[str, str]:
    """The model's metadata_props (without loading its weights into Python)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"ONNX file not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf's decode errors have no stable public type
        raise InputError(f"{p} is not a readable ONNX model: {type(exc).__name__}") from None
    return {m.key: m.value for m in model.metadata_props}


def decision_of_onnx(path) -> Dict[str, Any]:
    """The decision a clado-exported ONNX model was made from (validated)."""
    from ..decisions import validate_decision
    from ..plaindata import load_json_text

    meta = read_metadata(path)
    if "clado.decision" not in meta:
        raise InputError(f"{path} was not exported by clado: no clado.decision in its metadata")
    d = load_json_text(meta["clado.decision"], f"{path}: its clado.decision metadata", InputError)
    return validate_decision(d, f"{path} (metadata)")


def ort_session(path, threads: Optional[int] = None, optimize: bool = False):
    """An ONNX Runtime CPU session. Graph optimizations are off by default: the graph runs as
    written (QuantizeLinear/DequantizeLinear and float ops), which is what clado's fake-quant
    model computes; ORT's fusions would compute some layers in integers instead."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputError(f"ONNX Runtime cannot load {path}: {first}") from None


def run_onnx(sess, x: torch.Tensor) -> torch.Tensor:
    name = sess.get_inputs()[0].name
    (logits,) = sess.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
    return torch.from_numpy(logits)


@torch.no_grad()
def evaluate_onnx(session, path, decision: Optional[Dict[str, Any]] = None, where: Optional[str] = None) -> Dict[str, Any]:
    """Top-1/top-5/mean loss of an ONNX model on the session's evaluation split (the batches
    `evaluate_current` uses), as a result row; sizes from the decision in its metadata."""
    from ..data import eval_batches
    from ..evaluate import check_decision, sizes_for

    where = where or str(path)
    decision = decision if decision is not None else decision_of_onnx(path)
    check_decision(session, decision, where)   # the same model, data set-up and layers as the decision's
    sess = ort_session(path, session.cfg.threads or torch.get_num_threads())
    d = session.cfg.data
    n = top1 = top5 = 0
    loss_sum = 0.0
    t = time.time()
    for x, y in eval_batches(session.data.eval, max(d.bs, 256), d.eval_size, d.workers):
        logits = run_onnx(sess, x)
        y = y.cpu()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    if n == 0:
        raise InputError("the evaluation split is empty")
    bits = {name: int(s["w_bits"]) for name, s in decision["layers"].items()}   # sizes follow the weight widths
    return {"kind": "onnx", "method": decision["method"], "budget": decision["budget"],
            "label": f"onnx {decision['method']} @ {decision['budget']['given']}",
            "top1": top1 / n, "top5": top5 / n, "loss": loss_sum / n, "samples": n,
            "seconds": round(time.time() - t, 3), "sizes": sizes_for(session, bits),
            "file_bytes": Path(path).stat().st_size,
            "provenance": {"fingerprint": decision["cache"]["fingerprint"], "source": where, "runtime": "onnxruntime"}}
