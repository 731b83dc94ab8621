"""What ``from crp.<module> import *`` gave with zennit-crp 0.6, whose modules had no ``__all__``.

Notebooks that star-import a zennit-crp module may use the names that module imported (``np``, ``torch``,
``plt``, ``tqdm``, typing names, ...). The public faces list them in their ``__all__`` and resolve them
lazily through :func:`lazy_getattr`, so a plain ``import crp.image`` stays light (no matplotlib).
"""
import importlib
from typing import Any, Callable, Dict, List, Tuple

__all__ = ["ZENNIT_CRP_STAR", "star_names", "lazy_getattr"]

_TYPING = "typing"
#: Per public module, the names zennit-crp 0.6's module imported: ``(name, module, attribute or "")``, where an
#: empty attribute means the module itself.
ZENNIT_CRP_STAR: Dict[str, List[Tuple[str, str, str]]] = {
    "attribution": [("NameMapComposite", "zennit.composites", "NameMapComposite"),
                    ("Composite", "zennit.core", "Composite"), ("MaskHook", "crp.hooks", "MaskHook"),
                    ("Concept", "crp.concepts", "Concept"), ("ChannelConcept", "crp.concepts", "ChannelConcept"),
                    ("ModelGraph", "crp.graph", "ModelGraph"), ("torch", "torch", ""), ("warnings", "warnings", ""),
                    ("np", "numpy", ""), ("math", "math", ""), ("tqdm", "tqdm", "tqdm"),
                    ("namedtuple", "collections", "namedtuple")]
    + [(name, _TYPING, name) for name in ("Callable", "List", "Dict", "Union", "Tuple")],
    "cache": [("Path", "pathlib", "Path"), ("Image", "PIL.Image", "")]
    + [(name, _TYPING, name) for name in ("Any", "Tuple", "Dict", "List", "Union")],
    "concepts": [("torch", "torch", ""), ("np", "numpy", ""), ("List", _TYPING, "List"), ("Dict", _TYPING, "Dict")],
    "graph": [("torch", "torch", ""), ("List", _TYPING, "List")],
    "helper": [("torch", "torch", ""), ("np", "numpy", ""), ("List", _TYPING, "List"), ("os", "os", ""),
               ("Path", "pathlib", "Path")],
    "hooks": [("weakref", "weakref", ""), ("functools", "functools", ""), ("torch", "torch", ""),
              ("RemovableHandle", "zennit.core", "RemovableHandle"),
              ("RemovableHandleList", "zennit.core", "RemovableHandleList")],
    "image": [("Image", "PIL.Image", ""), ("torch", "torch", ""),
              ("gaussian_blur", "torchvision.transforms.functional", "gaussian_blur"),
              ("plt", "matplotlib.pyplot", ""), ("gridspec", "matplotlib.gridspec", ""), ("np", "numpy", ""),
              ("zimage", "zennit.image", ""), ("max_norm", "crp.helper", "max_norm")]
    + [(name, _TYPING, name) for name in ("Dict", "List", "Union", "Any", "Tuple", "Iterable")],
    "maximization": [("torch", "torch", ""), ("np", "numpy", ""), ("gc", "gc", ""), ("os", "os", ""),
                     ("Path", "pathlib", "Path"), ("tqdm", "tqdm", "tqdm"), ("re", "re", ""),
                     ("Concept", "crp.concepts", "Concept"), ("List", _TYPING, "List"), ("Tuple", _TYPING, "Tuple")],
    "statistics": [("torch", "torch", ""), ("np", "numpy", ""), ("gc", "gc", ""), ("os", "os", ""),
                   ("Path", "pathlib", "Path"), ("tqdm", "tqdm", "tqdm"), ("List", _TYPING, "List"),
                   ("Tuple", _TYPING, "Tuple")],
    "visualization": [("warnings", "warnings", ""), ("torch", "torch", ""), ("np", "numpy", ""), ("math", "math", ""),
                      ("Iterable", "collections.abc", "Iterable"), ("concurrent", "concurrent.futures", ""),
                      ("functools", "functools", ""), ("inspect", "inspect", ""), ("tqdm", "tqdm", "tqdm"),
                      ("NameMapComposite", "zennit.composites", "NameMapComposite"),
                      ("Composite", "zennit.composites", "Composite"),
                      ("CondAttribution", "crp.attribution", "CondAttribution"),
                      ("Maximization", "crp.maximization", "Maximization"),
                      ("ChannelConcept", "crp.concepts", "ChannelConcept"), ("Concept", "crp.concepts", "Concept"),
                      ("Statistics", "crp.statistics", "Statistics"), ("FeatVisHook", "crp.hooks", "FeatVisHook"),
                      ("load_maximization", "crp.helper", "load_maximization"),
                      ("load_statistics", "crp.helper", "load_statistics"),
                      ("load_stat_targets", "crp.helper", "load_stat_targets"),
                      ("vis_img_heatmap", "crp.image", "vis_img_heatmap"),
                      ("vis_opaque_img", "crp.image", "vis_opaque_img"), ("Cache", "crp.cache", "Cache")]
    + [(name, _TYPING, name) for name in ("List", "Union", "Dict", "Tuple", "Callable")],
}


def star_names(module: str) -> List[str]:
    """Return the names zennit-crp's ``crp.<module>`` exported beyond its own definitions."""
    return [name for name, _, _ in ZENNIT_CRP_STAR[module.rsplit(".", 1)[-1]]]


def lazy_getattr(module: str) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` that imports the star names of ``module`` on first use."""
    table = {name: (source, attribute) for name, source, attribute in ZENNIT_CRP_STAR[module.rsplit(".", 1)[-1]]}

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module hook's name)
        if name not in table:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        source, attribute = table[name]
        imported = importlib.import_module(source)
        return getattr(imported, attribute) if attribute else imported

    return __getattr__
