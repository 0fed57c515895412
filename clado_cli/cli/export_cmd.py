from pathlib import Path
from typing import Optional

import typer

from ..console import out
from .common import (CacheDirOpt, ConfigOpt, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, ThreadsOpt, boundary, load,
                     print_json, session_for)

_FLAGS = {"device": "--device", "threads": "--threads", "model.name": "--model", "cache_dir": "--cache-dir"}


def size_lines(rep) -> str:
    from ..optimize import format_bytes

    total, decided = rep.get("decision_total_bytes"), rep.get("decision_decided_bytes")
    return (f"wrote {', '.join(rep['files'])} ({rep['format']})\n"
            f"  file on disk:        {format_bytes(rep['file_bytes'])}\n"
            f"  packed weights:      {format_bytes(rep['packed_weight_bytes'])} "
            f"(INT4/UINT4 two per byte, INT8 one; at each layer's own width: "
            f"{format_bytes(rep['weight_bytes_at_width'])})\n"
            f"  decision:            {rep['method']} @ {rep['budget']}: budget {format_bytes(rep['budget_bytes'])} "
            f"on decided layers; decided {format_bytes(decided) if decided is not None else 'n/a'}, "
            f"total with fixed {format_bytes(total) if total is not None else 'n/a'}")


@boundary
def export(decision: Path = typer.Argument(..., help="A decision JSON file from clado optimize or clado run."),
           fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (QDQ model), encodings (JSON of every "
                                   "quantizer) or weights (dequantized safetensors + encodings)."),
           out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: beside the "
                                                   "decision, .onnx / .encodings.json / .safetensors)."),
           config: Optional[Path] = ConfigOpt, model: Optional[str] = ModelOpt, cache_dir: Optional[str] = CacheDirOpt,
           device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt,
           as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """Export a decision as a deployable model: ONNX with QuantizeLinear/DequantizeLinear where clado
    fake-quantizes, the encodings of every quantizer, or the dequantized weights.

    Example: clado export runs/demo/decisions/decision-clado-avg3.json --format onnx --out model.onnx
    """
    from ..console import set_quiet
    from ..decisions import config_of_decision, read_decision
    from ..errors import UsageError
    from ..export import FORMATS, export_decision
    from ..export.api import SUFFIX

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    d = read_decision(decision)
    if config is None:
        # as in evaluate: no code and no cache location from the file itself
        cfg = config_of_decision(d, {"device": device, "threads": threads, "model.name": model,
                                     "cache_dir": cache_dir}, flags=_FLAGS, where=str(decision))
    else:
        cfg = load(config, quiet, device=device, threads=threads, model=model, cache_dir=cache_dir)
    set_quiet(quiet)
    if out_path is None:
        stem = decision.name[: -len(".json")] if decision.name.endswith(".json") else decision.name
        out_path = decision.with_name(stem + SUFFIX[fmt])
    rep = export_decision(session_for(cfg), d, fmt, out_path, where=str(decision))
    if as_json:
        print_json(rep)
    else:
        out.print(size_lines(rep), markup=False)
