"""Server-side latency of the app's Predict handler on this CPU, with ResNet-50 models at 224 px.

Times exactly what a /predict request runs on the server (decode the upload with d3s.live.read_upload,
then the disentangled extractor's fg/bg heads and a standard timm ResNet-50), with random weights
(speed does not depend on them), after a warm-up. Prints the median and the 95th percentile.

    python benchmarks/app_latency.py [--requests 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from d3s.labels import imagenet_classes
from d3s.live import read_upload
from d3s.models import DisentangledExtractor
from d3s.predict import Predictors, predict
from d3s.prompts import BACKGROUNDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--backbone", default="resnet50")
    args = parser.parse_args()

    extractor = DisentangledExtractor(args.backbone, [c.name for c in imagenet_classes()], list(BACKGROUNDS), image_size=224)
    classifier = timm.create_model(args.backbone, pretrained=False)
    transform = create_transform(**resolve_data_config({}, model=classifier))
    p = Predictors(extractor.eval(), classifier.eval(), transform, args.backbone, tiny=False, note="")
    photo = Path(tempfile.mkdtemp()) / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(photo, quality=90)

    for _ in range(3):  # warm-up
        predict(p, read_upload(photo))
    times = []
    for _ in range(args.requests):
        start = time.perf_counter()
        predict(p, read_upload(photo))
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    print(f"{args.backbone} at 224 px, extractor + standard classifier, {torch.get_num_threads()} threads, {args.requests} requests")
    print(f"median {np.median(ms):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms")


if __name__ == "__main__":
    main()
