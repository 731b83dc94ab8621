"""The demo's report.html in a real browser: headless Chromium renders it, every image loads, nothing overflows,
no text or image covers another, thumbnails are at least 128 pixels wide, and the file stays small.

Skipped only where Chromium is not installed (CI's ``.ci/run`` installs Debian's ``chromium``).
"""
import re

import numpy as np
import pytest
from PIL import Image

from crp.app.demo import run_demo
from crp.app.report import THUMB_WIDTH
from crp.app.shapes_model import torch_threads

from helpers import chromium, render

pytestmark = pytest.mark.skipif(chromium() is None,
                                reason="Chromium is not installed (.ci/run installs Debian's chromium package)")

#: Size budget of the quick demo's report.html (2 samples, 3 channels each, 4 references per concept); it
#: measured about 0.3 MB. The full demo's (4 samples, 8 references) is budgeted at 3 MB.
QUICK_BUDGET = 1_000_000


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    with torch_threads(1):
        result = run_demo(out, samples=2, top_k=3, quick=True, cache_dir=tmp_path_factory.mktemp("cache"),
                          progress=False)
    return result, out / "report.html"


@pytest.mark.parametrize("width", [1280, 700])
def test_demo_report_renders_every_image_without_overflow_or_overlap(demo_report, tmp_path, width):
    result, report = demo_report
    html = report.read_text(encoding="utf-8")
    embedded = len(re.findall(r'<img[^>]* src="data:image/png;base64,', html))
    assert embedded == html.count("<img") > 10 and "file:" not in html and "http" not in html  # self-contained
    shot = tmp_path / "shot.png"
    check = render(report, shot, width=width, height=9000)
    assert check["images"] == embedded and check["broken"] == 0
    assert check["overflowing"] == 0 and check["scrollWidth"] <= check["clientWidth"]
    assert check["texts"] > 100 and check["overlaps"] == []  # no text or image covers another
    # per sample at least the input, the heatmap, 3 channels and their 4 references above their heatmaps
    assert check["thumbs"] == html.count('<img class="thumb"') >= 2 * (2 + 3 + 3 * 4 * 2)
    assert check["thumbWidth"] >= THUMB_WIDTH == 128
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[1] == width
    # the page is drawn: dark text on white, and the heatmaps' red and blue
    assert (pixels.sum(-1) < 150).mean() > 0.002
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 80) & (pixels[..., 1] < 80)
    assert red.sum() > 200 and blue.sum() > 50


def test_demo_report_size_legend_summary_and_files(demo_report):
    result, report = demo_report
    assert report.stat().st_size <= QUICK_BUDGET
    html = report.read_text(encoding="utf-8")
    assert '<img class="bar"' in html and "negative relevance" in html and "positive relevance" in html
    assert "scaled on its own, symmetrically about zero" in html  # the normalization is named
    assert "full_backward=True" in html and "starts these heatmaps at the concept&#x27;s activation" in html
    assert '<table class="summary">' in html and "<pre>" not in html
    files = re.search(r"<details><summary>(\d+) files \(click to show\)</summary><table>(.*?)</table></details>",
                      html)
    assert files and int(files.group(1)) == len(set(result.files))
    assert all(f"<td>{name}</td>" in files.group(2) for name in result.files)
