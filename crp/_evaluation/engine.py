"""The batched loop shared by all perturbation metrics.

An experiment has rows (a heatmap to evaluate on one input sample) and steps (cumulative region counts).
Every (row, step) pair is one perturbed input, computed from the original input and the mask
``ranks[row] < counts[step]``; pairs are flattened and cut into batches of ``batch_size``, so a batch mixes
samples and steps and the result cannot depend on the batch size.

:func:`score_curves` evaluates every pair. :func:`score_curves_once` takes the model's forward pass and the
reduction of its outputs to scores apart and forwards inputs that are identical by construction only once:
the unperturbed input of step 0 once per sample (and not at all when the caller already has its outputs), and
the fully perturbed input of a last step that removes every region once per distinct input (once in all when
the fill is the same for every sample, as for a constant baseline).
"""

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch

from crp._utils.progress import tqdm

from ._checks import check_scores
from .perturbation import Perturbation

__all__ = ["Plan", "perturbed_batches", "score_curves", "score_curves_once"]

#: ``scorer(perturbed (B, C, H, W), rows (B,)) -> scores (B,)``.
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``forward(inputs (B, C, H, W)) -> outputs (B, ...)``: the model, the same for every row.
Forward = Callable[[torch.Tensor], torch.Tensor]
#: ``reduce(outputs (B, ...), rows (B,)) -> scores (B,)``: the score of each row from its input's outputs.
Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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

    def perturb(self, samples: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Return the perturbed inputs of ``samples`` (B,) with boolean ``masks`` (B, 1, H, W)."""
        state = None if self.state is None else self.state.index_select(0, samples)  # faster than state[samples]
        return self.perturbation.perturb(self.inputs.index_select(0, samples), masks, state)

    def removes_all(self, step: int) -> bool:
        """Whether ``step`` perturbs every pixel of every row."""
        return len(self.ranks) > 0 and bool(self.counts[step] > self.ranks.max())


def perturbed_batches(
    plan: Plan, batch_size: int, verbose: bool = False, desc: str = "perturbation",
    steps: Optional[Sequence[int]] = None,
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
    steps : sequence of int, optional
        Only these step indices (all by default).

    Yields
    ------
    tuple of torch.Tensor
        Row indices ``(B,)``, step indices ``(B,)`` and perturbed inputs ``(B, C, H, W)``.
    """
    device = plan.inputs.device
    chosen = torch.arange(len(plan.counts), device=device) if steps is None else torch.as_tensor(steps, device=device)
    # every pair's row, step, sample and region count, once: a batch takes slices of them
    all_rows = torch.arange(len(plan.ranks), device=device).repeat_interleave(len(chosen))
    all_steps = chosen.repeat(len(plan.ranks))
    all_samples, all_counts = plan.sources.index_select(0, all_rows), plan.counts.index_select(0, all_steps)
    for start in tqdm(range(0, len(all_rows), batch_size), desc=desc, disable=not verbose, unit="batch"):
        rows, pair = all_rows[start:start + batch_size], slice(start, start + batch_size)
        masks = (plan.ranks.index_select(0, rows) < all_counts[pair, None, None]).unsqueeze(1)
        yield rows, all_steps[pair], plan.perturb(all_samples[pair], masks)


def score_curves(plan: Plan, scorer: Scorer, batch_size: int, *, verbose: bool = False, desc: str = "") -> torch.Tensor:
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
        _score_steps(plan, scorer, batch_size, curves, steps=None, verbose=verbose, desc=desc)
    return curves


def score_curves_once(
    plan: Plan, forward: Forward, reduce: Reduce, batch_size: int, *, verbose: bool = False, desc: str = "",
    first: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`score_curves` for ``scorer(batch, rows) = reduce(forward(batch), rows)``, forwarding repeats once.

    Two kinds of perturbed inputs are the same by construction, whatever the order, and are forwarded once:

    * step 0 perturbs nothing (a :class:`~crp._evaluation.perturbation.Perturbation` keeps the pixels outside
      its mask), so its input is the sample itself: one forward pass per sample, not per row, and none if
      ``first`` already holds its scores;
    * a last step that removes every region leaves nothing of the ordering: its input is the fill of the
      whole sample, one forward pass per distinct fill (one in all for a fill shared by every sample, as a
      constant baseline or the inpainting fallback).

    The scores equal those of :func:`score_curves` up to float round-off (batches are composed differently).

    Parameters
    ----------
    plan : Plan
        The experiment.
    forward : callable
        ``forward(inputs) -> outputs``, the same for every row; it runs under :func:`torch.no_grad`.
    reduce : callable
        ``reduce(outputs, rows) -> scores`` of shape ``(B,)``.
    batch_size : int
        The most inputs per call of ``forward``.
    verbose : bool, default False
        Show a tqdm progress bar.
    desc : str, default ""
        The progress bar's label.
    first : torch.Tensor, optional
        The scores of step 0 per row, ``(M,)``, when the caller has already computed them.

    Returns
    -------
    torch.Tensor
        float64 curves of shape ``(M, S + 1)`` on the CPU.

    Raises
    ------
    ValueError
        If ``reduce`` does not return one score per row.
    """
    curves = torch.empty(len(plan.ranks), len(plan.counts), dtype=torch.float64)
    last = len(plan.counts) - 1
    shared = [0] + ([last] if last > 0 and plan.removes_all(last) else [])
    with torch.no_grad():
        if first is None:
            _score_shared_step(plan, forward, reduce, batch_size, curves, step=0)
        else:
            curves[:, 0] = check_scores(first, len(plan.ranks))
        if len(shared) > 1:
            _score_shared_step(plan, forward, reduce, batch_size, curves, step=last)
        inner = [step for step in range(len(plan.counts)) if step not in shared]
        scorer = _compose(forward, reduce)
        _score_steps(plan, scorer, batch_size, curves, steps=inner, verbose=verbose, desc=desc)
    return curves


def _compose(forward: Forward, reduce: Reduce) -> Scorer:
    return lambda batch, rows: reduce(forward(batch), rows)


def _score_steps(plan: Plan, scorer: Scorer, batch_size: int, curves: torch.Tensor, *,
                 steps: Optional[Sequence[int]], verbose: bool, desc: str) -> None:
    """Fill the columns ``steps`` of ``curves`` (all if None) pair by pair."""
    columns = list(range(curves.shape[1])) if steps is None else list(steps)
    if not columns:
        return
    scores = torch.empty(len(curves) * len(columns), dtype=curves.dtype)  # the pairs in the order of the batches
    start = 0
    for rows, _, batch in perturbed_batches(plan, batch_size, verbose, desc, columns):
        scores[start:start + len(rows)] = check_scores(scorer(batch, rows), len(rows))
        start += len(rows)
    curves[:, columns] = scores.view(len(curves), len(columns))


def _score_shared_step(plan: Plan, forward: Forward, reduce: Reduce, batch_size: int, curves: torch.Tensor, *,
                       step: int) -> None:
    """Fill column ``step`` (nothing or everything perturbed) from one forward pass per distinct input."""
    samples, row_sample = torch.unique(plan.sources, return_inverse=True)
    rows = torch.arange(len(plan.sources), device=plan.sources.device)
    shared = _SharedFill(forward) if step > 0 else None
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        masks = torch.full((len(chunk), 1, *plan.ranks.shape[1:]), step > 0, dtype=torch.bool, device=chunk.device)
        inputs = plan.perturb(chunk, masks)
        outputs = forward(inputs) if shared is None else shared(inputs)
        chunk_rows = rows[(row_sample >= start) & (row_sample < start + len(chunk))]
        scores = reduce(outputs[row_sample[chunk_rows] - start], chunk_rows)
        curves[chunk_rows.cpu(), step] = check_scores(scores, len(chunk_rows))


class _SharedFill:
    """Forward fully perturbed inputs, once in all while they are all bitwise equal to the first sample's."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.reference: Optional[torch.Tensor] = None
        self.outputs: Optional[torch.Tensor] = None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            self.reference = inputs[:1]
        if not bool((_bits(inputs) == _bits(self.reference)).all()):  # bits: NaN equals itself, -0.0 not 0.0
            return self.forward(inputs)
        if self.outputs is None:
            self.outputs = self.forward(self.reference)
        return self.outputs[torch.zeros(len(inputs), dtype=torch.long, device=self.outputs.device)]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """Return the tensor's bits as integers of its element size."""
    return tensor.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])
