"""Highlighted text: token windows with their relevance as HTML (for reports) and as a PNG grid.

Every token gets a background colour by its relevance: red for positive, blue for negative, the stronger the
larger its magnitude relative to the largest magnitude (of its window, or of all windows drawn together). The
reference token is underlined. Tokens are shown as ids, or as the text a ``decode`` callable gives them (e.g.
a tokenizer's ``decode``, which takes a list of ids).
"""
import html
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from crp._transformers.features import TokenWindow
from crp._utils.checks import check_type
from crp._utils.files import write_atomic

__all__ = ["token_colour", "token_texts", "text_html", "plot_text_grid"]

Decode = Callable[[List[int]], str]


def token_colour(relevance: float, scale: float) -> tuple:
    """Return the ``(red, green, blue, alpha)`` background of a token, alpha in ``[0, 1]``.

    Positive relevance is red ``(255, 0, 0)``, negative blue ``(0, 0, 255)``, zero transparent; alpha is
    ``|relevance| / scale`` (at most 1).
    """
    alpha = min(abs(relevance) / scale, 1.0) if scale > 0 else 0.0
    return (255, 0, 0, alpha) if relevance > 0 else (0, 0, 255, alpha) if relevance < 0 else (255, 255, 255, 0.0)


def token_texts(window: TokenWindow, decode: Optional[Decode] = None) -> List[str]:
    """Return the text of every token of ``window``: ``decode([id])``, or the id itself without ``decode``."""
    if decode is None:
        return [str(i) for i in window.ids]
    return [str(decode([i])) for i in window.ids]


def _check_windows(windows: Any) -> List[TokenWindow]:
    windows = list(windows) if isinstance(windows, (list, tuple)) else windows
    ok = isinstance(windows, list) and all(isinstance(w, TokenWindow) for w in windows)
    if not ok:
        raise TypeError(f"windows must be a list of crp.transformers.TokenWindow (what "
                        f"TextFeatureVisualization.get_max_reference returns per concept), got "
                        f"{type(windows).__name__}.")
    return windows


def _scale(windows: List[TokenWindow]) -> float:
    return max((abs(r) for w in windows for r in (w.relevance or [])), default=0.0)


def text_html(windows: Sequence[TokenWindow], *, decode: Optional[Decode] = None, shared_scale: bool = False) -> str:
    """Draw token windows as HTML: one line per window, every token on its relevance colour.

    Parameters
    ----------
    windows : list of TokenWindow
        E.g. the references of one concept from :meth:`TextFeatureVisualization.get_max_reference`.
    decode : callable, optional
        ``decode(list of ids) -> str`` (a tokenizer's ``decode``); without it tokens are shown as ids.
    shared_scale : bool
        Scale the colours of all windows by one largest magnitude, instead of every window by its own.

    Returns
    -------
    str
        A ``<div>`` with one ``<div>`` per window; token texts are HTML-escaped, every token is a ``<span>``
        with its relevance in ``title`` and ``data-relevance``, and the reference token is underlined.
    """
    windows = _check_windows(windows)
    shared = _scale(windows)
    lines = []
    for window in windows:
        scale = shared if shared_scale else _scale([window])
        spans = []
        for place, text in enumerate(token_texts(window, decode)):
            relevance = window.relevance[place] if window.relevance is not None else 0.0
            red, green, blue, alpha = token_colour(relevance, scale)
            style = f"background-color: rgba({red}, {green}, {blue}, {alpha:.3f}); white-space: pre"
            if place == window.center:
                style += "; text-decoration: underline; font-weight: bold"
            spans.append(f'<span style="{style}" title="{relevance:.4g}" data-relevance="{relevance!r}">'
                         f"{html.escape(text)}</span>")
        lines.append(f'<div class="crp-tokens" data-index="{window.index}" data-token="{window.token}">'
                     f"{' '.join(spans)}</div>")
    return '<div class="crp-text-references">' + "".join(lines) + "</div>"


def plot_text_grid(references: Dict[Any, Sequence[TokenWindow]], *, decode: Optional[Decode] = None,
                   path: Optional[Union[str, Path]] = None, fontsize: float = 9.0) -> Any:
    """Draw the token windows of several concepts as a grid with matplotlib: one row of windows per concept.

    Parameters
    ----------
    references : dict of concept id to list of TokenWindow
        What :meth:`TextFeatureVisualization.get_max_reference` returns.
    decode : callable, optional
        ``decode(list of ids) -> str``; without it tokens are shown as ids.
    path : str or os.PathLike, optional
        Also write the figure there as a PNG (atomically).
    fontsize : float
        Size of the token text.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per concept, a line per window, colours as :func:`text_html` (each window scaled by itself).
    """
    import matplotlib.pyplot as plt

    check_type(references, dict, name="references", expected="a dict of concept id to a list of TokenWindow",
               fix="Pass what TextFeatureVisualization.get_max_reference returns (without plot_fn).")
    rows = {concept: _check_windows(windows) for concept, windows in references.items()}
    longest = max((sum(len(t) + 1 for t in token_texts(w, decode)) for ws in rows.values() for w in ws), default=1)
    lines = max((len(ws) for ws in rows.values()), default=1)
    char = fontsize / 72 * 0.62  # inches per character of a monospace font
    figure, axes = plt.subplots(len(rows) or 1, 1, squeeze=False,
                                figsize=(max(longest * char + 1.2, 3), (lines + 1) * fontsize / 72 * 1.8 * len(rows)))
    for ax, (concept, windows) in zip(axes[:, 0], rows.items()):
        ax.set_axis_off()
        ax.set_title(f"concept {concept}", loc="left", fontsize=fontsize)
        for line, window in enumerate(windows):
            _draw_window(ax, window, token_texts(window, decode), y=1 - (line + 0.5) / max(lines, 1),
                         longest=longest, fontsize=fontsize)
    figure.tight_layout()
    if path is not None:
        write_atomic(path, lambda temporary: figure.savefig(temporary, format="png", dpi=150))
    return figure


def _draw_window(ax: Any, window: TokenWindow, texts: List[str], *, y: float, longest: int, fontsize: float) -> None:
    scale = _scale([window])
    x = 0
    for place, text in enumerate(texts):
        relevance = window.relevance[place] if window.relevance is not None else 0.0
        red, green, blue, alpha = token_colour(relevance, scale)
        ax.text(x / longest, y, text, family="monospace", fontsize=fontsize, va="center", ha="left",
                fontweight="bold" if place == window.center else "normal",
                bbox={"facecolor": (red / 255, green / 255, blue / 255, alpha), "edgecolor": "none", "pad": 1})
        x += len(text) + 1
