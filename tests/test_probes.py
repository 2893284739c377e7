import json

import numpy as np
import pytest
import torch

from d3s.models import DisentangledExtractor
from d3s.probes import ProbeError, fit_probe, format_table, run_probes
from d3s.spurious import IN9_PAIRS, SpuriousError, coarse_fg_map, load_pairs

from conftest import run_cli, run_main


def test_probe_reads_small_scale_information():
    """A probe on standardised features reads a label hidden at a tiny scale (what a critic on raw
    features would miss), and stays at chance on noise; it reports converging."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    x = torch.randn(800, 10, generator=g) * 100
    x[:, 3] = 1e-3 * y + 1e-5 * torch.randn(800, generator=g)  # the label, 5 orders of magnitude below the other features
    p = fit_probe(x[:600], y[:600])
    assert p.accuracy(x[600:], y[600:]) > 0.95
    assert p.info["converged"] and p.info["grad_max"] < 1e-4 and 0 < p.info["iterations"] < 500
    noise = fit_probe(torch.randn(600, 10, generator=g), y[:600])
    assert noise.accuracy(torch.randn(200, 10, generator=g), y[600:]) < 0.4
    stopped = fit_probe(x[:600], y[:600], max_iter=2)  # cut short: the record says so
    assert not stopped.info["converged"] and stopped.info["iterations"] <= 2


def _parts(n, n_fg=6, n_bg=3, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    fg, bg = torch.randint(0, n_fg, (n,), generator=g), torch.randint(0, n_bg, (n,), generator=g)
    return {"z_fg": torch.nn.functional.one_hot(fg, n_fg).float() + noise * torch.randn(n, n_fg, generator=g),
            "z_bg": torch.nn.functional.one_hot(bg, n_bg).float() + noise * torch.randn(n, n_bg, generator=g), "fg": fg, "bg": bg}


def test_run_probes_schema_cross_fitted_by_default():
    data = _parts(300)
    r = run_probes({"validation": data})["linear"]
    assert set(r) == {"validation", "chance", "fit"}
    assert set(r["validation"]) == {"fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg"}
    assert r["validation"]["fg_from_fg"]["top1"] == 1.0 and r["validation"]["bg_from_bg"]["top1"] == 1.0
    assert r["validation"]["fg_from_bg"]["top1"] < 0.4
    assert r["validation"]["bg_from_fg"]["top5"] == 1.0  # 3 classes: top-5 is top-3
    assert all(0 <= v <= 1 for p in r["validation"].values() for v in p.values())
    fit = r["fit"]["validation"]
    assert fit["held_out"] and fit["folds"] == 2 and fit["split"] == "validation" and fit["rows"] == 300
    assert "cross-fitted on validation" in fit["text"]
    assert set(run_probes({"validation": data}, names=("bg_from_fg",), kinds=("linear", "kernel"))) == {"linear", "kernel"}
    with pytest.raises(ProbeError, match="unknown probe 'nope'"):
        run_probes({"validation": data}, names=("nope",))


def test_a_probe_fitted_where_the_eraser_was_reads_chance_by_construction_and_a_held_out_one_does_not():
    """The check that cannot fail, and the one that can: LEACE fitted on train rows (few per class, many features)
    leaves no linear trace of bg there, so a probe fitted on those rows answers one class (chance), and its report
    says it was fitted on the model's rows; cross-fitted on rows the eraser never saw, the same probe reads bg well
    above chance, and the report says held out."""
    from d3s.erase import fit_eraser
    from d3s.probes import FitRows

    g = torch.Generator().manual_seed(0)
    n, d = 600, 200
    means = 0.6 * torch.randn(5, d, generator=g)  # 5 bg classes, 120 train rows each over 200 features

    def rows(count):
        bg = torch.arange(count) % 5
        return {"z_fg": means[bg] + torch.randn(count, d, generator=g), "z_bg": torch.randn(count, 4, generator=g),
                "fg": torch.arange(count) % 3, "bg": bg}

    train, val = rows(n), rows(n)
    eraser = fit_eraser(train["z_fg"], train["bg"], 5, progress=False)
    erase = lambda r: {**r, "z_fg": eraser(r["z_fg"].double()).float()}  # noqa: E731
    rows_ = FitRows(split="train", model_rows=("train",))
    on_train = run_probes({"validation": erase(val)}, rows_, erase(train), names=("bg_from_fg",))["linear"]
    assert abs(on_train["validation"]["bg_from_fg"]["top1"] - on_train["chance"]["bg"]) < 0.02
    assert on_train["fit"]["validation"]["held_out"] is False and "rows the model was fitted on" in on_train["fit"]["validation"]["text"]
    held_out = run_probes({"validation": erase(val)}, names=("bg_from_fg",))["linear"]
    assert held_out["validation"]["bg_from_fg"]["top1"] > held_out["chance"]["bg"] + 0.10  # 0.345 (chance 0.20); SE 0.016
    assert held_out["fit"]["validation"]["held_out"] is True
    table = format_table(run_probes({"validation": erase(val)}, rows_, erase(train), names=("bg_from_fg",)))
    assert table.splitlines()[1].endswith("on train: rows the model was fitted on")  # said on the same line
    assert format_table(run_probes({"validation": erase(val)}, names=("bg_from_fg",))).splitlines()[1].endswith(
        "held out: 2-fold on validation")
    assert FitRows(split="third", model_rows=("train",)).describe("validation", 10)["held_out"] is True


def test_folds_keep_objects_together_and_spread_classes():
    from d3s.probes import fold_ids

    fg = torch.arange(400) // 40  # 10 classes of 40 rows
    bg = torch.arange(400) % 4
    folds = fold_ids(fg, bg, 2, seed=3)
    for c in range(10):
        assert (folds[fg == c] == 0).sum() == 20  # every class half in each fold
    assert torch.equal(folds, fold_ids(fg, bg, 2, seed=3)) and not torch.equal(folds, fold_ids(fg, bg, 2, seed=4))
    for c in range(10):  # and every (fg, bg) pair
        assert all((folds[(fg == c) & (bg == b)] == 0).sum() == 5 for b in range(4))
    # one row per (fg, bg) pair, an even number of backgrounds: each background still lands in both folds, about
    # evenly (dealt in one sequence, fold = bg % 2, and a bg probe scored on the other fold reads 0)
    fg1, bg1 = torch.arange(1000) // 10, torch.arange(1000) % 10
    folds = fold_ids(fg1, bg1, 2, seed=0)
    assert all(35 <= int((folds[bg1 == b] == 0).sum()) <= 65 for b in range(10))
    assert all(int((folds[fg1 == c] == 0).sum()) == 5 for c in range(100))
    groups = torch.arange(400) // 4  # an object on 4 backgrounds: its rows in one fold
    folds = fold_ids(fg, bg, 2, seed=0, groups=groups)
    assert all(len(set(folds[groups == k].tolist())) == 1 for k in range(100))
    assert all((folds[fg == c] == 0).sum() == 20 for c in range(10))


def test_paired_rows_split_by_row_read_below_chance_and_by_object_do_not():
    """Why folds keep an object's rows together: the same object on every background, its z nearly the same on each;
    split by row, a probe learns the object's backgrounds in one fold and answers one of them for its other rows,
    which are necessarily other backgrounds (below chance); split by object it reads chance."""
    g = torch.Generator().manual_seed(0)
    objects, n_bg = 150, 4
    obj = torch.arange(objects * n_bg) // n_bg
    bg = torch.arange(objects * n_bg) % n_bg
    z = torch.randn(objects, 16, generator=g)[obj] + 0.01 * torch.randn(len(obj), 16, generator=g)  # bg-free
    data = {"z_fg": z, "z_bg": torch.randn(len(obj), 2, generator=g), "fg": obj % 3, "bg": bg}
    by_row = run_probes({"validation": data}, names=("bg_from_fg",), kinds=("kernel",))["kernel"]["validation"]["bg_from_fg"]["top1"]
    by_object = run_probes({"validation": {**data, "group": obj}}, names=("bg_from_fg",), kinds=("kernel",))["kernel"]
    assert by_row < 0.25 - 0.05 and abs(by_object["validation"]["bg_from_fg"]["top1"] - 0.25) < 0.06


def test_mlp_and_kernel_probes_read_what_a_linear_probe_cannot():
    """A label held in a nonlinear form (which side of a sphere the point lies on, XOR of two signs) is
    invisible to the linear probe and read by the MLP and kernel probes; noise stays at chance for all."""
    from d3s.probes import fit

    g = torch.Generator().manual_seed(0)
    n = 3000
    x = torch.randn(n, 6, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long() + 2 * (x[:, 2:4].norm(dim=1) > 1.18).long()  # 4 classes, balanced
    train, test = slice(0, 2400), slice(2400, n)
    linear, mlp, kernel = (fit(k, x[train], y[train]) for k in ("linear", "mlp", "kernel"))
    assert linear.accuracy(x[test], y[test]) < 0.35 and mlp.accuracy(x[test], y[test]) > 0.85
    assert kernel.accuracy(x[test], y[test]) > 0.8 and mlp.info["epochs"] > 0 and mlp.info["hidden"] > 0
    noise = torch.randn(n, 6, generator=g)
    assert fit("mlp", noise[train], y[train]).accuracy(noise[test], y[test]) < 0.33
    assert fit("kernel", noise[train], y[train]).accuracy(noise[test], y[test]) < 0.33


def test_mlp_probe_is_the_linear_probe_where_a_hidden_layer_does_not_help():
    """The MLP probe's linear path starts at the linear probe of the same rows, and 0 epochs is among its choices: on
    classes a linear map separates, it is never weaker than the linear probe, and when it keeps 0 epochs it answers
    exactly as the linear probe does."""
    from d3s.probes import fit_kinds

    g = torch.Generator().manual_seed(1)
    n, d, k = 2000, 30, 8
    y = torch.arange(n) % k
    x = 1.2 * torch.randn(k, d, generator=g)[y] + torch.randn(n, d, generator=g)
    probes = fit_kinds(("linear", "mlp"), x[:1500], y[:1500])
    lin, mlp = (probes[kind].accuracy(x[1500:], y[1500:]) for kind in ("linear", "mlp"))
    assert mlp >= lin - 0.01, (lin, mlp, probes["mlp"].info)
    if probes["mlp"].info["epochs"] == 0:
        assert torch.equal(probes["mlp"].logits(x[1500:]).argmax(1), probes["linear"].logits(x[1500:]).argmax(1))


def test_probe_kinds_and_names_from_the_command_line():
    from d3s.probes import probe_kinds, probe_names

    assert probe_kinds("both") == ("linear", "mlp") and probe_kinds("all") == ("linear", "mlp", "kernel")
    assert probe_kinds("kernel, linear") == ("kernel", "linear")
    assert probe_names("cross") == ("fg_from_bg", "bg_from_fg") and len(probe_names("all")) == 4
    with pytest.raises(ProbeError, match="unknown --probe 'forest'"):
        probe_kinds("forest")
    with pytest.raises(ProbeError, match="unknown --probes 'fg'"):
        probe_names("fg")


def test_fg_only_split_gets_the_fg_probes_of_each_kind():
    data = _parts(300, n_fg=4)
    imagenet = {**data, "bg": torch.full_like(data["bg"], -1)}
    r = run_probes({"validation": data, "imagenet": imagenet}, kinds=("linear", "mlp"))
    assert set(r) == {"linear", "mlp"}
    for kind in r:
        assert set(r[kind]["imagenet"]) == {"fg_from_fg", "fg_from_bg"}
        assert r[kind]["imagenet"]["fg_from_fg"]["top1"] > 0.95 and r[kind]["validation"]["fg_from_fg"]["top1"] > 0.95
        assert "fitted on all of validation" in r[kind]["fit"]["imagenet"]["text"]


def test_pairs_resolution():
    fg_map, bg_map = coarse_fg_map({"square": "checker", "circle": "dots"}, ["circle", "square", "ring"], ["checker", "dots", "plain"])
    assert fg_map.tolist() == [1, 0, -1] and bg_map.tolist() == [0, 1, -1]
    with pytest.raises(SpuriousError, match="'hexagon'"):
        coarse_fg_map({"hexagon": "checker"}, ["circle", "square"], ["checker", "dots"])
    with pytest.raises(SpuriousError, match="bg classes"):
        coarse_fg_map({"circle": "lava"}, ["circle", "square"], ["checker", "dots"])


def test_in9_pairs_map_imagenet_classes():
    from d3s.labels import imagenet_classes
    from d3s.prompts import load_recipe

    names = [c.name for c in imagenet_classes()]
    fg_map, bg_map = coarse_fg_map(load_pairs(None), names, list(load_recipe("backgrounds").shifts))
    assert fg_map[207].item() == list(IN9_PAIRS).index("dog")  # golden retriever
    assert fg_map[0].item() == list(IN9_PAIRS).index("fish")  # tench
    assert fg_map[999].item() == -1  # toilet tissue: no IN-9 class
    assert (fg_map >= 0).sum().item() == 370
    assert (bg_map >= 0).sum().item() == 9  # 'indoors' unused


def _checkpoint(tmp_path, fg, bg):
    torch.manual_seed(0)
    m = DisentangledExtractor("test_efficientnet", fg, bg, image_size=16)
    m.save_pretrained(tmp_path)
    return tmp_path


def test_bad_inputs_get_one_line_errors(tiny_toy, tmp_path, capsys):
    good = _checkpoint(tmp_path / "good", ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"])
    other = _checkpoint(tmp_path / "other", ["cat", "dog"], ["h-stripes", "v-stripes", "checker"])
    # a dataset without fg/bg labels
    import datasets

    from d3s.dataset import write_shard

    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(), "label": datasets.Value("int64")})
    from PIL import Image

    for split in ("train", "validation"):
        write_shard(tmp_path / "nolabels", split, [{"item_id": i, "image": Image.new("RGB", (16, 16)), "label": 0} for i in range(4)], feats)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"hexagon": "checker"}))
    cases = [
        (("train", "--data", str(tmp_path / "nolabels"), "--out", str(tmp_path / "o"), "--no-pretrained"), "no 'fg' ClassLabel"),
        (("probe", "--data", str(tmp_path / "nolabels"), "--checkpoint", str(good)), "no 'fg' ClassLabel"),
        (("probe", "--data", str(tiny_toy), "--checkpoint", str(other)), "do not match"),
        (("probe", "--data", str(tiny_toy), "--checkpoint", str(good), "--probe", "forest"), "unknown --probe 'forest'"),
        (("probe", "--data", str(tiny_toy), "--checkpoint", str(good), "--fit-split", "validation"), "leave --fit-split out"),
        (("features", "--data", str(tiny_toy), "--checkpoint", str(tmp_path / "missing_dir_x"), "--out", str(tmp_path / "f.npz")), "checkpoint"),
        (("spurious", "--data", str(tiny_toy), "--checkpoint", str(good), "--baseline", str(good), "--pairs", str(pairs)), "'hexagon'"),
        (("spurious", "--data", str(tiny_toy), "--checkpoint", str(other), "--baseline", str(good)), "do not match"),
    ]
    for args, message in cases:
        code, err = run_main(capsys, *args)
        assert code == 2, (args, err)
        assert len(err) == 1 and err[0].startswith(f"d3s {args[0]}: error:") and message in err[0], (args, err)


def test_features_export(tiny_toy, tmp_path):
    ck = _checkpoint(tmp_path / "ck", ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"])
    r = run_cli("features", "--data", str(tiny_toy), "--checkpoint", str(ck), "--split", "validation", "--out", str(tmp_path / "v.npz"))
    assert r.returncode == 0, r.stderr
    f = np.load(tmp_path / "v.npz")
    assert f["z_fg"].shape == (27, 225) and f["z_bg"].shape == (27, 31) and f["fg"].shape == f["bg"].shape == (27,)


def test_spurious_with_a_timm_baseline_on_the_toy(tiny_toy, tmp_path, capsys):
    """Without IN-9 data there is no ImageNet column: the mean of the four D3S columns is 'average_4', and the table
    says so; --in9 with pairs that are not IN-9 classes is refused in one line."""
    ck = _checkpoint(tmp_path / "ck", ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"])
    out = tmp_path / "spurious.json"
    r = run_cli("spurious", "--data", str(tiny_toy), "--checkpoint", str(ck), "--baseline", "test_resnet", "--no-pretrained",
                "--pairs", str(tiny_toy / "pairs.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(json.loads((tiny_toy / "pairs.json").read_text())) == 3  # every toy class is in a pair
    assert result["counts"] == {"corr": 9, "anticorr_fg": 18, "anticorr_bg": 18}
    for name in ("correct", "all", "baseline"):
        c = result[name]
        cols = [c[k] for k in ("corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg")]
        assert "average" not in c and "imagenet_fg" not in c
        assert c["average_4"] == pytest.approx(sum(cols) / 4) and c["worst"] <= min(cols) + 1e-9
    table = out.with_suffix(".md").read_text()
    assert "Average (4 columns: no ImageNet)" in table and "Baseline (test_resnet)" in table and "--in9 adds it" in table
    from d3s import cli

    assert cli.main(["spurious", "--data", str(tiny_toy), "--checkpoint", str(ck), "--baseline", str(ck),
                     "--pairs", str(tiny_toy / "pairs.json"), "--in9", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("d3s spurious: error:") and "use pairs of IN-9 classes" in err[0]


def test_table3_protocol_indoors_in_anticorr_and_in9_val_as_the_imagenet_column(tmp_path, capsys):
    """Issue 11 acceptance 3. Data: tench (fish), golden retriever (dog) and tabby (no IN-9 class) on all ten
    backgrounds; the IN-9 pairs put fish on grass and dog in a forest. D3S_anticorr holds every other image of
    fish and dog (9 backgrounds each, 'indoors' included); the bg head knows only paired backgrounds, so the
    anticorr bg column scores 8 each. The ImageNet column is the challenge's original/val: one image of each of
    the nine IN-9 classes (the default pairs pair all nine)."""
    from d3s import cli
    from d3s.labels import imagenet_classes
    from d3s.prompts import BACKGROUNDS
    from d3s.spurious import spurious

    from conftest import write_bgchallenge, write_d3s_split

    data = tmp_path / "d3s"
    write_d3s_split(data, "train", per_cell=2, size=16, decoy_bg=None)
    write_d3s_split(data, "validation", size=16, decoy_bg=None)
    torch.manual_seed(0)
    ck = tmp_path / "ck"
    DisentangledExtractor("test_resnet", [c.name for c in imagenet_classes()], list(BACKGROUNDS), image_size=16).save_pretrained(ck)
    challenge = write_bgchallenge(tmp_path / "bg", size=16, masks=False)

    r = spurious(str(data), str(ck), str(ck), in9=str(challenge))
    assert r["counts"] == {"corr": 2, "anticorr_fg": 18, "anticorr_bg": 16, "imagenet_fg": 9}  # 18 - 16: the indoors rows
    for name in ("correct", "all", "baseline"):
        cols = [r[name][k] for k in ("corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "imagenet_fg")]
        assert r[name]["average"] == pytest.approx(sum(cols) / 5) and "average_4" not in r[name]
    # the command, with the original/val folder itself
    assert cli.main(["spurious", "--data", str(data), "--checkpoint", str(ck), "--baseline", str(ck),
                     "--in9", str(challenge / "original" / "val"), "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "ImageNet fg (IN-9 val)" in printed and "Average (5 columns)" in printed and "ImageNet fg (IN-9 val) 9." in printed
    assert json.loads((tmp_path / "s.json").read_text())["correct"] == pytest.approx(r["correct"])


def test_in9_column_gives_every_model_the_same_pixels_and_refuses_other_variations(tmp_path, capsys):
    """Table 3's ImageNet column: a frozen-features extractor (whose recorded preprocessing crops 0.875) and the
    baseline of the same backbone read the same uint8 tensors of each IN-9 image (the image whole, as
    `d3s bgchallenge`); `--in9 DIR/mixed_rand` is refused in one line."""
    import numpy as np

    from conftest import write_bgchallenge
    from d3s import cli
    from d3s.data import table_for
    from d3s.labels import imagenet_classes
    from d3s.models import FeatureDisentangler, create_backbone, preprocessing_of
    from d3s.prompts import BACKGROUNDS
    from d3s.spurious import TimmFeatures, _in9_dataset, in9_table

    import timm
    from timm.models import save_for_hf

    challenge = write_bgchallenge(tmp_path / "bg", size=48, masks=False)
    ds = _in9_dataset(str(challenge))
    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(tmp_path / "backbone"), safe_serialization=True)
    backbone = f"local-dir:{tmp_path / 'backbone'}"
    prep = preprocessing_of(create_backbone(backbone, pretrained=True), image_size=40)
    assert prep["crop_pct"] < 1.0  # the crop a frozen checkpoint records
    frozen = FeatureDisentangler(create_backbone(backbone).num_features, [c.name for c in imagenet_classes()],
                                 list(BACKGROUNDS), backbone=backbone, preprocessing=prep)
    extractor = frozen.to_extractor()
    baseline = TimmFeatures(backbone, pretrained=True)
    baseline.preprocessing = {**baseline.preprocessing, "input_size": prep["input_size"]}  # the same backbone, same size
    rows = range(len(ds))
    assert np.array_equal(in9_table(extractor, ds).batch(rows).numpy(), in9_table(baseline, ds).batch(rows).numpy())
    cropped = table_for(ds, extractor).batch(rows).numpy()  # what the frozen extractor read before: a 12.5% zoom
    assert not np.array_equal(cropped, in9_table(extractor, ds).batch(rows).numpy())

    assert cli.main(["spurious", "--data", str(tmp_path), "--checkpoint", str(tmp_path), "--baseline", "test_resnet",
                     "--in9", str(challenge / "mixed_rand")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the challenge's 'mixed_rand' variation, not IN-9's original images" in err[0], err
