"""zennit-crp's result objects: ``Maximization`` (RelMax, ActMax) and ``Statistics`` (RelStats, ActStats).

:class:`crp.visualization.FeatureVisualization` holds four of them. They carry the settings of their mode
(``max_target``, ``abs_norm``, ``SAMPLE_SIZE``) and the folder ``PATH`` where zennit-crp kept their results,
and they are the seams research code subclasses: ``analyze_layer`` ranks one batch of one layer,
``_save_results`` writes a checkpoint, ``collect_results`` merges checkpoints. Their state is
:class:`crp._features.topk.TopK`, the one top-k accumulator of this library (ties go to the lower dataset
index), so zennit-crp's flow through these methods gives the results of the default engine.
"""
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from crp._attribution.concepts import Concept
from crp._features.store import MODES, legacy_folder_name, load_triple, remove_triple, save_triple
from crp._features.topk import TopK
from crp._utils.checks import check_bool, check_choice, check_positive_int

__all__ = ["Maximization", "Statistics", "DEFAULT_SAMPLE_SIZE"]

#: zennit-crp's number of reference samples kept per concept (and target).
DEFAULT_SAMPLE_SIZE = 40
_CHECKPOINT = re.compile(r"^(?P<name>.+?)_(?P<start>\d+)_(?P<stop>\d+)_$")
Index = Optional[Tuple[int, int]]


class _ResultObject:
    """What both result objects share: settings, ``PATH``, the settings file of their checkpoints."""

    KIND = ""

    def __init__(self, mode: str = "relevance", max_target: str = "sum", abs_norm: bool = False,
                 path: Union[str, Path, None] = None) -> None:
        self.mode = check_choice(mode, MODES, name="mode")
        self.max_target = check_choice(max_target, ("sum", "max"), name="max_target")
        self.abs_norm = check_bool(abs_norm, name="abs_norm")
        self.SAMPLE_SIZE = DEFAULT_SAMPLE_SIZE
        self.sub_folder = Path(legacy_folder_name(mode, self.KIND, max_target, self.abs_norm))
        self.PATH = Path(path) / self.sub_folder if path else self.sub_folder

    def settings(self) -> Dict[str, Any]:
        """Everything that decides this object's results: mode, ``max_target``, ``abs_norm``, ``SAMPLE_SIZE``."""
        return {"class": type(self).__qualname__, "mode": self.mode, "max_target": self.max_target,
                "abs_norm": self.abs_norm, "sample_size": self.sample_size()}

    def _save_results(self, d_index: Index = None) -> List[str]:
        raise NotImplementedError

    def collect_results(self, path_list: List[str], d_index: Index = None) -> List[str]:
        """Merge checkpoints written by ``_save_results`` and write the merged results."""
        raise NotImplementedError

    def sample_size(self) -> int:
        """``SAMPLE_SIZE``, checked."""
        return check_positive_int(self.SAMPLE_SIZE, name=f"{type(self).__name__}.SAMPLE_SIZE")

    def _write_settings(self) -> None:
        self.PATH.mkdir(parents=True, exist_ok=True)
        (self.PATH / "settings.json").write_text(json.dumps(self.settings(), sort_keys=True))

    def _check_settings(self, prefix: str, folder: Path) -> None:
        """Refuse a checkpoint written with other settings: they must not be merged silently.

        ``folder`` holds the settings file of the object that wrote ``prefix``.
        """
        file = folder / "settings.json"
        if not file.is_file():
            return  # written by zennit-crp: no settings recorded
        stored = json.loads(file.read_text())
        if stored != self.settings():
            differing = sorted(k for k in set(stored) | set(self.settings()) if stored.get(k) != self.settings().get(k))
            raise ValueError(f"checkpoint {prefix!r} was written with other settings (differs in {differing}: "
                             f"{ {k: stored.get(k) for k in differing} } against "
                             f"{ {k: self.settings().get(k) for k in differing} }); collect it with the object "
                             f"that wrote it, or run again.")


class Maximization(_ResultObject):
    """The top reference samples of every concept by relevance (RelMax) or activation (ActMax), overall.

    zennit-crp 0.6's class, with its signature, attributes and methods; ``SAMPLE_SIZE`` (default 40) is the
    number of samples kept per concept and may be set before a run.

    Parameters
    ----------
    mode : {"relevance", "activation"}
        What ranks the samples.
    max_target : {"sum", "max"}
        Rank by a concept's summed value or by its largest neuron.
    abs_norm : bool
        Divide each sample's concept values by their absolute sum over the layer first.
    path : str or os.PathLike, optional
        The FeatureVisualization folder; ``PATH`` is ``{path}/{Rel,Act}Max_{max_target}_{normed,unnormed}``.
        Unlike zennit-crp, the folder is created only when results are written.

    Attributes
    ----------
    SAMPLE_SIZE : int
        Samples kept per concept.
    PATH : pathlib.Path
        Where :meth:`_save_results` writes (zennit-crp's layout); also accepted by ``crp.helper.load_*``.
    """

    KIND = "max"

    def __init__(self, mode: str = "relevance", max_target: str = "sum", abs_norm: bool = False,
                 path: Union[str, Path, None] = None) -> None:
        super().__init__(mode, max_target, abs_norm, path)
        self._state: Dict[str, TopK] = {}

    def analyze_layer(self, rel: torch.Tensor, concept: Concept, layer_name: str, data_indices: Any,
                      targets: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rank one batch of one layer for every concept and keep the top ``SAMPLE_SIZE`` samples.

        Parameters
        ----------
        rel : torch.Tensor
            Relevance (or activation) at the layer's output, ``(n, C, ...)``.
        concept : Concept
            The layer's concept; its ``reference_sampling`` ranks the batch.
        layer_name : str
            The layer.
        data_indices : array-like
            ``(n,)`` dataset index of every row.
        targets : array-like
            ``(n,)`` explained target of every row.

        Returns
        -------
        d_c_sorted, rel_c_sorted, rf_c_sorted, t_c_sorted : torch.Tensor
            Each ``(n, C)``: per concept, the rows' dataset indices, values, most relevant neurons and targets,
            sorted by decreasing value.
        """
        order, values, neurons = concept.reference_sampling(rel, layer_name, self.max_target, self.abs_norm)
        indices = torch.as_tensor(np.asarray(data_indices, dtype=np.int64), device=order.device)
        row_targets = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=order.device)
        d_c_sorted, t_c_sorted = indices[order], row_targets[order]
        size = self.sample_size()
        self.concatenate_with_results(layer_name, d_c_sorted[:size], values[:size], neurons[:size])
        self.sort_result_array(layer_name)
        return d_c_sorted, values, neurons, t_c_sorted

    def concatenate_with_results(self, layer_name: str, d_c_sorted: torch.Tensor, rel_c_sorted: torch.Tensor,
                                 rf_c_sorted: torch.Tensor) -> None:
        """Merge entries ``(n, C)`` (dataset indices, values, neurons) into the layer's top samples."""
        state = self._state.get(layer_name)
        size = self.sample_size()
        if state is None:
            state = self._state[layer_name] = TopK(size, rel_c_sorted.shape[1])
        elif state.k != size:
            raise ValueError(f"{type(self).__name__}.SAMPLE_SIZE changed from {state.k} to {size} while results "
                             f"were collected; set it before the run (or call delete_result_arrays()).")
        state.add(rel_c_sorted, d_c_sorted, rf_c_sorted)

    def sort_result_array(self, layer_name: str) -> None:
        """Cut the layer's results back to the top ``SAMPLE_SIZE``, sorted (ties: lower dataset index first)."""
        if layer_name in self._state:
            self._state[layer_name].compact()

    @property
    def d_c_sorted(self) -> Dict[str, torch.Tensor]:
        """Per layer, the dataset indices of the top samples, ``(min(SAMPLE_SIZE, n), C)``."""
        return {layer: state.result()[0] for layer, state in self._state.items()}

    @property
    def rel_c_sorted(self) -> Dict[str, torch.Tensor]:
        """Per layer, the values of the top samples."""
        return {layer: state.result()[1] for layer, state in self._state.items()}

    @property
    def rf_c_sorted(self) -> Dict[str, torch.Tensor]:
        """Per layer, the most relevant (active) neuron of every top sample."""
        return {layer: state.result()[2] for layer, state in self._state.items()}

    def delete_result_arrays(self) -> None:
        """Forget the results collected so far (after they were saved)."""
        self._state = {}

    def _save_results(self, d_index: Index = None) -> List[str]:
        """Write the results in zennit-crp's layout, forget them, and return the file prefixes.

        With ``d_index`` the files are the checkpoint of those dataset indices, as in zennit-crp.
        """
        if not self._state:
            return []
        self._write_settings()
        saved = []
        for layer_name, state in self._state.items():
            indices, values, neurons = (tensor.cpu().numpy() for tensor in state.result())
            saved.append(save_triple(self.PATH / _file_prefix(layer_name, d_index), indices, values, neurons))
        self.delete_result_arrays()
        return saved

    def collect_results(self, path_list: List[str], d_index: Index = None) -> List[str]:
        """Merge checkpoints written by :meth:`_save_results`, delete them, and write the merged results.

        Parameters
        ----------
        path_list : list of str
            File prefixes returned by :meth:`_save_results` (of this object, for disjoint dataset ranges).
        d_index : (int, int), optional
            Name the merged results as the checkpoint of these dataset indices (None: final results).

        Returns
        -------
        list of str
            The prefixes of the merged files.
        """
        self.delete_result_arrays()
        for prefix in path_list:
            self._check_settings(prefix, Path(prefix).parent)
            layer_name = _parse_prefix(Path(prefix).name)
            indices, values, neurons = (torch.from_numpy(np.array(a)) for a in load_triple(prefix))
            self.concatenate_with_results(layer_name, indices, values, neurons)
            self.sort_result_array(layer_name)
        for prefix in path_list:
            remove_triple(prefix)
        return self._save_results(d_index)


class Statistics(_ResultObject):
    """The top reference samples of every concept per explained target (RelStats, ActStats).

    zennit-crp 0.6's class; parameters and attributes as :class:`Maximization` (``PATH`` is
    ``{path}/{Rel,Act}Stats_{max_target}_{normed,unnormed}``, with one sub-folder per layer). The ranking
    values are those of the :class:`Maximization` of the same mode, whose sorted output :meth:`analyze_layer`
    receives; this object's ``max_target`` and ``abs_norm`` name its folder.
    """

    KIND = "stats"

    def __init__(self, mode: str = "relevance", max_target: str = "sum", abs_norm: bool = False,
                 path: Union[str, Path, None] = None) -> None:
        super().__init__(mode, max_target, abs_norm, path)
        self._state: Dict[str, TopK] = {}

    def analyze_layer(self, d_c_sorted: torch.Tensor, rel_c_sorted: torch.Tensor, rf_c_sorted: torch.Tensor,
                      t_c_sorted: torch.Tensor, layer_name: str) -> None:
        """Keep the top ``SAMPLE_SIZE`` samples of every target from one ranked batch of one layer.

        Parameters
        ----------
        d_c_sorted, rel_c_sorted, rf_c_sorted, t_c_sorted : torch.Tensor
            ``(n, C)`` as returned by :meth:`Maximization.analyze_layer`.
        layer_name : str
            The layer.
        """
        shapes = {tuple(t.shape) for t in (d_c_sorted, rel_c_sorted, rf_c_sorted, t_c_sorted)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"Statistics.analyze_layer needs four (n, C) tensors as returned by "
                             f"Maximization.analyze_layer, got shapes {sorted(shapes)}.")
        n_concepts = rel_c_sorted.shape[1]
        for target in torch.unique(t_c_sorted).tolist():
            # every column holds the same rows in another order: each holds the same number of this target's
            keep = (t_c_sorted == target).t()
            d_c_t, rel_c_t, rf_c_t = (tensor.t()[keep].view(n_concepts, -1).t()
                                      for tensor in (d_c_sorted, rel_c_sorted, rf_c_sorted))
            self.concatenate_with_results(layer_name, int(target), d_c_t, rel_c_t, rf_c_t)
            self.sort_result_array(layer_name, int(target))

    def concatenate_with_results(self, layer_name: str, target: int, d_c_sorted: torch.Tensor,  # noqa: PLR0917
                                 rel_c_sorted: torch.Tensor, rf_c_sorted: torch.Tensor) -> None:
        """Merge entries ``(n, C)`` of samples explained for ``target`` into the layer's top samples of it."""
        state = self._state.get(layer_name)
        size = self.sample_size()
        if state is None:
            state = self._state[layer_name] = TopK(size, rel_c_sorted.shape[1], slack=size // 4)
        elif state.k != size:
            raise ValueError(f"{type(self).__name__}.SAMPLE_SIZE changed from {state.k} to {size} while results "
                             f"were collected; set it before the run (or call delete_result_arrays()).")
        groups = torch.full((len(d_c_sorted),), int(target), dtype=torch.int64, device=d_c_sorted.device)
        state.add(rel_c_sorted, d_c_sorted, rf_c_sorted, groups)

    def sort_result_array(self, layer_name: str, target: int) -> None:  # noqa: ARG002 (zennit-crp's signature)
        """Cut the results back to the top ``SAMPLE_SIZE`` per target, sorted."""
        if layer_name in self._state:
            self._state[layer_name].compact()

    def _results(self, index: int) -> Dict[int, Dict[str, torch.Tensor]]:
        results: Dict[int, Dict[str, torch.Tensor]] = {}
        for layer, state in self._state.items():
            for target in state.groups:
                results.setdefault(target, {})[layer] = state.result(target)[index]
        return results

    @property
    def d_c_sorted(self) -> Dict[int, Dict[str, torch.Tensor]]:
        """Per target and layer, the dataset indices of the top samples (zennit-crp's nesting)."""
        return self._results(0)

    @property
    def rel_c_sorted(self) -> Dict[int, Dict[str, torch.Tensor]]:
        """Per target and layer, the values of the top samples."""
        return self._results(1)

    @property
    def rf_c_sorted(self) -> Dict[int, Dict[str, torch.Tensor]]:
        """Per target and layer, the most relevant (active) neuron of every top sample."""
        return self._results(2)

    def delete_result_arrays(self) -> None:
        """Forget the results collected so far (after they were saved)."""
        self._state = {}

    def _save_results(self, d_index: Index = None) -> List[str]:
        """Write the results in zennit-crp's layout, forget them, and return the file prefixes.

        The layout has a folder per layer and files per target; the final results (``d_index`` None) also get
        ``targets.npy``.
        """
        if not self._state:
            return []
        self._write_settings()
        saved, targets = [], set()
        for layer_name, state in self._state.items():
            for target in state.groups:
                indices, values, neurons = (tensor.cpu().numpy() for tensor in state.result(target))
                prefix = self.PATH / layer_name / _file_prefix(str(target), d_index)
                saved.append(save_triple(prefix, indices, values, neurons))
                targets.add(target)
        if d_index is None:
            save_triple_targets(self.PATH, sorted(targets))
        self.delete_result_arrays()
        return saved

    def collect_results(self, path_list: List[str], d_index: Index = None) -> List[str]:
        """Merge checkpoints written by :meth:`_save_results`, delete them, and write the merged results.

        See :meth:`Maximization.collect_results`.
        """
        self.delete_result_arrays()
        for prefix in path_list:
            self._check_settings(prefix, Path(prefix).parent.parent)
            layer_name, target = Path(prefix).parent.name, int(_parse_prefix(Path(prefix).name))
            indices, values, neurons = (torch.from_numpy(np.array(a)) for a in load_triple(prefix))
            self.concatenate_with_results(layer_name, target, indices, values, neurons)
            self.sort_result_array(layer_name, target)
        for prefix in path_list:
            remove_triple(prefix)
        return self._save_results(d_index)


def save_triple_targets(folder: Path, targets: List[int]) -> None:
    """Write ``targets.npy``, the targets with statistics, as zennit-crp did."""
    np.save(folder / "targets.npy", np.asarray(targets, dtype=np.int64), allow_pickle=False)


def _file_prefix(name: str, d_index: Index) -> str:
    return f"{name}_{int(d_index[0])}_{int(d_index[1])}_" if d_index else f"{name}_"


def _parse_prefix(filename: str) -> str:
    """Return the layer (Maximization) or target (Statistics) named by a file prefix.

    Prefixes are ``{name}_{start}_{stop}_`` (checkpoints) or ``{name}_``.
    """
    match = _CHECKPOINT.match(filename)
    if match:
        return match.group("name")
    if not filename.endswith("_"):
        raise ValueError(f"{filename!r} is not a result prefix of _save_results ('{{name}}_{{start}}_{{stop}}_').")
    return filename[:-1]
