"""The `clado` command: a thin Typer layer over the library (parse, call, print)."""
from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="clado",
    help="Choose a bit width for every layer of a PyTorch image classifier under a model-size budget "
         "(CLADO, MPQCO, HAWQ-V3).\n\nExample: clado run --config configs/demo.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _one_line_usage_error(exc) -> None:
    """Typer's usage errors (a bad flag value, an unknown option) as one `Error:` line, like
    every other clado error, instead of a usage box."""
    import sys

    if exc.__class__.__name__ == "NoArgsIsHelpError":
        return _rich_format_error(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    sys.stderr.write(f"Error: {' '.join(exc.format_message().split())}{hint}\n")


from typer import rich_utils as _rich_utils  # noqa: E402

_rich_format_error = _rich_utils.rich_format_error
_rich_utils.rich_format_error = _one_line_usage_error


def _version(value: bool):
    if value:
        typer.echo(f"clado {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


from . import cache_cmd, inspect_cmd, layers_cmd, optimize_cmd, evaluate_cmd, prep_cmd, run_cmd  # noqa: E402,F401

app.add_typer(prep_cmd.app, name="prep")
app.add_typer(cache_cmd.app, name="cache")


def main():
    app()
