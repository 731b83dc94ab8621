"""The settings and the experiment plan shared by the perturbation metrics."""

from typing import Any, Dict, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch

from crp._utils.checks import check_int, check_positive_int

from ._checks import RegionSize, check_attributions, check_inputs, check_region_fit, check_region_size
from .engine import Plan, perturbed_batches
from .ordering import Order, get_order, pixel_ranks, pool_regions
from .perturbation import Perturbation, get_perturbation
from .result import FlippingResult, area_under_curve
from .schedule import PerStep, check_schedule, region_counts

__all__ = ["PerturbationMetric"]

M = TypeVar("M", bound="PerturbationMetric")

#: Input values per automatic batch on the CPU and on other devices, and the largest automatic batch.
AUTO_BUDGET_CPU, AUTO_BUDGET_GPU, AUTO_MAX_BATCH = 2**16, 2**24, 1024
#: On the CPU, at least this many inputs per automatic batch as long as they hold at most ``AUTO_CAP_CPU`` values,
#: so that the fixed costs of a batch (Python, dispatch, a call per layer) and heavy convolutions amortise: pixel
#: flipping of ResNet-18 and VGG-11-BN at 64 x 64 ran 1.4 times faster per image in batches of 32 than of 5,
#: ResNet-18 at 224 x 224 1.2 times faster in batches of 6 than of 1, a small CNN at 32 x 32 1.05-1.1 times faster
#: in 32 than in 21 (one thread); much larger batches of light models ran slower.
AUTO_MIN_BATCH_CPU, AUTO_CAP_CPU = 32, 2**20


class PerturbationMetric:
    """Settings of a perturbation experiment: what replaces removed pixels, in which order, how many per step.

    Parameters
    ----------
    perturbation : str or Perturbation, default "inpainting"
        A name from :data:`~crp._evaluation.perturbation.PERTURBATIONS` ("inpainting", "telea", "random",
        "constant", "mean") or an instance with non-default settings.
    order : str or callable, default "morf"
        "morf" (most relevant first), "lrf" (least relevant first), "random" (seeded), or a callable
        ``(region_relevance (N, R), generator) -> permutation (N, R)``.
    region_size : int or tuple of int, default 1
        Side (or ``(height, width)``) of the regions perturbed together: 1 is pixel flipping, ``k`` region
        perturbation with ``k x k`` patches; relevance is summed per region. It must tile the inputs.
    steps : int, optional
        The number of perturbation steps, spread evenly over all regions (default ``min(100, n_regions)``).
    per_step : int or sequence of int, optional
        Instead of ``steps``: regions per step, constant or one number per step
        (e.g. :func:`~crp._evaluation.schedule.quadratic_per_step`).
    batch_size : int, optional
        The number of perturbed inputs per forward pass; bounds the memory. By default (None) on the CPU about
        ``2**16`` input values per batch (much larger batches of light models run slower per input once their
        activations leave the cache), but at least 32 inputs while they hold at most ``2**20`` values (the fixed
        costs of a batch and heavy convolutions amortise): 83 inputs of 1 x 28 x 28, 32 of 3 x 32 x 32 or
        3 x 64 x 64, 6 of 3 x 224 x 224. On a GPU about ``2**24`` input values. At most 1024 inputs.
    seed : int, default 0
        Seed of the generator behind the random order and the random perturbation.
    verbose : bool, default False
        Show a tqdm progress bar.

    Raises
    ------
    ValueError
        If a setting is malformed or an unknown name; the message names the argument.
    """

    def __init__(
        self,
        perturbation: Union[str, Perturbation] = "inpainting",
        order: Union[str, Order] = "morf",
        region_size: RegionSize = 1,
        *,
        steps: Optional[int] = None,
        per_step: Optional[PerStep] = None,
        batch_size: Optional[int] = None,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.perturbation = get_perturbation(perturbation)
        self.order_name, self.order = get_order(order)
        self._order_spec = order
        self.region_size = check_region_size(region_size)
        check_schedule(steps, per_step)
        self.steps, self.per_step = steps, per_step
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, name="`batch_size`")
        self.seed = check_int(seed, name="`seed`")
        self.verbose = bool(verbose)

    def settings(self) -> Dict[str, Any]:
        """Return the constructor arguments of this metric.

        Returns
        -------
        dict
            Argument names and values; ``type(self)(**self.settings())`` rebuilds the metric.
        """
        keys = ("perturbation", "order", "region_size", "steps", "per_step", "batch_size", "seed", "verbose")
        values = dict(vars(self), order=self._order_spec)
        return {key: values[key] for key in keys}

    def replace(self: M, **changes: Any) -> M:
        """Return a copy of this metric with some settings changed, e.g. ``metric.replace(order="lrf")``.

        Parameters
        ----------
        **changes
            Constructor arguments to change.

        Returns
        -------
        PerturbationMetric
            A new metric of the same type.
        """
        return type(self)(**{**self.settings(), **changes})

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.settings().items() if key != "order")
        return f"{type(self).__name__}(order={self.order_name!r}, {settings})"

    def batch_for(self, inputs: torch.Tensor) -> int:
        """Return the number of perturbed inputs per batch for ``inputs`` (``batch_size`` or the automatic choice).

        Parameters
        ----------
        inputs : torch.Tensor
            Inputs of shape ``(N, C, H, W)``.

        Returns
        -------
        int
            The batch size.
        """
        if self.batch_size is not None:
            return self.batch_size
        values = inputs[0].numel()
        if inputs.device.type != "cpu":
            size = AUTO_BUDGET_GPU // values
        else:
            size = max(AUTO_BUDGET_CPU // values, min(AUTO_MIN_BATCH_CPU, AUTO_CAP_CPU // values))
        return max(1, min(AUTO_MAX_BATCH, size))

    def perturbed_images(self, inputs: torch.Tensor, attributions: Any, steps: Sequence[int]) -> torch.Tensor:
        """Return the perturbed inputs at chosen steps, e.g. for :func:`~crp.evaluation.plot.plot_perturbed_strip`.

        Parameters
        ----------
        inputs : torch.Tensor
            Inputs of shape ``(N, C, H, W)``.
        attributions : torch.Tensor or numpy.ndarray
            The heatmaps that set the order, ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``.
        steps : sequence of int
            Step indices in ``[0, S]`` (0 is the unperturbed input).

        Returns
        -------
        torch.Tensor
            Shape ``(N, len(steps), C, H, W)``.

        Raises
        ------
        ValueError
            If a step lies outside ``[0, S]`` (or an argument is malformed, as for a metric call).
        """
        inputs = check_inputs(inputs)
        plan, counts = self._plan(inputs, check_attributions(attributions, inputs), None)
        chosen = np.asarray(steps)
        if chosen.ndim != 1 or chosen.dtype.kind not in "iu" or ((chosen < 0) | (chosen >= len(counts))).any():
            raise ValueError(f"`steps` must be step indices in [0, {len(counts) - 1}], got {steps!r}.")
        plan.counts = plan.counts[torch.as_tensor(chosen, device=inputs.device)]
        images = torch.empty(len(inputs), len(chosen), *inputs.shape[1:], dtype=inputs.dtype, device=inputs.device)
        with torch.no_grad():
            for rows, step_index, batch in perturbed_batches(plan, self.batch_for(inputs), self.verbose, "images"):
                images[rows, step_index] = batch
        return images

    def _plan(
        self, inputs: torch.Tensor, heatmaps: torch.Tensor, sources: Optional[torch.Tensor]
    ) -> Tuple[Plan, np.ndarray]:
        """Order the regions of each row's heatmap and draw the perturbation's state."""
        check_region_fit(self.region_size, inputs)
        height, width = inputs.shape[-2:]
        n_regions = (height // self.region_size[0]) * (width // self.region_size[1])
        counts = region_counts(n_regions, self.steps, self.per_step)
        sources = torch.arange(len(inputs), device=inputs.device) if sources is None else sources
        generator = torch.Generator().manual_seed(self.seed)
        state = self.perturbation.prepare(inputs, generator)  # first, so that all orders share the same fill
        permutation = self._permutation(pool_regions(heatmaps, self.region_size), generator)
        ranks = pixel_ranks(permutation, (height, width), self.region_size)
        count_tensor = torch.as_tensor(counts, device=inputs.device)
        return Plan(inputs, sources, ranks, count_tensor, self.perturbation, state), counts

    def _permutation(self, region_scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return the order's permutation of the regions, checked."""
        permutation = torch.as_tensor(self.order(region_scores, generator), device=region_scores.device)
        expected = torch.arange(region_scores.shape[1], device=region_scores.device).expand_as(region_scores)
        if permutation.shape != region_scores.shape or not torch.equal(permutation.sort(1).values.long(), expected):
            raise ValueError(
                f"`order` {self.order_name!r} must return a permutation of the {region_scores.shape[1]} regions per "
                f"row, shape {tuple(region_scores.shape)}, got shape {tuple(permutation.shape)}."
            )
        return permutation.long()

    def _result(self, curves: torch.Tensor, counts: np.ndarray, targets: torch.Tensor, sources: torch.Tensor,
                score: str, **extra: Any) -> FlippingResult:
        """Package the curves with their x axis and areas."""
        n_regions = np.prod(self._grid_shape(extra.pop("shape")))
        fractions = counts / n_regions
        scores = curves.numpy()
        return FlippingResult(
            scores=scores,
            fractions=fractions,
            auc=area_under_curve(scores, fractions),
            pixels_per_step=np.diff(counts) * self.region_size[0] * self.region_size[1],
            targets=targets.cpu().numpy(),
            samples=sources.cpu().numpy(),
            order=self.order_name,
            perturbation=self.perturbation.name or type(self.perturbation).__name__,
            region_size=self.region_size,
            score=score,
            **extra,
        )

    def _grid_shape(self, shape: Tuple[int, int]) -> Tuple[int, int]:
        """Regions per column and row for inputs of spatial ``shape``."""
        return shape[0] // self.region_size[0], shape[1] // self.region_size[1]
