"""How much memory a batch of relevance computation takes, and the batch size that fits.

One batch of :meth:`crp.visualization.FeatureVisualization.run` (or of ``CondAttribution``) holds, per sample
and explained target, what the forward pass saves for the backward pass (the inputs of the layers and what
zennit's rules keep, about the sum of the layers' output sizes, more with rules such as ZPlus that keep
modified copies) and the relevance in flight (the size of a layer's output); all of it grows linearly with
the batch. The parameters, and the ranking state of ``run()`` (a fixed size per layer, see
:mod:`crp._features.ranking`), do not grow with it.

:func:`estimate_memory` measures this for a model on two batches (1 and 2 samples): on CUDA the peak of
``torch.cuda.max_memory_allocated``; elsewhere the bytes of every tensor the forward pass saves for the
backward pass (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, parameters not), plus
the outputs of all leaf modules (the rules' hooks keep them and the backward pass makes tensors of their
sizes), plus twice the largest output (the relevance flowing back through it and its gradient). The
difference of the two is the cost of one more sample. For VGG16 at 224 x 224 with ``EpsilonPlusFlat`` on the
CPU this gives 233 MiB per sample, against 227 and 275 MiB measured in two runs as the growth of the peak
resident memory between batches of 4 and 8 (``benchmarks/bench_memory.py``).
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from crp._utils.checks import check_number, check_positive_int

__all__ = [
    "MemoryEstimate", "estimate_memory", "suggest_batch_size", "available_memory", "saved_tensor_bytes",
    "module_output_bytes",
]


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of a batch: ``fixed + per_sample * batch_size`` bytes.

    Attributes
    ----------
    per_sample : int
        Bytes that one more sample (and explained target) in a batch costs.
    fixed : int
        Bytes a batch costs regardless of its size (beyond the model's parameters).
    method : str
        ``"cuda peak"`` (measured) or ``"saved tensors"`` (summed from tensor sizes).
    """

    per_sample: int
    fixed: int
    method: str

    def bytes_for(self, batch_size: int) -> int:
        """Return the estimated bytes of a batch of ``batch_size`` samples."""
        return self.fixed + self.per_sample * check_positive_int(batch_size, name="batch_size")

    def batch_size_for(self, budget: int) -> int:
        """Return the largest batch size whose estimate fits into ``budget`` bytes (at least 1)."""
        return max(1, int((budget - self.fixed) // max(1, self.per_sample)))


def saved_tensor_bytes(run: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Return the bytes of the tensors that ``run()`` saves for a backward pass.

    Each storage is counted once; the storages of ``exclude`` (e.g. the model's parameters, which exist
    anyway) are not counted.
    """
    skip = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    seen: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(seen.values())


def module_output_bytes(model: torch.nn.Module, run: Callable[[], object]) -> Tuple[int, int]:
    """Return the summed and the largest bytes of the tensor outputs of ``model``'s leaf modules during ``run()``."""
    sizes: List[int] = [0]

    def hook(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [module.register_forward_hook(hook) for module in model.modules() if not list(module.children())]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return sum(sizes), max(sizes)


def _batch_bytes(attribution, data: torch.Tensor, composite, target: int) -> int:
    """Bytes one batch takes: measured on CUDA, summed from tensor sizes elsewhere."""
    data = data.detach().requires_grad_(True)
    conditions = [{attribution.MODEL_OUTPUT_NAME: [target]}]

    def forward_backward() -> object:
        return attribution(data, conditions, composite, heatmap=True)

    if data.device.type == "cuda":
        torch.cuda.synchronize(data.device)
        torch.cuda.reset_peak_memory_stats(data.device)
        before = torch.cuda.memory_allocated(data.device)
        forward_backward()
        torch.cuda.synchronize(data.device)
        return torch.cuda.max_memory_allocated(data.device) - before
    model = attribution.model
    with attribution.context(composite):
        saved = saved_tensor_bytes(lambda: model(data), exclude=[*model.parameters(), *model.buffers()])
        outputs, largest = module_output_bytes(model, lambda: model(data))
    return saved + outputs + 2 * largest + 2 * data.numel() * data.element_size()


def estimate_memory(attribution, sample: torch.Tensor, composite=None, *, target: int = 0) -> MemoryEstimate:
    """Estimate the memory of a batch of relevance computation, from batches of one and two samples.

    Parameters
    ----------
    attribution : crp.attribution.CondAttribution
        Its model runs on its device.
    sample : torch.Tensor
        One sample as the model takes it, with or without a batch axis of 1.
    composite : zennit.core.Composite, optional
        The rules (they change what is saved for the backward pass).
    target : int
        The explained output.

    Returns
    -------
    MemoryEstimate
    """
    one = sample if sample.dim() > 1 and sample.shape[0] == 1 else sample[None]
    one = one.to(attribution.device)
    if one.shape[0] != 1:
        raise ValueError(f"sample must be one sample (a batch axis of 1 or none), got shape {tuple(sample.shape)}.")
    b1 = _batch_bytes(attribution, one, composite, target)
    b2 = _batch_bytes(attribution, torch.cat([one, one]), composite, target)
    per_sample = max(1, b2 - b1)
    method = "cuda peak" if one.device.type == "cuda" else "saved tensors"
    return MemoryEstimate(per_sample, max(0, b1 - per_sample), method)


def available_memory(device: torch.device) -> int:
    """Return the bytes free on ``device``: CUDA's free memory, else the system's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def suggest_batch_size(attribution, sample: torch.Tensor, composite=None, *, memory: Optional[int] = None,
                       fraction: float = 0.5, targets: int = 1, maximum: int = 1024) -> int:
    """Return a batch size whose estimated memory (:func:`estimate_memory`) fits into a part of the free memory.

    Parameters
    ----------
    attribution, sample, composite
        As in :func:`estimate_memory`.
    memory : int, optional
        Bytes to fit into; default ``fraction`` of :func:`available_memory` on the attribution's device.
    fraction : float
        Part of the free memory to use when ``memory`` is not given.
    targets : int
        Targets explained per sample (each is a row of the batch).
    maximum : int
        The largest batch size suggested.

    Returns
    -------
    int
        At least 1 and at most ``maximum``.
    """
    fraction = check_number(fraction, name="fraction", minimum=0.0, maximum=1.0)
    targets, maximum = check_positive_int(targets, name="targets"), check_positive_int(maximum, name="maximum")
    budget = int(fraction * available_memory(attribution.device)) if memory is None else \
        check_positive_int(memory, name="memory")
    estimate = estimate_memory(attribution, sample, composite)
    return max(1, min(maximum, estimate.batch_size_for(budget) // targets))
