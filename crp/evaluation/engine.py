"""The batched loop shared by all perturbation metrics.

An experiment has rows (a heatmap to evaluate on one input sample) and steps (cumulative region counts).
Every (row, step) pair is one perturbed input, computed from the original input and the mask
``ranks[row] < counts[step]``; pairs are flattened and cut into batches of ``batch_size``, so a batch mixes
samples and steps and the result cannot depend on the batch size.
"""

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import torch
from tqdm import tqdm

from .perturbation import Perturbation

__all__ = ["Plan", "perturbed_batches", "score_curves"]

#: ``scorer(perturbed (B, C, H, W), rows (B,)) -> scores (B,)``.
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Plan:
    """Which pixels of which input are perturbed at which step.

    Attributes
    ----------
    inputs : torch.Tensor
        The original inputs, ``(N, C, H, W)``.
    sources : torch.Tensor
        int64 ``(M,)``: the input sample of each row.
    ranks : torch.Tensor
        int64 ``(M, H, W)``: per row and pixel, the order position of the pixel's region.
    counts : torch.Tensor
        int64 ``(S + 1,)``: cumulative perturbed regions after each step.
    perturbation : Perturbation
        What replaces the perturbed pixels.
    state : torch.Tensor or None
        The perturbation's per-sample state (first dimension ``N``).
    """

    inputs: torch.Tensor
    sources: torch.Tensor
    ranks: torch.Tensor
    counts: torch.Tensor
    perturbation: Perturbation
    state: Optional[torch.Tensor]


def perturbed_batches(
    plan: Plan, batch_size: int, verbose: bool = False, desc: str = "perturbation"
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(rows, steps, perturbed_inputs)`` for all (row, step) pairs, ``batch_size`` pairs at a time.

    Parameters
    ----------
    plan : Plan
        The experiment.
    batch_size : int
        The number of perturbed inputs per batch.
    verbose : bool, default False
        Show a tqdm progress bar.
    desc : str, default "perturbation"
        The progress bar's label.

    Yields
    ------
    tuple of torch.Tensor
        Row indices ``(B,)``, step indices ``(B,)`` and perturbed inputs ``(B, C, H, W)``.
    """
    device = plan.inputs.device
    n_steps = len(plan.counts)
    total = len(plan.ranks) * n_steps
    for start in tqdm(range(0, total, batch_size), desc=desc, disable=not verbose, unit="batch"):
        flat = torch.arange(start, min(start + batch_size, total), device=device)
        rows, steps = flat // n_steps, flat % n_steps
        masks = (plan.ranks[rows] < plan.counts[steps][:, None, None])[:, None]
        samples = plan.sources[rows]
        state = None if plan.state is None else plan.state[samples]
        yield rows, steps, plan.perturbation.perturb(plan.inputs[samples], masks, state)


def score_curves(plan: Plan, scorer: Scorer, batch_size: int, verbose: bool = False, desc: str = "") -> torch.Tensor:
    """Score every perturbed input and arrange the scores as curves.

    Parameters
    ----------
    plan : Plan
        The experiment.
    scorer : callable
        ``scorer(perturbed, rows) -> scores``; it runs under :func:`torch.no_grad` (enable grad inside if needed).
    batch_size : int
        The number of perturbed inputs per call of ``scorer``.
    verbose : bool, default False
        Show a tqdm progress bar.
    desc : str, default ""
        The progress bar's label.

    Returns
    -------
    torch.Tensor
        float64 curves of shape ``(M, S + 1)`` on the CPU.

    Raises
    ------
    ValueError
        If ``scorer`` does not return one finite-shaped score per perturbed input.
    """
    curves = torch.empty(len(plan.ranks), len(plan.counts), dtype=torch.float64)
    with torch.no_grad():
        for rows, steps, batch in perturbed_batches(plan, batch_size, verbose, desc):
            scores = scorer(batch, rows)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(rows),):
                shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(
                    f"`score` must return one value per input, shape ({len(rows)},), got {shape}; "
                    "reduce the model output to the target's score."
                )
            curves[rows.cpu(), steps.cpu()] = scores.detach().to("cpu", torch.float64)
    return curves
