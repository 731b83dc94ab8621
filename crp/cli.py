"""Command-line interface: ``python -m crp demo`` (also installed as the ``crp`` command).

Only this module prints. User errors end in one line on stderr that names the fix and a non-zero exit code,
without a traceback: 2 for bad arguments, 1 for a file-system error, 130 when interrupted.
"""
import argparse
import logging
import sys
from typing import List, NoReturn, Optional, Sequence

__all__ = ["main", "build_parser", "format_summary"]

PROG = "python -m crp"


class _UsageError(Exception):
    """Raised instead of argparse's exit, so that ``main`` reports it in one line and returns a code."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m crp`` with its sub-commands."""
    parser = _Parser(prog=PROG, description="Concept Relevance Propagation (CRP) for PyTorch.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = commands.add_parser(
        "demo", help="train a small CNN on toy shapes with a planted shortcut and explain it with CRP",
        description="Train (or load from the cache) a small CNN on toy shapes whose training images of 'cross' "
                    "carry a magenta corner mark, explain test images with CRP, find the channel that carries "
                    "the mark, and write PNG files and summary.json to --out.",
    )
    demo.add_argument("--out", default="demo_output", metavar="DIR",
                      help="output folder: new, empty, or from an earlier demo run (default: %(default)s)")
    demo.add_argument("--samples", type=_positive_int, default=4, metavar="N",
                      help="number of test images to explain (default: %(default)s)")
    demo.add_argument("--layer", default="features.6", metavar="NAME",
                      help="layer whose channels are the concepts: features.0, features.3, features.6 or "
                           "classifier.0 (default: %(default)s)")
    demo.add_argument("--top", type=_positive_int, default=4, metavar="K",
                      help="number of most relevant channels shown per image (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="show no progress bars and no log messages")
    demo.add_argument("--quick", action="store_true",
                      help="smoke test: train a tiny model for one epoch (seconds); its results mean nothing")
    demo.add_argument("--cache-dir", default=None, metavar="DIR",
                      help="model cache folder (default: $CRP_CACHE or ~/.cache/crp)")
    demo.add_argument("--retrain", action="store_true", help="train the model again even if it is cached")
    return parser


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_summary(result) -> str:
    """Return the one-screen text summary of a :class:`crp.demo.DemoResult` (lines of at most about 100 chars)."""
    info, art, out = result.info, result.artifact, result.out_dir
    name = repr(art.class_name)
    source = f"loaded from {info.cache_file}" if info.from_cache else \
        f"trained in {info.train_seconds:.0f} s, cached in {info.cache_file}"
    following = ", ".join(f"#{c} {_percent(p)}" for c, p in art.ranking[1:])
    lines = [
        f"crp demo: wrote {len(result.files)} files to {out} in {result.seconds:.0f} s",
        f"model     ShapesNet, {source}",
        f"accuracy  {_percent(info.validation_accuracy)} on held-out images drawn like the training images",
        f"          {_percent(info.test_accuracy)} on the test split, where the mark is on any shape: "
        f"{_percent(info.accuracy_without_artifact)} without the mark, {_percent(info.accuracy_with_artifact)} with it",
        f"shortcut  {_percent(info.shortcut_rate_with_artifact)} of the other shapes with the mark are called {name} "
        f"({_percent(info.shortcut_rate_without_artifact)} without it);",
        f"          the mark moves their {name} output from {art.logit_without_artifact:.2f} to "
        f"{art.logit_with_artifact:.2f}",
        f"heatmaps  {_percent(art.heatmap_on_patch)} of the positive relevance for {name} lies on the mark "
        f"({_percent(art.patch_area)} of the pixels)",
        f"artifact  {art.layer} #{art.channel} carries {_percent(art.patch_part)} of the {name} relevance on the mark "
        f"(next: {following});",
        f"          its share of all {name} relevance: {_percent(art.share_with_artifact)} with the mark, "
        f"{_percent(art.share_without_artifact)} without",
        f"samples   top channels of {result.layer} by share of relevance",
    ]
    for rank, sample in enumerate(result.samples, start=1):
        mark = "+mark" if sample.has_artifact else "     "
        tops = ", ".join(f"#{c} {_percent(s)}" for c, s in zip(sample.concepts, sample.shares))
        lines.append(f"  {rank:2d} test #{sample.index:<4d} {sample.label:8s} {mark} -> {sample.prediction:8s} {tops}")
    lines.append(f"figures   {out}/sample_*/overview.png, {out}/artifact_channel.png")
    return "\n".join(lines)


def _run_demo(args: argparse.Namespace) -> int:
    from crp.demo import run_demo

    result = run_demo(args.out, samples=args.samples, layer=args.layer, top_k=args.top, quick=args.quick,
                      cache_dir=args.cache_dir, progress=not args.no_progress, force_train=args.retrain)
    print(format_summary(result))
    return 0


def _log_to_stderr(enabled: bool) -> Optional[logging.Handler]:
    if not enabled:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("crp")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python -m crp`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, e.g. ``["demo", "--out", "results"]``.

    Returns
    -------
    int
        0 on success, 2 for a usage error, 1 for a file-system error, 130 when interrupted.
    """
    parser = build_parser()
    args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(args_list)
        if args.command is None:
            raise _UsageError(f"choose a command: demo (see `{PROG} --help`)")
    except _UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help
        return int(done.code or 0)
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    from crp.demo import DemoError

    handler = _log_to_stderr(not args.no_progress)
    previous_level = logging.getLogger("crp").level
    try:
        return _run_demo(args)
    except DemoError as error:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f" {error.filename!r}" if error.filename else ""
        print(f"{PROG} demo: error: {error.strerror or error}{where}; check the path and its permissions, or "
              f"choose another --out or --cache-dir", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if handler is not None:
            logging.getLogger("crp").removeHandler(handler)
            logging.getLogger("crp").setLevel(previous_level)
