"""Make the README's demo section and figures in ``images/`` from one run of ``python -m crp demo``.

Runs the demo (default settings, one torch thread, as ``make demo`` on this project's 2-core machine) into a
temporary folder, writes the README's demo section between the markers ``<!-- demo:begin`` and
``<!-- demo:end -->`` (the printed summary and the prose with every number, channel and shape of that run; see
:func:`readme_section`), or reuses a finished demo folder with ``--from`` (figures only), and composes four PNG
files:

- ``images/demo_sample.png``: a triangle carrying the mark, predicted "cross": its heatmap and the conditional
  heatmaps of the most relevant channels of ``features.6``;
- ``images/demo_artifact_channel.png``: the channel that responds to the mark, its relevance for "cross" on
  other shapes with the mark, its Activation Maximization references, and its references among crosses;
- ``images/demo_attribution_graph.png``: the attribution graph of the sample's top channel;
- ``images/demo_pixel_flipping.png``: pixel-flipping curves of the heatmaps.

    python benchmarks/make_readme_images.py                     # runs the demo (about a minute), README too
    python benchmarks/make_readme_images.py --from demo_output  # reuses a demo folder (figures only)

``tests/test_readme_demo.py`` runs the demo again and checks that the README's section is what this script
writes from it (on a machine with the torch version and thread count named in the marker), and that the claims
the prose makes hold for that run.
"""
import argparse
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from crp._utils.files import write_atomic  # noqa: E402
from crp.app.shapes import CLASS_NAMES  # noqa: E402

IMAGES = ROOT / "images"
README = ROOT / "README.md"
BEGIN, END = "<!-- demo:begin", "<!-- demo:end -->"
THREADS = 1
LIMIT = 300_000  # bytes per figure


def _save_small(image: Image.Image, path: Path) -> int:
    """Write ``image`` as PNG, with a 256-colour palette if the full-colour file would exceed :data:`LIMIT`."""
    image = image.convert("RGB")
    write_atomic(path, lambda temporary: image.save(temporary, format="PNG", optimize=True))
    if path.stat().st_size > LIMIT:
        small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        write_atomic(path, lambda temporary: small.save(temporary, format="PNG", optimize=True))
    return path.stat().st_size


def _stack(parts, captions, width: int = 1000) -> Image.Image:
    """Stack pictures vertically, each scaled to ``width`` at most and captioned above, with matplotlib."""
    from matplotlib.figure import Figure

    scaled = []
    for part in parts:
        factor = min(1.0, width / part.width) if part.width > width else max(1, width // (2 * part.width))
        resample = Image.NEAREST if factor >= 1 else Image.LANCZOS
        scaled.append(part.resize((round(part.width * factor), round(part.height * factor)), resample))
    heights = [p.height + 40 for p in scaled]
    dpi = 100
    figure = Figure(figsize=(width / dpi, sum(heights) / dpi), dpi=dpi)
    top = 1.0
    for part, caption, height in zip(scaled, captions, heights):
        share = height / sum(heights)
        ax = figure.add_axes((0, top - share, 1, share * part.height / height))
        ax.imshow(part, interpolation="nearest")
        ax.set_xlim(-(width - part.width) / 2, part.width + (width - part.width) / 2)
        ax.set_axis_off()
        figure.text(0.5, top - 0.2 * 40 / sum(heights), caption, ha="center", va="top", fontsize=11)
        top -= share
    buffer_path = Path(tempfile.mkstemp(suffix=".png")[1])
    try:
        figure.savefig(buffer_path, format="png", dpi=dpi)
        with Image.open(buffer_path) as opened:
            return opened.convert("RGB")
    finally:
        buffer_path.unlink()


def make_images(demo: Path, images: Path = IMAGES) -> dict:
    """Compose the README figures from a finished demo folder; return ``{file name: bytes}``."""
    summary = json.loads((demo / "summary.json").read_text())
    channel, layer = summary["artifact"]["channel"], summary["layer"]
    cross = CLASS_NAMES.index(summary["artifact"]["class_name"])
    first = summary["samples"][0]
    open_ = Image.open
    figures = {
        "demo_sample.png": open_(demo / "sample_1" / f"{layer}_overview.png"),
        "demo_artifact_channel.png": _stack(
            [open_(demo / "artifact_channel.png"), open_(demo / "references" / f"{channel}_actmax.png"),
             open_(demo / "references" / f"{channel}_class_{cross}.png")],
            ["",
             f"Activation Maximization: what {layer} #{channel} detects (receptive-field crops, heatmaps below)",
             f"Relevance Maximization among the crosses: where {layer} #{channel} is most relevant for 'cross'"]),
        "demo_attribution_graph.png": open_(demo / "graph.png"),
        "demo_pixel_flipping.png": open_(demo / "pixel_flipping.png"),
    }
    images.mkdir(parents=True, exist_ok=True)
    sizes = {name: _save_small(picture, images / name) for name, picture in figures.items()}
    sizes["sample"] = f"test #{first['index']}: {first['label']} -> {first['prediction']}"
    return sizes


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def actmax_marked(demo: Path, layer: str, channel: int, count: int = 8) -> int:
    """How many of the ``count`` most activating test images of ``channel`` (ActMax) carry the mark."""
    import torch

    from crp._features.store import open_results
    from crp.app.shapes import ShapesDataset
    from crp.app.shapes_model import TrainSettings

    indices = open_results(demo / "fv" / "store").maximization(layer, "activation")[0][:count, channel]
    settings = TrainSettings()
    test = ShapesDataset("test", n=settings.n_test, seed=settings.seed)
    return int(test.has_artifact[torch.as_tensor(indices.astype("int64"))].sum())


def environment() -> str:
    """What the numbers depend on besides the code: the torch version and the thread count."""
    import torch

    return f"torch {torch.__version__}, {THREADS} thread"


def readme_section(result, marked_refs: int) -> str:
    """Return the README's demo section (between the markers) for a :class:`crp.app.demo.DemoResult`."""
    from crp.app.demo import DemoSettings, format_summary

    # as a fresh clone prints it: trained (a cached model reports the seconds its training took), in ~/.cache/crp
    info = dataclasses.replace(result.info, cache_file=Path("~/.cache/crp") / Path(result.info.cache_file).name,
                               from_cache=False)
    shown = dataclasses.replace(result, out_dir=Path("/path/to/demo_output"), info=info)
    art, first = result.artifact, result.samples[0]
    runner, runner_response = art.ranking[1]
    how = "almost as strongly" if runner_response >= 0.8 * art.response else "next most strongly"
    auc = result.flipping_auc
    marked = " with the mark" if first.has_artifact else ""
    alt = (f"Test #{first.index}: a {first.label}{marked}, predicted {first.prediction!r}: heatmap and conditional "
           f"heatmaps")
    channel_png = ('![The mark channel: its relevance for "cross", its ActMax references, its references among '
                   'crosses](images/demo_artifact_channel.png)')
    return f"""{BEGIN} (generated by `python benchmarks/make_readme_images.py` from one run on this project's machine,
{environment()}; tests/test_readme_demo.py checks it) -->
```text
{format_summary(shown)}
```

What it found. The model looks excellent on held-out data drawn like its training data
({_pct(info.validation_accuracy)}), but on test images where the mark is painted on any shape,
{_pct(info.shortcut_rate_with_artifact)} of the circles, squares and triangles that carry it are called "cross"
({_pct(info.shortcut_rate_without_artifact)} without it). The heatmap of such a decision already points at the
mark: {_pct(art.heatmap_on_patch)} of the positive relevance for "cross" lies on the mark, which covers
{_pct(art.patch_area)} of the pixels. CRP says *which concept* carries it. Painting the mark on images of the
other shapes raises the activation of channel {art.channel} of `{art.layer}` more than that of any other channel
(by {art.response:.2f} standard deviations): this is *the mark channel*, as `crp.app.demo.find_mark_channel`
names it for the demo and the tutorials alike. Its share of the relevance for "cross" is
{_pct(art.share_with_artifact)} on these images with the mark and {_pct(art.share_without_artifact)} without it.
For the first explained test image (#{first.index}, a {first.label}{marked} that the model calls
"{first.prediction}"), the heatmap and the conditional heatmaps of the {len(first.concepts)} most relevant channels,
plus the mark channel's:

![{alt}](images/demo_sample.png)

The mark channel's reference samples tell what it is: by Activation Maximization, {marked_refs} of its 8 most
activating test images carry the mark (receptive-field crops, with the concept's conditional heatmap below
each); by Relevance Maximization among the crosses, where it is most relevant for "cross". The shortcut is not
carried by one channel alone: channel {runner} responds {how} ({runner_response:+.2f} sd), and the report lists
the runners-up.

{channel_png}

The report also decomposes the first image's most relevant concept into the lower-layer concepts that feed
it (an attribution graph; each box shows the concept's top reference sample, each edge its share of the
relevance), and checks the heatmaps' faithfulness by pixel flipping: replacing 2×2 regions by inpainting,
most relevant first (MoRF) brings the "cross" logit down fastest, least relevant first (LRF) slowest, and a
random order lies in between (areas under the curves {auc["morf"]:.2f}, {auc["lrf"]:.2f} and {auc["random"]:.2f}
over {DemoSettings().flip_samples} test images).
{END}"""


def normalize_times(text: str) -> str:
    """Replace the run times (which vary from run to run) by ``N s``."""
    return re.sub(r"\b\d+ s\b", "N s", text)


def readme_region(text: str) -> str:
    """Return the README's demo section, markers included."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def update_readme(section: str, readme: Path = README) -> None:
    """Replace the README's demo section by ``section``."""
    text = readme.read_text()
    new = text.replace(readme_region(text), section)
    write_atomic(readme, lambda temporary: Path(temporary).write_text(new))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", metavar="DIR", help="a finished demo folder to reuse")
    parser.add_argument("--out", default=str(IMAGES), metavar="DIR", help="where the figures go (default: images/)")
    args = parser.parse_args()
    if args.source:
        print(make_images(Path(args.source), Path(args.out)))
        return
    from crp.app.demo import run_demo

    with tempfile.TemporaryDirectory() as folder:
        result = run_demo(Path(folder) / "demo", threads=THREADS, progress=False)
        print(make_images(Path(folder) / "demo", Path(args.out)))
        update_readme(readme_section(result, actmax_marked(result.out_dir, result.layer, result.artifact.channel)))
        print(f"updated the demo section of {README}")


if __name__ == "__main__":
    main()
