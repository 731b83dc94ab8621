"""What a faithfulness curve tracks: a score of the model output for the target class.

A score is a callable ``score(outputs (B, K), targets (B,)) -> (B,)``; :data:`SCORES` holds the named ones
("logit", the default; "probability"; "log_probability").
"""

from typing import Callable, Dict, Tuple, Union

import torch

from ._checks import named_or_callable

__all__ = ["Score", "SCORES", "get_score"]

#: ``score(outputs, targets) -> scores`` with shapes ``(B, K), (B,) -> (B,)``.
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _logit(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs.gather(1, targets[:, None])[:, 0]


def _probability(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _logit(outputs.softmax(1), targets)


def _log_probability(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _logit(outputs.log_softmax(1), targets)


#: The scores users pick by name.
SCORES: Dict[str, Score] = {"logit": _logit, "probability": _probability, "log_probability": _log_probability}


def get_score(spec: Union[str, Score]) -> Tuple[str, Score]:
    """Coerce a score given by name or as a callable.

    Parameters
    ----------
    spec : str or callable
        A name from :data:`SCORES` or a callable ``(outputs, targets) -> scores``.

    Returns
    -------
    tuple of (str, callable)
        The score's name (the callable's ``__name__`` for a callable) and the score.

    Raises
    ------
    TypeError
        If ``spec`` is neither a string nor a callable.
    ValueError
        If ``spec`` is an unknown name.
    """
    return named_or_callable(spec, SCORES, "score")
