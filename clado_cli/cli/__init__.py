"""The `clado` command: a thin Typer layer over the library (parse, call, print).

Each module holds the Typer functions of one command or command group and imports nothing
from this package's root; this file composes them (`app.command` / `app.add_typer`)."""
from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from .. import __version__
from . import cache_cmd, evaluate_cmd, export_cmd, inspect_cmd, layers_cmd, optimize_cmd, prep_cmd, run_cmd


class OneLineErrors(TyperGroup):
    """Typer's usage errors (a bad flag value, an unknown option) as one `Error:` line on
    stderr and exit 2, like every other clado error, instead of a usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            from .common import error_line

            error_line("interrupted")
            sys.exit(130)
        except Exception as exc:
            # the parser's errors (Typer vendors Click; only their shape is public): an exit
            # code and a message. "no arguments: show the help" is one of them.
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
                sys.exit(exc.exit_code)
            from .common import error_line

            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            error_line(f"{exc.format_message()}{hint}")
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="clado",
    cls=OneLineErrors,
    help="Choose a bit width for every layer of a PyTorch image classifier under a model-size budget "
         "(CLADO, MPQCO, HAWQ-V3).\n\nExample: clado run --config configs/demo.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool):
    if value:
        typer.echo(f"clado {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


app.add_typer(prep_cmd.app, name="prep")
app.command("optimize")(optimize_cmd.optimize)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("export")(export_cmd.export)
app.command("run")(run_cmd.run)
app.command("inspect")(inspect_cmd.inspect)
app.command("layers")(layers_cmd.layers)
app.add_typer(cache_cmd.app, name="cache")


def main():
    try:
        app()
    except KeyboardInterrupt:   # between commands' own boundaries (argument parsing, help)
        from .common import error_line

        error_line("interrupted")
        sys.exit(130)
