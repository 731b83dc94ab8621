"""The HTML report: escaping, embedded images, atomic writing, and a real browser rendering it."""
import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from crp.app.report import HEATMAP_NOTE, THUMB_WIDTH, Report, _png_base64, colorbar_image, thumbnail_uri

from helpers import chromium, render


def _image(color, size=(6, 4)):
    return Image.new("RGB", size, color)


def test_content_is_escaped_and_images_embedded(tmp_path):
    path = tmp_path / "image.png"
    _image("blue", (3, 5)).save(path)
    report = Report("A <title>", lead="lead & more")
    report.section("Section", "x < y").table([[1, "<b>"]], header=["a", "b"]).preformatted("pre\n<text>")
    report.images([_image("red"), path], ["first", "second"], width=120)
    document = report.to_html()
    assert "<title>A &lt;title&gt;</title>" in document and "x &lt; y" in document and "&lt;b&gt;" in document
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', document)
    sizes = [Image.open(io.BytesIO(base64.b64decode(s))).size for s in sources]
    assert sizes == [(6, 4), (3, 5)]
    pixel = np.asarray(Image.open(io.BytesIO(base64.b64decode(sources[0]))))[0, 0]
    assert pixel.tolist() == [255, 0, 0]


def test_matplotlib_figure_and_atomic_write(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(2, 1))
    axis.plot([0, 1], [1, 0])
    path = Report("r").images([figure], wide=True).write(tmp_path / "sub" / "report.html")
    plt.close(figure)
    assert path.read_text().count("data:image/png;base64,") == 1
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_errors():
    with pytest.raises(ValueError, match="got 1 captions for 2 images"):
        Report("r").images([_image("red"), _image("red")], ["one"])
    with pytest.raises(TypeError, match="must be a PIL image, an image path or a matplotlib figure, got int"):
        Report("r").images([3])


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_browser_renders_every_image_without_overflow(tmp_path):
    report = Report("Browser check", lead="a long caption " * 20)
    report.section("Images").images([_image("red", (64, 64))] * 12, [f"image {i}" for i in range(12)], width=200)
    report.table([["a" * 300, 1]], header=["long", "n"])
    path = report.write(tmp_path / "report.html")
    check = render(path, tmp_path / "shot.png")
    assert check["images"] == 12 and check["broken"] == 0
    assert check["overflowing"] == 0 and check["scrollWidth"] <= check["clientWidth"]
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))
    assert (shot == [255, 0, 0]).all(-1).sum() > 12 * 150 * 150  # the images are drawn at their CSS size


def _sources(document):
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                                          document)]


def test_thumbnails_references_legend_and_collapsed_tables():
    report = Report("r")
    report.thumbnails([_image("red", (5, 3)), _image("blue")], ["a <red>", "blue"])
    report.references([_image("red")] * 2, [_image("blue")] * 2, "refs & heatmaps")
    report.legend()
    report.table([["x", 1]], css_class="summary").table([["f.png"]], header=["file"], collapsed="1 file")
    document = report.to_html()
    assert document.count('<img class="thumb"') == 2 + 4 and "<figcaption>a &lt;red&gt;</figcaption>" in document
    assert '<p class="caption">refs &amp; heatmaps</p>' in document and f"width: {THUMB_WIDTH}px" in document
    images = _sources(document)
    assert [image.size for image in images[:6]] == [(5, 3), (6, 4)] + [(6, 4)] * 4  # embedded at their own size
    # each reference above its heatmap: red, blue, red, blue
    assert [np.asarray(image.convert("RGB"))[0, 0].tolist() for image in images[2:6]] == [
        [255, 0, 0], [0, 0, 255], [255, 0, 0], [0, 0, 255]]
    bar = np.asarray(images[6].convert("RGB"))
    assert bar[0, 0].tolist() == [0, 0, 255] and bar[0, -1].tolist() == [255, 0, 0]  # negative left, positive right
    assert (bar[0, bar.shape[1] // 2] > 240).all() and HEATMAP_NOTE.split(":")[0] in document
    assert '<table class="summary"><tr><td>x</td><td>1</td></tr></table>' in document
    assert "<details><summary>1 file</summary><table><tr><th>file</th></tr><tr><td>f.png</td></tr></table>" \
           "</details>" in document


def test_colorbar_is_the_heatmap_colour_map():
    from crp.app.concept_report import heatmap_image

    bar = np.asarray(colorbar_image(width=5, height=1))[0]
    heat = np.asarray(heatmap_image(torch.tensor([[-2.0, -1.0, 0.0, 1.0, 2.0]])).convert("RGB"))[0]
    assert bar.tolist() == heat.tolist()


def test_thumbnail_errors():
    with pytest.raises(ValueError, match="got 1 captions for 2 images"):
        Report("r").thumbnails([_image("red"), _image("red")], ["one"])
    with pytest.raises(ValueError, match="got 1 heatmaps for 2 images"):
        Report("r").references([_image("red"), _image("red")], [_image("blue")], "c")


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_browser_check_finds_overlaps_and_measures_thumbnails(tmp_path):
    report = Report("Overlap check")
    report.thumbnails([_image("red", (8, 8))] * 3, ["one", "two", "three"])
    report.parts.append('<div style="position: relative; height: 3em"><span style="position: absolute">covering '
                        'text</span><span style="position: absolute; left: 20px; top: 4px">covered text</span></div>')
    report.parts.append('<div style="position: relative; height: 60px"><span>under an image</span><img alt="covering '
                        'image" style="position: absolute; left: 10px; top: 0; width: 40px" '
                        f'src="data:image/png;base64,{_png_base64(_image("blue"))}"></div>')
    check = render(report.write(tmp_path / "report.html"), tmp_path / "shot.png", width=900, height=800)
    assert check["thumbs"] == 3 and check["thumbWidth"] == pytest.approx(THUMB_WIDTH + 2)  # with its border
    assert ["covering text", "covered text"] in check["overlaps"]
    assert ["under an image", "img covering image"] in check["overlaps"] and len(check["overlaps"]) == 2


def test_large_thumbnails_are_scaled_down_and_photos_become_jpeg():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(np.clip(rng.normal(128, 10, (300, 200, 3)) + np.arange(200)[None, :, None] / 2, 0, 255)
                            .astype(np.uint8))
    kind, data = thumbnail_uri(noise).split(",")
    thumb = Image.open(io.BytesIO(base64.b64decode(data)))
    assert kind == "data:image/jpeg;base64" and thumb.size == (85, THUMB_WIDTH)  # 200 x 300 -> 85 x 128
    heatmap = Image.new("P", (256, 256))
    kind, data = thumbnail_uri(heatmap).split(",")
    assert kind == "data:image/png;base64" and Image.open(io.BytesIO(base64.b64decode(data))).size == (128, 128)
    small = _image("red", (THUMB_WIDTH, 5))
    kind, data = thumbnail_uri(small).split(",")
    assert kind == "data:image/png;base64" and Image.open(io.BytesIO(base64.b64decode(data))).size == (128, 5)
