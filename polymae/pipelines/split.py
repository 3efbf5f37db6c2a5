"""The held-out split: files that training never reads and evaluation scores.

Chosen per stream from the scan's good files, by the spec: a seeded ``fraction`` (the files
whose hash of (seed, sample id) is smallest, so the choice does not depend on the file order or
on which machine lists the files) and/or explicit ``files`` (paths or globs). A stream with
files keeps at least one for training.
"""

from __future__ import annotations

import fnmatch
import hashlib

from polymae.pipelines.files import SampleFile


def _rank(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest(), "little")


def split_files(files: list[SampleFile], fraction: float, patterns: list[str], seed: int,
                ) -> tuple[list[SampleFile], list[SampleFile]]:
    """(training files, held-out files), each in the order of ``files``."""
    held: set[str] = {f.path for f in files if any(fnmatch.fnmatch(f.path, p) for p in patterns)}
    if fraction > 0:
        for stream in dict.fromkeys(f.stream for f in files):
            mine = [f for f in files if f.stream == stream]
            count = min(len(mine) - 1, max(1, round(fraction * len(mine))))  # ≥ 1 held out, ≥ 1 trained
            ranked = sorted(mine, key=lambda f: _rank(seed, f.sample_id))
            held.update(f.path for f in ranked[:max(count, 0)])
    train = [f for f in files if f.path not in held]
    heldout = [f for f in files if f.path in held]
    for stream in dict.fromkeys(f.stream for f in files):
        if not any(f.stream == stream for f in train):
            raise ValueError(f"split: every file of stream {stream!r} is held out; training needs at least one")
    return train, heldout
