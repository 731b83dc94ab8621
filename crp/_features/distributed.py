"""FeatureVisualization on several processes: the process group, the shares of the ranks, the collectives.

A run inside a job started with ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``) splits the data range into rounds of ``world_size * checkpoint`` batches;
each rank analyzes its contiguous part of a round, and at the end of the round the ranks' top-k results are
gathered on rank 0, which merges them and writes the checkpoint. Top-k ranking does not depend on the order or
grouping of samples (ties go to the lower dataset index), so the stored results equal those of one process.

This module holds what does not depend on the analysis: :class:`RankGroup` (joining or creating the process
group, comparing settings across ranks, the checkpoint barrier, gather and broadcast with errors that name the
failing rank) and :func:`plan_rounds`.
"""
import contextlib
import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, cast

import torch
import torch.distributed as dist

__all__ = ["RankGroup", "RankFailedError", "Round", "plan_rounds", "weights_digest", "world_size_from_environment",
           "BARRIER_TIMEOUT"]

#: How long rank 0 waits at a checkpoint for the slowest rank before it names the ranks missing. A rank whose
#: process ended is named at once (its connection closes).
BARRIER_TIMEOUT = datetime.timedelta(minutes=30)
_ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_SHOWN = 120  # characters of a differing setting shown in a message


class RankFailedError(RuntimeError):
    """A rank of a distributed run failed or stopped; the others stop too, and the last checkpoint stays."""


@dataclass(frozen=True)
class Round:
    """The samples between two checkpoints: ``stop`` is the checkpoint's next index, ``batches[r]`` rank r's."""

    stop: int
    batches: Tuple[Tuple[range, ...], ...]


def world_size_from_environment() -> int:
    """Return the world size of the initialized process group, else of the environment a launcher set (else 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if all(name in os.environ for name in _ENVIRONMENT):
        try:
            return max(1, int(os.environ["WORLD_SIZE"]))
        except ValueError:
            raise ValueError(f"the environment variable WORLD_SIZE must be a whole number, got "
                             f"{os.environ['WORLD_SIZE']!r}; start the job with torchrun.") from None
    return 1


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes and values), to compare models across ranks."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def plan_rounds(start: int, stop: int, batch_size: int, checkpoint: int, world_size: int) -> List[Round]:
    """Split ``[start, stop)`` into rounds of ``world_size * checkpoint`` batches, each rank a contiguous part.

    In a full round every rank has ``checkpoint`` batches; the batches of the last, shorter round are spread
    as evenly as possible. Batches are contiguous dataset indices and every
    index belongs to exactly one batch.
    """
    rounds = []
    size = world_size * checkpoint * batch_size
    for first in range(start, stop, size):
        last = min(first + size, stop)
        n_batches = -(-(last - first) // batch_size)
        bounds = [first + batch_size * (rank * n_batches // world_size) for rank in range(world_size + 1)]
        batches = tuple(_batches(bounds[rank], min(bounds[rank + 1], last), batch_size) for rank in range(world_size))
        rounds.append(Round(last, batches))
    return rounds


def _batches(first: int, stop: int, batch_size: int) -> Tuple[range, ...]:
    return tuple(range(b, min(b + batch_size, stop)) for b in range(first, stop, batch_size))


class RankGroup:
    """The place of this process in a distributed run, and the collectives of the run.

    Joins the process group that is initialized, or initializes one from the environment (``gloo`` for a CPU
    model, ``nccl`` for CUDA) and destroys it on :meth:`close`. Objects travel through a ``gloo`` group (the
    default group if it is one, else a side group made here), which also holds the checkpoint barrier.

    Parameters
    ----------
    device : torch.device
        The model's device, which chooses the backend of a process group made here.
    """

    def __init__(self, device: torch.device) -> None:
        self.created = False
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.created = True
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.side: Optional[dist.ProcessGroup] = None
        if dist.get_backend() != "gloo":
            try:  # every rank is a member: new_group returns a group
                self.side = cast(dist.ProcessGroup, dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT))
            except BaseException:
                self.close()
                raise
        self.group = self.side  # None: the default group

    def close(self) -> None:
        """Destroy the groups made here (the side group, and the process group if this object initialized it)."""
        if self.side is not None:
            dist.destroy_process_group(self.side)
            self.side = None
        if self.created:
            dist.destroy_process_group()
            self.created = False

    def __enter__(self) -> "RankGroup":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------

    def check_same(self, settings: Mapping[str, Any]) -> None:
        """Raise on every rank if the ranks' ``settings`` (JSON-like values) differ, naming the keys and ranks."""
        everyone: List[Any] = [None] * self.world_size
        with self._failing("comparing the settings of the ranks"):
            dist.all_gather_object(everyone, dict(settings), group=self.group)
        keys = sorted({key for s in everyone for key in s})
        differing = [key for key in keys if any(s.get(key) != everyone[0].get(key) for s in everyone)]
        if not differing:
            return
        lines = []
        for key in differing:
            groups: Dict[str, List[int]] = {}
            for rank, s in enumerate(everyone):
                groups.setdefault(repr(s.get(key))[:_SHOWN], []).append(rank)
            lines.append(f"{key!r}: " + "; ".join(f"{_ranks(ranks)} {value}" for value, ranks in groups.items()))
        raise ValueError(
            f"the ranks of this distributed run were given different settings, in {differing} ({' | '.join(lines)}); "
            f"every rank must call FeatureVisualization.run with the same model, dataset, layer_map and arguments. "
            f"Nothing was analyzed.")

    def barrier(self, what: str) -> None:
        """Wait until every rank has reached ``what``; raise :class:`RankFailedError` naming ranks that did not."""
        try:
            dist.monitored_barrier(group=self.group, timeout=BARRIER_TIMEOUT, wait_all_ranks=True)
        except RuntimeError as error:
            text = str(error)
            if self.rank == 0:
                raise RankFailedError(
                    f"{_missing(text, self.world_size)} did not reach {what} (the process ended or stalled for "
                    f"{BARRIER_TIMEOUT}): {_first_line(text)}. The other ranks stop too.") from None
            raise RankFailedError(f"rank {self.rank}: {what} failed, rank 0 could not reach all ranks (it names the "
                                  f"rank that stopped): {_first_line(text)}") from None

    def gather(self, payload: Any) -> Optional[List[Any]]:
        """Return every rank's ``payload`` (in rank order) on rank 0, None on the others."""
        received: Optional[List[Any]] = [None] * self.world_size if self.rank == 0 else None
        with self._failing("gathering the results on rank 0"):
            dist.gather_object(payload, received, dst=_global_rank(self.group, 0), group=self.group)
        return received

    def broadcast(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank."""
        box = [value]
        with self._failing("receiving rank 0's outcome"):
            dist.broadcast_object_list(box, src=_global_rank(self.group, 0), group=self.group)
        return box[0]

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """Turn the error of a collective (another rank's process ended) into a :class:`RankFailedError`."""
        try:
            yield
        except RuntimeError as error:
            raise RankFailedError(f"rank {self.rank}: {what} failed, another rank stopped (its own error says why): "
                                  f"{_first_line(str(error))}") from None


def _global_rank(group: Any, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {list(ranks)}"


def _missing(text: str, world_size: int) -> str:
    """Name the ranks gloo's monitored barrier reports (``Ranks 1, 2 failed to pass monitoredBarrier``)."""
    marker = "failed to pass monitoredBarrier"
    if marker in text:
        head = text.split(marker)[0].rsplit("Rank", 1)[-1].lstrip("s").strip(" :")
        ranks = [int(part) for part in head.replace(" ", "").split(",") if part.isdigit()]
        if ranks:
            return _ranks(ranks)
    return f"a rank of 1..{world_size - 1}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
