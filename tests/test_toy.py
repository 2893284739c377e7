import json

import numpy as np
import torch

from d3s.dataset import load
from d3s.toy import FEATURE_MIXINGS, SHAPES, TEXTURES, FeatureToyConfig, ToyConfig, mix_features, mixing_params, write_feature_toy, write_toy

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


# Written by the features toy's code before the regime knobs existed (issue 17): sha256 of the float32 features.
BEFORE_KNOBS_SMALL = {  # fg 20 x bg 4, dim 96, 2 train / 1 validation rows per pair, seed 0
    "train": ("290eb53f31bdeda436bc445aa861706613b5e695ce94dfee7e9c7c2a8e054686", 5858.819660919158),
    "validation": ("f47cac6fde06af208e68b80a425490201ce8bf7a8d9c6c1cbec82f01d57039cf", 2931.460972560919),
}
BEFORE_KNOBS_PAPER_512 = ("ead449124581896810adce2c679c83dd00d2a806399870d4c4e85517dd628ee8", 431641.55330968596)


def _features(path, split):
    from d3s.data import FeatureTable, load_split

    return FeatureTable(load_split(str(path), split))


def test_feature_toy_defaults_unchanged(tmp_path):
    """The knobs' defaults write the toy of before the knobs, bit for bit: through the writer at a small size, and at
    the paper's sizes the first 512 train rows (the mixing alone; a full write at those sizes is 160 MB)."""
    import hashlib

    cfg = FeatureToyConfig(out=str(tmp_path), fg_classes=20, bg_classes=4, dim=96, train_per_pair=2, val_per_pair=1)
    write_feature_toy(cfg)
    for split, (digest, total) in BEFORE_KNOBS_SMALL.items():
        x = _features(tmp_path, split).x.numpy()
        assert abs(x.astype(np.float64).sum() - total) < 1e-6 * total, split  # near: a bit-level difference shows in the hash only
        assert hashlib.sha256(x.tobytes()).hexdigest() == digest, split
    meta = json.loads((tmp_path / "d3s_toy.json").read_text())
    assert {k: meta[k] for k in ("mixing", "bg_scale", "nuisance_scale", "noise_dims", "nuisance", "fg_noise", "bg_noise")} == {
        "mixing": "relu2", "bg_scale": 1.0, "nuisance_scale": 1.0, "noise_dims": 0, "nuisance": 32, "fg_noise": 1.0, "bg_noise": 0.6}
    assert "| `mixing` | relu2 |" in (tmp_path / "README.md").read_text()  # the card records every knob too

    paper = FeatureToyConfig(out="")
    rng = np.random.default_rng([paper.seed, 0])  # the train split's draws, as write_feature_toy makes them
    fg = np.repeat(np.arange(paper.fg_classes), paper.bg_classes)
    bg = np.tile(np.arange(paper.bg_classes), paper.fg_classes)
    order = rng.permutation(len(fg))
    x = mix_features(paper, fg[order][:512], bg[order][:512], rng, mixing_params(paper))
    assert abs(x.astype(np.float64).sum() - BEFORE_KNOBS_PAPER_512[1]) < 1e-6 * BEFORE_KNOBS_PAPER_512[1]
    assert hashlib.sha256(x.tobytes()).hexdigest() == BEFORE_KNOBS_PAPER_512[0]


def _fg_transfer(tr, va):
    """A fg read-out fitted on the rows of bg 0, scored on the other bgs' validation rows, over its score on bg 0's."""
    own = _linear_readout(tr.x[tr.bg == 0], tr.fg[tr.bg == 0], va.x[va.bg == 0], va.fg[va.bg == 0], 20)
    other = _linear_readout(tr.x[tr.bg == 0], tr.fg[tr.bg == 0], va.x[va.bg != 0], va.fg[va.bg != 0], 20)
    return other / own


def test_feature_toy_mixings_write_load_and_interact(tmp_path):
    """Every --mixing writes and loads, non-negative with both labels readable; in gated, rotate and product fg and bg
    do not merely add: a fg read-out fitted on the rows of one bg transfers to the other bgs far worse than with the
    additive kinds (measured, seed 0: relu1 0.93, relu2 0.90, gated 0.73, rotate 0.70, product 0.35)."""
    transfer = {}
    for kind in FEATURE_MIXINGS:
        out = tmp_path / kind
        counts = write_feature_toy(FeatureToyConfig(out=str(out), fg_classes=20, bg_classes=4, dim=96, train_per_pair=20,
                                                    val_per_pair=10, mixing=kind))
        assert counts == {"train": 1600, "validation": 800}
        assert json.loads((out / "d3s_toy.json").read_text())["mixing"] == kind and f"`{kind}`" in (out / "README.md").read_text()
        tr, va = _features(out, "train"), _features(out, "validation")
        assert tr.dim == 96 and (tr.x >= 0).all() and 0.2 < (tr.x > 0).float().mean() < 0.8, kind
        assert _linear_readout(tr.x, tr.fg, va.x, va.fg, 20) > 0.8 and _linear_readout(tr.x, tr.bg, va.x, va.bg, 4) > 0.6, kind
        transfer[kind] = _fg_transfer(tr, va)
    assert transfer["relu1"] > 0.9 and transfer["relu2"] > 0.8, transfer
    assert max(transfer["gated"], transfer["rotate"], transfer["product"]) < 0.78, transfer


def test_feature_toy_regime_knobs(tmp_path):
    """--bg-scale moves how strongly bg is encoded (a linear bg read-out on the raw features), --nuisance-scale
    drowns fg, --noise-dims columns carry neither label, and 20 rows per pair work."""
    def toy(name, **kw):
        out = tmp_path / name
        write_feature_toy(FeatureToyConfig(out=str(out), fg_classes=20, bg_classes=4, dim=96, train_per_pair=10, val_per_pair=3, **kw))
        return _features(out, "train"), _features(out, "validation")

    bg = {}
    for scale in (0.5, 1.0, 2.5):
        tr, va = toy(f"bg{scale}", bg_scale=scale)
        bg[scale] = _linear_readout(tr.x, tr.bg, va.x, va.bg, 4)
    assert bg[0.5] < bg[1.0] < bg[2.5] and bg[2.5] > 0.97 and bg[0.5] < 0.6, bg  # 0.46, 0.72, 0.99; chance 0.25

    tr, va = toy("loud", nuisance=64, nuisance_scale=3.0)
    fg_loud = _linear_readout(tr.x, tr.fg, va.x, va.fg, 20)
    tr, va = toy("bg1.0-again")
    assert fg_loud < _linear_readout(tr.x, tr.fg, va.x, va.fg, 20) - 0.2  # 0.46 against 0.93

    tr, va = toy("noise", noise_dims=24)
    cols = torch_index(mixing_params(FeatureToyConfig(out="", fg_classes=20, bg_classes=4, dim=96, noise_dims=24))["noise_cols"])
    assert len(cols) == 24 and 0.4 < (tr.x[:, cols] > 0).float().mean() < 0.6
    assert _linear_readout(tr.x[:, cols], tr.fg, va.x[:, cols], va.fg, 20) < 0.15  # chance 0.05
    assert _linear_readout(tr.x[:, cols], tr.bg, va.x[:, cols], va.bg, 4) < 0.4  # chance 0.25

    out = tmp_path / "many"
    assert write_feature_toy(FeatureToyConfig(out=str(out), fg_classes=5, bg_classes=2, dim=16, train_per_pair=20)) == {
        "train": 200, "validation": 10}
    many = _features(out, "train")
    assert (np.bincount((many.fg * 2 + many.bg).numpy(), minlength=10) == 20).all()  # 20 rows per pair, 40 per fg class


def torch_index(cols):
    import torch

    return torch.as_tensor(cols, dtype=torch.long)


def test_feature_toy_cli_knobs_and_refusals(tmp_path, capsys):
    out = tmp_path / "t"
    code, _ = run_main(capsys, "toy", "--kind", "features", "--out", str(out), "--fg-classes", "6", "--bg-classes", "2", "--dim", "32",
                       "--mixing", "rotate", "--bg-scale", "2", "--fg-noise", "0.5", "--bg-noise", "0.2", "--nuisance", "4",
                       "--nuisance-scale", "0.5", "--noise-dims", "3", "--train-per-pair", "3")
    assert code == 0
    meta = json.loads((out / "d3s_toy.json").read_text())
    assert {k: meta[k] for k in ("mixing", "bg_scale", "fg_noise", "bg_noise", "nuisance", "nuisance_scale", "noise_dims", "train_per_pair")} == {
        "mixing": "rotate", "bg_scale": 2.0, "fg_noise": 0.5, "bg_noise": 0.2, "nuisance": 4, "nuisance_scale": 0.5, "noise_dims": 3,
        "train_per_pair": 3}
    bad = tmp_path / "bad"
    for args, message in ((("--mixing", "swirl"), "--mixing must be one of relu2, relu1, gated, rotate, product, got 'swirl'"),
                          (("--bg-scale", "0"), "--bg-scale must be in (0, 100], got 0.0"),
                          (("--bg-scale", "nan"), "--bg-scale must be in (0, 100], got nan"),
                          (("--nuisance-scale", "-1"), "--nuisance-scale must be in [0, 100], got -1.0"),
                          (("--noise-dims", "31"), "--noise-dims must be in 0..30"),
                          (("--train-per-pair", "0"), "--train-per-pair and --val-per-pair must be at least 1, got 0 and 1"),
                          (("--bg-noise", "-0.5"), "--fg-noise and --bg-noise must be in [0, 100], got 1.0 and -0.5")):
        code, err = run_main(capsys, "toy", "--kind", "features", "--out", str(bad), "--dim", "32", *args)
        assert code == 2 and len(err) == 1 and message in err[0], err
    code, err = run_main(capsys, "toy", "--out", str(bad), "--mixing", "gated", "--bg-scale", "2")
    assert code == 2 and len(err) == 1 and "--mixing, --bg-scale apply to --kind features" in err[0], err
    assert not bad.exists()


def test_paired_feature_toy_puts_each_object_on_every_background(tmp_path):
    """--paired: each object (group) has one row per background, one fg class, and shares its fg and nuisance codes,
    so its rows are nearer each other than rows of other objects of the same class; without it there is no group."""
    from d3s.data import groups_of, load_split

    cfg = FeatureToyConfig(out=str(tmp_path / "paired"), fg_classes=6, bg_classes=4, dim=48, train_per_pair=3, val_per_pair=2,
                           paired=True)
    assert write_feature_toy(cfg) == {"train": 72, "validation": 48}
    for split, objects in (("train", 18), ("validation", 12)):
        ds = load_split(cfg.out, split)
        table, groups = _features(cfg.out, split), groups_of(ds)
        assert len(set(groups.tolist())) == objects
        for g in set(groups.tolist()):
            rows = groups == g
            assert sorted(table.bg[rows].tolist()) == [0, 1, 2, 3] and len(set(table.fg[rows].tolist())) == 1
        first = int(groups[0])
        same = table.x[groups == first]
        others = table.x[(table.fg == table.fg[0]) & (groups != first)]
        assert torch.cdist(same, same).mean() < 0.8 * torch.cdist(same, others).mean()
    assert set(groups_of(load_split(cfg.out, "train")).tolist()).isdisjoint(groups_of(load_split(cfg.out, "validation")).tolist())
    assert "Each object is on every background" in (tmp_path / "paired" / "README.md").read_text()
    plain = FeatureToyConfig(out=str(tmp_path / "plain"), fg_classes=6, bg_classes=4, dim=48)
    write_feature_toy(plain)
    assert groups_of(load_split(plain.out, "train")) is None
