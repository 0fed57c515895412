"""`clado optimize --sensitivities FILE [--pairs FILE]`: the programs solved on numbers from CSV
files (clado_cli/sensfile.py) instead of a cache: no prep, no model."""
from pathlib import Path
from typing import List, Optional

from ..console import log


def optimize_from_file(cfg, sensitivities: Path, pairs: Optional[Path], wanted: Optional[List[str]],
                       size_budget: Optional[str], avg_bits: Optional[float], budgets: Optional[str],
                       output: Optional[Path]):
    """(decisions, option space) for each wanted method (None: every one the files serve) and budget."""
    from ..decide import resolve_budgets
    from ..decide_file import decide_from_files, file_methods
    from ..errors import UsageError
    from ..methods import SolveOptions

    methods = wanted if wanted is not None else file_methods(sensitivities, pairs)
    if wanted is None:
        log(f"methods the sensitivities file serves: {', '.join(methods)}")
    opts = SolveOptions(psd=cfg.optimize.psd, solver=cfg.optimize.solver, time_limit=cfg.optimize.time_limit,
                        threads=cfg.threads)

    def budgets_of(space):
        resolved = resolve_budgets(space, size_budget, avg_bits, budgets)
        if output is not None and len(methods) * len(resolved) > 1:
            raise UsageError("--output takes one method and one budget; use --out-dir for several")
        for b in resolved:
            log(f"budget {b.given} = {b.bytes:,} bytes for the decided layers")
        return resolved

    return decide_from_files(sensitivities, pairs, methods, budgets_of, opts, cfg.quant.activation_bits)
