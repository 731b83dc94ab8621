"""``python -m crp``: the command-line interface (see :mod:`crp.cli`)."""
import sys

from crp.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
