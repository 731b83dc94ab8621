"""``python -m crp``: the command-line interface (see :mod:`crp.app.cli`)."""
import sys

from crp.app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
