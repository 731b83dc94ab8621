"""Adapters: a supported transformer as a module from one tensor to one tensor, with taps inside.

CRP records and conditions layer outputs that are single tensors, and takes its heatmaps from the gradient of
the input. Hugging Face language models take token ids and return ModelOutput objects, so
:class:`LanguageModel` takes the token embeddings ``(N, T, E)`` (where relevance arrives) and returns the logits
``(N, V)`` at one position per row: the next-token logits of a causal LM, or the class logits of a sequence
classifier. :class:`VisionModel` does the same for torchvision's ``VisionTransformer`` (images in, logits out).

Both run the model with crp's forwards (:mod:`crp._transformers.support`), which compute the model's values:
with plain gradients by themselves, with the AttnLRP rules while a composite with
:class:`~crp._transformers.support.TransformerRules` is registered. Their :class:`Tap` modules make two points
inside every block recordable and conditionable: the attention heads before the output projection
(``heads.<i>``, shape ``(N, T, H, D)``) and the MLP's hidden neurons before the down projection
(``neurons.<i>``, shape ``(N, T, C)``).
"""
import contextlib
from typing import ContextManager, List, Optional

import torch
from torch import nn

from crp._transformers.forwards import HostModule, Setup
from crp._transformers.rules import GradientOps
from crp._transformers.support import (
    LANGUAGE_MODELS,
    SUPPORTED_MODELS,
    Explainable,
    check_supported,
    class_path,
    installed,
    is_installed,
    module_names,
    role_of,
)
from crp._utils.checks import check_choice, check_type, check_value

__all__ = ["Tap", "LanguageModel", "VisionModel", "LAYER_KINDS", "masked_embeddings"]

#: The kinds of layers :meth:`LanguageModel.layer_names` lists.
LAYER_KINDS = ("residual", "attention", "mlp", "heads", "neurons")

_VISION_TRANSFORMER = "torchvision.models.vision_transformer.VisionTransformer"


class Tap(nn.Identity):
    """A point inside a supported forward where crp can record and condition a tensor (it returns its input)."""


class _Adapter(Explainable):
    """Taps for the heads of every attention module and the neurons of every MLP, and the forwards' scope."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        attention = tuple(m for m in model.modules() if getattr(role_of(m), "kind", "") == "attention")
        mlps = tuple(m for m in model.modules() if getattr(role_of(m), "kind", "") == "mlp")
        self.heads = nn.ModuleList(Tap() for _ in attention)
        self.neurons = nn.ModuleList(Tap() for _ in mlps)
        self._tapped = (attention, mlps)
        self.train(model.training)

    def setup(self, ops) -> Setup:
        """Return the set-up of the installed forwards: ``ops`` and this adapter's taps."""
        attention, mlps = self._tapped
        return Setup(ops, dict(zip(attention, self.heads)), dict(zip(mlps, self.neurons)))

    def installed(self) -> ContextManager:
        """Return the scope of one forward: crp's forwards with plain gradients, unless a composite installed rules."""
        if any(is_installed(module) for module in self.model.modules()):
            return contextlib.nullcontext()
        return installed(self.model, self.setup(GradientOps()))

    def layer_names(self, kind: str) -> List[str]:
        """Names of the layers of one kind, in model order, as ``record_layer`` and conditions take them.

        Parameters
        ----------
        kind : {"residual", "attention", "mlp", "heads", "neurons"}
            ``"residual"``: the output of every block (the residual stream, ``(N, T, E)``); ``"attention"`` and
            ``"mlp"``: the output of every attention and MLP (``(N, T, E)``, before they are added to the
            stream); ``"heads"``: every attention's heads before its output projection (``(N, T, H, D)``, see
            :class:`crp.transformers.HeadConcept`); ``"neurons"``: every MLP's hidden neurons before its down
            projection (``(N, T, C)``; the gated product in a LLaMA MLP).

        Returns
        -------
        list of str
        """
        check_choice(kind, LAYER_KINDS, name="kind")
        if kind in ("heads", "neurons"):
            return [f"{kind}.{index}" for index in range(len(getattr(self, kind)))]
        if kind == "residual":
            return module_names(self, "block")
        if kind == "mlp":
            return module_names(self, "mlp")
        modules = dict(self.named_modules())
        return [_attention_output(name, modules[name]) for name in module_names(self, "attention")]


class LanguageModel(_Adapter):
    """A Hugging Face causal LM or sequence classifier as a module from token embeddings to logits.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A supported model in eval mode: GPT-2, Llama, Qwen2 or Qwen3 (``*ForCausalLM``,
        ``*ForSequenceClassification``). It is not changed: crp's forwards are installed on its modules only
        for the duration of a forward pass (or of a composite's registration) and removed afterwards.
    position : int, optional
        The token position whose logits the forward returns. None (the default) takes the last real token of
        every row: the next-token prediction of a causal LM, the class prediction of a sequence classifier.

    Notes
    -----
    Padding is read from the embeddings: a row of zeros is a padded token, which no token attends to and which
    gets no relevance. :meth:`embed` makes such embeddings from token ids and a tokenizer's attention mask.
    Positions count from 0 at the first token of the padded sequence, as the model's own forward does without
    ``position_ids``.

    Examples
    --------
    >>> lm = LanguageModel(AutoModelForCausalLM.from_pretrained("gpt2").eval())
    >>> embeddings = lm.embed(tokens["input_ids"], tokens["attention_mask"])
    >>> logits = lm(embeddings)  # (N, vocabulary), at the last real token of every row
    """

    #: The Hugging Face model (typed by duck: ``transformers`` is not imported here).
    model: HostModule

    def __init__(self, model: nn.Module, *, position: Optional[int] = None) -> None:
        check_supported(model)
        path = class_path(model)
        check_value(path in LANGUAGE_MODELS, type(model).__name__, name="model",
                    expected="a causal LM or sequence classifier: " + ", ".join(SUPPORTED_MODELS[:2]),
                    fix="Use VisionModel for torchvision's VisionTransformer.")
        super().__init__(model)
        self.backbone_name, self.head_name = LANGUAGE_MODELS[path]
        if position is not None:
            check_type(position, int, name="position", expected="an int or None")
        self.position = position

    @property
    def embedding_size(self) -> int:
        """The size ``E`` of a token embedding."""
        return self.model.get_input_embeddings().embedding_dim

    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings ``(N, T, E)`` that require gradients, zero at padded tokens.

        Parameters
        ----------
        input_ids : torch.Tensor
            Token ids, ``(N, T)`` integers.
        attention_mask : torch.Tensor, optional
            ``(N, T)``, 1 for real tokens and 0 for padding (a tokenizer's ``attention_mask``).

        Returns
        -------
        torch.Tensor
            A new leaf tensor; pass it to :class:`crp.transformers.TokenAttribution` (or to this module).
        """
        check_type(input_ids, torch.Tensor, name="input_ids", expected="a tensor of token ids (N, T)")
        check_value(input_ids.dim() == 2 and not input_ids.is_floating_point(), input_ids, name="input_ids",
                    expected="token ids of shape (N, T) and an integer dtype",
                    fix="Use input_ids[None] for a single sequence.")
        with torch.no_grad():
            embeddings = self.model.get_input_embeddings()(input_ids)
            if attention_mask is not None:
                embeddings = masked_embeddings(embeddings, attention_mask)
        return embeddings.detach().requires_grad_()

    def positions(self, padding: torch.Tensor) -> torch.Tensor:
        """Return the position whose logits are returned, per row of a ``(N, T)`` padding mask (True: a real token)."""
        rows, length = padding.shape
        if self.position is None:  # the largest position of a real token
            return (padding * torch.arange(length, device=padding.device)).argmax(1)
        check_value(-length <= self.position < length, self.position, name="position",
                    expected=f"a token position in [{-length}, {length - 1}] for sequences of {length} tokens",
                    fix="Use None for the last real token of every row.")
        positions = torch.full((rows,), self.position % length, device=padding.device)
        padded = (~padding[torch.arange(rows, device=padding.device), positions]).nonzero().flatten().tolist()
        check_value(not padded, self.position, name="position", expected="the position of a real token",
                    fix=f"rows {padded} are padded there; use None for the last real token of every row.")
        return positions

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, V)`` at ``position`` of token embeddings ``(N, T, E)`` (zero rows: padding)."""
        self._check_embeddings(embeddings)
        padding = embeddings.ne(0).any(-1)
        with self.installed():
            hidden = getattr(self.model, self.backbone_name)(embeddings, padding=padding)
        rows = torch.arange(len(hidden), device=hidden.device)
        return getattr(self.model, self.head_name)(hidden[rows, self.positions(padding)])

    def _check_embeddings(self, embeddings) -> None:
        check_type(embeddings, torch.Tensor, name="embeddings", expected="a tensor of token embeddings (N, T, E)",
                   fix="Make them with LanguageModel.embed(input_ids, attention_mask).")
        size = self.embedding_size
        check_value(embeddings.dim() == 3 and embeddings.shape[-1] == size and embeddings.is_floating_point(),
                    embeddings, name="embeddings", expected=f"float token embeddings of shape (N, T, {size})",
                    fix="Make them with LanguageModel.embed(input_ids, attention_mask).")
        empty = (~embeddings.ne(0).any(-1).any(1)).nonzero().flatten().tolist()
        check_value(not empty, embeddings, name="embeddings", expected="rows with at least one real token",
                    fix=f"rows {empty} are all zeros (padding); remove them.")


class VisionModel(_Adapter):
    """torchvision's ``VisionTransformer`` with taps at its heads and MLP neurons.

    The model itself works with :class:`crp.transformers.AttnLRP` too; the adapter adds the taps
    ``heads.<i>`` (``(N, T, H, D)``, ``T`` the class token and the patches) and ``neurons.<i>`` and
    :meth:`layer_names`.

    Parameters
    ----------
    model : torchvision.models.VisionTransformer
        In eval mode; it is not changed (see :class:`LanguageModel`).
    """

    #: The torchvision model (typed by duck: ``torchvision`` is not imported here).
    model: HostModule

    def __init__(self, model: nn.Module) -> None:
        check_supported(model)
        check_value(class_path(model) == _VISION_TRANSFORMER, type(model).__name__, name="model",
                    expected="torchvision's VisionTransformer", fix="Use LanguageModel for language models.")
        super().__init__(model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the model's logits ``(N, classes)`` of images ``(N, 3, H, W)``."""
        with self.installed():
            return self.model(images)


def _attention_output(name: str, module: nn.Module) -> str:
    """Return the name of the module whose output is the output of the attention ``name``."""
    role = role_of(module)
    return f"{name}.{role.output}" if role is not None and role.output else name


def masked_embeddings(embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``embeddings`` ``(N, T, E)`` with the rows of padded tokens (0 in the ``(N, T)`` ``attention_mask``) zeroed."""
    check_type(attention_mask, torch.Tensor, name="attention_mask", expected="a tensor of 0 and 1 (N, T)")
    shape = tuple(embeddings.shape[:2])
    check_value(tuple(attention_mask.shape) == shape, attention_mask, name="attention_mask",
                expected=f"of the shape of the tokens, {shape}",
                fix="Pass the tokenizer's attention_mask for these tokens (1: token, 0: padding).")
    values = torch.unique(attention_mask).tolist()
    check_value(set(values) <= {0, 1}, values, name="attention_mask", expected="made of 0 (padding) and 1 (token)")
    return embeddings * attention_mask.to(device=embeddings.device, dtype=embeddings.dtype)[..., None]
