"""Plots of faithfulness results (matplotlib is imported inside each function).

Every function draws into the given axes (or new ones) and returns them, so plots compose into figures.
"""

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from crp._utils.checks import check_choice

from .result import FlippingResult, area_under_curve

__all__ = ["plot_curves", "plot_sample_curves", "plot_pixels_per_step", "plot_perturbed_strip"]

SPREADS = ("std", "sem", "quartiles", None)
Results = Union[FlippingResult, Mapping[str, FlippingResult], Sequence[FlippingResult]]


def _new_axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.5))[1]


def _as_mapping(results: Results) -> Mapping[str, FlippingResult]:
    if isinstance(results, FlippingResult):
        return {results.order: results}
    if isinstance(results, Mapping):
        return results
    return {result.order: result for result in results}


def _curves(result: FlippingResult, relative: bool) -> np.ndarray:
    return result.relative_scores() if relative else result.scores


def _band(curves: np.ndarray, spread: Optional[str]) -> Optional[tuple]:
    """Lower and upper edge of the spread around the mean curve, or None."""
    if spread is None or len(curves) < 2:
        return None
    if spread == "quartiles":
        return tuple(np.nanpercentile(curves, [25, 75], axis=0))
    width = np.nanstd(curves, axis=0, ddof=1)
    if spread == "sem":
        width = width / np.sqrt(len(curves))
    mean = np.nanmean(curves, axis=0)
    return mean - width, mean + width


def plot_curves(results: Results, spread: Optional[str] = "std", relative: bool = False, ax: Any = None) -> Any:
    """Mean score curve with its spread for each result, e.g. MoRF vs LRF vs random.

    Parameters
    ----------
    results : FlippingResult, mapping of label to FlippingResult, or sequence of them
        The curves to compare; a sequence is labelled by each result's order.
    spread : {"std", "sem", "quartiles", None}, default "std"
        The band around the mean: one standard deviation, the standard error of the mean, the interquartile
        range, or none.
    relative : bool, default False
        Divide each curve by its unperturbed score.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    matplotlib.axes.Axes
        The axes.

    Raises
    ------
    ValueError
        If ``spread`` is unknown.
    """
    check_choice(spread, SPREADS, name="`spread`")
    ax = _new_axes(ax)
    for label, result in _as_mapping(results).items():
        curves = _curves(result, relative)
        auc = area_under_curve(curves, result.fractions) if relative else result.auc  # of the curves shown
        line = ax.plot(result.fractions, np.nanmean(curves, axis=0), label=f"{label} (AUC {np.nanmean(auc):.3g})")
        band = _band(curves, spread)
        if band is not None:
            ax.fill_between(result.fractions, *band, color=line[0].get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("fraction perturbed")
    ax.set_ylabel(f"relative {result.score}" if relative else result.score)
    ax.legend()
    return ax


def plot_sample_curves(
    result: FlippingResult, rows: Optional[Sequence[int]] = None, relative: bool = False, ax: Any = None
) -> Any:
    """One thin curve per row (sample, or sample and concept) with the mean curve on top.

    Parameters
    ----------
    result : FlippingResult
        The curves.
    rows : sequence of int, optional
        The rows to draw; all by default.
    relative : bool, default False
        Divide each curve by its unperturbed score.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    matplotlib.axes.Axes
        The axes.
    """
    ax = _new_axes(ax)
    curves = _curves(result, relative)
    chosen = np.arange(len(curves)) if rows is None else np.asarray(rows)
    for row in chosen:
        ax.plot(result.fractions, curves[row], color="0.6", linewidth=0.8, alpha=0.7)
    ax.plot(result.fractions, np.nanmean(curves[chosen], axis=0), color="k", linewidth=2, label="mean")
    ax.set_xlabel("fraction perturbed")
    ax.set_ylabel(f"relative {result.score}" if relative else result.score)
    ax.set_title(f"{result.order}, {result.perturbation}, region {result.region_size[0]}x{result.region_size[1]}")
    ax.legend()
    return ax


def plot_pixels_per_step(result: FlippingResult, ax: Any = None) -> Any:
    """Plot the number of pixels perturbed in each step (bars) and the fraction perturbed after it (line).

    Parameters
    ----------
    result : FlippingResult
        The result whose schedule is drawn.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    matplotlib.axes.Axes
        The axes of the bars (the line lives on a twin axis).
    """
    ax = _new_axes(ax)
    steps = np.arange(1, result.steps + 1)
    ax.bar(steps, result.pixels_per_step, color="tab:blue", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("pixels perturbed in the step")
    twin = ax.twinx()
    twin.plot(steps, result.fractions[1:], color="tab:red")
    twin.set_ylabel("fraction perturbed", color="tab:red")
    twin.set_ylim(0, 1.05)
    return ax


def plot_perturbed_strip(
    images: Any, steps: Sequence[int], fractions: Optional[np.ndarray] = None, sample: int = 0, axes: Any = None
) -> Any:
    """Show a strip of one sample's perturbed inputs at chosen steps.

    Parameters
    ----------
    images : torch.Tensor or numpy.ndarray
        Shape ``(N, T, C, H, W)``, from :meth:`~crp._evaluation.base.PerturbationMetric.perturbed_images`.
    steps : sequence of int
        The ``T`` step indices the images were taken at (for the titles).
    fractions : numpy.ndarray, optional
        ``result.fractions``, to title each image with the fraction perturbed.
    sample : int, default 0
        Which sample to show.
    axes : sequence of matplotlib.axes.Axes, optional
        ``T`` axes to draw into; a new figure by default.

    Returns
    -------
    numpy.ndarray
        The axes.

    Raises
    ------
    ValueError
        If ``images`` is not 5-D or ``steps`` does not have one entry per image.
    """
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim != 5 or array.shape[1] != len(steps):
        raise ValueError(f"`images` must have shape (N, T={len(steps)}, C, H, W), got {array.shape}.")
    strip = array[sample]
    low, high = float(strip.min()), float(strip.max())
    strip = (strip - low) / (high - low if high > low else 1.0)
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, len(steps), figsize=(1.8 * len(steps), 2.1), squeeze=False)[1][0]
    for ax, image, step in zip(axes, strip, steps):
        shown = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
        ax.imshow(shown, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_title(f"step {step}" + ("" if fractions is None else f"\n{100 * fractions[step]:.0f}%"), fontsize=8)
        ax.axis("off")
    return np.asarray(axes)
