"""Decode sharing in ``d3s benchmark``: K models on the same data, shared decode vs decoding per model.

The authors' code decoded (and resized) the whole dataset again for every model. ``d3s benchmark``
decodes once per preprocessing setting and every model with that setting reads the same uint8
array. Here K tiny timm models with one preprocessing setting (160 px, bicubic, crop 0.95; random
weights, offline) are evaluated on a D3S-format split of 512 px PNG images (the paper's size):

- shared: one :func:`d3s.benchmark.decode`, then K x :func:`d3s.benchmark.predict_top5`;
- per model: K x (decode + predict), the authors' way.

Models are built beforehand (the same in both paths). Rounds alternate between the two paths (this
machine is shared and noisy) and the best round of each is kept. The last line is
``ratio <per-model seconds / shared seconds>``; the target at K = 4 is >= 1.5.

    python benchmarks/benchmark_decode.py [--images 64] [--size 512] [--rounds 2] [--models 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the d3s of this checkout, not another install

from d3s.benchmark import decode, open_d3s, predict_top5  # noqa: E402
from d3s.classifiers import resolve_classifier  # noqa: E402
from d3s.dataset import label_features, write_card, write_shard  # noqa: E402
from d3s.labels import imagenet_classes  # noqa: E402
from d3s.prompts import BACKGROUNDS  # noqa: E402

# Tiny timm models sharing one preprocessing setting (checked below).
MODELS = ("test_vit", "test_vit2", "test_byobnet", "test_efficientnet", "test_convnext3", "test_convnext")


def make_split(root: Path, n: int, size: int) -> None:
    """A D3S-format split of smooth, noisy ``size`` px images (PNG, as ``d3s generate`` writes them)."""
    import datasets

    rng = np.random.default_rng(0)
    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(),
                               **label_features([c.name for c in imagenet_classes()], list(BACKGROUNDS))})
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(n):
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(3 * (xx + yy) + 2 * i)], -1) * 80 + 128
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        rows.append({"item_id": i, "image": Image.fromarray(img), "fg": [0, 207, 281][i % 3], "bg": i % len(BACKGROUNDS)})
    write_shard(root, "validation", rows, feats)
    write_card(root, feats, "Synthetic split for benchmarks/benchmark_decode.py.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--models", type=int, default=4, help="K, the number of models (at most %d)" % len(MODELS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(0)
    specs = [resolve_classifier(m, pretrained=False) for m in MODELS[: args.models]]
    keys = {s.decode_key for s in specs}
    assert len(keys) == 1, f"the models must share one preprocessing setting, got {keys}"
    models = [s.build("cpu").model for s in specs]
    config = specs[0].data_config

    with tempfile.TemporaryDirectory() as tmp:
        make_split(Path(tmp), args.images, args.size)
        images = open_d3s(tmp, "validation")

        parts = {"decode": float("inf"), "inference": float("inf")}

        def shared() -> float:
            t0 = time.perf_counter()
            arr = decode(images, config, workers=args.workers)
            t1 = time.perf_counter()
            for spec, model in zip(specs, models):
                predict_top5(model, spec.data_config, arr, args.batch_size)
            t2 = time.perf_counter()
            parts["decode"], parts["inference"] = min(parts["decode"], t1 - t0), min(parts["inference"], t2 - t1)
            return t2 - t0

        def per_model() -> float:
            t0 = time.perf_counter()
            for spec, model in zip(specs, models):
                arr = decode(images, spec.data_config, workers=args.workers)
                predict_top5(model, spec.data_config, arr, args.batch_size)
            return time.perf_counter() - t0

        shared()  # warm-up: first decode and first forward of each model
        best_shared, best_per = float("inf"), float("inf")
        for r in range(args.rounds):
            s, p = shared(), per_model()
            best_shared, best_per = min(best_shared, s), min(best_per, p)
            print(f"round {r + 1}: shared decode {s:.2f}s, decode per model {p:.2f}s")

    n = args.images
    print(f"K = {len(specs)} models ({', '.join(s.name for s in specs)}), {n} images of {args.size} px -> "
          f"{config['input_size'][1]} px, {args.workers} decode threads, torch threads {torch.get_num_threads()}")
    print(f"one decode: {parts['decode']:.2f}s; inference of the {len(specs)} models: {parts['inference']:.2f}s "
          f"(best rounds; the shared path saves {len(specs) - 1} decodes)")
    print(f"shared decode:    {best_shared:.2f}s ({len(specs) * n / best_shared:.1f} model-images/s)")
    print(f"decode per model: {best_per:.2f}s ({len(specs) * n / best_per:.1f} model-images/s)")
    print(f"ratio {best_per / best_shared:.2f}")


if __name__ == "__main__":
    main()
