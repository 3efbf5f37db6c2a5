"""The files a source names, and the ids that make samples stable across machines."""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SampleFile:
    sample_id: str  # unique in the dataset, stable across machines (see discover)
    path: str
    num_samples: int = 1  # samples the file yields (known after the scan)
    sha256: str = ""  # of the file's bytes (known after the scan)
    stream: str = ""  # the source's stream name ("": the spec's only stream)
    relpath: str = ""  # the id without the stream prefix: what pairing keys read
    views_skipped: int = 0  # views the plugin left out (chips over the no-data threshold; after the scan)


@dataclass
class Sample:
    """One training sample: the file of each stream it has. Paired samples hold one file per
    stream under one key; without pairing, each file is a sample of its own stream."""

    sample_id: str
    paths: dict[str, str]  # stream name → file
    num_samples: int = 1  # views (clips, windows): the fewest of its files'; view k of each file pairs up

    @classmethod
    def of(cls, f: SampleFile) -> Sample:
        """A file as a sample of its stream alone."""
        return cls(f.sample_id, {f.stream: f.path}, f.num_samples)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(sorted(self.paths))


def view_id(sample_id: str, view: int) -> str:
    """Id of one sample of a file: what seeds its mask."""
    return f"{sample_id}#{view}"


def discover(source: Any, extensions: tuple[str, ...], qualify: bool = False) -> list[SampleFile]:
    """Files named by a source: explicit files as given; folders searched recursively for the
    plugin's extensions; globs expanded. Sorted, without duplicates.

    A file's id is its path relative to the deepest folder holding every file of the source: a
    source of one folder gives ids relative to it (``cat/01.jpg``), two folders or explicit files
    in different folders give ids that keep them apart (``a/x.jpg``, ``b/x.jpg``), and a copy of
    the dataset elsewhere gets the same ids. ``qualify`` (specs of several streams) prefixes ids
    with the stream name, ``rgb:0001.png``: two streams' folders may both hold ``0001.png``."""
    paths: set[str] = set()
    for entry in source.paths:
        if os.path.isdir(entry):
            for root, _, names in os.walk(entry):
                paths.update(os.path.join(root, n) for n in names if n.lower().endswith(extensions))
        else:
            paths.update(sorted(glob.glob(entry)) or [entry])
    if not paths:
        return []
    dirs = {entry if os.path.isdir(entry) else os.path.dirname(entry) for entry in source.paths}
    root = os.path.commonpath([os.path.abspath(d) for d in dirs | {os.path.dirname(p) for p in paths}])
    stream = getattr(source, "name", "")
    files = []
    for p in paths:
        rel = os.path.relpath(os.path.abspath(p), root)
        files.append(SampleFile(f"{stream}:{rel}" if qualify else rel, p, stream=stream, relpath=rel))
    return sorted(files, key=lambda f: f.sample_id)


def empty_folder(path: str | Path) -> str:
    """``path`` as a new empty folder (what was there removed): Ray Data's ``write_parquet`` adds
    files to a folder, so writing into an old one would mix two writes' rows."""
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True)
    return str(path)
