"""The held-out split: samples that training never reads and evaluation scores.

Chosen from the samples (paired or single files) by the spec: a seeded ``fraction`` of each set
of streams (the samples whose hash of (seed, sample id) is smallest, so the choice does not
depend on the order or on which machine lists the files) and/or explicit ``files`` (paths or
globs: a sample is held out when any of its files matches). Every stream keeps at least one
sample for training.
"""

from __future__ import annotations

import fnmatch
import hashlib

from polymae.pipelines.files import Sample


def _rank(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest(), "little")


def split_samples(samples: list[Sample], fraction: float, patterns: list[str], seed: int,
                  ) -> tuple[list[Sample], list[Sample]]:
    """(training samples, held-out samples), each in the order of ``samples``."""
    held: set[str] = {s.sample_id for s in samples
                      if any(fnmatch.fnmatch(p, pattern) for p in s.paths.values() for pattern in patterns)}
    if fraction > 0:
        for streams in dict.fromkeys(s.streams for s in samples):
            mine = [s for s in samples if s.streams == streams]
            count = min(len(mine) - 1, max(1, round(fraction * len(mine))))  # ≥ 1 held out, ≥ 1 trained
            ranked = sorted(mine, key=lambda s: _rank(seed, s.sample_id))
            held.update(s.sample_id for s in ranked[:max(count, 0)])
    train = [s for s in samples if s.sample_id not in held]
    heldout = [s for s in samples if s.sample_id in held]
    for stream in dict.fromkeys(n for s in samples for n in s.streams):
        if not any(stream in s.paths for s in train):
            raise ValueError(f"split: every sample of stream {stream!r} is held out; training needs at least one")
    return train, heldout
