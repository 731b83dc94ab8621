"""Perturbations: what replaces the pixels that a faithfulness metric removes.

A :class:`Perturbation` maps a batch of original inputs and boolean masks of the pixels to remove to the
perturbed inputs. It always starts from the *original* input and the *cumulative* mask of a step, so every
step of a curve can be computed independently, in any batch, in any order. Randomness is drawn once per call
in :meth:`Perturbation.prepare` (one state per sample, from a seeded generator), so the same pixel gets the
same random value at every step.

Perturbations are picked by name from :data:`PERTURBATIONS` ("inpainting", "telea", "random", "constant",
"mean"); :func:`register_perturbation` adds a new one.
"""

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Dict, Optional, Type, TypeVar, Union

import torch

from crp._utils.checks import check_positive_int, check_type, check_value

from .inpainting import harmonic_inpaint, telea_inpaint

__all__ = [
    "Perturbation",
    "FillPerturbation",
    "Inpainting",
    "TeleaInpainting",
    "RandomUniform",
    "Constant",
    "Mean",
    "PERTURBATIONS",
    "register_perturbation",
    "get_perturbation",
]

#: The perturbations users pick by name.
PERTURBATIONS: Dict[str, Type["Perturbation"]] = {}

P = TypeVar("P", bound=Type["Perturbation"])


def register_perturbation(name: str) -> Callable[[P], P]:
    """Class decorator that registers a :class:`Perturbation` under ``name`` in :data:`PERTURBATIONS`.

    Parameters
    ----------
    name : str
        The name users pass as ``perturbation=name``.

    Returns
    -------
    callable
        The decorator, which returns the class unchanged.
    """

    def decorate(cls: P) -> P:
        cls.name = name
        PERTURBATIONS[name] = cls
        return cls

    return decorate


class Perturbation(ABC):
    """Replace the masked pixels of a batch of inputs.

    Subclasses implement :meth:`perturb`; those that need randomness or per-sample statistics override
    :meth:`prepare`, which is called once per metric call on all samples. :meth:`perturb` must keep the pixels
    outside the mask: the metrics score an empty mask (step 0) as the unperturbed input itself. Implementations
    keep the interface's arguments even where they do not need them (``# noqa: ARG002``).
    """

    name: ClassVar[str] = ""

    def prepare(self, inputs: torch.Tensor, generator: torch.Generator) -> Optional[torch.Tensor]:  # noqa: ARG002
        """Per-sample state of the perturbation, drawn once per call.

        Parameters
        ----------
        inputs : torch.Tensor
            All original inputs of the call, shape ``(N, C, H, W)``.
        generator : torch.Generator
            A seeded CPU generator for all random draws.

        Returns
        -------
        torch.Tensor or None
            A tensor whose first dimension is ``N`` (it is indexed by sample), or ``None``.
        """
        return None

    @abstractmethod
    def perturb(self, inputs: torch.Tensor, masks: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:
        """Return the perturbed inputs (a new tensor; ``inputs`` is left unchanged).

        Parameters
        ----------
        inputs : torch.Tensor
            Original inputs of shape ``(B, C, H, W)``.
        masks : torch.Tensor
            Boolean masks of shape ``(B, 1, H, W)``, True for the pixels to replace.
        state : torch.Tensor or None
            The rows of :meth:`prepare`'s state that belong to these inputs.

        Returns
        -------
        torch.Tensor
            The perturbed inputs, shape ``(B, C, H, W)``, equal to ``inputs`` outside the masks.
        """

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({settings})"


class FillPerturbation(Perturbation, ABC):
    """A perturbation that sets masked pixels to a fill image fixed per sample (see :meth:`fill`)."""

    def prepare(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.fill(inputs, generator)

    @abstractmethod
    def fill(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return the fill values, of shape ``(N, C, H, W)`` or broadcastable to it with first dimension ``N``.

        Parameters
        ----------
        inputs : torch.Tensor
            All original inputs of the call, shape ``(N, C, H, W)``.
        generator : torch.Generator
            A seeded CPU generator for all random draws.

        Returns
        -------
        torch.Tensor
            The fill values on the inputs' device.
        """

    def perturb(self, inputs: torch.Tensor, masks: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:
        if state is None:
            raise TypeError(f"{type(self).__name__}.perturb needs the fill that prepare() returned as `state`, "
                            f"got None.")
        return _replace_masked(inputs, masks, state)


@register_perturbation("inpainting")
class Inpainting(Perturbation):
    """Fill removed pixels from their remaining neighbourhood (harmonic fill, batched in torch).

    Parameters
    ----------
    iterations : int, default 8
        The most conjugate-gradient iterations on the full resolution (twice as many per coarser level).
    tolerance : float, default 1e-6
        Relative residual at which a channel's fill stops iterating.
    fallback : float, default 0.0
        Value used when every pixel of an input has been removed.

    See Also
    --------
    crp._evaluation.inpainting.harmonic_inpaint : the method.
    """

    def __init__(self, iterations: int = 8, tolerance: float = 1e-6, fallback: float = 0.0) -> None:
        self.iterations = check_positive_int(iterations, name="`iterations`")
        self.tolerance = float(tolerance)
        self.fallback = float(fallback)

    def perturb(self, inputs: torch.Tensor, masks: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: ARG002
        return harmonic_inpaint(inputs, masks, self.iterations, self.tolerance, self.fallback)


@register_perturbation("telea")
class TeleaInpainting(Perturbation):
    """Fill removed pixels with OpenCV's Telea inpainting (CPU, needs ``opencv-python-headless``).

    Parameters
    ----------
    radius : float, default 3.0
        The neighbourhood radius of the method.
    """

    def __init__(self, radius: float = 3.0) -> None:
        self.radius = radius

    def perturb(self, inputs: torch.Tensor, masks: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: ARG002
        return telea_inpaint(inputs, masks, radius=self.radius)


@register_perturbation("random")
class RandomUniform(FillPerturbation):
    """Replace removed pixels by uniform noise drawn once per sample from a seeded generator.

    Parameters
    ----------
    low, high : float, optional
        The range of the noise; by default each sample's own minimum and maximum.
    """

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None) -> None:
        self.low = low
        self.high = high

    def fill(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flat = inputs.flatten(1)
        low = flat.amin(1) if self.low is None else torch.full_like(flat[:, 0], self.low)
        high = flat.amax(1) if self.high is None else torch.full_like(flat[:, 0], self.high)
        noise = torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device)
        return low.view(-1, 1, 1, 1) + (high - low).view(-1, 1, 1, 1) * noise


@register_perturbation("constant")
class Constant(FillPerturbation):
    """Replace removed pixels by one constant (the baseline, e.g. 0 for black or the data mean).

    Parameters
    ----------
    value : float, default 0.0
        The baseline value.
    """

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def fill(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # noqa: ARG002
        return inputs.new_full((inputs.shape[0], 1, 1, 1), self.value)


@register_perturbation("mean")
class Mean(FillPerturbation):
    """Replace removed pixels by the mean of the original input, per sample and channel."""

    def fill(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # noqa: ARG002
        return inputs.mean((2, 3), keepdim=True)


def _replace_masked(inputs: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``torch.where(masks, fill, inputs)``, computed as a blend with weights 0 and 1 where that is exact.

    ``torch.lerp`` returns its start for weight 0 and its end for weight 1 exactly when both are finite (up to
    the sign of a zero), and on the CPU it runs several times faster than ``torch.where``, which serves inputs
    or fills that are not finite.

    Parameters
    ----------
    inputs : torch.Tensor
        Inputs of shape ``(B, C, H, W)``.
    masks : torch.Tensor
        Boolean masks broadcastable to the inputs, True where the fill replaces the input.
    fill : torch.Tensor
        The fill, broadcastable to the inputs.

    Returns
    -------
    torch.Tensor
        A new tensor of the inputs' shape.
    """
    fill = fill.to(inputs.dtype)
    if not bool(torch.isfinite(fill.sum() + inputs.sum())):  # a non-finite value, or sums that overflow
        return torch.where(masks, fill, inputs)
    return torch.lerp(inputs, fill.expand_as(inputs), masks.to(inputs.dtype))


def get_perturbation(spec: Union[str, Perturbation]) -> Perturbation:
    """Coerce a perturbation given by name or as an instance.

    Parameters
    ----------
    spec : str or Perturbation
        A name from :data:`PERTURBATIONS` (built with default settings) or an instance.

    Returns
    -------
    Perturbation
        The perturbation.

    Raises
    ------
    TypeError
        If ``spec`` is neither a string nor a :class:`Perturbation`.
    ValueError
        If ``spec`` is an unknown name.
    """
    if isinstance(spec, Perturbation):
        return spec
    expected = f"one of {sorted(PERTURBATIONS)} or a Perturbation instance"
    check_type(spec, str, name="`perturbation`", expected=expected)
    check_value(spec in PERTURBATIONS, spec, name="`perturbation`", expected=expected)
    return PERTURBATIONS[spec]()
