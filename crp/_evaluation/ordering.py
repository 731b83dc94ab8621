"""The order in which regions are perturbed.

Relevance is summed over each region (:func:`pool_regions`); an order maps these region scores to a
permutation of the regions per sample (:data:`ORDERS`: "morf", most relevant first; "lrf", least relevant
first; "random", a seeded permutation); :func:`pixel_ranks` turns the permutation into a map holding, for
every pixel, the step rank of its region, so that the mask after ``k`` perturbed regions is ``ranks < k``.
"""

from typing import Callable, Dict, Tuple, Union

import torch

from ._checks import named_or_callable

__all__ = ["Order", "ORDERS", "get_order", "pool_regions", "pixel_ranks"]

#: ``order(region_scores (N, R), generator) -> permutation (N, R)`` of region indices, first perturbed first.
Order = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _most_relevant_first(scores: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def _least_relevant_first(scores: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
    return torch.sort(scores, dim=1, stable=True).indices


def _random(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    keys = torch.rand(scores.shape, generator=generator)
    return torch.argsort(keys, dim=1).to(scores.device)


#: The orders users pick by name.
ORDERS: Dict[str, Order] = {"morf": _most_relevant_first, "lrf": _least_relevant_first, "random": _random}


def get_order(spec: Union[str, Order]) -> Tuple[str, Order]:
    """Coerce an order given by name or as a callable.

    Parameters
    ----------
    spec : str or callable
        A name from :data:`ORDERS` or a callable ``(region_scores, generator) -> permutation``.

    Returns
    -------
    tuple of (str, callable)
        The order's name (the callable's ``__name__`` for a callable) and the order.

    Raises
    ------
    TypeError
        If ``spec`` is neither a string nor a callable.
    ValueError
        If ``spec`` is an unknown name.
    """
    return named_or_callable(spec, ORDERS, "order")


def pool_regions(attributions: torch.Tensor, region: Tuple[int, int]) -> torch.Tensor:
    """Sum the relevance of each region.

    Parameters
    ----------
    attributions : torch.Tensor
        Relevance of shape ``(N, H, W)``.
    region : tuple of int
        ``(height, width)`` of one region; it must tile ``H`` and ``W``.

    Returns
    -------
    torch.Tensor
        Region relevance of shape ``(N, R)``, regions in row-major order, ``R = (H / h) * (W / w)``.
    """
    n, height, width = attributions.shape
    blocks = attributions.reshape(n, height // region[0], region[0], width // region[1], region[1])
    return blocks.sum((2, 4)).reshape(n, -1)


def pixel_ranks(permutation: torch.Tensor, shape: Tuple[int, int], region: Tuple[int, int]) -> torch.Tensor:
    """For every pixel, the position of its region in the perturbation order.

    Parameters
    ----------
    permutation : torch.Tensor
        Region indices of shape ``(N, R)``, first perturbed first.
    shape : tuple of int
        ``(H, W)`` of the inputs.
    region : tuple of int
        ``(height, width)`` of one region.

    Returns
    -------
    torch.Tensor
        int64 ranks of shape ``(N, H, W)``; the pixels perturbed after ``k`` regions are ``ranks < k``.
    """
    n, n_regions = permutation.shape
    ranks = torch.empty_like(permutation)
    ranks.scatter_(1, permutation, torch.arange(n_regions, device=permutation.device).expand(n, -1))
    grid = ranks.reshape(n, shape[0] // region[0], shape[1] // region[1])
    return grid.repeat_interleave(region[0], dim=1).repeat_interleave(region[1], dim=2)
