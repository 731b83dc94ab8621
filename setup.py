"""Packaging of crp (distribution name: concept-relevance-propagation; import name: crp)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "crp" / "__init__.py").read_text()).group(1)

setup(
    name="concept-relevance-propagation",
    version=VERSION,
    description="Concept Relevance Propagation (CRP) and Relevance Maximization for PyTorch, built on zennit",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=find_packages(include=["crp", "crp.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "zennit>=0.5.1",
        "numpy",
        "matplotlib",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest", "ruff", "mypy", "nbclient", "nbformat", "ipykernel", "opencv-python-headless",
            "transformers>=4.51",
        ],
        "inpainting": ["opencv-python-headless"],
        "transformers": ["transformers>=4.51"],
        # `make docs` treats warnings as errors: exact versions (the newest that still run on Python 3.9), so a
        # new release cannot break the build
        "docs": ["sphinx==7.4.7", "numpydoc==1.9.0", "myst-parser==3.0.1", "myst-nb==1.3.0", "furo==2025.12.19"],
    },
    entry_points={"console_scripts": ["crp=crp.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
