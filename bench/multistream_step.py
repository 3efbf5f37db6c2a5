"""Two-stream training-step throughput against a one-stream model on the same token count.

    one stream  392 tokens   the two images side by side as one stream (a 14×28 patch grid): the baseline
    two streams 196 + 196    two image streams of 224², joint decoder (MAE's)
    two streams 196 + 196    the same, per-stream decoders (MultiMAE's: cross-attention + 2 blocks, 256 wide)
    two streams 196 + 196    per-stream decoders as wide as the preset's joint decoder (tiny: 128, 4 heads)

75 % random masking per stream, fp32, the tiny preset unless told. Ratios are samples/s against
the one-stream baseline measured in the same run. Usage:
python bench/multistream_step.py [--preset tiny] [--batch 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from polymae.modalities import make_plugin
from polymae.models import PolyMAE, resolve_model_config
from polymae.tokenizer import MaskPolicy, MaskSpec, streams_to_columns


def columns(name: str, plugin, batch: int, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    policy = MaskPolicy({name: MaskSpec(ratio=0.75)})
    streams = []
    for i in range(batch):
        sample = {name: plugin.tokenize((rng.random((*shape, 3)) * 255).astype(np.uint8), None)}
        policy.apply(sample, f"{name}{i}", 0)
        streams.append(sample[name])
    return {k: torch.as_tensor(v) for k, v in streams_to_columns(name, streams).items()}


def samples_per_second(model: PolyMAE, data: dict[str, torch.Tensor], batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as make_optimizer

    def step() -> None:
        loss, _, _ = model(data)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    square = make_plugin("image")  # 224² → 196 tokens
    results = {}
    # the baseline: one stream of 392 tokens = two 224² images side by side
    torch.manual_seed(0)
    data = {}
    for name in ("a", "b"):
        data.update(columns(name, square, args.batch, (224, 224)))
    single = {k.replace("a.", "x.", 1): v for k, v in data.items() if k.startswith("a.")}
    for field in ("values", "coords", "unit", "valid", "visible", "decoded"):
        second = data[f"b.{field}"].clone()
        if field == "coords":
            second[..., -1] += 14  # the right half of a 14×28 grid
        single[f"x.{field}"] = torch.cat([single[f"x.{field}"], second], dim=1)
    cfg = resolve_model_config(args.preset)
    results["one stream 392 tokens"] = samples_per_second(PolyMAE({"x": square}, cfg), single, args.batch, args.steps)
    variants = {"joint": {"decoder": "joint"}, "per_stream": {"decoder": "per_stream"},
                # per-stream decoders as wide as the preset's joint one: the cost of the design, not the width
                f"per_stream w{cfg.decoder_width}": {"decoder": "per_stream", "per_stream_width": cfg.decoder_width,
                                                     "per_stream_heads": cfg.decoder_heads}}
    for label, overrides in variants.items():
        torch.manual_seed(0)
        model = PolyMAE({"a": square, "b": square}, resolve_model_config(args.preset, overrides))
        results[f"two streams 196+196 {label}"] = samples_per_second(model, data, args.batch, args.steps)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, preset {args.preset}, batch {args.batch}, "
          f"{args.steps} timed steps, fp32")
    base = results["one stream 392 tokens"]
    for name, value in results.items():
        print(f"  {name:36s} {value:8.2f} samples/s   {value / base:.2f}x")


if __name__ == "__main__":
    main()
