"""Normalizations of relevance tensors."""
import torch

__all__ = ["abs_norm", "max_norm"]


def abs_norm(rel: torch.Tensor, stabilize: float = 1e-10) -> torch.Tensor:
    """Divide ``rel`` by the sum of its absolute values (plus ``stabilize``)."""
    return rel / (rel.abs().sum() + stabilize)


def max_norm(rel: torch.Tensor, stabilize: float = 1e-10) -> torch.Tensor:
    """Divide ``rel`` by its maximum (plus ``stabilize``)."""
    return rel / (rel.max() + stabilize)
