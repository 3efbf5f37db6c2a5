"""Driver memory of the training stream for a long schedule: the peak RSS growth of the driver
after building ``token_dataset`` for N global samples and taking its first batches, for a small
N (10⁴) and a huge one (10⁸ ≈ 800 epochs of ImageNet-1k at batch 4096 is 10⁹), each in a fresh
process with an embedded Ray. Prints each growth and the ratio huge / small (flat: ≈ 1).
The eager manifest (a Python list of rows on the driver, what the stream used before) is built
alongside as the baseline at 10⁴ and 10⁶ rows (10⁸ would not fit).

    .venv/bin/python bench/manifest_memory.py [--small 10000] [--huge 100000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(kind: str, count: int) -> None:
    """In this process: peak RSS growth (MB) of building the stream (lazy) or the row list (eager)."""
    import ray

    from polymae.pipelines.data import epoch_manifest, token_dataset
    from polymae.pipelines.files import Sample, discover
    from polymae.pipelines.spec import load_spec

    spec = load_spec(ROOT / "examples/image_mae.yaml", ["sources.0.config.img_size=64"])
    samples = [Sample.of(f) for f in discover(spec.sources[0], (".jpg",))]
    if kind == "lazy":
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    before = _rss_mb()
    if kind == "lazy":
        batches = token_dataset(spec, samples, 0, count).iter_batches(batch_size=4, batch_format="numpy")
        for _, _ in zip(range(3), batches, strict=False):
            pass
    else:
        rows = epoch_manifest(samples, spec.seed, 0, count)
        assert len(rows) == count
    print(json.dumps({"kind": kind, "count": count, "growth_mb": _rss_mb() - before}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--huge", type=int, default=100_000_000)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure[0], int(args.measure[1]))
    out = {}
    for kind, count in [("lazy", args.small), ("lazy", args.huge), ("eager", args.small), ("eager", 1_000_000)]:
        proc = subprocess.run([sys.executable, __file__, "--measure", kind, str(count)], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out[(kind, count)] = result["growth_mb"]
        print(f"{kind:5s} manifest of {count:>11,d} samples: driver peak RSS +{result['growth_mb']:.1f} MB")
    small, huge = out[("lazy", args.small)], out[("lazy", args.huge)]
    print(f"lazy: {args.huge:,d} vs {args.small:,d} samples → ratio {huge / max(small, 1e-9):.2f} "
          f"(flat within ±20 %: {abs(huge / max(small, 1e-9) - 1) <= 0.2})")
    print(f"eager baseline: 10⁶ rows cost +{out[('eager', 1_000_000)]:.0f} MB on the driver "
          f"(10⁸ would be ~{out[('eager', 1_000_000)] * 100 / 1024:.0f} GB)")


if __name__ == "__main__":
    main()
