"""Image MAE training-step throughput (samples/s), with ratios against baselines measured in
the same run:

    polymae mask 0.75   PolyMAE as it trains by default (encoder sees 25 % of the tokens)
    polymae mask 0      the same model with nothing masked (encoder sees every token)
    timm ViT            timm's plain VisionTransformer on all tokens + a linear pixel head

each in fp32 and bf16 autocast. Usage: python bench/mae_step.py [--presets tiny base] [--batch 8]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from polymae.modalities import make_plugin
from polymae.models import PolyMAE, resolve_model_config
from polymae.orchestration.precision import autocast, autocast_dtype
from polymae.tokenizer import MaskPolicy, MaskSpec, streams_to_columns


def token_batch(batch: int, ratio: float) -> dict[str, torch.Tensor]:
    plugin = make_plugin("image")
    rng = np.random.default_rng(0)
    policy = MaskPolicy({"image": MaskSpec(ratio=ratio)})
    streams = []
    for i in range(batch):
        sample = {"image": plugin.tokenize((rng.random((256, 256, 3)) * 255).astype(np.uint8), rng)}
        policy.apply(sample, str(i), 0)
        streams.append(sample["image"])
    return {k: torch.as_tensor(v) for k, v in streams_to_columns("image", streams).items()}


class PlainViT(nn.Module):
    """timm VisionTransformer over all 196 patches, a linear head back to pixels, MSE."""

    def __init__(self, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=width, depth=depth, num_heads=heads,
                                     num_classes=0, global_pool="")
        self.head = nn.Linear(width, 768)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(images)[:, 1:]
        return ((self.head(tokens).float() - targets) ** 2).mean()


def steps_per_second(step, steps: int) -> float:
    step()  # warm-up
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - tic)


def bench_preset(preset: str, batch: int, steps: int) -> dict[str, float]:
    cfg = resolve_model_config(preset)
    device = torch.device("cpu")
    results = {}
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for ratio in (0.75, 0.0):
            torch.manual_seed(0)
            model = PolyMAE({"image": make_plugin("image")}, cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as make_optimizer
            data = token_batch(batch, ratio)

            def step(model=model, opt=opt, data=data, dtype=dtype):
                with autocast(device, dtype):
                    loss, _, _ = model(data)
                opt.zero_grad()
                loss.backward()
                opt.step()

            results[f"polymae mask {ratio:g} {dtype_name}"] = batch * steps_per_second(step, steps)
        vit = PlainViT(cfg.width, cfg.depth, cfg.heads)
        opt = torch.optim.AdamW(vit.parameters(), lr=1e-4, fused=True)
        images, targets = torch.randn(batch, 3, 224, 224), torch.randn(batch, 196, 768)

        def vit_step(vit=vit, opt=opt, dtype=dtype, images=images, targets=targets):
            with autocast(device, dtype):
                loss = vit(images, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()

        results[f"timm ViT all tokens {dtype_name}"] = batch * steps_per_second(vit_step, steps)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    default_dtype = autocast_dtype("auto", torch.device("cpu"))
    default = f"polymae mask 0.75 {'bf16' if default_dtype else 'fp32'}"
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, {args.steps} timed steps; "
          f"PolyMAE default precision here: {'bf16' if default_dtype else 'fp32'}")
    for preset in args.presets:
        r = bench_preset(preset, args.batch, args.steps)
        print(f"\n## {preset}")
        for name, value in r.items():
            print(f"  {name:28s} {value:8.2f} samples/s")
        print(f"  ratio masked/unmasked fp32:          {r['polymae mask 0.75 fp32'] / r['polymae mask 0 fp32']:.2f}x")
        print(f"  ratio masked/unmasked bf16:          {r['polymae mask 0.75 bf16'] / r['polymae mask 0 bf16']:.2f}x")
        print(f"  ratio default ({default}) / timm ViT fp32: {r[default] / r['timm ViT all tokens fp32']:.2f}x")
        print(f"  ratio default / PolyMAE mask 0 fp32: {r[default] / r['polymae mask 0 fp32']:.2f}x")


if __name__ == "__main__":
    main()
