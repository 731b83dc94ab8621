"""Render an HTML file in headless Chromium: a screenshot, and whether every image loaded and nothing overflows."""
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

_CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var width = document.documentElement.clientWidth;
  var wide = Array.prototype.slice.call(document.querySelectorAll('body *')).filter(function (e) {
    var r = e.getBoundingClientRect(); return r.right > width + 1; }).length;
  document.body.setAttribute('data-check', JSON.stringify({images: images.length, broken: broken,
    overflowing: wide, scrollWidth: document.documentElement.scrollWidth, clientWidth: width}));
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


def render(html_path: Path, screenshot: Path, width: int = 1280, height: int = 2400) -> dict:
    """Screenshot ``html_path`` and return the image/overflow check measured in the page after load."""
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
    return json.loads(match.group(1).replace("&quot;", '"'))
