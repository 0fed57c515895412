from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..console import out
from .common import (CacheDirOpt, ConfigOpt, DataOpt, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, ThreadsOpt, WeightsOpt,
                     boundary, load, print_json, session_for, write_json)


def results_table(rows, title: str) -> Table:
    from ..optimize import format_bytes

    t = Table(title=title, caption="±: half-width of top-1's 95% interval (1.96 standard errors). Decided "
                                   "bytes, top-5, BOPs, measured loss increases and paired tests: --json")
    for col in ["model", "top-1", "±", "loss", "size", "time"]:
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        se = r.get("top1_se")
        t.add_row(r["label"], f"{100 * r['top1']:.2f}%", f"{196 * se:.2f}" if se is not None else "",
                  f"{r['loss']:.4f}", format_bytes(r["sizes"]["total_bytes"]), f"{r['seconds']:.2f}s")
    return t


@boundary
def evaluate(decisions: List[Path] = typer.Argument(None, help="Decision JSON files from clado optimize, or ONNX "
                                                  "models from clado export (run with ONNX Runtime)."),
             config: Optional[Path] = ConfigOpt,
             uniform: Optional[str] = typer.Option(None, "--uniform", help="Add the float model and uniform baselines at these widths, e.g. 2,4,8 (float alone: float)."),
             eval_size: Optional[int] = typer.Option(None, "--eval-size", help="Evaluate on at most this many images."),
             model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt, data: Optional[str] = DataOpt,
             cache_dir: Optional[str] = CacheDirOpt,
             device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt,
             output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results JSON here."),
             as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """Evaluate decisions (and uniform baselines) on the evaluation split: top-1, top-5, loss, sizes.

    Example: clado evaluate runs/demo/decisions/decision-clado-avg3.json --uniform 2,4,8
    """
    from ..config import load_config
    from ..decisions import config_of_decision, flatten, read_decision
    from ..errors import UsageError
    from ..evaluate import evaluate_decision, evaluate_uniform

    decisions = decisions or []
    if not decisions and uniform is None:
        raise UsageError("nothing to evaluate: give decision files and/or --uniform")
    from ..export.runtime import decision_of_onnx, evaluate_onnx

    docs = [(str(p), decision_of_onnx(p) if p.suffix == ".onnx" else read_decision(p)) for p in decisions]
    if config is None and docs:
        # the decision carries its set-up: evaluate with it, as far as a shared file may choose
        # (no code from it, no cache location from it); flags override
        cfg = config_of_decision(docs[0][1], {"device": device, "threads": threads, "data.eval_size": eval_size,
                                              "model.name": model, "model.weights": weights,
                                              "data.dataset": data, "cache_dir": cache_dir},
                                 flags=_FLAGS, where=docs[0][0])
    else:
        cfg = load(config, quiet, device=device, threads=threads, model=model, weights=weights, data=data,
                   cache_dir=cache_dir)
        if eval_size is not None:
            cfg = load_config(None, {**flatten(cfg.to_dict()), "data.eval_size": eval_size}, flags=_FLAGS,
                              where=str(config) if config is not None else None)
    from ..console import set_quiet

    set_quiet(quiet)
    s = session_for(cfg)
    widths = []
    if uniform:
        try:
            widths = [int(b) for b in uniform.split(",") if b.strip() and b.strip() != "float"]
        except ValueError:
            raise UsageError(f"--uniform {uniform!r}: use a comma list of widths and/or float, e.g. 2,4,8 "
                             f"or float") from None
    from ..stats import paired_comparisons

    def partial(done):
        """What is finished so far, written as it finishes: a run stopped by a time limit keeps it."""
        if output is not None:
            write_json(output, {"fingerprint": s.fingerprint, "partial": True,
                                "results": [{k: v for k, v in r.items() if k != "correct"} for r in done]})

    rows = evaluate_uniform(s, widths) if uniform is not None else []
    if rows:
        partial(rows)
    for where, d in docs:
        rows.append(evaluate_onnx(s, where, d) if where.endswith(".onnx") else evaluate_decision(s, d, where))
        partial(rows)
    result = {"fingerprint": s.fingerprint, "results": rows, "comparisons": paired_comparisons(rows)}
    if output is not None:
        write_json(output, result)
    if as_json:
        print_json(result)
    else:
        out.print(results_table(rows, f"{cfg.model.name} on {cfg.data.dataset} ({rows[0]['samples']} images)"))


_FLAGS = {"device": "--device", "threads": "--threads", "data.eval_size": "--eval-size", "model.name": "--model",
          "model.weights": "--weights", "data.dataset": "--data", "cache_dir": "--cache-dir"}

