"""The ONNX QDQ model of a decision: trace the quantized module with torch.onnx (TorchScript
exporter, opset 20), then replace clado's marker ops with QuantizeLinear/DequantizeLinear
(opset 21, for INT4/UINT4):

- a quantized weight becomes an integer initializer in the narrowest type that holds its range
  (INT4/UINT4 for widths <= 4, INT8 otherwise; 2-bit values sit in INT4), its scale and zero
  point (per tensor, or per channel with `axis`) and one DequantizeLinear: never a float weight;
- a quantized input becomes QuantizeLinear -> DequantizeLinear in the narrowest type holding the
  activation range, with a Clip to the dequantized range [(qmin - z) s, (qmax - z) s] before it
  when that range is narrower than the type's (e.g. 2 bits in UINT4), so the saturation equals
  MQBench's clamp exactly.

Everything happens in memory; the caller writes the bytes atomically.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch

from ..errors import InputError
from .module import MARKER_DOMAIN, quantized_layers, set_exporting
from .quantizers import QuantizerSpec

TRACE_OPSET = 20
OPSET = 21
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportError(InputError):
    """A model torch.onnx cannot express (names the operator) or a graph clado cannot rewrite."""


def _int_tensor(name: str, type_name: str, values: np.ndarray, dims) -> Any:
    """An integer initializer stored raw in `type_name` (4-bit types packed two to a byte)."""
    import ml_dtypes
    from onnx import numpy_helper

    np_type = {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4}.get(type_name, np.dtype(type_name))
    arr = np.asarray(values, dtype=np.int64).reshape(list(dims))
    return numpy_helper.from_array(arr.astype(np_type), name)


def _float_tensor(name: str, values, dims) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.float32).reshape(list(dims)), name)


_OP_RE = re.compile(r"'((?:aten|prim|onnx|quantized|torchvision)::[\w.]+)'")


@contextlib.contextmanager
def _silenced():
    """No output from the exporter: its C++ side prints the whole TorchScript graph on stdout when
    it fails (its ONNX log is always on), which would bury the one-line error and break --json."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:   # no real file descriptors (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _trace(module: torch.nn.Module, example: torch.Tensor, model_name: str) -> bytes:
    buf = io.BytesIO()
    set_exporting(module, True)
    try:
        with _silenced():
            torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=TRACE_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              custom_opsets={MARKER_DOMAIN: 1}, do_constant_folding=True)
    except Exception as exc:  # the exporter's errors have no common base: name the operator when it says one
        text = str(exc)
        m = _OP_RE.search(text)
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        if m:
            raise ExportError(f"model {model_name} cannot be exported to ONNX: torch.onnx cannot express the "
                              f"operator {m.group(1)} (opset {TRACE_OPSET})") from None
        raise ExportError(f"model {model_name} cannot be exported to ONNX: {type(exc).__name__}: {first}") from None
    finally:
        set_exporting(module, False)
    return buf.getvalue()


def _scale_zp(graph_inits: list, prefix: str, sp: QuantizerSpec) -> Tuple[str, str]:
    """Scale and zero-point initializers (scalars per tensor, 1-D per channel)."""
    dims = [len(sp.scale)] if sp.per_channel else []
    s_name, z_name = f"{prefix}_scale", f"{prefix}_zero_point"
    graph_inits.append(_float_tensor(s_name, sp.scale, dims))
    graph_inits.append(_int_tensor(z_name, sp.storage_type, np.asarray(sp.zero_point), dims))
    return s_name, z_name


def rewrite(model_bytes: bytes, specs: List[QuantizerSpec], int_weights: Mapping[str, np.ndarray],
            order: List[str]) -> Any:
    """Replace the markers. `order[i]`: the layer whose QuantizedLayer has index i."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    g = model.graph
    by_layer: Dict[Tuple[str, str], QuantizerSpec] = {(sp.layer, sp.tensor): sp for sp in specs}
    inits = {t.name: t for t in g.initializer}
    new_inits: List[Any] = []
    done_weights: Dict[str, Tuple[str, str, str]] = {}
    done_inputs: Dict[str, Tuple[str, str, Any, Any]] = {}
    nodes: List[Any] = []
    replaced: set = set()
    seen = {"QuantizedInput": 0, "QuantizedWeight": 0}
    for node in g.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        idx = next(a.i for a in node.attribute if a.name == "index")
        layer = order[idx]
        seen[node.op_type] += 1
        call = seen[node.op_type]
        if node.op_type == "QuantizedWeight":
            sp = by_layer[(layer, "weight")]
            if node.input[0] not in inits:
                raise ExportError(f"layer {layer}: its weight is computed in the traced graph, not a stored "
                                  f"tensor; clado cannot store it as integers")
            replaced.add(node.input[0])
            if layer not in done_weights:
                q_name = f"{layer}.weight_quantized"
                q = int_weights[layer]
                new_inits.append(_int_tensor(q_name, sp.storage_type, q, q.shape))
                s_name, z_name = _scale_zp(new_inits, f"{layer}.weight", sp)
                done_weights[layer] = (q_name, s_name, z_name)
            q_name, s_name, z_name = done_weights[layer]
            kw = {"axis": int(sp.axis)} if sp.per_channel else {}
            nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [node.output[0]],
                                          name=f"{layer}/weight/DequantizeLinear_{call}", **kw))
        elif node.op_type == "QuantizedInput":
            sp = by_layer[(layer, "input")]
            if layer not in done_inputs:
                s_name, z_name = _scale_zp(new_inits, f"{layer}.input", sp)
                lo, hi = sp.bounds()
                clip = None
                if not sp.exact_type:
                    clip = (f"{layer}.input_clip_min", f"{layer}.input_clip_max")
                    new_inits.append(_float_tensor(clip[0], [float(lo[0])], []))
                    new_inits.append(_float_tensor(clip[1], [float(hi[0])], []))
                done_inputs[layer] = (s_name, z_name, clip, None)
            s_name, z_name, clip, _ = done_inputs[layer]
            x = node.input[0]
            base = f"{layer}/input"
            if clip is not None:
                nodes.append(helper.make_node("Clip", [x, clip[0], clip[1]], [f"{base}_clipped_{call}"],
                                              name=f"{base}/Clip_{call}"))
                x = f"{base}_clipped_{call}"
            nodes.append(helper.make_node("QuantizeLinear", [x, s_name, z_name], [f"{base}_quantized_{call}"],
                                          name=f"{base}/QuantizeLinear_{call}"))
            nodes.append(helper.make_node("DequantizeLinear", [f"{base}_quantized_{call}", s_name, z_name],
                                          [node.output[0]], name=f"{base}/DequantizeLinear_{call}"))
        else:
            raise ExportError(f"unexpected marker {node.op_type} in the traced graph")
    missing = [l for l in order if l not in done_inputs or l not in done_weights]
    if missing:
        raise ExportError(f"layer {missing[0]} was not traced (never called with its own weight on the example input)")
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name not in replaced or t.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    # no value_info of the old markers' outputs may keep a stale type; shapes are re-inferred
    del g.value_info[:]
    others = [(o.domain, o.version) for o in model.opset_import if o.domain not in ("", "ai.onnx", MARKER_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in others])
    model.ir_version = max(model.ir_version, 10)
    return model


def set_metadata(model, meta: Mapping[str, str]) -> None:
    from onnx import helper

    model.producer_name = "clado"
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})


def build_onnx(module: torch.nn.Module, example: torch.Tensor, specs: List[QuantizerSpec],
               int_weights: Mapping[str, np.ndarray], meta: Mapping[str, str], model_name: str) -> bytes:
    """The checked QDQ model's bytes."""
    import onnx

    layers = quantized_layers(module)
    order = [None] * len(layers)
    for name, m in layers.items():
        order[m.index] = name
    traced = _trace(module, example.detach().cpu()[:1], model_name)
    model = rewrite(traced, specs, int_weights, order)
    set_metadata(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx's checker errors: one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"the exported ONNX model of {model_name} does not pass onnx.checker: {first}") from None
    data = model.SerializeToString()
    if len(data) >= 2 ** 31:
        raise ExportError(f"the ONNX model of {model_name} is over 2 GB, the protobuf limit of one file")
    return data
