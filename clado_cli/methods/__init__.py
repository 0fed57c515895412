"""The sensitivity methods, one module each, behind one registry (docs/methods.md).

    from clado_cli.methods import get_method, method_names
    get_method("clado").program        # "IQP"

Every list of methods in clado (config validation, the decision schema, CLI help and prep
subcommands, plots, inspect, cache ls) is derived from this registry.
"""
from .base import (METHODS, Method, Sensitivities, SolveOptions, check_cached_arrays, combine_checked, content_check, get_method,
                   kind_of, load_sensitivities, method_names, prep_method_names, register, space_of, stored_kinds)
from . import clado, mpqco, hawq, naive  # noqa: E402,F401  (registration order: the CLI's order)

__all__ = ["METHODS", "Method", "Sensitivities", "SolveOptions", "check_cached_arrays", "combine_checked", "content_check",
           "get_method", "kind_of", "load_sensitivities", "method_names", "prep_method_names", "register",
           "space_of", "stored_kinds"]
