import json

import numpy as np
import pytest
import torch

from d3s.models import DisentangledExtractor
from d3s.probes import fit_probe, run_probes
from d3s.spurious import IN9_PAIRS, SpuriousError, coarse_fg_map, load_pairs

from conftest import run_cli, run_main


def test_probe_reads_small_scale_information():
    """A probe on standardised features reads a label hidden at a tiny scale (what a critic on raw
    features would miss), and stays at chance on noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    x = torch.randn(800, 10, generator=g) * 100
    x[:, 3] += 1e-3 * y  # the label, 5 orders of magnitude below the noise
    x[:, 3] = 1e-3 * y + 1e-5 * torch.randn(800, generator=g)
    p = fit_probe(x[:600], y[:600])
    assert p.accuracy(x[600:], y[600:]) > 0.95
    noise = fit_probe(torch.randn(600, 10, generator=g), y[:600])
    assert noise.accuracy(torch.randn(200, 10, generator=g), y[600:]) < 0.4


def test_run_probes_schema():
    g = torch.Generator().manual_seed(0)
    n = 300
    fg, bg = torch.randint(0, 6, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    data = {"z_fg": torch.nn.functional.one_hot(fg, 6).float() + 0.1 * torch.randn(n, 6, generator=g),
            "z_bg": torch.nn.functional.one_hot(bg, 3).float() + 0.1 * torch.randn(n, 3, generator=g), "fg": fg, "bg": bg}
    r = run_probes(data, {"validation": data})["linear"]
    assert set(r) == {"validation", "chance"}
    assert set(r["validation"]) == {"fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg"}
    assert r["validation"]["fg_from_fg"]["top1"] == 1.0 and r["validation"]["bg_from_bg"]["top1"] == 1.0
    assert r["validation"]["fg_from_bg"]["top1"] < 0.4
    assert r["validation"]["bg_from_fg"]["top5"] == 1.0  # 3 classes: top-5 is top-3
    assert all(0 <= v <= 1 for p in r["validation"].values() for v in p.values())


def test_mlp_probe_reads_what_a_linear_probe_cannot():
    """A label held in a nonlinear form (which side of a sphere the point lies on, XOR of two signs) is
    invisible to the linear probe and read by the MLP probe; noise stays at chance for both."""
    from d3s.probes import fit

    g = torch.Generator().manual_seed(0)
    n = 3000
    x = torch.randn(n, 6, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long() + 2 * (x[:, 2:4].norm(dim=1) > 1.18).long()  # 4 classes, balanced
    train, test = slice(0, 2400), slice(2400, n)
    linear, mlp = fit("linear", x[train], y[train]), fit("mlp", x[train], y[train])
    assert linear.accuracy(x[test], y[test]) < 0.35 and mlp.accuracy(x[test], y[test]) > 0.85
    noise = torch.randn(n, 6, generator=g)
    assert fit("mlp", noise[train], y[train]).accuracy(noise[test], y[test]) < 0.33


def test_fg_only_split_gets_the_fg_probes_of_each_kind():
    g = torch.Generator().manual_seed(0)
    n = 300
    fg, bg = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    data = {"z_fg": torch.nn.functional.one_hot(fg, 4).float() + 0.1 * torch.randn(n, 4, generator=g),
            "z_bg": torch.nn.functional.one_hot(bg, 3).float() + 0.1 * torch.randn(n, 3, generator=g), "fg": fg, "bg": bg}
    imagenet = {**data, "bg": torch.full_like(bg, -1)}
    r = run_probes(data, {"validation": data, "imagenet": imagenet}, kinds=("linear", "mlp"))
    assert set(r) == {"linear", "mlp"}
    for kind in r:
        assert set(r[kind]["imagenet"]) == {"fg_from_fg", "fg_from_bg"}
        assert r[kind]["imagenet"]["fg_from_fg"]["top1"] == r[kind]["validation"]["fg_from_fg"]["top1"] > 0.95


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

    write_shard(tmp_path / "nolabels", "train", [{"item_id": i, "image": Image.new("RGB", (16, 16)), "label": 0} for i in range(4)], feats)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"hexagon": "checker"}))
    cases = [
        (("train", "--data", str(tmp_path / "nolabels"), "--out", str(tmp_path / "o"), "--no-pretrained"), "no 'fg' ClassLabel"),
        (("probe", "--data", str(tmp_path / "nolabels"), "--checkpoint", str(good)), "no 'fg' ClassLabel"),
        (("probe", "--data", str(tiny_toy), "--checkpoint", str(other)), "do not match"),
        (("probe", "--data", str(tiny_toy), "--checkpoint", str(good), "--probe", "forest"), "unknown --probe 'forest'"),
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
