"""The package's shape: public faces with zennit-crp's names, no import cycles, no private reach-ins."""
import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crp"

#: Every public name of zennit-crp 0.6, by module (what its modules define, not what they import).
ZENNIT_CRP_NAMES = {
    "crp.attribution": ["attrResult", "attrGraphResult", "CondAttribution", "AttributionGraph"],
    "crp.cache": ["Cache", "ImageCache"],
    "crp.concepts": ["Concept", "ChannelConcept"],
    "crp.graph": ["GraphNode", "ModelGraph", "trace_model_graph", "dump_pytorch_graph"],
    "crp.helper": ["get_layer_names", "abs_norm", "max_norm", "get_output_shapes", "load_maximization",
                   "load_stat_targets", "load_statistics", "load_receptive_field", "find_files"],
    "crp.hooks": ["MaskHook", "FeatVisHook"],
    "crp.image": ["get_crop_range", "vis_opaque_img", "vis_img_heatmap", "imgify", "plot_grid"],
    "crp.maximization": ["Maximization"],
    "crp.statistics": ["Statistics"],
    "crp.visualization": ["FeatureVisualization"],
}
#: The public faces: thin modules that re-export from the private packages.
FACES = sorted(ZENNIT_CRP_NAMES) + ["crp.evaluation", "crp.evaluation.plot", "crp.transformers"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: Dict[str, Path]) -> List[Tuple[str, str, str]]:
    """``(importer, imported module, imported name or "")`` for every crp import anywhere in the package."""
    edges = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(module, alias.name, "") for alias in node.names if alias.name.startswith("crp")]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node, path.name == "__init__.py")
                if not source.startswith("crp"):
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    edges.append((module, submodule, "") if submodule in modules else (module, source, alias.name))
    return edges


def _graph(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {module: set() for module in modules}
    for importer, imported, _ in _imports(modules):
        if imported in modules and imported != importer:
            graph[importer].add(imported)
    return graph


def _find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = _graph(modules)
    assert sum(len(v) for v in graph.values()) > 50  # the walk sees the package's imports
    assert _find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_private_name_is_imported_from_another_module():
    crossings = [f"{importer} imports {name} from {source}" for importer, source, name in _imports(_modules())
                 if name.startswith("_") and not name.startswith("__")]
    assert crossings == []


def test_the_library_does_not_import_the_application():
    library = [(importer, imported) for importer, imported, _ in _imports(_modules())
               if not importer.startswith("crp.app") and importer != "crp.__main__" and imported.startswith("crp.app")]
    assert library == []


@pytest.mark.parametrize("module", sorted(ZENNIT_CRP_NAMES))
def test_every_zennit_crp_name_is_importable_from_its_module(module):
    face = importlib.import_module(module)
    missing = [name for name in ZENNIT_CRP_NAMES[module] if not hasattr(face, name)]
    assert missing == []


@pytest.mark.parametrize("module", FACES)
def test_faces_are_thin_and_export_what_they_import(module):
    path = _modules()[module]
    tree = ast.parse(path.read_text())
    definitions = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert definitions == [], f"{module} defines {definitions}; define them in a private package"
    face = importlib.import_module(module)
    assert sorted(face.__all__) == sorted(set(face.__all__))
    assert all(hasattr(face, name) for name in face.__all__)


@pytest.mark.parametrize("module", sorted(ZENNIT_CRP_NAMES))
def test_star_import_gives_what_zennit_crps_module_gave(module):
    # zennit-crp's modules had no __all__: `import *` also gave the names they imported, and notebooks use them
    star_imported = {"crp.image": ["np", "torch", "plt", "Image", "Tuple"], "crp.visualization": ["tqdm", "Cache"],
                     "crp.attribution": ["NameMapComposite", "namedtuple"], "crp.hooks": ["RemovableHandleList"]}
    namespace: dict = {}
    exec(f"from {module} import *", namespace)  # noqa: S102 (the statement under test)
    expected = ZENNIT_CRP_NAMES[module] + star_imported.get(module, [])
    assert [name for name in expected if name not in namespace] == []
    assert not any(name.startswith("_") for name in namespace if name != "__builtins__")
