from pathlib import Path
from typing import Optional

import typer

from ..console import out
from .common import (CacheDirOpt, ConfigOpt, DataOpt, DeviceOpt, InputSizeOpt, JsonOpt, ModelOpt, NormalizeOpt, QuietOpt,
                     ThreadsOpt, WeightsOpt, boundary, load, print_json, session_for)


@boundary
def run(config: Optional[Path] = ConfigOpt,
        out_dir: Path = typer.Option(Path("runs/latest"), "--out-dir", help="Where results.json, pareto.png and decisions go."),
        budgets: Optional[str] = typer.Option(None, "--budgets", help="Budgets (overrides optimize.budgets): 2MB:6MB:1MB, avg:2:6:1."),
        methods: Optional[str] = typer.Option(None, "--methods", help="Comma list (overrides optimize.methods)."),
        sb: Optional[int] = typer.Option(None, "--sb", help="First sensitivity batch."),
        eb: Optional[int] = typer.Option(None, "--eb", help="Last sensitivity batch (inclusive)."),
        model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt, data: Optional[str] = DataOpt,
        normalize: Optional[str] = NormalizeOpt, input_size: Optional[int] = InputSizeOpt,
        device: Optional[str] = DeviceOpt, threads: Optional[int] = ThreadsOpt, cache_dir: Optional[str] = CacheDirOpt,
        export_dir: Optional[Path] = typer.Option(None, "--export", help="Also export every decision here as ONNX "
                                                  "(QDQ) and encodings JSON (see clado export)."),
        refine: Optional[int] = typer.Option(None, "--refine", help="Keep the best measured of the K best distinct decisions per method and budget (default optimize.refine, 3; 1: none)."),
        x: str = typer.Option("size", "--x", help="The Pareto plot's x axis: size, bops, or a user cost's name (optimize.costs)."),
        as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """The whole pipeline from one config: prep (reusing caches), optimize over the budgets,
    evaluate every decision beside the uniform baselines and float, write results.json and pareto.png.

    Example: clado run --config configs/demo.yaml --out-dir runs/demo
    """
    from ..budgets import bound_list
    from ..errors import UsageError
    from ..optimize import parse_budget_list
    from ..pipeline import run_pipeline
    from .evaluate_cmd import results_table

    cfg = load(config, quiet, sb=sb, eb=eb, model=model, weights=weights, data=data, device=device,
               normalize=normalize, input_size=input_size,
               threads=threads, cache_dir=cache_dir, refine=refine)
    budget_list = (bound_list("size", budgets) if budgets.strip().lower().startswith("rel:") else parse_budget_list(budgets)) if budgets else None
    if x not in ("size", "bops") and x not in cfg.optimize.costs:
        raise UsageError(f"--x {x!r}: not a cost here; one of size, bops{''.join(', ' + n for n in cfg.optimize.costs)}",
                         params=("x",))
    method_list = [m.strip() for m in methods.split(",")] if methods else None
    res = run_pipeline(session_for(cfg), out_dir, budget_list, method_list, export_dir=export_dir, x=x)
    if as_json:
        print_json(res)
        return
    rows = res["results"]
    out.print(results_table(rows, f"{cfg.model.name} on {cfg.data.dataset}: {rows[0]['samples']} evaluation images"))
    out.print(f"results: {Path(out_dir) / 'results.json'}\nplot:    {res['plot']}")
    if res.get("exports"):
        out.print(f"exports: {len(res['exports'])} file(s) in {export_dir}")
