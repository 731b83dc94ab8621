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

from PIL import Image

from crp._utils.files import write_atomic

__all__ = ["Report"]

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
"""

ImageLike = Union[Image.Image, str, os.PathLike, Any]


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

    def table(self, rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None) -> "Report":
        """Add a table; cells are converted with ``str`` and escaped."""
        head = "" if header is None else "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        self.parts.append(f"<table>{head}{body}</table>")
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
