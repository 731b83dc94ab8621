"""Helpers the tests share: tiny models and data, the command line's model and dataset, a headless browser.

Tests import them from here (``from helpers import ...``); ``conftest.py`` only turns some into fixtures. The
command-line tests load ``helpers:tiny_model`` and ``helpers:tiny_data`` as ``module:callable`` specs.
"""
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from zennit.layer import Sum

# ------------------------------------------------------------------------------------------------------------
# tiny models whose attributions can be derived by hand


class TwoLayerLinear(nn.Module):
    """x (2) -> "hidden" Linear(2, 3) -> "out" Linear(3, 2), no biases, no non-linearity."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 3, bias=False)
        self.out = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.5, -3.0]]))
            self.out.weight.copy_(torch.tensor([[2.0, -1.0, 1.0], [0.5, 1.5, -2.0]]))

    def forward(self, x):
        return self.out(self.hidden(x))


class TwoBranch(nn.Module):
    """out = head(main(x) + side(x)): "main" and its parallel branch "side" both feed "sum", then "head"."""

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(2, 2, bias=False)
        self.side = nn.Linear(2, 2, bias=False)
        self.sum = Sum()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.main.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
            self.side.weight.copy_(torch.tensor([[0.5, -2.0], [1.0, 1.0]]))
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))

    def forward(self, x):
        return self.head(self.sum(torch.stack([self.main(x), self.side(x)], dim=-1)))


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Sequential:
    """A seeded conv net on (N, 3, 8, 8) inputs; layer names "0" (conv), "2" (conv), "5" (linear)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, classes),
    ).double().eval()


def hooks_left(model: nn.Module) -> int:
    """Number of forward/backward hooks still attached to any module of ``model``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


# ------------------------------------------------------------------------------------------------------------
# the FeatureVisualization's tiny CNN and seeded data

N_SAMPLES, N_CLASSES = 64, 3
#: The layers whose channels are the concepts of :class:`TinyNet`.
LAYERS = ["conv1", "conv2", "fc1"]


class TinyNet(nn.Module):
    """conv1 (1 -> 4) - conv2 (4 -> 5) - fc1 (80 -> 6) - fc2 (6 -> N_CLASSES), for (N, 1, 8, 8) inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(5 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, N_CLASSES)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class TensorData(torch.utils.data.Dataset):
    """Seeded samples and targets; ``fail_at`` raises at that index (to simulate a killed run)."""

    def __init__(self, n=N_SAMPLES, fail_at=None):
        generator = torch.Generator().manual_seed(1)
        self.samples = torch.rand(n, 1, 8, 8, generator=generator, dtype=torch.float64)
        self.targets = torch.randint(0, N_CLASSES, (n,), generator=generator).tolist()
        self.fail_at = fail_at

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        if index == self.fail_at:
            raise RuntimeError(f"killed at {index}")
        return self.samples[index], self.targets[index]


# ------------------------------------------------------------------------------------------------------------
# the command line's model and dataset, loaded as helpers:tiny_model and helpers:tiny_data

#: When set to an index, ``TinyData`` raises KeyboardInterrupt when that item is read (a simulated Ctrl-C).
INTERRUPT_AT = None


def tiny_model(num_classes: int = 3) -> nn.Module:
    """Conv(3, 4) - ReLU - pool - Conv(4, 6) - ReLU - pool - Linear(96, num_classes), for 16 x 16 images."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, num_classes),
    )


class TinyData(torch.utils.data.Dataset):
    """Seeded random 3 x 16 x 16 images in [0, 1] with labels ``i % 3``."""

    classes = ["red", "green", "blue"]

    def __init__(self, n: int = 12) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, 16, 16, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if INTERRUPT_AT is not None and index == INTERRUPT_AT:
            raise KeyboardInterrupt
        return self.images[index], index % 3


def tiny_data() -> TinyData:
    return TinyData()


def tiny_loader() -> torch.utils.data.DataLoader:
    """:func:`tiny_data` in a DataLoader of batches of 5."""
    return torch.utils.data.DataLoader(TinyData(), batch_size=5)


def not_a_dataset() -> int:
    return 3


# ------------------------------------------------------------------------------------------------------------
# an HTML file in headless Chromium: a screenshot, and whether every image loaded and nothing overflows

_CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var width = document.documentElement.clientWidth;
  var wide = Array.prototype.slice.call(document.querySelectorAll('body *')).filter(function (e) {
    var r = e.getBoundingClientRect(); return r.right > width + 1; }).length;
  // boxes of every visible run of text (one per line) and of every image; no two may intersect
  var boxes = [], item = 0, walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    var node = walker.currentNode, text = node.textContent.trim();
    if (!text || node.parentElement.closest('script, style')) continue;
    var range = document.createRange();
    range.selectNodeContents(node);
    Array.prototype.forEach.call(range.getClientRects(), function (r) {
      if (r.width > 0 && r.height > 0) boxes.push({r: r, item: item, what: text.slice(0, 40)}); });
    item += 1;
  }
  images.forEach(function (i) { boxes.push({r: i.getBoundingClientRect(), item: item++, what: 'img ' + i.alt}); });
  var overlaps = [];
  for (var a = 0; a < boxes.length; a++) {
    for (var b = a + 1; b < boxes.length; b++) {
      var p = boxes[a], q = boxes[b];
      var dx = Math.min(p.r.right, q.r.right) - Math.max(p.r.left, q.r.left);
      var dy = Math.min(p.r.bottom, q.r.bottom) - Math.max(p.r.top, q.r.top);
      if (p.item !== q.item && dx > 0.5 && dy > 0.5 && overlaps.length < 20) overlaps.push([p.what, q.what]);
    }
  }
  var thumbs = Array.prototype.slice.call(document.querySelectorAll('img.thumb')).map(function (i) {
    return i.getBoundingClientRect().width; });
  document.body.setAttribute('data-check', JSON.stringify({images: images.length, broken: broken,
    overflowing: wide, scrollWidth: document.documentElement.scrollWidth, clientWidth: width,
    texts: item - images.length, overlaps: overlaps, thumbs: thumbs.length,
    thumbWidth: thumbs.length ? Math.min.apply(null, thumbs) : null}));
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> Optional[str]:
    """Path of a Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render(html_path: Path, screenshot: Path, *, width: int = 1280, height: int = 2400) -> dict:
    """Screenshot ``html_path`` and return the checks measured in the page after load.

    ``images`` and ``broken`` count the images and those that did not load, ``overflowing`` the elements reaching
    past the right edge, ``texts`` the visible runs of text, ``overlaps`` (at most 20) pairs of texts or images
    whose boxes intersect, ``thumbs`` and ``thumbWidth`` the number of thumbnails (``img.thumb``) and the smallest
    rendered width among them.
    """
    browser = chromium()
    with tempfile.TemporaryDirectory() as profile:
        page = Path(profile) / "checked.html"
        page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _CHECK + "</body>"),
                        encoding="utf-8")
        common = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                  "--virtual-time-budget=10000"]
        dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
        subprocess.run(common + [f"--screenshot={screenshot}", html_path.resolve().as_uri()], capture_output=True,
                       timeout=120, check=True)
    match = re.search(r"data-check=\"([^\"]*)\"", dom)
    if not match:
        raise RuntimeError(f"the page check did not run; Chromium printed: {dom[:500]!r}")
    return json.loads(html.unescape(match.group(1)))
