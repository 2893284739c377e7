import json

import numpy as np

from d3s.dataset import load
from d3s.toy import SHAPES, TEXTURES, ToyConfig, write_toy

from conftest import run_cli


def test_toy_format_and_independence(tmp_path):
    counts = write_toy(ToyConfig(out=str(tmp_path), fg_classes=4, bg_classes=3, train_per_pair=5, val_per_pair=2, size=20))
    assert counts == {"train": 60, "validation": 24}
    ds = load(tmp_path)
    assert ds["train"].features["fg"].names == list(SHAPES[:4])
    assert ds["train"].features["bg"].names == list(TEXTURES[:3])
    assert ds["validation"][0]["image"].size == (20, 20)
    pairs = np.array([(r["fg"], r["bg"]) for r in ds["train"]])
    # independent: every (fg, bg) pair exactly train_per_pair times
    assert (np.bincount(pairs[:, 0] * 3 + pairs[:, 1], minlength=12) == 5).all()
    # one to one: the fourth shape has no texture of its own (no two shapes share one)
    assert json.loads((tmp_path / "pairs.json").read_text()) == {"circle": "h-stripes", "square": "v-stripes", "triangle": "checker"}


def test_toy_correlation_knob_and_determinism(tmp_path):
    write_toy(ToyConfig(out=str(tmp_path / "a"), train_per_pair=20, correlation=0.9, size=16))
    write_toy(ToyConfig(out=str(tmp_path / "b"), train_per_pair=20, correlation=0.9, size=16))
    a, b = load(tmp_path / "a", "train"), load(tmp_path / "b", "train")
    fg, bg = np.array(a["fg"]), np.array(a["bg"])
    paired = (bg == fg % 5).mean()
    assert 0.88 < paired < 0.96  # 0.9 + 0.1 / 5
    assert np.array_equal(np.asarray(a[3]["image"]), np.asarray(b[3]["image"]))
    val = load(tmp_path / "a", "validation")
    assert abs((np.array(val["bg"]) == np.array(val["fg"]) % 5).mean() - 0.2) < 1e-9  # validation stays independent


def test_toy_cli_rejects_bad_settings(tmp_path):
    r = run_cli("toy", "--out", str(tmp_path / "t"), "--fg-classes", "99")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--fg-classes must be in 2..8" in r.stderr
