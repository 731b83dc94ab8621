"""Sphinx configuration of crp's API reference site; `make docs` builds it into docs/_build/html.

The site has three parts: the README (the landing page), the tutorials rendered with their committed outputs
(myst-nb, nothing is executed), and one API page per public module. The API pages and the copies of the
tutorials are written at every build into ``docs/api/`` and ``docs/tutorials/`` (both ignored by git), from
``PUBLIC_MODULES`` and ``tutorials/*.ipynb``: a new public module is one line in ``PUBLIC_MODULES``, and
``tests/test_docs.py`` checks that the list names every public module.
"""
import importlib
import inspect
import shutil
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
logger = logging.getLogger("crp.docs")

from crp._utils.star import ZENNIT_CRP_STAR  # noqa: E402 (after the path insertion)

# The public modules ("faces"), in the order of the API reference. An object exported by several faces is
# documented under the first one and listed with a link in the others. Private packages (crp._*) and the
# application (crp.app) are not documented.
PUBLIC_MODULES = [
    "crp.attribution",
    "crp.concepts",
    "crp.hooks",
    "crp.helper",
    "crp.image",
    "crp.visualization",
    "crp.maximization",
    "crp.statistics",
    "crp.cache",
    "crp.graph",
    "crp.evaluation",
    "crp.evaluation.plot",
    "crp.transformers",
]

project = "crp"
author = "crp contributors"
copyright = "crp contributors, BSD 3-Clause"
release = version = importlib.import_module("crp").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"crp {release}"

# autodoc and numpydoc: the docstrings give the types; signatures show the annotations in short form
autodoc_member_order = "bysource"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
python_maximum_signature_line_length = 100  # longer signatures get one parameter per line
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# notebooks are rendered with the outputs they were committed with (python tutorials/execute.py writes them)
nb_execution_mode = "off"
myst_heading_anchors = 3

# -n (nitpicky) reports every cross-reference that does not resolve. A reference to a crp object by its private
# name (type hints name crp._attribution.engine.attrResult) or by another face's name resolves to the page that
# documents it (resolve_public_name below); references to the internals of the private packages (crp._*) that no
# face exports stay plain text. References into other projects cannot resolve (no intersphinx: the build runs
# offline) and are ignored.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|torchvision|zennit|numpy|np|PIL|matplotlib|tqdm|numbers|os|abc|collections|typing|pathlib)"
               r"(\..*)?"),
    (r"py:class", r"(Composite|Figure|Axes|Path|Tensor|Module)"),
    (r"py:.*", r"crp\._.*"),
]


# ---------------------------------------------------------------------------------------------------------
# Generated pages: one API page per public module, and copies of the tutorials


def documented(module):
    """The names a face documents: its ``__all__`` without those that zennit-crp's module of the same name only
    imported (``np``, ``torch``, typing names, ...), which the face exports for ``import *`` alone.
    """
    star = {name for name, _, _ in ZENNIT_CRP_STAR.get(module.__name__.rsplit(".", 1)[-1], ())}
    return [attr for attr in module.__all__ if attr not in star]


def public_objects(modules):
    """Yield the public name and the object of everything the faces ``modules`` export, face by face."""
    for name in modules:
        module = importlib.import_module(name)
        for attr in documented(module):
            yield f"{name}.{attr}", getattr(module, attr)


# id(object) -> the public name it is documented under: that of the first face that exports it
PUBLIC_NAMES = {}
for _public, _obj in public_objects(PUBLIC_MODULES):
    PUBLIC_NAMES.setdefault(id(_obj), _public)
# the names the objects carry themselves, which type hints show (crp._attribution.engine.AttributionResults)
QUALIFIED_NAMES = {f"{obj.__module__}.{obj.__qualname__}": PUBLIC_NAMES[id(obj)]
                   for _, obj in public_objects(PUBLIC_MODULES) if hasattr(obj, "__qualname__")}


def indent(lines, prefix="   "):
    return [prefix + line if line else "" for line in lines]


def data_doc(obj):
    """The ``#:`` comment above the assignment of ``obj`` in the private module that defines it."""
    for name, module in sorted(sys.modules.items()):
        if not name.startswith("crp._") or module is None:
            continue
        for attr, value in vars(module).items():
            if value is obj:
                docs = ModuleAnalyzer.for_module(name).find_attr_docs().get(("", attr))
                if docs:
                    return list(docs)
    return []


def data_directive(module_name, attr, obj):
    """A ``py:data`` block: the ``#:`` comment from the private module, the value of a tuple, the keys of a dict."""
    lines = [f".. py:data:: {attr}", f"   :module: {module_name}"]
    if isinstance(obj, (tuple, str, int, float)):
        lines.append(f"   :value: {obj!r}")
    doc = data_doc(obj)
    if not doc:
        logger.warning(f"{module_name}.{attr} has no documentation: add a #: comment above its assignment")
    lines += [""] + indent(doc)
    if isinstance(obj, dict):
        lines += ["", "   Names: " + ", ".join(f"``{key!r}``" for key in obj) + "."]
    return "\n".join(lines) + "\n"


def renamed_class_directive(module_name, attr, obj):
    """A ``py:class`` block for a class exported under another name (a named tuple), which autodoc would show
    as a bare "alias of"; its docstring (fields as a definition list) is reStructuredText as it stands.
    """
    fields = getattr(obj, "_fields", None)
    signature = f"({', '.join(fields)})" if fields is not None else ""
    lines = [f".. py:class:: {attr}{signature}", f"   :module: {module_name}", ""]
    lines += indent(inspect.getdoc(obj).splitlines())
    if fields is not None:
        lines += ["", f"   A named tuple (its type's own name is ``{obj.__name__}``)."]
    return "\n".join(lines) + "\n"


#: Methods with a leading underscore that are documented extension points (zennit-crp's seams).
SEAMS = ("_save_results", "_load_ref_and_attribution", "_attribution_on_reference")


def directive(module_name, attr, obj):
    """The block that documents ``obj``, exported as ``attr`` by ``module_name``."""
    target = f"{module_name}.{attr}"
    if inspect.isclass(obj) and obj.__name__ != attr:
        return renamed_class_directive(module_name, attr, obj)
    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        options = ["   :members:", "   :special-members: __call__"]
        if any(base.__module__.startswith("crp._") for base in obj.__mro__[1:]):
            # a class assembled from private parts (FeatureVisualization); torch's Module methods stay on torch's page
            is_module = any(f"{b.__module__}.{b.__qualname__}" == "torch.nn.modules.module.Module" for b in obj.__mro__)
            options.append("   :inherited-members: Module" if is_module else "   :inherited-members:")
        seams = [name for name in SEAMS if hasattr(obj, name)]  # zennit-crp's private-looking extension points
        options += [f"   :private-members: {', '.join(seams)}"] if seams else []
        public_bases = obj.__bases__ != (object,) and not any(b.__module__.startswith("crp._") for b in obj.__bases__)
        options += ["   :show-inheritance:"] if public_bases else []
        return "\n".join([f".. {kind}:: {target}", *options]) + "\n"
    if callable(obj):
        return f".. autofunction:: {target}\n"
    return data_directive(module_name, attr, obj)


def module_page(module_name, names):
    """The reStructuredText of the API page of one public module."""
    module = importlib.import_module(module_name)
    lines = [module_name, "=" * len(module_name), "", f".. automodule:: {module_name}", ""]
    elsewhere = []
    for attr in documented(module):
        obj = getattr(module, attr)
        home = names[id(obj)].rsplit(".", 1)[0]
        if home == module_name:
            lines += [directive(module_name, attr, obj)]
        else:
            elsewhere.append(f"- :py:obj:`{attr} <{home}.{attr}>` (documented in :py:mod:`{home}`)")
    if elsewhere:
        lines += [".. rubric:: Also exported here", ""] + elsewhere + [""]
    return "\n".join(lines)


def write_if_changed(path, text):
    """Write ``text`` to ``path`` unless it holds it already (so that Sphinx does not re-read unchanged pages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def generate_api_pages(out=DOCS / "api"):
    index = ["API reference", "=============", "",
             "One page per public module. Each is a thin face over a private package; the objects are documented",
             "under the public names they are imported by.", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {name}" for name in PUBLIC_MODULES]
    write_if_changed(out / "index.rst", "\n".join(index) + "\n")
    for name in PUBLIC_MODULES:
        write_if_changed(out / f"{name}.rst", module_page(name, PUBLIC_NAMES))
    for stale in set(out.glob("*.rst")) - {out / "index.rst"} - {out / f"{n}.rst" for n in PUBLIC_MODULES}:
        stale.unlink()


def copy_tutorials(out=DOCS / "tutorials"):
    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    out.mkdir(parents=True, exist_ok=True)
    for notebook in notebooks:
        copy = out / notebook.name
        if not copy.is_file() or copy.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, copy)
    for stale in set(out.glob("*.ipynb")) - {out / n.name for n in notebooks}:
        stale.unlink()


# ---------------------------------------------------------------------------------------------------------
# Cross-references to crp objects by a name other than the documented one


def locate(dotted):
    """The object at a dotted path ``crp.module.Name.member``, or None."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for part in parts[split:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def public_name(dotted, names):
    """The documented name of the crp object at ``dotted`` (``names`` maps id to public names), or None.

    A member is named after the public class that defines it, so an inherited method links to its base class.
    """
    parts = dotted.split(".")
    for split in range(len(parts), 1, -1):
        if ".".join(parts[:split]) in QUALIFIED_NAMES:
            return ".".join([QUALIFIED_NAMES[".".join(parts[:split])], *parts[split:]])
        owner = locate(".".join(parts[:split]))
        if owner is None or id(owner) not in names:
            continue
        rest = parts[split:]
        if rest and inspect.isclass(owner):
            defining = next((c for c in owner.__mro__ if rest[0] in vars(c)), owner)
            if id(defining) in names:
                owner = defining
        return ".".join([names[id(owner)], *rest])
    return None


def candidates(node):
    """Full names a Python cross-reference may mean, from its target and the module and class it is written in."""
    target, module, cls = node["reftarget"], node.get("py:module"), node.get("py:class")
    names = [target] if target.startswith("crp.") else []
    if module and cls:
        names.append(f"{module}.{cls}.{target}")
    if module:
        names.append(f"{module}.{target}")
    return names + [f"{face}.{target}" for face in PUBLIC_MODULES]


def resolve_public_name(app, env, node, contnode):
    """Resolve a crp reference Sphinx did not find to the page that documents the object under its public name."""
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for candidate in candidates(node):
        public = public_name(candidate, PUBLIC_NAMES)
        if public is None or public == node["reftarget"]:
            continue
        found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], public, node, contnode)
        if found is not None:
            return found
    return None


generate_api_pages()
copy_tutorials()


def setup(app):
    app.connect("missing-reference", resolve_public_name)
