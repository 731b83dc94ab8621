"""Make the README's figures in ``images/`` from the output of ``python -m crp demo``.

Runs the demo (default settings, one torch thread, like the documented numbers) into a temporary folder, or
reuses a finished demo folder with ``--from``, and composes four PNG files:

- ``images/demo_sample.png``: a triangle carrying the mark, predicted "cross": its heatmap and the conditional
  heatmaps of the most relevant channels of ``features.6``;
- ``images/demo_artifact_channel.png``: the channel that responds to the mark, its relevance for "cross" on
  other shapes with the mark, its Activation Maximization references, and its references among crosses;
- ``images/demo_attribution_graph.png``: the attribution graph of the sample's top channel;
- ``images/demo_pixel_flipping.png``: pixel-flipping curves of the heatmaps.

    python benchmarks/make_readme_images.py                     # runs the demo (about a minute)
    python benchmarks/make_readme_images.py --from demo_output  # reuses a demo folder
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from crp._utils.files import write_atomic  # noqa: E402
from crp.app.shapes import CLASS_NAMES  # noqa: E402

IMAGES = ROOT / "images"
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
        run_demo(Path(folder) / "demo", threads=1, progress=False)
        print(make_images(Path(folder) / "demo", Path(args.out)))


if __name__ == "__main__":
    main()
