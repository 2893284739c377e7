"""Shared fixtures: a small ImageNet-style photo folder, and one tiny generation run reused by many tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A fresh `datasets` cache per test session: load_dataset keys local folders by file names and times, so
# two same-named folders written in the same second could otherwise share a stale cache entry.
import tempfile  # noqa: E402

os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="d3s-test-datasets-cache-")

# The classes of the acceptance command: tench, golden retriever, tabby.
PHOTO_CLASSES = ("n01440764", "n02099601", "n02123045")


def run_d3s(*args: str, env: dict | None = None, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (``python -m d3s``), from the repository root."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "d3s", *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"d3s {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_photo_folder(root: Path, wnids=PHOTO_CLASSES, per_class: int = 3) -> Path:
    """Photos of varied sizes and aspect ratios (each class a distinct hue, so pastes are visible)."""
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(wnids):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = 48 + 16 * j, 80 - 8 * j
            base = np.zeros((h, w, 3)) + np.array([(c * 90) % 256, 255 - (c * 70) % 256, (j * 60) % 256])
            img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{wnid}_{j}.JPEG", quality=95)
    return root


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, photo_dir) -> Path:
    """The issue's acceptance command: 3 classes x 10 backgrounds x 2 = 60 rows at 64 px, 10 steps."""
    out = tmp_path_factory.mktemp("gen") / "out"
    run_d3s("generate", "--model", "tiny", "--foregrounds", "0,207,281", "--backgrounds", "all", "--per-pair", "2",
            "--size", "64", "--steps", "10", "--imagenet", str(photo_dir), "--out", str(out), check=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bench_results(tmp_path_factory) -> Path:
    """A `d3s benchmark` results folder of two tiny models on a synthetic D3S split (no diffusion: fast)."""
    root = tmp_path_factory.mktemp("bench")
    data, photos = write_d3s_split(root / "d3s", split="benchmark"), write_colour_photos(root / "photos")
    out = root / "results"
    proc = run_d3s("benchmark", "--data", str(data), "--models", "test_resnet,clip:tiny", "--imagenet-val", str(photos),
                   "--no-pretrained", "--out", str(out), "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def start_app(folder: Path, *args: str, env: dict | None = None, host: str | None = "127.0.0.1") -> tuple[subprocess.Popen, str, Path]:
    """``python app.py ARGS`` on a free port, waited for until it answers: (process, url, log file). With
    ``host=None`` the app chooses where to listen (as on a Space) and the port comes from GRADIO_SERVER_PORT."""
    import httpx

    port = free_port()
    log = folder / "app.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    full_env.pop("D3S_MODEL", None)
    with open(log, "w") as f:
        where = ["--host", host, "--port", str(port)] if host else []
        full_env.setdefault("GRADIO_SERVER_PORT", str(port))
        proc = subprocess.Popen([sys.executable, "app.py", *where, *args], cwd=REPO, env=full_env, stdout=f,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"app exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code in (200, 401):  # 401: the login page of --review-auth
                return proc, url, log
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"app did not start in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, tiny_run, bench_results):
    """``python app.py`` as the README starts it (default real model id), offline: it must fall back to the
    tiny preset. Its Dataset and Review tabs offer the tiny generated dataset, its Benchmark tab a results folder."""
    folder = tmp_path_factory.mktemp("app")
    reviews = folder / "reviews.sqlite"
    proc, url, log = start_app(folder, "--data", str(tiny_run), "--results", str(bench_results), "--reviews", str(reviews))
    yield {"url": url, "reviews": reviews, "data": tiny_run, "log": log, "results": bench_results}
    stop_app(proc)


ROOT = REPO
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m d3s ...` with one torch thread (small training runs contend with two on two cores)."""
    return run_d3s(*args, env={"OMP_NUM_THREADS": "1"}, timeout=timeout)


def run_main(capsys, *args: str) -> tuple[int, list[str]]:
    """The CLI in this process (``d3s.cli.main``): exit code and stderr lines. For refusals, which must happen
    before any model loads; a subprocess per case would spend most of its time importing torch."""
    from d3s.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """A small independent toy dataset (5 shapes x 5 textures)."""
    from d3s.toy import ToyConfig, write_toy

    out = tmp_path_factory.mktemp("toy")
    write_toy(ToyConfig(out=str(out), train_per_pair=120, val_per_pair=16))
    return out


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory) -> Path:
    """A very small toy for plumbing tests."""
    from d3s.toy import ToyConfig, write_toy

    out = tmp_path_factory.mktemp("tiny_toy")
    write_toy(ToyConfig(out=str(out), fg_classes=3, bg_classes=3, train_per_pair=8, val_per_pair=3, size=16))
    return out


def fg_only_copy(toy: Path, out: Path, split: str = "train") -> Path:
    """A split of a toy without its bg column (saved as ``split``): a dataset with fg labels only, as ImageNet."""
    import datasets

    from d3s.dataset import load_raw, write_shard

    ds = load_raw(str(toy), split=split)
    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(), "fg": ds.features["fg"]})
    write_shard(out, split, [{"item_id": i, "image": r["image"], "fg": r["fg"]} for i, r in enumerate(ds)], feats)
    return out


# --- benchmark / diversity helpers -------------------------------------------------------------------

# One colour per foreground class of the synthetic D3S split (and of write_photo_folder's hues, in spirit):
# a classifier that reads the mean colour can then be scored with known answers.
SYNTH_CLASSES = (0, 207, 281)
SYNTH_COLOURS = {0: (220, 40, 40), 207: (40, 220, 40), 281: (40, 40, 220)}
SYNTH_DECOY_BG = 7  # "in snow": rows with this background are painted in the next class's colour


def write_d3s_split(root: Path, split: str = "validation", classes=SYNTH_CLASSES, backgrounds=range(10), per_cell: int = 1,
                    size: int = 32, decoy_bg: int | None = SYNTH_DECOY_BG, fg_names=None) -> Path:
    """A D3S-format folder without diffusion (fast): each image is its class's colour plus noise, except
    that rows on ``decoy_bg`` take the colour of the next class (so a colour reader fails exactly there)."""
    import datasets

    from d3s.dataset import label_features, write_card, write_shard
    from d3s.labels import imagenet_classes
    from d3s.prompts import BACKGROUNDS

    rng = np.random.default_rng(0)
    names = fg_names or [c.name for c in imagenet_classes()]
    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(),
                               **label_features(names, list(BACKGROUNDS))})
    rows, item = [], 0
    for k, fg in enumerate(classes):
        for bg in backgrounds:
            for _ in range(per_cell):
                colour_of = classes[(k + 1) % len(classes)] if bg == decoy_bg else fg
                img = np.clip(np.array(SYNTH_COLOURS[colour_of]) + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
                rows.append({"item_id": item, "image": Image.fromarray(img), "fg": fg, "bg": bg})
                item += 1
    write_shard(root, split, rows, feats)
    write_card(root, feats, "Synthetic D3S-format split for tests.")
    return root


def write_colour_photos(root: Path, per_class: int = 2, size: int = 40) -> Path:
    """An ImageNet-style folder of the synthetic classes, in their colours (the colour reader gets all right)."""
    from d3s.labels import imagenet_classes

    rng = np.random.default_rng(1)
    for fg in SYNTH_CLASSES:
        folder = root / imagenet_classes()[fg].wnid
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = np.clip(np.array(SYNTH_COLOURS[fg]) + rng.normal(0, 10, (size, size + 8 * j, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{j}.JPEG", quality=95)
    return root


@pytest.fixture(scope="session")
def synth_d3s(tmp_path_factory) -> Path:
    return write_d3s_split(tmp_path_factory.mktemp("synth") / "d3s")


@pytest.fixture(scope="session")
def colour_photos(tmp_path_factory) -> Path:
    return write_colour_photos(tmp_path_factory.mktemp("colour_photos"))


# --- real photos -------------------------------------------------------------------------------------------

# Photos that ship with installed packages (matplotlib; scikit-image, pinned in requirements.txt for them), with
# the ImageNet-1k classes that are right for each. With EfficientNet-Lite0's real weights (plain timm), the right
# class is in the top-5 of all five.
REAL_PHOTOS = {
    "grace_hopper": ("matplotlib", "sample_data/grace_hopper.jpg", {652}),  # military uniform
    "chelsea": ("skimage", "chelsea.png", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
    "coffee": ("skimage", "coffee.png", {967, 968}),  # espresso, cup
    "rocket": ("skimage", "rocket.jpg", {657, 744, 812}),  # missile, projectile, space shuttle
    "motorcycle_left": ("skimage", "motorcycle_left.png", {665, 670}),  # moped, motor scooter
}


def real_photo(name: str) -> Path:
    package, relative, _ = REAL_PHOTOS[name]
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / relative
    import skimage

    return Path(skimage.data_dir) / relative


# --- awkward uploads -------------------------------------------------------------------------------------

def huge_png_header(path: Path, side: int = 20000) -> Path:
    """A small file whose PNG header claims side x side pixels (a decompression bomb)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def awkward_uploads(root: Path) -> dict[str, tuple[Path, str | None]]:
    """The issue's bad uploads: name -> (file, expected message, or None when a prediction is due)."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str | None]] = {}
    text = root / "notes.png"
    text.write_text("this is not an image")
    out["text-renamed-png"] = (text, "could not be read as an image")
    jpeg = root / "ok.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpeg)
    truncated = root / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[:200])
    out["truncated-jpeg"] = (truncated, "could not be read")
    Image.new("RGB", (1, 1)).save(root / "dot.png")
    out["1x1"] = (root / "dot.png", "only 1x1 pixels")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(root / "deep.png")
    out["16-bit-png"] = (root / "deep.png", None)
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    out["cmyk-jpeg"] = (root / "cmyk.jpg", None)
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(root / "clear.png")
    out["rgba-png"] = (root / "clear.png", None)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20)).save(root / "rotated.jpg", exif=exif)
    out["exif-rotated"] = (root / "rotated.jpg", None)
    out["20000x20000"] = (huge_png_header(root / "huge.png"), "megapixels are accepted")
    return out


# --- the Backgrounds Challenge layout, with known answers ------------------------------------------------

# Six colours, each an axis direction around CLIP's mean colour (123, 117, 104), named by what a mean-colour
# reader answers (tests/test_bgchallenge.py builds such readers from a timm model, a CLIP model and a d3s
# extractor): the IN-9 class of that ImageNet class, or 'tabby' (281), which is outside IN-9.
BG_COLOURS = {"dog": (233, 117, 104), "bird": (123, 227, 104), "vehicle": (123, 117, 214), "reptile": (13, 117, 104),
              "tabby": (123, 7, 104), "insect": (123, 117, 0)}
BG_READS_AS = {"dog": 207, "bird": 10, "vehicle": 407, "reptile": 33, "tabby": 281, "insect": 300}
# Per IN-9 class (00_dog .. 08_fish): the foreground's colour, how many quarters of the image (from the top) it
# covers, and the colour of its own background. The colour covering 3 quarters decides what a reader answers.
BG_DESIGN = (("dog", 3, "bird"), ("bird", 3, "dog"), ("vehicle", 1, "vehicle"), ("reptile", 1, "reptile"),
             ("tabby", 3, "tabby"), ("insect", 1, "insect"), ("dog", 3, "vehicle"), ("bird", 1, "bird"), ("vehicle", 3, "reptile"))
BG_MIXED_RAND = (5, 8, 6, 0, 2, 3, 7, 1, 4)  # class k's foreground on class BG_MIXED_RAND[k]'s background
BG_MIXED_SAME = {5: "tabby"}  # mixed_same: another background of the class; the insect's reads as tabby
# What a colour reader gets right, per class, hence the accuracies 5/9, 2/9, 3/9, 3/9, 3/9, 4/9, 3/9, 2/9,
# BG-Gap 1/9 and 2/9 of the foregrounds safe from every only_bg_t background (the other 7 fall to the first one).
BG_EXPECTED = {"original": (1, 1, 1, 1, 0, 1, 0, 0, 0), "only_fg": (1, 1, 0, 0, 0, 0, 0, 0, 0), "no_fg": (0, 0, 1, 1, 0, 1, 0, 0, 0),
               "only_bg_b": (0, 0, 1, 1, 0, 1, 0, 0, 0), "only_bg_t": (0, 0, 1, 1, 0, 1, 0, 0, 0),
               "mixed_same": (1, 1, 1, 1, 0, 0, 0, 0, 0), "mixed_rand": (1, 1, 1, 0, 0, 0, 0, 0, 0),
               "mixed_next": (1, 1, 0, 0, 0, 0, 0, 0, 0)}
BG_EXPECTED_SAFE = (1, 1, 0, 0, 0, 0, 0, 0, 0)


def write_bgchallenge(root: Path, size: int = 32, masks: bool = True) -> Path:
    """A Backgrounds Challenge folder in the published layout, one image per class and variation (see BG_DESIGN)."""
    from d3s.bgchallenge import CLASS_FOLDERS

    def image(top: str, quarters: int, bottom: str) -> Image.Image:
        a = np.empty((size, size, 3), np.uint8)
        a[:] = BG_COLOURS[bottom]
        a[: quarters * size // 4] = BG_COLOURS[top]
        return Image.fromarray(a)

    variations = {}
    for k, (fg, q, bg) in enumerate(BG_DESIGN):
        variations.setdefault("original", []).append(image(fg, q, bg))
        variations.setdefault("only_fg", []).append(image(fg, q, "tabby"))  # 'black' reads as tabby: wrong
        variations.setdefault("no_fg", []).append(image("tabby", q, bg))
        variations.setdefault("only_bg_b", []).append(image("tabby", 1, bg))
        variations.setdefault("only_bg_t", []).append(image(bg, 4, bg))
        variations.setdefault("mixed_same", []).append(image(fg, q, BG_MIXED_SAME.get(k, bg)))
        variations.setdefault("mixed_rand", []).append(image(fg, q, BG_DESIGN[BG_MIXED_RAND[k]][2]))
        variations.setdefault("mixed_next", []).append(image(fg, q, BG_DESIGN[(k + 1) % 9][2]))
    for name, images in variations.items():
        for k, im in enumerate(images):
            folder = root / name / "val" / CLASS_FOLDERS[k]
            folder.mkdir(parents=True, exist_ok=True)
            im.save(folder / f"n{k:08d}_1.JPEG", quality=100, subsampling=0)
    for k, (_, q, _) in enumerate(BG_DESIGN if masks else ()):
        folder = root / "fg_mask" / "val" / CLASS_FOLDERS[k]
        folder.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((size, size), np.uint8)
        mask[: q * size // 4] = 1
        np.save(folder / f"n{k:08d}_1.npy", mask)
    return root


@pytest.fixture(scope="session")
def bg_challenge(tmp_path_factory) -> Path:
    return write_bgchallenge(tmp_path_factory.mktemp("bgchallenge") / "bg_challenge")


def feature_stub(fg_dim: int, bg_dim: int, fg_classes: int, bg_classes: int):
    """The attributes a disentangling method reads from an extractor (sizes, class names, heads); the tests give it
    features directly."""
    import torch.nn as nn

    stub = nn.Module()
    stub.fg_dim, stub.bg_dim = fg_dim, bg_dim
    stub.fg_names, stub.bg_names = [f"c{i}" for i in range(fg_classes)], [f"b{i}" for i in range(bg_classes)]
    stub.fg_head, stub.bg_head = nn.Linear(fg_dim, fg_classes), nn.Linear(bg_dim, bg_classes)
    return stub
