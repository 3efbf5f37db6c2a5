"""Hashes of the code a stage's output depends on: the polymae package and each plugin's module.

``polymae.__version__`` is a constant, so an upgrade (or a local edit) would otherwise reuse
outputs the old code made. The hash is of the source text itself rather than the git commit:
it is the same in a checkout, an installed wheel and a submitted job's copy of the package,
and it sees uncommitted edits. Each file is read once per (size, mtime): the stat calls are
cheap, and an edit during a session (a test, a notebook) is still seen.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (cached while its size and mtime stay the same)."""
    st = os.stat(path)
    return _file_hash(str(path), st.st_size, st.st_mtime_ns)


def package_hash(root: str | Path = PACKAGE_DIR) -> str:
    """One hash of every ``.py`` file of the package under ``root`` (paths and contents)."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\0{file_hash(path)}\0".encode())
    return digest.hexdigest()


def plugin_hash(modality: str) -> str:
    """Hash of the module file that defines the modality's plugin class (a plugin from another
    package is outside :func:`package_hash`)."""
    from polymae.modalities.registry import get_plugin_class

    cls = get_plugin_class(modality)
    source = inspect.getsourcefile(cls)
    return file_hash(source) if source else f"no source file: {cls.__module__}"


def code_version(modalities: list[str]) -> dict[str, object]:
    """What every stage fingerprint includes: the package's hash and each used plugin's."""
    return {"polymae": package_hash(), "plugins": {m: plugin_hash(m) for m in sorted(set(modalities))}}
