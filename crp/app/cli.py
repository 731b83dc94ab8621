"""Command-line interface: ``python -m crp demo``, ``analyze`` and ``merge`` (also installed as ``crp``).

Only this module prints. User errors end in one line on stderr that names the fix and a non-zero exit code,
without a traceback: 2 for bad arguments, 1 for a file-system error (a full disk, a missing permission), an
output folder another run is writing to or a failed process of a distributed job, 130 when interrupted (Ctrl-C,
at any moment, start-up included), after saying how to continue.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, NoReturn, Optional, Sequence

from crp._utils.files import FileWriteError
from crp._utils.lock import FolderLockedError
from crp._utils.text import one_line
from crp.app.output import FV_FOLDER, UserError, fv_state

__all__ = ["main", "build_parser", "PROG"]

PROG = "python -m crp"


class _UsageError(Exception):
    """Raised instead of argparse's exit, so that ``main`` reports it in one line and returns a code."""


class _DemoUsageError(UserError):
    """Options that do not go together (reported like any user error: one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _say(text: str, stream=None) -> None:
    """Write one message of the command to the terminal (stdout, or ``stream``); the library itself never does."""
    (sys.stdout if stream is None else stream).write(f"{text}\n")


def _whole_number(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            what = "a positive whole number" if low == 1 else f"a whole number >= {low}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = "whole number"
    return parse


_positive_int = _whole_number(1)
_DEMO_SAMPLES, _DEMO_TOP = 4, 4


def _batch_size(text: str):
    """Parse --batch-size: a positive whole number or ``auto``."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number or auto, got {text!r}") from None


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="train a small CNN (or ViT) on toy shapes with a planted shortcut and explain it with CRP",
        description="Train (or load from the cache) a small CNN on toy shapes whose training images of 'cross' "
                    "carry a magenta corner mark, find the channel that responds to the mark, explain test images "
                    "with CRP (heatmaps, concepts, reference samples, attribution graph, pixel flipping) and write "
                    "report.html, PNG files and summary.json to --out. With --model vit: a tiny vision transformer "
                    "instead, explained with AttnLRP; CRP finds the MLP neuron that carries the mark and its "
                    "reference samples.",
    )
    demo.add_argument("--model", choices=("cnn", "vit"), default="cnn",
                      help="cnn: a small CNN (default); vit: a tiny torchvision VisionTransformer (about 3 minutes "
                           "of training on a busy 2-core CPU, cached)")
    demo.add_argument("--out", default=None, metavar="DIR",
                      help="output folder: new, empty, or from an earlier run (default: demo_output, with --model "
                           "vit demo_vit_output)")
    demo.add_argument("--samples", type=_positive_int, default=None, metavar="N",
                      help=f"number of test images to explain (default: {_DEMO_SAMPLES}; cnn only)")
    demo.add_argument("--layer", default=None, metavar="NAME",
                      help="layer whose channels are the concepts: features.0, features.3, features.6 or "
                           "classifier.0 (default: features.6); with --model vit neurons.0 (the first block's MLP "
                           "neurons, default) or the first block's output")
    demo.add_argument("--top", type=_positive_int, default=None, metavar="K",
                      help=f"number of most relevant channels shown per image (default: {_DEMO_TOP}; cnn only)")
    demo.add_argument("--no-progress", action="store_true", help="show no progress bars and no log messages")
    demo.add_argument("--quick", action="store_true",
                      help="smoke test: train a tiny model for one epoch and compute less (seconds); its results "
                           "mean nothing")
    demo.add_argument("--cache-dir", default=None, metavar="DIR",
                      help="model cache folder (default: $CRP_CACHE or ~/.cache/crp)")
    demo.add_argument("--retrain", action="store_true", help="train the model again even if it is cached")
    demo.add_argument("--fresh", action="store_true",
                      help="recompute the reference samples even if --out holds them for the same model (cnn only; "
                           "the vit demo always recomputes them, in seconds)")
    demo.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                      help="torch CPU threads (default: one less than the cores, at most 4)")


def _add_analyze(commands) -> None:
    analyze = commands.add_parser(
        "analyze", help="write a concept report of your own model and images",
        description="Explain your model with CRP: for a few images, the heatmap and the most relevant concepts of "
                    "--layers with their conditional heatmaps and reference samples (Relevance and Activation "
                    "Maximization over the data), the attribution graph of the top concept, and pixel-flipping "
                    "curves; written to --out as report.html, PNG files and summary.json. Example: "
                    f"{PROG} analyze --model resnet18 --weights model.pt --num-classes 10 --data images/",
    )
    model = analyze.add_argument_group("model")
    model.add_argument("--model", required=True, metavar="NAME",
                       help="a torchvision architecture (e.g. resnet18, vgg16_bn) or module:callable returning a "
                            "torch.nn.Module (called with num_classes=N if --num-classes is given)")
    model.add_argument("--weights", metavar="FILE",
                       help="state_dict saved with torch.save(model.state_dict(), FILE), read with "
                            "torch.load(weights_only=True); without it the weights are random")
    model.add_argument("--num-classes", type=_positive_int, metavar="N",
                       help="number of outputs of the model (default: the architecture's)")
    model.add_argument("--list-layers", action="store_true",
                       help="print the model's conv and linear layers and exit")
    data = analyze.add_argument_group("data")
    data.add_argument("--data", metavar="DIR",
                      help="image folder DIR/<class>/<image>.png (torchvision ImageFolder) or module:callable "
                           "returning a dataset of (image tensor (C, H, W), class) items")
    data.add_argument("--image-size", type=_positive_int, default=224, metavar="N",
                      help="folder images are resized and centre-cropped to N x N (default: %(default)s)")
    data.add_argument("--mean", type=float, nargs="+", metavar="M",
                      help="per-channel mean the model's inputs are normalized with (default for folders: "
                           "ImageNet's 0.485 0.456 0.406; for a callable dataset: no normalization)")
    data.add_argument("--std", type=float, nargs="+", metavar="S",
                      help="per-channel standard deviation, with --mean (default for folders: ImageNet's)")
    data.add_argument("--no-normalize", action="store_true", help="feed the images to the model as they are")
    method = analyze.add_argument_group("explanation")
    method.add_argument("--layers", nargs="+", metavar="NAME",
                        help="layers whose channels are the concepts (default: the last conv layer)")
    method.add_argument("--composite", default="epsilon_plus_flat", metavar="NAME",
                        help="zennit composite (zennit.composites.COMPOSITES): epsilon_plus_flat, epsilon_plus, "
                             "epsilon_gamma_box, epsilon_alpha2_beta1(_flat), ... (default: %(default)s)")
    method.add_argument("--canonizer", default="auto", metavar="NAME",
                        help="auto (ResNetCanonizer for ResNets, SequentialMergeBatchNorm for other models with "
                             "batch norm, none otherwise), none, merge-batchnorm, resnet or vgg (default: auto)")
    method.add_argument("--samples", type=_positive_int, default=4, metavar="N",
                        help="images explained, spread over the data (default: %(default)s)")
    method.add_argument("--top", type=_positive_int, default=4, metavar="K",
                        help="most relevant concepts shown per image and layer (default: %(default)s)")
    method.add_argument("--references", type=_positive_int, default=6, metavar="N",
                        help="reference samples shown per concept (default: %(default)s)")
    method.add_argument("--fv-samples", type=_whole_number(0), default=1000, metavar="N",
                        help="images searched for reference samples, spread over the data; 0 for all "
                             "(default: %(default)s)")
    method.add_argument("--flip-samples", type=_whole_number(0), default=16, metavar="N",
                        help="images of the pixel-flipping curves; 0 to skip them (default: %(default)s)")
    method.add_argument("--flip-steps", type=_positive_int, default=32, metavar="N",
                        help="steps of the pixel-flipping curves (default: %(default)s)")
    run = analyze.add_argument_group("run")
    run.add_argument("--out", default="crp_report", metavar="DIR",
                     help="output folder: new, empty, or from an earlier run (default: %(default)s)")
    run.add_argument("--device", default="cpu", metavar="DEVICE",
                     help="cpu, cuda or cuda:N; under torchrun, cuda is each process's own GPU (default: cpu)")
    run.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto",
                     help="images per forward/backward pass; auto: as many as fit into half the free memory "
                          "(default: the batch size of a DataLoader given as --data, else 32)")
    run.add_argument("--workers", type=_whole_number(0), default=0, metavar="N",
                     help="DataLoader worker processes (default: %(default)s)")
    run.add_argument("--checkpoint", type=_positive_int, default=10, metavar="N",
                     help="save the reference-sample search every N batches, so Ctrl-C loses little "
                          "(default: %(default)s)")
    run.add_argument("--fresh", action="store_true",
                     help="start the reference-sample search over even if --out holds one for the same model, data "
                          "and settings (by default it is reused or continued)")
    run.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                     help="torch CPU threads (default: one less than the cores, at most 4)")
    run.add_argument("--no-progress", action="store_true", help="show no progress bars and no log messages")


def _add_merge(commands) -> None:
    merge = commands.add_parser(
        "merge", help="merge the reference-sample searches of shards of a dataset into the results of one run",
        description="Merge the results of FeatureVisualization runs over disjoint parts of a dataset (e.g. the jobs "
                    "of a job array, each with its own data_start, data_end and path) into OUT: the results one run "
                    "over the whole range writes. Shards of other configurations, overlapping or missing index "
                    "ranges and unfinished shards are refused, and nothing is written. Example: "
                    f"{PROG} merge results shard-0 shard-1 shard-2",
    )
    merge.add_argument("out", metavar="OUT", help="folder of the merged results: new, empty, or an earlier merge of "
                                                  "the same shards")
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="the path folders of the runs, in any order")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m crp`` with its sub-commands."""
    parser = _Parser(prog=PROG, description="Concept Relevance Propagation (CRP) for PyTorch.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(commands)
    _add_analyze(commands)
    _add_merge(commands)
    return parser


# ------------------------------------------------------------------------------------------------------------
# running the commands


def _run_demo(args: argparse.Namespace) -> int:
    if args.model == "vit":
        return _run_vit_demo(args)
    from crp.app.demo import DEFAULT_LAYER, format_summary, run_demo

    samples = _DEMO_SAMPLES if args.samples is None else args.samples
    top = _DEMO_TOP if args.top is None else args.top
    result = run_demo(args.out or "demo_output", samples=samples, layer=args.layer or DEFAULT_LAYER, top_k=top,
                      quick=args.quick, cache_dir=args.cache_dir, progress=not args.no_progress,
                      force_train=args.retrain, threads=args.threads, fresh=args.fresh)
    _say(format_summary(result))
    return 0


def _run_vit_demo(args: argparse.Namespace) -> int:
    given = [option for option, value in (("--samples", args.samples), ("--top", args.top), ("--fresh", args.fresh))
             if value not in (None, False)]
    if given:
        raise _DemoUsageError(f"{', '.join(given)} apply to --model cnn only; leave them out with --model vit.")
    from crp.app.vit_demo import DEFAULT_VIT_LAYER, format_vit_summary, run_vit_demo

    result = run_vit_demo(args.out or "demo_vit_output", args.layer or DEFAULT_VIT_LAYER, quick=args.quick,
                          cache_dir=args.cache_dir, progress=not args.no_progress, force_train=args.retrain,
                          threads=args.threads)
    _say(format_vit_summary(result))
    return 0


def _analyze_options(args: argparse.Namespace):
    from crp.app.analyze import AnalyzeOptions

    return AnalyzeOptions(
        model=args.model, data=args.data, weights=args.weights, num_classes=args.num_classes,
        image_size=args.image_size, mean=args.mean, std=args.std, normalize=not args.no_normalize,
        layers=args.layers, composite=args.composite, canonizer=args.canonizer, device=args.device,
        batch_size=args.batch_size, workers=args.workers, samples=args.samples, top_k=args.top,
        fv_samples=args.fv_samples or None, references=args.references, flip_samples=args.flip_samples,
        flip_steps=args.flip_steps, out=args.out, fresh=args.fresh, progress=not args.no_progress,
        checkpoint=args.checkpoint,
    )


def _run_analyze(args: argparse.Namespace) -> int:
    from crp.app.analyze import AnalyzeError, format_analysis_summary, layer_table, load_model, run_analysis
    from crp.app.shapes_model import torch_threads

    if args.list_layers:
        _say(layer_table(load_model(args.model, args.num_classes)[0]))
        return 0
    if args.data is None:
        raise AnalyzeError("--data is required: an image folder DIR/<class>/<image>.png or module:callable.")
    with torch_threads(args.threads):
        result = run_analysis(_analyze_options(args))
    if result is not None:  # None: a process of a distributed job other than process 0, which reports
        _say(format_analysis_summary(result))
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from crp.visualization import FeatureVisualization

    try:
        files = FeatureVisualization.merge(args.shards, args.out)
    except FileExistsError as error:  # an output folder that is not the merge's: the user's to choose another
        raise UserError(str(error)) from None
    config = json.loads(files[0].read_text())["config"]  # the manifest
    _say(f"crp merge: wrote {args.out}: dataset indices [{config['data_start']}, {config['data_end']}) from "
         f"{len(args.shards)} shards")
    return 0


def _no_checkpoint_messages(record: logging.LogRecord) -> bool:
    """Keep the FeatureVisualization's per-checkpoint messages out of the terminal (its progress bar shows it)."""
    return record.name != "crp.visualization" or record.levelno >= logging.WARNING


def _log_to_stderr(enabled: bool) -> Optional[logging.Handler]:
    if not enabled:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_no_checkpoint_messages)
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
        0 on success, 2 for a usage error, 1 for a file-system error or a busy output folder, 130 when
        interrupted.
    """
    try:
        parser = build_parser()
        args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
        try:
            args = parser.parse_args(args_list)
            if args.command is None:
                raise _UsageError(f"choose a command: demo, analyze or merge (see `{PROG} --help`)")
        except _UsageError as error:
            _say(f"{PROG}: error: {error}", sys.stderr)
            return 2
        except SystemExit as done:  # --help
            return int(done.code or 0)
        return _run_command(args)
    except KeyboardInterrupt:  # before the command started, or while it reported
        _say(f"{PROG}: interrupted; run the same command again.", sys.stderr)
        return 130


def _run_command(args: argparse.Namespace) -> int:
    command = f"{PROG} {args.command}"
    handler = _log_to_stderr(not getattr(args, "no_progress", False))
    previous_level = logging.getLogger("crp").level
    try:
        return {"demo": _run_demo, "analyze": _run_analyze, "merge": _run_merge}[args.command](args)
    except KeyboardInterrupt:
        done = "nothing was written; run the same command again." if args.command == "merge" else \
            _interrupted(args)
        _say(f"{command}: {done}", sys.stderr)
        return 130
    except UserError as error:
        _say(f"{command}: error: {one_line(error)}", sys.stderr)
        return 2
    except FolderLockedError as error:
        _say(f"{command}: error: {one_line(error)}", sys.stderr)
        return 1
    except RuntimeError as error:
        from crp._features.distributed import RankFailedError  # loaded already: only a distributed run raises it

        if not isinstance(error, RankFailedError):
            raise
        _say(f"{command}: error: {one_line(error)}", sys.stderr)  # another process of the job failed
        return 1
    except OSError as error:
        _say(f"{command}: error: {_file_error(error, args.command)}", sys.stderr)
        return 1
    except ValueError as error:
        from crp.visualization import CorruptStoreError  # loaded already: only the reference-sample search raises it

        if args.command == "merge":  # the shards' errors name the shard and the fix
            _say(f"{command}: error: {one_line(error)}", sys.stderr)
            return 2
        if not isinstance(error, CorruptStoreError):
            raise
        # the store of an interrupted run may be corrupt: that is the user's to fix
        _say(f"{command}: error: {one_line(error)}; run again with --fresh to start the reference-sample search "
             f"over", sys.stderr)
        return 2
    finally:
        if handler is not None:
            logging.getLogger("crp").removeHandler(handler)
            logging.getLogger("crp").setLevel(previous_level)


def _file_error(error: OSError, command: str) -> str:
    """Say in one line which file could not be written or read, why, and what to do."""
    folders = f"--out{' or --cache-dir' if command == 'demo' else ''}"
    if isinstance(error, FileWriteError):
        fix = "free some disk space" if error.no_space else "check the path and its permissions"
        return f"cannot write {error.filename!r}: {error.reason}; {fix}, or choose another {folders}"
    where = f" {error.filename!r}" if error.filename else ""
    return f"{error.strerror or one_line(error)}{where}; check the path and its permissions, or choose another " \
           f"{folders}"


def _interrupted(args: argparse.Namespace) -> str:
    """Say what an interrupted run left, and how to continue (without importing anything heavy)."""
    if args.command == "demo" and args.model == "vit":  # its reference-sample search takes seconds: no resuming
        return "interrupted; run the same command again."
    out = args.out or "demo_output"
    done = fv_state(out)
    folder = Path(out) / FV_FOLDER
    if done is None:
        return "interrupted before any result was saved; run the same command again to start over."
    return (f"interrupted; the reference-sample search is saved in {folder} ({done} samples done); run the same "
            f"command again to continue from there (--fresh starts over).")
