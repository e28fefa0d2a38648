"""Where fiat-t5x's own gin files (and the Iβ/Iτ YAML files beside them) are found.

In a checkout they are the repository's top-level `gin/`; an installed wheel ships the same
tree as package data, `fiat_t5x/gin/` (see setup.py), found through importlib.resources. Either
way `gin_dir()` is that directory, so `--gin_file=models/flan_t5/base.gin` and
`--gin_file=gin/models/flan_t5/base.gin` resolve from any working directory.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import pathlib
from collections.abc import Sequence

from fiat_t5x import storage

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
# A checkout: setup.py and gin/ beside the package (an editable install or PYTHONPATH=.).
_CHECKOUT_ROOT = _PACKAGE_DIR.parent


@functools.cache
def gin_dir() -> pathlib.Path:
    """The directory holding `models/`, `peft/`, `runs/`, `fiat/`, ... of this installation."""
    checkout = _CHECKOUT_ROOT / "gin"
    if (_CHECKOUT_ROOT / "setup.py").is_file() and (checkout / "runs").is_dir():
        return checkout
    packaged = pathlib.Path(str(importlib.resources.files("fiat_t5x") / "gin"))
    if (packaged / "runs").is_dir():
        return packaged
    raise FileNotFoundError(
        f"fiat-t5x's gin files are missing (looked in {checkout} and {packaged}); "
        "reinstall the package (pip install fiat-t5x) or run from a checkout"
    )


def search_paths(extra: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """Directories searched for a relative gin file, in order: `extra`, gin_dir(), the cwd."""
    paths: list[str] = []
    for path in (*extra, gin_dir(), os.getcwd()):
        text = os.fspath(path)
        if text not in paths:
            paths.append(text)
    return paths


def find(path: str | os.PathLike[str], extra: Sequence[str | os.PathLike[str]] = ()) -> str | None:
    """The file `path` names: as given, else under each search path; a leading `gin/` (as in
    `gin/runs/finetune.gin`, written from the repository root) also resolves in gin_dir()."""
    text = os.fspath(path)
    if storage.is_file(text):  # a local file, or one in a bucket (a run's config.gin)
        return text
    if os.path.isabs(text) or storage.is_url(text):
        return None
    candidates = [os.path.join(d, text) for d in search_paths(extra)]
    if text.startswith("gin/"):
        candidates.append(os.path.join(gin_dir(), text[len("gin/") :]))
    return next((c for c in candidates if os.path.isfile(c)), None)
