"""Concept Relevance Propagation (CRP) on PyTorch, built on zennit.

CRP (Achtibat et al., "From attribution maps to human-understandable explanations through Concept
Relevance Propagation", Nature Machine Intelligence 5, 1006-1019, 2023) conditions the backward
relevance flow of LRP on latent concepts to obtain one heatmap per concept, and finds each concept's
most representative samples by Relevance Maximization.

The sub-modules are imported where they are used, so ``import crp`` stays light:
``crp.attribution``, ``crp.concepts``, ``crp.hooks``, ``crp.helper``, ``crp.image``.
"""

__version__ = "0.7.0"

__all__ = ["__version__"]
