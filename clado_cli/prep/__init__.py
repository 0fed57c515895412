"""`prep`: the sensitivity engines (CLADO, MPQCO, HAWQ-V3) and the run that drives them batch by
batch into the cache (prep/run.py).

    from clado_cli.prep import PrepRun, run_prep
    run_prep(session, "clado", sb=0, eb=3)  ->  summary dict
"""
from .run import PrepRun, PrepSummary, run_prep

__all__ = ["PrepRun", "PrepSummary", "run_prep"]
