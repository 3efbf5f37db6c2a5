"""The files a source names, and the ids that make samples stable across machines."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any


@dataclass
class SampleFile:
    sample_id: str  # stable across machines: the path relative to its source root
    path: str
    num_samples: int = 1  # samples the file yields (known after the scan)
    sha256: str = ""  # of the file's bytes (known after the scan)


def view_id(sample_id: str, view: int) -> str:
    """Id of one sample of a file: what seeds its mask."""
    return f"{sample_id}#{view}"


def discover(source: Any, extensions: tuple[str, ...]) -> list[SampleFile]:
    """Files named by a source: explicit files as given; folders searched recursively for the
    plugin's extensions; globs expanded. Sorted, without duplicates."""
    found: dict[str, SampleFile] = {}
    for entry in source.paths:
        if os.path.isdir(entry):
            for root, _, names in os.walk(entry):
                for name in names:
                    if name.lower().endswith(extensions):
                        full = os.path.join(root, name)
                        found[full] = SampleFile(os.path.relpath(full, entry), full)
        else:
            for full in sorted(glob.glob(entry)) or [entry]:
                found[full] = SampleFile(os.path.basename(full), full)
    return sorted(found.values(), key=lambda f: f.sample_id)


