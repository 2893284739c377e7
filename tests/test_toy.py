import json

import numpy as np

from d3s.dataset import load
from d3s.toy import SHAPES, TEXTURES, FeatureToyConfig, ToyConfig, write_feature_toy, write_toy

from conftest import run_main


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


def test_toy_other_shapes_and_textures(tmp_path):
    write_toy(ToyConfig(out=str(tmp_path), shapes=["star", "bar"], textures=["grid", "blobs", "plain"], train_per_pair=2,
                        val_per_pair=1, size=16))
    ds = load(tmp_path)
    assert ds["train"].features["fg"].names == ["star", "bar"] and ds["train"].features["bg"].names == ["grid", "blobs", "plain"]
    assert json.loads((tmp_path / "pairs.json").read_text()) == {"star": "grid", "bar": "blobs"}


def _linear_readout(x_tr, y_tr, x_va, y_va, classes):
    """Validation accuracy of a least-squares one-hot readout on standardised features (a quick linear probe)."""
    import torch

    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mean) / std, (x_va - mean) / std
    w = torch.linalg.solve(a.T @ a + 1e-2 * len(a) * torch.eye(a.shape[1]), a.T @ torch.nn.functional.one_hot(y_tr, classes).float())
    return ((b @ w).argmax(1) == y_va).float().mean().item()


def test_feature_toy_has_known_nonlinearly_mixed_factors(tmp_path):
    """Both labels are readable from the features, every pair appears equally often, and the mixing is
    nonlinear: features are non-negative (ReLU) and neither half of them alone is free of either label."""
    import torch

    from d3s.data import FeatureTable, load_split

    cfg = FeatureToyConfig(out=str(tmp_path), fg_classes=20, bg_classes=4, dim=96, train_per_pair=10, val_per_pair=3)
    assert write_feature_toy(cfg) == {"train": 800, "validation": 240}
    tr, va = FeatureTable(load_split(str(tmp_path), "train")), FeatureTable(load_split(str(tmp_path), "validation"))
    assert tr.dim == 96 and (tr.x >= 0).all() and 0.2 < (tr.x > 0).float().mean() < 0.8
    pairs = tr.fg * 4 + tr.bg
    assert (torch.bincount(pairs, minlength=80) == 10).all()
    # measured: fg 0.925 (chance 0.05), bg 0.717 (chance 0.25); at the default sizes 0.95 and 0.97
    assert _linear_readout(tr.x, tr.fg, va.x, va.fg, 20) > 0.8 and _linear_readout(tr.x, tr.bg, va.x, va.bg, 4) > 0.6
    first, last = slice(0, 48), slice(48, 96)  # every part of the features holds both labels (0.554, 0.733)
    assert _linear_readout(tr.x[:, first], tr.bg, va.x[:, first], va.bg, 4) > 0.45
    assert _linear_readout(tr.x[:, last], tr.fg, va.x[:, last], va.fg, 20) > 0.5
    again = tmp_path / "again"
    write_feature_toy(FeatureToyConfig(**{**cfg.__dict__, "out": str(again)}))
    assert torch.equal(FeatureTable(load_split(str(again), "train")).x, tr.x)  # a function of the seed


def test_toy_cli_rejects_bad_settings(tmp_path, capsys):
    code, err = run_main(capsys, "toy", "--out", str(tmp_path / "t"), "--fg-classes", "99")
    assert code == 2 and len(err) == 1 and "--fg-classes must be in 2..8" in err[0], err
    for args, message in ((("--kind", "features", "--size", "32"), "does not take --size"), (("--dim", "64"), "--dim applies to --kind features"),
                          (("--shapes", "circle,hexagon"), "--shapes must name distinct ones")):
        code, err = run_main(capsys, "toy", "--out", str(tmp_path / "t"), *args)
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "t").exists()
