"""`clado optimize --sensitivities FILE [--pairs FILE]`: the programs solved on numbers from CSV
files (clado_cli/sensfile.py) instead of a cache: no prep, no model."""
from pathlib import Path
from typing import List, Optional

from ..console import log


def optimize_from_file(cfg, sensitivities: Path, pairs: Optional[Path], wanted: Optional[List[str]],
                       size_budget: Optional[str], avg_bits: Optional[float], budgets: Optional[str],
                       output: Optional[Path], bops_budget: Optional[str] = None, others=(), cost_files=()):
    """(decisions, option space) for each wanted method (None: every one the files serve) and
    budget point (size, user costs from --cost tables, per-layer widths and ties from the config's
    layers.tie and layers.widths; BOPs and shared-input ties need the model's forward pass)."""
    from ..budgets import budget_line
    from ..decide import plan_for_space
    from ..decide_file import decide_from_files, file_methods
    from ..errors import UsageError
    from ..methods import SolveOptions

    if cfg.quant.act_options:
        raise UsageError("sensitivity files carry weight widths only, and this config's options differ in activation "
                         "width (quant.options): solve on a cache", params=("sensitivities",))
    methods = wanted if wanted is not None else file_methods(sensitivities, pairs)
    if wanted is None:
        log(f"methods the sensitivities file serves: {', '.join(methods)}")
    opts = SolveOptions(psd=cfg.optimize.psd, solver=cfg.optimize.solver, time_limit=cfg.optimize.time_limit,
                        threads=cfg.threads)

    def budgets_of(space):
        if bops_budget is not None or "bops" in cfg.optimize.bounds:
            raise UsageError("a BOPs budget needs the layers' MACs, which a sensitivities file does not carry; "
                             "give the BOPs as a user cost table (--cost NAME=FILE) instead", params=("bops_budget",))
        plan = plan_for_space(space, cfg.layers, size_budget, avg_bits, budgets, None, others, cost_files,
                              cfg.optimize.bounds, cfg.optimize.costs, shared_inputs=None, a_bits=cfg.quant.activation_bits)
        if output is not None and len(methods) * len(plan.points) > 1:
            raise UsageError("--output takes one method and one budget; use --out-dir for several")
        for b, _ in plan.points:
            log(budget_line(b))
        return plan

    return decide_from_files(sensitivities, pairs, methods, budgets_of, opts, cfg.quant.activation_bits)
