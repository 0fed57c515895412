"""Deployable exports of a decision (docs/export.md): ONNX with QuantizeLinear/DequantizeLinear
where clado fake-quantizes, a versioned encodings JSON of every quantizer, and the dequantized
weights as safetensors with `load_quantized` to rebuild clado's fake-quant model in PyTorch;
and ONNX Runtime evaluation of an exported model."""
from .api import FORMATS, decision_specs, export_all, export_decision, onnx_bytes, quantized_module
from .encodings import VERSION as ENCODINGS_VERSION
from .encodings import encodings_doc, read_encodings, validate_encodings
from .module import QuantizedLayer, build_quantized_module
from .onnx_graph import ExportError
from .quantizers import QuantizerSpec, quantizer_specs
from .runtime import decision_of_onnx, evaluate_onnx, ort_session, read_metadata, run_onnx
from .weights import encodings_path_for, load_quantized

__all__ = ["FORMATS", "ENCODINGS_VERSION", "ExportError", "QuantizedLayer", "QuantizerSpec", "build_quantized_module",
           "decision_of_onnx", "decision_specs", "encodings_doc", "encodings_path_for", "evaluate_onnx", "export_all",
           "export_decision", "load_quantized", "onnx_bytes", "ort_session", "quantized_module", "quantizer_specs",
           "read_encodings", "read_metadata", "run_onnx", "validate_encodings"]
