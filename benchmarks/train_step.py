"""Time a Wasserstein-disentanglement training step against an ERM step, side by side.

Same backbone, batch, image size and device; the steps alternate (ERM, Wasserstein, ERM, ...) so
that load from other processes hits both alike, and the median of each is compared. The critics
run on detached features, so a Wasserstein step should cost about one ERM step (target <= 1.15).
The last line printed is ``ratio <wasserstein / erm>``.

    python benchmarks/train_step.py                                 # resnet50, 224 px, batch 64 on CUDA (32 on CPU)
    python benchmarks/train_step.py --backbone resnet18 --image-size 112 --batch-size 32 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's d3s, not an installed one

from d3s.algorithms import build, hparams_for
from d3s.models import DisentangledExtractor


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64 if cuda else 32)
    ap.add_argument("--fg-classes", type=int, default=1000, help="(default: %(default)s, as D3S)")
    ap.add_argument("--bg-classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20 if cuda else 4, help="timed steps per method (after 2 warm-up steps)")
    args = ap.parse_args()
    device = "cuda" if cuda else "cpu"
    fg = [f"c{i}" for i in range(args.fg_classes)]
    bg = [f"b{i}" for i in range(args.bg_classes)]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g).to(device)
    fg_y = torch.randint(0, args.fg_classes, (args.batch_size,), generator=g).to(device)
    bg_y = torch.randint(0, args.bg_classes, (args.batch_size,), generator=g).to(device)

    algos = {}
    for method in ("erm", "wasserstein"):
        torch.manual_seed(0)
        model = DisentangledExtractor(args.backbone, fg, bg, image_size=args.image_size)
        hp = hparams_for(method, {"warmup_iters": 0} if method == "wasserstein" else {})
        algos[method] = build(method, model, hp).to(device).train()
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda)

    def step(method: str, i: int) -> float:
        gen = torch.Generator(device=device).manual_seed(i)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with amp:
            algos[method].update(images, fg_y, bg_y, gen)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {m: [] for m in algos}
    for i in range(2 + args.steps):
        for method in algos:
            dt = step(method, i)
            if i >= 2:
                times[method].append(dt)
    erm, wd = statistics.median(times["erm"]), statistics.median(times["wasserstein"])
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, {args.backbone} {args.image_size}px, batch {args.batch_size}, "
          f"{args.fg_classes} fg / {args.bg_classes} bg classes, {args.steps} timed steps each")
    print(f"erm step          {erm * 1000:8.1f} ms")
    print(f"wasserstein step  {wd * 1000:8.1f} ms  (critic steps: {algos['wasserstein'].hparams['critic_steps']})")
    print(f"ratio {wd / erm:.3f}")


if __name__ == "__main__":
    main()
