"""fiat-t5x: FIAT and Flan-style instruction tuning for T5-family models in JAX."""

import os

from setuptools import find_packages, setup

# Versions are pinned to the set the T5X checkpoint fixture was written with and that
# the test-suite is run against; loosen deliberately, not by accident.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore>=0.1.86",
    "seqio==0.0.20",
    "gin-config>=0.5.0",
    "tensorflow-datasets>=4.9.10",
    "clu>=0.0.12",
    "tensorboard",
    "msgpack>=1.0",
    "numpy>=2.0",
    "safetensors>=0.8.0",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    # The Hugging Face source (fiat_t5x.data.hf_source): local JSONL/Parquet/Arrow files and
    # saved or downloaded dataset directories.
    "datasets>=4.0",
]

TEST_REQUIRES = [
    "pytest>=9.0",
    "pytest-timeout>=2.4",
    # torch 2.13.0 is the CPU build available on the project machines; an
    # unpinned `torch` would pull a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers==5.23.0",
    "peft==0.21.2",
    "scikit-learn>=1.5",
    "ruff>=0.17",
]

# `gin/` and every folder under it, as the packages `fiat_t5x.gin[.<folder>...]` (data only).
GIN_PACKAGES = [
    "fiat_t5x." + os.path.relpath(folder, ".").replace(os.sep, ".")
    for folder, _, _ in os.walk("gin")
    if "__pycache__" not in folder
]

setup(
    name="fiat-t5x",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["fiat_t5x", "fiat_t5x.*"]) + ["fiat_tasks", *GIN_PACKAGES],
    # The repository keeps task registrations in `tasks/`; a top-level package named
    # `tasks` collides with too many other projects, so it is installed as `fiat_tasks`.
    # The gin files (and the Iβ/Iτ YAML files and sweeps beside them) live in the top-level
    # `gin/` and are installed as data inside the package, `fiat_t5x/gin/`, where
    # fiat_t5x.gin_files finds them when there is no checkout.
    package_dir={"fiat_tasks": "tasks", "fiat_t5x.gin": "gin"},
    include_package_data=True,
    package_data={
        "fiat_tasks": ["*.json", "*.yaml", "prompts/*"],
        **{package: ["*.gin", "*.yaml"] for package in GIN_PACKAGES},
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["fiat-t5x=fiat_t5x.cli:main"]},
)
