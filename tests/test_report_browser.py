"""The demo's report.html in a real browser: headless Chromium renders it, every image loads, nothing overflows.

Skipped only where Chromium is not installed (CI's ``.ci/run`` installs Debian's ``chromium``).
"""
import re

import numpy as np
import pytest
from PIL import Image

from crp.app.demo import run_demo
from crp.app.shapes_model import torch_threads

from helpers import chromium, render

pytestmark = pytest.mark.skipif(chromium() is None,
                                reason="Chromium is not installed (.ci/run installs Debian's chromium package)")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    with torch_threads(1):
        result = run_demo(out, samples=2, top_k=3, quick=True, cache_dir=tmp_path_factory.mktemp("cache"),
                          progress=False)
    return result, out / "report.html"


@pytest.mark.parametrize("width", [1280, 700])
def test_demo_report_renders_every_image_without_overflow(demo_report, tmp_path, width):
    result, report = demo_report
    html = report.read_text(encoding="utf-8")
    embedded = len(re.findall(r'<img[^>]* src="data:image/png;base64,', html))
    assert embedded == html.count("<img") > 10 and "file:" not in html and "http" not in html  # self-contained
    shot = tmp_path / "shot.png"
    check = render(report, shot, width=width, height=6000)
    assert check["images"] == embedded and check["broken"] == 0
    assert check["overflowing"] == 0 and check["scrollWidth"] <= check["clientWidth"]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[1] == width
    # the page is drawn: dark text on white, and the heatmaps' red and blue
    assert (pixels.sum(-1) < 150).mean() > 0.002
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 80) & (pixels[..., 1] < 80)
    assert red.sum() > 200 and blue.sum() > 50
