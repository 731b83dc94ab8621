"""Pixel flipping and region perturbation: how faithful a heatmap is to the model.

Remove the pixels (or ``k x k`` regions) of an input in the order of a heatmap's relevance and track the
model's score for the target class after each step (Bach et al., PLoS ONE 10(7), 2015; Samek et al., "Evaluating
the visualization of what a deep neural network has learned", IEEE TNNLS 28(11), 2017). Removing the most
relevant first (MoRF) should destroy the score fastest, so a faithful heatmap has a low MoRF area under the
curve, lower than a random order's, while least-relevant-first (LRF) keeps the score up longest.

Example
-------
>>> metric = PixelFlipping(perturbation="inpainting", region_size=2, steps=50)  # doctest: +SKIP
>>> result = metric(model, inputs, heatmaps, targets)                          # doctest: +SKIP
>>> result.scores.shape, result.auc.shape                                     # doctest: +SKIP
((N, 51), (N,))
"""

import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from ._checks import RegionSize, TargetsLike, check_attributions, check_inputs, check_scores, check_targets
from .base import PerturbationMetric
from .engine import score_curves, score_curves_once
from .ordering import Order
from .perturbation import Perturbation
from .result import FlippingResult
from .schedule import PerStep
from .scores import Score, get_score

__all__ = ["PixelFlipping", "RegionPerturbation", "compare_orders"]


class PixelFlipping(PerturbationMetric):
    """Score curves of a model while the pixels of each input are removed in the order of a heatmap.

    Settings go to the constructor, data to the call (as in Quantus). Every (sample, step) pair is an
    independent perturbation of the original input, batched ``batch_size`` at a time under
    :func:`torch.no_grad`, so the curves do not depend on the batch size.

    Inputs that are identical by construction are forwarded once
    (:func:`~crp._evaluation.engine.score_curves_once`): the forward pass of the unperturbed inputs that checks
    the outputs and predicts the targets also gives step 0, and a last step that removes every pixel forwards
    one input in all when the fill is the same for every sample (a constant baseline, the inpainting fallback),
    else one per sample. With ``S`` steps a call thus costs ``S`` forward passes per sample plus one (shared fill)
    or ``S + 1``, instead of ``S + 2``.

    Parameters
    ----------
    perturbation : str or Perturbation, default "inpainting"
        What replaces removed pixels: "inpainting" (harmonic fill from the remaining pixels, in torch),
        "telea" (OpenCV), "random" (seeded uniform noise), "constant" (0 by default), "mean" (the input's
        channel means), or a :class:`~crp._evaluation.perturbation.Perturbation` instance.
    order : str or callable, default "morf"
        "morf", "lrf", "random", or a callable ``(region_relevance, generator) -> permutation``.
    region_size : int or tuple of int, default 1
        1 for pixel flipping, ``k`` for region perturbation with ``k x k`` patches (relevance summed per patch).
    steps : int, optional
        Number of steps, spread evenly over the regions (default ``min(100, n_regions)``).
    per_step : int or sequence of int, optional
        Instead of ``steps``: regions removed per step, constant or a schedule.
    score : str or callable, default "logit"
        "logit", "probability", "log_probability", or ``score(outputs, targets) -> (B,)``.
    batch_size : int, optional
        Perturbed inputs per forward pass; by default about ``2**16`` input values per batch on the CPU (at least
        32 inputs up to ``2**20`` values), ``2**24`` on a GPU (see :class:`~crp._evaluation.base.PerturbationMetric`).
    seed : int, default 0
        Seed for the random order and the random perturbation.
    verbose : bool, default False
        Show a tqdm progress bar.
    """

    def __init__(
        self,
        perturbation: Union[str, Perturbation] = "inpainting",
        order: Union[str, Order] = "morf",
        region_size: RegionSize = 1,
        *,
        steps: Optional[int] = None,
        per_step: Optional[PerStep] = None,
        score: Union[str, Score] = "logit",
        batch_size: Optional[int] = None,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__(perturbation, order, region_size, steps=steps, per_step=per_step, batch_size=batch_size,
                         seed=seed, verbose=verbose)
        self.score_name, self.score = get_score(score)
        self._score_spec = score

    def settings(self) -> Dict[str, Any]:
        """Return the constructor arguments of this metric (see :meth:`PerturbationMetric.settings`)."""
        return {**super().settings(), "score": self._score_spec}

    def __call__(
        self, model: torch.nn.Module, inputs: torch.Tensor, attributions: Any, targets: TargetsLike = None
    ) -> FlippingResult:
        """Perturb the inputs in the order of the attributions and track the model's score.

        Parameters
        ----------
        model : torch.nn.Module or callable
            Maps ``(B, C, H, W)`` inputs (on their device) to outputs, ``(B, K)`` for the named scores.
            It should be in eval mode.
        inputs : torch.Tensor
            Inputs of shape ``(N, C, H, W)``.
        attributions : torch.Tensor or numpy.ndarray
            Heatmaps of shape ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)`` (summed over channels).
        targets : int, sequence of int or tensor, optional
            The class tracked per sample; by default the class predicted for the unperturbed input.

        Returns
        -------
        FlippingResult
            ``scores`` ``(N, S + 1)``, ``fractions`` ``(S + 1,)``, ``auc`` ``(N,)`` and the settings.

        Raises
        ------
        ValueError
            If the shapes of inputs, attributions and targets do not match, if the attributions hold NaN, or if
            the region size does not tile the inputs.
        """
        inputs = check_inputs(inputs)
        attributions = check_attributions(attributions, inputs)
        if getattr(model, "training", False):
            warnings.warn("`model` is in training mode; call model.eval() for reproducible curves.", stacklevel=2)
        batch_size = self.batch_for(inputs)
        targets, first = self._unperturbed(model, inputs, targets, batch_size)
        plan, counts = self._plan(inputs, attributions, None)
        device_targets = targets.to(inputs.device)

        def reduce(outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.score(outputs, device_targets[rows])

        def scorer(batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return reduce(model(batch), rows)

        desc = f"{self.order_name} flipping"
        if first is None:  # outputs that are no tensor: score every (sample, step) pair as it comes
            curves = score_curves(plan, scorer, batch_size, verbose=self.verbose, desc=desc)
        else:
            curves = score_curves_once(plan, model, reduce, batch_size, verbose=self.verbose, desc=desc, first=first)
        return self._result(curves, counts, targets, plan.sources, self.score_name, shape=inputs.shape[-2:])

    def _unperturbed(
        self, model: torch.nn.Module, inputs: torch.Tensor, targets: TargetsLike, batch_size: int
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return the checked targets (the predicted classes if None) and the scores of the unperturbed inputs.

        One forward pass per input serves the check of the output shape, the predicted targets and step 0 of the
        curves; the scores are None if the model's outputs are no tensor (then step 0 is scored with the rest).
        """
        with torch.no_grad():
            outputs = [model(inputs[:batch_size])]
        is_named = isinstance(self._score_spec, str)
        if is_named and (not isinstance(outputs[0], torch.Tensor) or outputs[0].dim() != 2):
            shape = tuple(outputs[0].shape) if isinstance(outputs[0], torch.Tensor) else type(outputs[0]).__name__
            raise ValueError(f"`score` {self.score_name!r} needs model outputs of shape (B, K), got {shape}.")
        checked = check_targets(targets, len(inputs), outputs[0].shape[1] if is_named else None)
        with torch.no_grad():
            outputs += [model(inputs[start:start + batch_size]) for start in range(batch_size, len(inputs), batch_size)]
        if checked is None:
            checked = torch.cat([output.argmax(1) for output in outputs]).cpu()
        if not all(isinstance(output, torch.Tensor) for output in outputs):
            return checked, None
        with torch.no_grad():
            first = self.score(torch.cat(outputs), checked.to(outputs[0].device))
        return checked, check_scores(first, len(inputs))


class RegionPerturbation(PixelFlipping):
    """:class:`PixelFlipping` of ``k x k`` regions (Samek et al., 2017); ``region_size`` defaults to 8.

    Parameters
    ----------
    region_size : int or tuple of int, default 8
        Side (or ``(height, width)``) of the regions.
    **settings
        The other settings of :class:`PixelFlipping`.
    """

    def __init__(self, region_size: RegionSize = 8, **settings: Any) -> None:
        super().__init__(region_size=region_size, **settings)


def compare_orders(
    metric: PixelFlipping,
    model: torch.nn.Module,
    inputs: torch.Tensor,
    attributions: Any,
    targets: TargetsLike = None,
    *,
    orders: Sequence[Union[str, Order]] = ("morf", "lrf", "random"),
) -> Dict[str, FlippingResult]:
    """Run one metric with several orders on the same data, e.g. for :func:`~crp.evaluation.plot.plot_curves`.

    Parameters
    ----------
    metric : PixelFlipping
        The settings; its ``order`` is replaced by each of ``orders``.
    model, inputs, attributions, targets
        As for :meth:`PixelFlipping.__call__`.
    orders : sequence of str or callable, default ("morf", "lrf", "random")
        The orders to compare.

    Returns
    -------
    dict of str to FlippingResult
        One result per order, keyed by the order's name.
    """
    results = {}
    for order in orders:
        result = metric.replace(order=order)(model, inputs, attributions, targets)
        results[result.order] = result
    return results
