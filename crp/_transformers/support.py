"""Which modules crp can explain, and the scoped installation of their rule-carrying forwards.

The registry :data:`ROLES` names every supported module class (by its import path, so that neither
``transformers`` nor ``torchvision`` is imported here) with its role: a forward of crp's to install (blocks,
attention, MLPs, norms, activations), a linear layer whose rule comes from the zennit composite, or a module
that only routes tensors. :func:`check_supported` refuses a model with any other module, naming it and the
supported list. :func:`installed` swaps in the forwards for one scope and always restores the model;
:class:`TransformerRules` is the zennit canonizer that does so for the duration of a composite's registration,
with the AttnLRP rules.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from torch import nn
from zennit.canonizers import Canonizer

from crp._transformers import gpt2, llama, vit
from crp._transformers.forwards import HostModule, Setup, identity_forward, layer_norm_forward
from crp._transformers.rules import LRPOps

__all__ = [
    "Role", "ROLES", "LANGUAGE_MODELS", "SUPPORTED_MODELS", "class_path", "role_of", "check_supported",
    "installed", "is_installed", "linear_aliases", "Explainable", "TransformerRules", "module_names",
]


@dataclass(frozen=True)
class Role:
    """What crp does with a module class.

    Attributes
    ----------
    forward : callable, optional
        The forward to install, ``forward(module, setup, *args, **kwargs)``; None keeps the module's own.
    linear : bool
        A linear layer: its rule comes from the zennit composite.
    kind : str
        ``"block"`` (a residual block), ``"attention"``, ``"mlp"``, ``"model"`` (a top-level model) or ``""``.
    output : str
        For attention: the sub-module whose output is the attention's output ("" for the module itself).
    check : callable, optional
        ``check(module)`` returns why this instance is not supported, or None.
    """

    forward: Optional[Callable] = None
    linear: bool = False
    kind: str = ""
    output: str = ""
    check: Optional[Callable[[nn.Module], Optional[str]]] = None


def _layer_norm_check(module: HostModule) -> Optional[str]:
    if len(module.normalized_shape) != 1:
        return f"normalizes over {len(module.normalized_shape)} axes; only the last axis is supported"
    return None


def _gpt2_attention_check(module: HostModule) -> Optional[str]:
    return "is a cross-attention (add_cross_attention=True)" if module.is_cross_attention else None


def _gpt2_block_check(module: HostModule) -> Optional[str]:
    return "has cross-attention (add_cross_attention=True)" if hasattr(module, "crossattention") else None


def _mha_check(module: HostModule) -> Optional[str]:
    if not module.batch_first or not module._qkv_same_embed_dim:
        return "is not a batch-first self-attention with one packed input projection"
    if module.bias_k is not None or module.add_zero_attn:
        return "adds bias_k/bias_v or zero attention"
    return None


def _mlp_block_check(module: HostModule) -> Optional[str]:
    kinds = [type(child).__name__ for child in module]
    if kinds != ["Linear", "GELU", "Dropout", "Linear", "Dropout"]:
        return f"has the layers {kinds} instead of Linear, GELU, Dropout, Linear, Dropout"
    return None


_TORCH = "torch.nn.modules."
_HF = "transformers.models."
_VIT = "torchvision.models.vision_transformer."
_ROUTE = Role()
_LINEAR = Role(linear=True)
_IDENTITY = Role(forward=identity_forward)

#: Supported module classes (by their import path, ``package.module.Class``) and their roles.
ROLES: Dict[str, Role] = {
    **{_TORCH + name: _ROUTE for name in ("container.ModuleList", "container.Sequential", "dropout.Dropout",
                                          "linear.Identity", "sparse.Embedding")},
    **{_TORCH + name: _LINEAR for name in ("linear.Linear", "linear.NonDynamicallyQuantizableLinear",
                                           "conv.Conv2d")},
    "transformers.pytorch_utils.Conv1D": _LINEAR,
    _TORCH + "normalization.LayerNorm": Role(forward=layer_norm_forward, check=_layer_norm_check),
    **{_TORCH + "activation." + name: _IDENTITY for name in ("GELU", "SiLU", "ReLU", "Tanh", "Sigmoid")},
    **{"transformers.activations." + name: _IDENTITY for name in (
        "NewGELUActivation", "GELUActivation", "FastGELUActivation", "QuickGELUActivation", "GELUTanh",
        "PytorchGELUTanh", "AccurateGELUActivation", "SiLUActivation", "MishActivation", "LinearActivation",
        "ClippedGELUActivation", "ReLUSquaredActivation")},
    # GPT-2
    _HF + "gpt2.modeling_gpt2.GPT2Model": Role(forward=gpt2.model_forward),
    _HF + "gpt2.modeling_gpt2.GPT2Block": Role(forward=gpt2.block_forward, kind="block", check=_gpt2_block_check),
    _HF + "gpt2.modeling_gpt2.GPT2Attention": Role(forward=gpt2.attention_forward, kind="attention",
                                                   check=_gpt2_attention_check),
    _HF + "gpt2.modeling_gpt2.GPT2MLP": Role(forward=gpt2.mlp_forward, kind="mlp"),
    **{_HF + f"gpt2.modeling_gpt2.GPT2{head}": Role(kind="model") for head in ("LMHeadModel",
                                                                              "ForSequenceClassification")},
    # torchvision's ViT
    _VIT + "VisionTransformer": Role(kind="model"),
    _VIT + "Encoder": Role(forward=vit.encoder_forward),
    _VIT + "EncoderBlock": Role(forward=vit.block_forward, kind="block"),
    _VIT + "MLPBlock": Role(forward=vit.mlp_forward, kind="mlp", check=_mlp_block_check),
    _TORCH + "activation.MultiheadAttention": Role(kind="attention", output="out_proj", check=_mha_check),
}
for _family, _module in (("Llama", "llama"), ("Qwen2", "qwen2"), ("Qwen3", "qwen3")):
    _path = f"{_HF}{_module}.modeling_{_module}.{_family}"
    ROLES.update({
        _path + "Model": Role(forward=llama.model_forward),
        _path + "DecoderLayer": Role(forward=llama.layer_forward, kind="block"),
        _path + "Attention": Role(forward=llama.attention_forward, kind="attention"),
        _path + "MLP": Role(forward=llama.mlp_forward, kind="mlp"),
        _path + "RMSNorm": _IDENTITY,
        _path + "RotaryEmbedding": _ROUTE,
        _path + "ForCausalLM": Role(kind="model"),
        _path + "ForSequenceClassification": Role(kind="model"),
    })

#: Top-level language models: class path -> (attribute of the backbone, attribute of the head).
LANGUAGE_MODELS: Dict[str, Tuple[str, str]] = {
    _HF + "gpt2.modeling_gpt2.GPT2LMHeadModel": ("transformer", "lm_head"),
    _HF + "gpt2.modeling_gpt2.GPT2ForSequenceClassification": ("transformer", "score"),
    **{f"{_HF}{module}.modeling_{module}.{family}{head}": ("model", attribute)
       for family, module in (("Llama", "llama"), ("Qwen2", "qwen2"), ("Qwen3", "qwen3"))
       for head, attribute in (("ForCausalLM", "lm_head"), ("ForSequenceClassification", "score"))},
}

#: The supported architectures, for error messages and the documentation.
SUPPORTED_MODELS = (
    "GPT-2 (GPT2LMHeadModel, GPT2ForSequenceClassification)",
    "Llama, Qwen2, Qwen3 (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and their "
    "ForSequenceClassification models)",
    "torchvision's VisionTransformer",
)


def class_path(module: nn.Module) -> str:
    """``module``'s class as ``"package.module.Class"``, the key of :data:`ROLES`."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def role_of(module: nn.Module) -> Optional[Role]:
    """Return the role of ``module``'s class, or None if crp does not support it.

    A class works as the nearest registered base class it derives from if it does not override ``forward``
    (e.g. a ``Linear`` subclass, or crp's own taps).
    """
    role = ROLES.get(class_path(module))
    if role is not None:
        return role
    for base in type(module).__mro__[1:]:
        role = ROLES.get(f"{base.__module__}.{base.__qualname__}")
        if role is not None:
            own_forward = type(module).forward is getattr(base, "forward", None)
            return role if own_forward and role.forward is None else None
    return None


def check_supported(model: nn.Module, *, name: str = "model") -> None:
    """Raise a ValueError naming every module of ``model`` that crp has no rules for, and the supported list."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}.")
    problems = []
    for module_name, module in model.named_modules():
        role = role_of(module)
        reason = "is not supported" if role is None else (role.check(module) if role.check else None)
        if reason is not None:
            problems.append(f"{module_name or '(the model)'!r} ({type(module).__name__}) {reason}")
    if problems:
        raise ValueError(
            f"crp.transformers has no AttnLRP rules for {len(problems)} module(s) of {name}: "
            f"{'; '.join(problems[:8])}{' ...' if len(problems) > 8 else ''}. Supported architectures: "
            f"{'; '.join(SUPPORTED_MODELS)}. Explain one of these, or add rules for the modules named."
        )


class InstalledForward:
    """The forward installed on one module: ``forward(module, setup, *args, **kwargs)``."""

    def __init__(self, forward: Callable, module: nn.Module, setup: Setup) -> None:
        self.forward, self.module, self.setup = forward, module, setup

    def __call__(self, *args, **kwargs):
        return self.forward(self.module, self.setup, *args, **kwargs)


def is_installed(module: nn.Module) -> bool:
    """Whether crp's forward is installed on ``module`` now."""
    return isinstance(module.__dict__.get("forward"), InstalledForward)


_MISSING = object()


@contextlib.contextmanager
def installed(model: nn.Module, setup: Setup) -> Iterator[nn.Module]:
    """Install crp's forwards on every supported module of ``model`` for the ``with`` block, then restore them.

    Raises a ValueError for unsupported modules and for a model in training mode (dropout would make the
    explanation random). The model is restored also when an exception leaves the block.
    """
    check_supported(model)
    training = [name for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(f"the model is in training mode (e.g. {training[0] or 'the model'!r}); call model.eval() "
                         f"before explaining it.")
    saved: List[Tuple[nn.Module, object]] = []
    try:
        for module in model.modules():
            role = role_of(module)
            if role is not None and role.forward is not None:
                saved.append((module, module.__dict__.get("forward", _MISSING)))
                module.forward = InstalledForward(role.forward, module, setup)
        yield model
    finally:
        for module, previous in reversed(saved):
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous


_ALIASES: Dict[type, type] = {}


def _linear_alias(cls: type) -> type:
    """Return a subclass of ``cls`` and ``nn.Linear`` (``cls``'s forward) that zennit's composites map as Linear."""
    if cls not in _ALIASES:
        _ALIASES[cls] = type(f"{cls.__name__}AsLinear", (cls, nn.Linear), {"__module__": __name__})
    return _ALIASES[cls]


@contextlib.contextmanager
def linear_aliases(model: nn.Module) -> Iterator[None]:
    """Let zennit's composites see linear layers that are no ``nn.Linear`` (GPT-2's ``Conv1D``) as Linear layers.

    For the ``with`` block their class is swapped for a subclass of both, and swapped back on exit.
    """
    swapped = []
    try:
        for module in model.modules():
            role = role_of(module)
            if role is not None and role.linear and not isinstance(module, (nn.Linear, nn.Conv2d)):
                swapped.append((module, type(module)))
                module.__class__ = _linear_alias(type(module))
        yield
    finally:
        for module, cls in reversed(swapped):
            module.__class__ = cls


class Explainable(nn.Module):
    """Base of crp's adapters: a module that runs a supported ``model`` with crp's forwards and taps.

    :class:`TransformerRules` installs the rules in the adapter's ``model`` with the adapter's :meth:`setup`.
    """

    model: nn.Module

    def setup(self, ops) -> Setup:
        """Return the set-up of the installed forwards: ``ops`` and the adapter's taps."""
        return Setup(ops)


def _check_zennit_convention() -> None:
    from zennit.core import BasicHook

    if "lxt" in getattr(BasicHook.backward, "__module__", ""):
        raise RuntimeError(
            "zennit's BasicHook is patched by lxt (lxt.efficient.monkey_patch_zennit) to the gradient*input "
            "convention; crp needs zennit's own convention (the gradient at a layer's output is its relevance). "
            "Run crp in a process where monkey_patch_zennit was not called."
        )


class TransformerRules(Canonizer):
    """A zennit canonizer that gives the AttnLRP rules to a supported transformer for the composite's lifetime.

    Add it to any zennit composite whose rules cover the Linear (and Conv) layers, e.g.
    ``EpsilonPlus(canonizers=[TransformerRules()])``, or use :class:`crp.transformers.AttnLRP`. While the
    composite is registered, every supported module runs a forward with the rules of
    :mod:`crp._transformers.rules` and GPT-2's ``Conv1D`` counts as a ``nn.Linear`` for the composite; both are
    undone when the composite is removed, also after an exception. The root module is a crp adapter
    (:class:`crp.transformers.LanguageModel`, :class:`crp.transformers.VisionModel`), contains adapters, or is
    itself a supported model such as torchvision's ``VisionTransformer``; anything else is refused with a
    ValueError naming the unsupported modules.

    Parameters
    ----------
    variant : {"attnlrp", "cp-lrp"}
        AttnLRP, or CP-LRP (attention weights and MLP gates as constants).
    epsilon : float
        Stabilizer of the epsilon rules of sums, products and affine maps inside the blocks.
    """

    def __init__(self, variant: str = "attnlrp", *, epsilon: float = 1e-12) -> None:
        super().__init__()
        self.ops = LRPOps(variant, epsilon=epsilon)
        self._stack: Optional[contextlib.ExitStack] = None

    def apply(self, root_module: nn.Module) -> List["TransformerRules"]:
        """Install the rules in ``root_module``; return the instance that removes them."""
        instance = self.copy()
        instance.register(root_module)
        return [instance]

    def register(self, root_module: nn.Module) -> None:
        """Install the rules (and the Linear aliases) in every model under ``root_module``."""
        _check_zennit_convention()
        stack = contextlib.ExitStack()
        try:
            for model, setup in _targets(root_module, self.ops):
                stack.enter_context(installed(model, setup))
                stack.enter_context(linear_aliases(model))
        except BaseException:
            stack.close()
            raise
        self._stack = stack

    def remove(self) -> None:
        """Restore every module's own forward and class."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def copy(self) -> "TransformerRules":
        """Return a canonizer with the same variant and epsilon."""
        return TransformerRules(self.ops.variant, epsilon=self.ops.epsilon)

    def __repr__(self) -> str:
        return f"TransformerRules(variant={self.ops.variant!r}, epsilon={self.ops.epsilon!r})"


def _targets(root: nn.Module, ops) -> List[Tuple[nn.Module, Setup]]:
    adapters = [module for module in root.modules() if isinstance(module, Explainable)]
    if adapters:
        return [(adapter.model, adapter.setup(ops)) for adapter in adapters]
    if class_path(root) in LANGUAGE_MODELS:
        raise ValueError(f"a {type(root).__name__} returns a ModelOutput and takes token ids; wrap it for crp: "
                         f"crp.transformers.LanguageModel(model).")
    return [(root, Setup(ops))]


def module_names(adapter: nn.Module, kind: str) -> List[str]:
    """Names (in ``adapter.named_modules()``) of the modules of ``adapter.model`` with role ``kind``."""
    return [name for name, module in adapter.named_modules()
            if name.startswith("model.") and getattr(role_of(module), "kind", None) == kind]

