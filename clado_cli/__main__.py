"""`clado` and `python -m clado_cli`: the command line, with Ctrl-C during start-up (while
torch and the CLI load) one line too, like everywhere else."""
import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
