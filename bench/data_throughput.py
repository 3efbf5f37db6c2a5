"""Data-pipeline throughput: video clips/s and audio windows/s (read + decode + tokenize + mask)
through PolyMAE's Ray Data stream vs a plain per-file PyTorch ``DataLoader`` running the same
decoder and tokenizer, each at 1 and 2 workers. Prints the ratio Ray Data / DataLoader.

    .venv/bin/python bench/data_throughput.py [--samples 96] [--modalities video audio]

Both sides use the shipped example specs (examples/video_mae.yaml, examples/audio_mae.yaml)
and the same manifest of (file, views) rows, so they do identical work per sample; "workers"
is the number of parallel decode processes (Ray: logical CPUs of the local cluster; DataLoader:
``num_workers``). Both hand the token arrays to the main process. Ray's worker processes are
warmed up first (a few samples, untimed: a fresh Ray worker pays ~seconds of imports once);
DataLoader workers are forked from the already-importing main process.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ray
import torch

from polymae.pipelines.data import (
    epoch_manifest,
    manifest_batch,
    stream_kwargs,
    token_dataset,
    tokenize_batch,
)
from polymae.pipelines.scan import scan
from polymae.pipelines.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"video": ROOT / "examples/video_mae.yaml", "audio": ROOT / "examples/audio_mae.yaml"}
UNITS = {"video": "clips/s", "audio": "windows/s"}


class ManifestRows(torch.utils.data.Dataset):
    """One item = one manifest row: a file decoded once and its views tokenized and masked."""

    def __init__(self, rows: list[dict], kwargs: dict) -> None:
        self.rows, self.kwargs = rows, kwargs

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        batch = tokenize_batch(manifest_batch([self.rows[i]]), **self.kwargs)
        return {k: v for k, v in batch.items() if "." in k}  # the token arrays cross to the trainer


def dataloader_rate(rows: list[dict], kwargs: dict, workers: int) -> float:
    loader = torch.utils.data.DataLoader(ManifestRows(rows, kwargs), batch_size=None, num_workers=workers,
                                         multiprocessing_context="fork")
    tic, n = time.perf_counter(), 0
    for batch in loader:
        n += len(next(iter(batch.values())))
    return n / (time.perf_counter() - tic)


def ray_rate(spec, files, count: int, workers: int) -> float:
    ray.init(num_cpus=workers, object_store_memory=512 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        warm = token_dataset(spec, files, 0, 4 * workers)  # start the worker processes (imports)
        for _ in warm.iter_batches(batch_size=8, batch_format="numpy"):
            pass
        tic, n = time.perf_counter(), 0
        for batch in token_dataset(spec, files, 0, count).iter_batches(batch_size=8, batch_format="numpy"):
            n += len(batch["sample_id"])
        return n / (time.perf_counter() - tic)
    finally:
        ray.shutdown()


def bench(modality: str, samples: int) -> None:
    spec = load_spec(SPECS[modality])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    files = scan(spec).samples  # sample counts per file; dataset statistics into the spec
    ray.shutdown()
    rows = epoch_manifest(files, spec.seed, 0, samples)
    kwargs = stream_kwargs(spec)
    torch.set_num_threads(1)
    print(f"{modality}: {len(files)} files, {samples} samples, {len(rows)} file reads")
    for workers in (1, 2):
        rate_ray = ray_rate(spec, files, samples, workers)
        rate_dl = dataloader_rate(rows, kwargs, workers)
        print(f"  {workers} worker(s): Ray Data {rate_ray:7.1f} {UNITS[modality]}   "
              f"DataLoader {rate_dl:7.1f} {UNITS[modality]}   ratio {rate_ray / rate_dl:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--modalities", nargs="+", default=["video", "audio"], choices=sorted(SPECS))
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    print(f"cpus: {os.cpu_count()}, torch {torch.__version__}, ray {ray.__version__}")
    for modality in args.modalities:
        bench(modality, args.samples)


if __name__ == "__main__":
    main()
