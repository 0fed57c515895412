"""clado: mixed-precision post-training quantization under a size budget.

Library entry points (the CLI is a thin layer over these):
    from clado_cli.config import load_config
    from clado_cli.session import Session        # model, data, quantizers for one config
    from clado_cli.prep import run_prep          # sensitivities into the cache
    from clado_cli.optimize import optimize      # decisions from cached sensitivities
    from clado_cli.evaluate import evaluate_decision
"""
__version__ = "0.1.0"
