"""The HTML report: escaping, embedded images, atomic writing, and a real browser rendering it."""
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from crp.app.report import Report

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
