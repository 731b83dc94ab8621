"""``python -m crp``: the command-line interface (see :mod:`crp.app.cli`)."""
import sys

try:
    from crp.app.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command line: one line and 130, as everywhere else
    sys.stderr.write("python -m crp: interrupted; run the same command again.\n")
    sys.exit(130)

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
