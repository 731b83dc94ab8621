"""A self-contained HTML report: sections of text, tables and images, every image embedded as a PNG.

:class:`Report` collects content and :meth:`Report.write` writes one HTML file (atomically) that needs no
other file, server or network to show: images are embedded as base64 data URIs, styles are inline. It is
what ``python -m crp demo`` and ``python -m crp analyze`` write as ``report.html``.
"""
import base64
import html
import io
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from crp._utils.files import write_atomic

__all__ = ["Report", "THUMB_WIDTH", "HEATMAP_NOTE", "colorbar_image", "thumbnail_uri"]

#: Width in CSS pixels of every thumbnail (inputs, heatmaps, reference samples) in a report.
THUMB_WIDTH = 128

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 1.5em;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
p.lead { color: #555; margin-top: 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; margin: 0.6em 0; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; overflow-wrap: anywhere; }
th { background: #f2f2f2; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #eee; }
figure.wide img { image-rendering: auto; }
figcaption { font-size: 0.85em; color: #555; max-width: 100%; overflow-wrap: anywhere; }
figure.refs { display: flex; flex-direction: column; gap: 2px; }
img.thumb { width: THUMBpx; height: auto; image-rendering: pixelated; border: 1px solid #ccc; display: block; }
figure.refs figcaption, figure.thumb figcaption { width: THUMBpx; }
.refrow { margin: 0.4em 0 1.2em 0; }
.refrow .grid { gap: 6px; }
.refrow > p.caption { font-size: 0.85em; color: #555; margin: 0.3em 0 0 0; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 0.6em; font-size: 0.85em; color: #333;
          background: #fafafa; border: 1px solid #e4e4e4; padding: 0.4em 0.7em; margin: 0.6em 0; }
.legend img.bar { width: 240px; height: 14px; image-rendering: auto; border: 1px solid #999; }
.legend .note { flex-basis: 100%; color: #555; }
details { margin: 0.6em 0; }
summary { cursor: pointer; color: #333; }
table.summary td:first-child { white-space: nowrap; color: #444; }""".replace("THUMBpx", f"{THUMB_WIDTH}px")

ImageLike = Union[Image.Image, str, os.PathLike, Any]

#: What :meth:`Report.legend` says about the colours of heatmaps.
HEATMAP_NOTE = ("Heatmaps: red pixels speak for the explained class, blue ones against it, white is zero. Each "
                "heatmap is scaled on its own, symmetrically about zero: its largest absolute relevance is full red "
                "or blue, so colours compare pixels within one heatmap, not across heatmaps.")


class Report:
    """Collect report content and write it as one self-contained HTML file.

    Parameters
    ----------
    title : str
        Page title and top heading.
    lead : str, optional
        A line under the heading.

    Examples
    --------
    >>> report = Report("Concepts of my model")
    >>> report.section("Heatmaps", "One heatmap per concept.")
    >>> report.images([image_a, image_b], ["concept 3", "concept 7"], width=160)
    >>> report.write("out/report.html")
    """

    def __init__(self, title: str, lead: Optional[str] = None) -> None:
        self.title = title
        self.parts: List[str] = [f"<h1>{html.escape(title)}</h1>"]
        if lead:
            self.parts.append(f'<p class="lead">{html.escape(lead)}</p>')

    def section(self, heading: str, text: Optional[str] = None) -> "Report":
        """Start a section with a heading and an optional paragraph."""
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        return self.text(text) if text else self

    def text(self, text: str) -> "Report":
        """Add a paragraph (plain text, escaped)."""
        self.parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def preformatted(self, text: str) -> "Report":
        """Add a block of monospaced text (e.g. a summary printed by a command)."""
        self.parts.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def table(self, rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None, *,
              collapsed: Optional[str] = None, css_class: Optional[str] = None) -> "Report":
        """Add a table; cells are converted with ``str`` and escaped.

        Parameters
        ----------
        rows : sequence of sequences
            The rows.
        header : sequence of str, optional
            The column headings.
        collapsed : str, optional
            Fold the table into a ``<details>`` element that shows only this line until it is opened.
        css_class : str, optional
            A class for the ``<table>`` element (``"summary"``: the first column is a row heading).
        """
        head = "" if header is None else "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        attribute = f' class="{html.escape(css_class)}"' if css_class else ""
        table = f"<table{attribute}>{head}{body}</table>"
        if collapsed is not None:
            table = f"<details><summary>{html.escape(collapsed)}</summary>{table}</details>"
        self.parts.append(table)
        return self

    def thumbnails(self, images: Sequence[ImageLike], captions: Sequence[str]) -> "Report":
        """Add a row of pixel images (inputs, heatmaps), each :data:`THUMB_WIDTH` pixels wide, with captions.

        Small images are embedded at their own resolution and scaled up by the browser without smoothing; larger
        ones are scaled down (:func:`thumbnail_uri`).
        """
        if len(captions) != len(images):
            raise ValueError(f"captions must match images: got {len(captions)} captions for {len(images)} images.")
        figures = [f'<figure class="thumb">{_thumb(image, caption)}<figcaption>{html.escape(caption)}</figcaption>'
                   f"</figure>" for image, caption in zip(images, captions)]
        self.parts.append(f'<div class="grid">{"".join(figures)}</div>')
        return self

    def references(self, images: Sequence[ImageLike], heatmaps: Sequence[ImageLike], caption: str) -> "Report":
        """Add a row of reference samples, each above its heatmap, all :data:`THUMB_WIDTH` pixels wide.

        Give images of one size (e.g. receptive-field crops padded to a common size) so that they are shown at
        one scale.
        """
        if len(images) != len(heatmaps):
            raise ValueError(f"heatmaps must match images: got {len(heatmaps)} heatmaps for {len(images)} images.")
        figures = [f'<figure class="refs">{_thumb(image, f"reference {rank}")}'
                   f'{_thumb(heat, f"heatmap of reference {rank}")}</figure>'
                   for rank, (image, heat) in enumerate(zip(images, heatmaps), start=1)]
        self.parts.append(f'<div class="refrow"><div class="grid">{"".join(figures)}</div>'
                          f'<p class="caption">{html.escape(caption)}</p></div>')
        return self

    def legend(self, note: str = HEATMAP_NOTE) -> "Report":
        """Add the colour legend of heatmaps: a blue-white-red bar from negative to positive relevance."""
        bar = _png_base64(colorbar_image())
        self.parts.append(
            '<div class="legend"><span>negative relevance (against)</span>'
            f'<img class="bar" alt="colour bar: blue, white, red" src="data:image/png;base64,{bar}">'
            f'<span>positive relevance (for)</span><span class="note">{html.escape(note)}</span></div>'
        )
        return self

    def images(self, images: Sequence[ImageLike], captions: Optional[Sequence[str]] = None,
               width: Optional[int] = None, wide: bool = False) -> "Report":
        """Add a row of images (PIL images, PNG/JPEG paths or matplotlib figures) with optional captions.

        Parameters
        ----------
        images : sequence
            The images; matplotlib figures are rendered to PNG.
        captions : sequence of str, optional
            One caption per image.
        width : int, optional
            Display width in CSS pixels (small images are scaled up without smoothing).
        wide : bool
            Smooth scaling, for plots rather than pixel images.
        """
        captions = list(captions) if captions is not None else [""] * len(images)
        if len(captions) != len(images):
            raise ValueError(f"captions must match images: got {len(captions)} captions for {len(images)} images.")
        style = f' style="width:{int(width)}px"' if width else ""
        figures = []
        for image, caption in zip(images, captions):
            figures.append(
                f'<figure class="{"wide" if wide else "pixel"}"><img{style} alt="{html.escape(caption)}" '
                f'src="data:image/png;base64,{_png_base64(image)}"><figcaption>{html.escape(caption)}'
                f"</figcaption></figure>"
            )
        self.parts.append(f'<div class="grid">{"".join(figures)}</div>')
        return self

    def to_html(self) -> str:
        """Return the whole document."""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                f"<body>{''.join(self.parts)}</body></html>\n")

    def write(self, path: Union[str, os.PathLike]) -> Path:
        """Write the report atomically (temporary file, then rename) and return its path."""
        path = Path(path)
        document = self.to_html()
        write_atomic(path, lambda temporary: temporary.write_text(document, encoding="utf-8"))
        return path


def colorbar_image(width: int = 256, height: int = 8) -> Image.Image:
    """Draw the colour bar of heatmaps: relevance from -1 (left, blue) through 0 (white) to +1 (right, red).

    Drawn by the same function as the heatmaps (:func:`crp.image.imgify` with ``cmap="bwr"``, symmetric).
    """
    from crp.image import imgify

    return imgify(np.tile(np.linspace(-1.0, 1.0, width), (height, 1)), cmap="bwr", symmetric=True).convert("RGB")


def _thumb(image: ImageLike, alt: str) -> str:
    return f'<img class="thumb" alt="{html.escape(alt)}" src="{thumbnail_uri(image)}">'


def thumbnail_uri(image: ImageLike) -> str:
    """Return a data URI of a thumbnail: small images as they are (PNG), larger ones at :data:`THUMB_WIDTH`.

    An image whose longer side exceeds :data:`THUMB_WIDTH` is scaled down to it (Lanczos); a scaled photo
    (RGB) is embedded as a JPEG where that is at most three quarters of the PNG's size, to keep reports of
    large images small.
    """
    if not isinstance(image, Image.Image) or max(image.size) <= THUMB_WIDTH:
        return f"data:image/png;base64,{_png_base64(image)}"
    factor = THUMB_WIDTH / max(image.size)
    size = (max(1, round(image.size[0] * factor)), max(1, round(image.size[1] * factor)))
    small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    png = _png_base64(small)
    if image.mode != "RGB":
        return f"data:image/png;base64,{png}"
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=90)
    jpeg = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/jpeg;base64,{jpeg}" if len(jpeg) <= 0.75 * len(png) else f"data:image/png;base64,{png}"


def _png_base64(image: ImageLike) -> str:
    """PNG bytes of a PIL image, an image file or a matplotlib figure, base64-encoded."""
    if hasattr(image, "savefig"):
        buffer = io.BytesIO()
        image.savefig(buffer, format="png", bbox_inches="tight", dpi=110)
        data = buffer.getvalue()
    elif isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    elif isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            buffer = io.BytesIO()
            opened.save(buffer, format="PNG")
            data = buffer.getvalue()
    else:
        raise TypeError(f"a report image must be a PIL image, an image path or a matplotlib figure, got "
                        f"{type(image).__name__}.")
    return base64.b64encode(data).decode("ascii")
