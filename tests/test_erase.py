"""LEACE erasers (`d3s erase`, `d3s train --erase`): held out, most of the linear cross-leakage gone and fg_from_fg
kept; on the rows they were fitted on, chance by construction (and said so); the erasers stored in the checkpoint
(save/load, to_extractor, `d3s features`, the timm copy, the card), equal to the concept-erasure package's own, and
one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from d3s.models import FeatureDisentangler, ModelError, load_disentangler, load_extractor

from conftest import fg_only_copy, run_main

SHAPES, TEXTURES = ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"]
CHANCE_SLACK = 0.02  # the bound on validation: linear cross probes within this of chance, fg_from_fg of before


@pytest.fixture(scope="module")
def ftoy(tmp_path_factory):
    """A features toy: 20 fg x 5 bg classes, 128 features (with 64, fg and bg share so much of the features that
    erasing bg from z_fg costs fg_from_fg about 0.02; with 128 it costs about 0.01)."""
    from d3s.toy import FeatureToyConfig, write_feature_toy

    out = tmp_path_factory.mktemp("ftoy") / "toy"
    write_feature_toy(FeatureToyConfig(out=str(out), fg_classes=20, bg_classes=5, dim=128, train_per_pair=20, val_per_pair=8))
    return out


def _train(data, out, **kw):
    from d3s.train import TrainConfig, train

    # z_bg of 32: erasing 20 fg classes (rank 19 at most) leaves part of it, so fg_from_bg at chance is not trivial
    return train(TrainConfig(data=str(data), out=str(out), iters=200, batch_size=64, fg_dim=96, bg_dim=32, progress=False,
                             hparams={"warmup_iters": 5}, **kw))


@pytest.fixture(scope="module")
def runs(ftoy, tmp_path_factory):
    """The same run twice (same seed: the same weights), plain and with --erase (linear and MLP probes)."""
    root = tmp_path_factory.mktemp("runs")
    plain = _train(ftoy, root / "plain", erase=False)
    # both parts: on this short run erasing fg from z_bg costs the bg head 0.2, so --parts auto would leave z_bg alone
    erased = _train(ftoy, root / "erased", erase=True, erase_parts="both", erase_probe="both")
    assert plain["done"] and erased["done"] and "erasure" in erased and "erasure" not in plain
    return root / "plain", root / "erased"


def test_train_erase_removes_held_out_leakage_and_reads_chance_only_on_its_own_rows(ftoy, runs):
    from d3s.probes import CROSS, probe

    plain, erased = runs
    before, after = probe(str(ftoy), str(plain))["linear"], probe(str(ftoy), str(erased))["linear"]
    b, a, chance = before["validation"], after["validation"], after["chance"]
    assert after["fit"]["validation"]["held_out"] and after["fit"]["validation"]["folds"] == 2
    # before: the critics of a short run left the labels linearly readable across the parts, on held-out rows
    assert b["fg_from_bg"]["top1"] > chance["fg"] + 0.1 and b["bg_from_fg"]["top1"] > chance["bg"] + 0.05
    # after, held out: most of each cross excess gone (measured: 0.288 -> 0.022 and 0.085 -> 0.031), fg_from_fg kept
    for name, label in (("fg_from_bg", "fg"), ("bg_from_fg", "bg")):
        assert a[name]["top1"] - chance[label] <= 0.5 * (b[name]["top1"] - chance[label]), name
    assert abs(a["fg_from_fg"]["top1"] - b["fg_from_fg"]["top1"]) <= CHANCE_SLACK
    assert a["bg_from_bg"]["top1"] > chance["bg"] + 0.2  # what z_bg is for survives the erasure of fg
    # on the rows the erasers were fitted on, the linear cross probes read chance by construction, and say so
    own = probe(str(ftoy), str(erased), fit_split="train")["linear"]
    assert abs(own["validation"]["fg_from_bg"]["top1"] - chance["fg"]) <= 0.005
    assert abs(own["validation"]["bg_from_fg"]["top1"] - chance["bg"]) <= 0.005
    assert own["fit"]["validation"]["held_out"] is False and "rows the model was fitted on" in own["fit"]["validation"]["text"]

    # the run's report: the same held-out cross probes before and after, MLP ones too; no probe.json (d3s probe's)
    report = json.loads((erased / "erasure.json").read_text())
    for mine, theirs in ((report["probes"]["before"]["linear"], before), (report["probes"]["after"]["linear"], after)):
        assert set(mine["validation"]) == set(CROSS) and mine["fit"]["validation"]["held_out"]
        assert {k: mine["validation"][k]["top1"] for k in CROSS} == pytest.approx({k: theirs["validation"][k]["top1"] for k in CROSS})
    assert set(report["probes"]["after"]["mlp"]["validation"]) == set(CROSS) and not (erased / "probe.json").exists()
    # held out, a complete eraser's label is still read a little over chance: the report warns, naming the rows per class
    assert report["rows_per_class"] == {"fg": 100, "bg": 400}
    assert any("still reads bg from z_fg" in w and "400 rows per bg class" in w for w in report["warnings"]), report.get("warnings")
    # on the fitted split the guarantee is exact: every class has the same mean of the erased part
    for cc in report["cross_covariance"].values():
        assert cc["before"] > 1e-2 and cc["after"] < 1e-6
    assert report["z_fg"] == {"erases": "bg", "rank": 4, "dim": 96}  # 5 bg classes: rank 4 at most
    assert (report["fg_classes"], report["bg_classes"]) == (20, 5)  # so a reader can tell whether an eraser is complete
    assert report["z_bg"]["rank"] <= 19
    done = json.loads((erased / "done.json").read_text())
    assert done["val_fg_head"] == pytest.approx(report["heads"]["after"]["fg_head"], abs=1e-4)
    assert done["erasure"]["heads_before"] == report["heads"]["before"] and done["erasure"]["seconds"] > 0


def test_stored_eraser_is_the_package_eraser(tmp_path):
    from concept_erasure import LeaceEraser, LeaceFitter

    from d3s.erase import fit_eraser

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    x = torch.randn(600, 10, generator=g) + torch.randn(4, 10, generator=g)[y]  # class means differ
    onehot = torch.nn.functional.one_hot(y, 4).double()
    package = LeaceFitter.fit(x.double(), onehot).eraser
    streamed = fit_eraser(x, y, 4, batch_size=128, progress=False)  # ours: LeaceFitter.update on batches
    batch = torch.randn(7, 10, generator=g)
    torch.testing.assert_close(streamed(batch.double()), package(batch.double()), atol=1e-9, rtol=1e-9)

    model = FeatureDisentangler(12, SHAPES, TEXTURES, fg_dim=10, bg_dim=2, neck="linear")
    model.set_erasers(package, None, {"split": "train", "rows": 600})
    assert model.z_fg_eraser.rank == 3 and model.z_bg_eraser.rank == 0
    torch.testing.assert_close(model.z_fg_eraser(batch), package(batch.double()).float(), atol=1e-6, rtol=1e-6)
    z = torch.randn(7, 12, generator=g)
    out = model.erase(z)
    assert torch.equal(out[:, 10:], z[:, 10:])  # a part without an eraser is left as it is
    # the fg head with the eraser folded in (the timm copy's classifier) answers as the head on the erased z_fg
    w, b = model.fg_head_on_z_fg()
    torch.testing.assert_close(z[:, :10] @ w.T + b, model.fg_head(out[:, :10]), atol=1e-5, rtol=1e-5)

    # directions the package zeroed (singular values under svd_tol) are not stored: the same map at its real rank
    flat = LeaceEraser.fit(x.double(), torch.zeros_like(onehot))
    model.set_erasers(flat, None)
    assert flat.proj_left.shape[1] == 4 and model.z_fg_eraser.rank == 0
    assert torch.equal(model.erase(z), z)


def test_erasers_survive_save_and_load_and_other_labels_are_refused(runs, ftoy, tmp_path, capsys):
    from d3s.probes import export_features

    plain, erased = runs
    model = FeatureDisentangler.from_pretrained(str(erased), strict=True)  # config.json records every buffer's size
    raw, features = load_disentangler(str(plain)), torch.randn(5, 128)
    with torch.no_grad():
        z, z_raw = model(features), raw(features)
        expected = torch.cat([model.z_fg_eraser(z_raw[:, :96]), model.z_bg_eraser(z_raw[:, 96:])], 1)
    torch.testing.assert_close(z, expected)  # the same weights, with the erasers applied
    assert not torch.allclose(z, z_raw)

    # `d3s features` exports the erased parts
    arrays = export_features(str(ftoy), str(erased), "validation", str(tmp_path / "val.npz"))
    plain_arrays = export_features(str(ftoy), str(plain), "validation", str(tmp_path / "plain.npz"))
    with torch.no_grad():
        again = model.erase(torch.cat([torch.from_numpy(plain_arrays["z_fg"]), torch.from_numpy(plain_arrays["z_bg"])], 1))
    np.testing.assert_allclose(arrays["z_fg"], again[:, :96].numpy(), atol=1e-5)
    np.testing.assert_allclose(arrays["z_bg"], again[:, 96:].numpy(), atol=1e-5)

    # erasers fitted on other labels, or a config.json recording erasers its weights do not hold: one line, exit 2
    config = json.loads((erased / "config.json").read_text())
    other = tmp_path / "other"
    shutil.copytree(erased, other)
    config["erasure"]["bg_names"] = [f"bg{i}" for i in range(4)] + ["snow"]
    (other / "config.json").write_text(json.dumps(config))
    lacking = tmp_path / "lacking"
    shutil.copytree(erased, lacking)
    shutil.copy(plain / "model.safetensors", lacking / "model.safetensors")
    for folder, message in ((other, "LEACE erasers were fitted on 5 bg labels that are not the model's 5 bg classes (e.g. ['snow']"),
                            (lacking, "records LEACE erasers that its model.safetensors does not hold")):
        with pytest.raises(ModelError, match="cannot load checkpoint"):
            load_disentangler(str(folder))
        code, err = run_main(capsys, "features", "--data", str(ftoy), "--checkpoint", str(folder), "--out", str(tmp_path / "x.npz"))
        assert code == 2 and len(err) == 1 and err[0].startswith("d3s features: error:") and message in err[0], err


def test_erase_cli_in_place_and_to_a_new_folder(runs, ftoy, tmp_path, capsys):
    from d3s.cli import main

    plain, erased = runs
    ckpt = tmp_path / "ckpt"
    shutil.copytree(plain, ckpt)
    (ckpt / "spurious.json").write_text("{}")
    (ckpt / "probe.json").write_text("{}")
    assert main(["erase", "--checkpoint", str(ckpt), "--data", str(ftoy), "--probe", "none", "--no-progress", "--parts", "both"]) == 0
    out = capsys.readouterr().out
    assert "z_fg (96): bg erased, rank 4" in out and "spurious.json (measured before erasure) renamed spurious.before_erasure.json" in out
    for name in ("spurious", "probe"):  # results of the model before erasure no longer describe it (no probes ran now)
        assert not (ckpt / f"{name}.json").exists() and (ckpt / f"{name}.before_erasure.json").exists()
    assert not list(ckpt.glob(".erase-*")) and not list(ckpt.glob(".*.tmp"))  # nothing left of the atomic writes
    # the same erasers as `train --erase` fitted on the same model and split
    a, b = load_disentangler(str(ckpt)), load_disentangler(str(erased))
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, atol=1e-6, rtol=1e-5)

    # --parts z_fg into a new folder: z_bg and the bg head read what they read before
    assert main(["erase", "--checkpoint", str(plain), "--data", str(ftoy), "--probe", "none", "--parts", "z_fg", "--out",
                 str(tmp_path / "fg_only")]) == 0
    only = load_disentangler(str(tmp_path / "fg_only"))
    assert only.erasure["z_bg"] == {"erases": None, "rank": 0} and only.erasure["z_fg"]["rank"] == 4
    x = torch.randn(6, 128)
    with torch.no_grad():
        assert torch.equal(only(x)[:, 96:], load_disentangler(str(plain))(x)[:, 96:])
    assert not (plain / "erasure.json").exists()  # --out leaves the source alone


def test_rerunning_a_finished_run_with_erase_only_adds_the_erasers(ftoy, tmp_path, capsys):
    from d3s.cli import main

    args = ["train", "--data", str(ftoy), "--out", str(tmp_path / "run"), "--iters", "5", "--no-progress"]
    assert main(args + ["--no-erase"]) == 0
    weights = load_disentangler(str(tmp_path / "run")).state_dict()
    assert main(args + ["--erase", "--erase-parts", "z_fg", "--erase-probe", "none"]) == 0  # not part of the run's identity
    assert "with LEACE erasers (erasure.json)" in capsys.readouterr().out
    model = load_disentangler(str(tmp_path / "run"))
    assert model.erasure["z_fg"]["rank"] == 4 and model.erasure["z_bg"] == {"erases": None, "rank": 0}
    for k, v in weights.items():  # the trained weights unchanged: no step was taken again
        assert torch.equal(model.state_dict()[k], v), k
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 1  # log every 10: the last step only


def test_erasers_travel_to_the_image_extractor_the_timm_copy_and_the_card(tiny_toy, tmp_path):
    """A frozen-features checkpoint (linear neck) erased on image data: fitted through its backbone, stored in the
    neck-and-heads checkpoint, and there in to_extractor, `d3s features` and the published timm classifier."""
    import timm
    from timm.models import save_for_hf

    from d3s.cli import main
    from d3s.hub_checkpoint import stage_checkpoint
    from d3s.probes import export_features

    torch.manual_seed(0)
    folder = tmp_path / "test_resnet"
    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(folder), safe_serialization=True)
    backbone = f"local-dir:{folder}"
    model = FeatureDisentangler(96, SHAPES, TEXTURES, neck="linear", backbone=backbone)
    with torch.no_grad():
        model.neck.affine.weight.add_(0.1 * torch.randn(96, 96))
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["erase", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tiny_toy), "--probe", "linear", "--no-progress"]) == 0
    stored = load_disentangler(str(tmp_path / "ckpt"))  # still the neck and heads alone
    assert stored.erasure["rows"] == 72 and stored.z_bg_eraser.rank == 2  # 3 fg classes

    extractor = load_extractor(str(tmp_path / "ckpt"))  # to_extractor: the backbone, then neck, erasers, heads
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(extractor(images), stored(extractor.backbone(extractor.normalize(images))), atol=1e-5, rtol=1e-5)
    arrays = export_features(str(tiny_toy), str(tmp_path / "ckpt"), "train", str(tmp_path / "train.npz"))
    for part, label, k in (("z_fg", "bg", 3), ("z_bg", "fg", 3)):  # the fitted split: class means equal
        x, y = torch.from_numpy(arrays[part]).double(), torch.from_numpy(arrays[label])
        means = torch.stack([x[y == c].mean(0) for c in range(k)])
        assert (means - x.mean(0)).abs().max() < 1e-4, part

    # Table 2 of the erased checkpoint is `d3s probe`'s (erasure writes erasure.json alone), then publishing
    assert not (tmp_path / "ckpt" / "probe.json").exists()
    assert main(["probe", "--data", str(tiny_toy), "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "ckpt" / "probe.json")]) == 0
    stage_checkpoint(tmp_path / "ckpt", tmp_path / "repo", "someone/erased")
    net = timm.create_model(f"local-dir:{tmp_path / 'repo' / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(extractor.normalize(images)), extractor(images, with_heads=True)[1], atol=1e-4, rtol=1e-4)
    card = (tmp_path / "repo" / "README.md").read_text()
    assert "## Linear concept erasure (LEACE)" in card and "folded into its classifier" in card
    assert "| linear probe bg_from_fg (chance 0.333) |" in card and (tmp_path / "repo" / "erasure.json").exists()
    assert "measured on rows the erasers never saw" in card and "cross-fitted on validation" in card


def test_bad_checkpoints_and_splits_get_one_line(tiny_toy, tmp_path, capsys):
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(tmp_path / "timm"), safe_serialization=True)
    model = FeatureDisentangler(96, SHAPES, TEXTURES, neck="linear", backbone=f"local-dir:{tmp_path / 'timm'}")
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "note.txt").write_text("something else")
    fg_only = fg_only_copy(tiny_toy, tmp_path / "fg_only")
    erase = ("erase", "--data", str(tiny_toy), "--probe", "none")
    cases = [
        ((*erase, "--checkpoint", str(tmp_path / "timm")), "has no fg and bg class names in its config.json"),
        (("erase", "--data", str(fg_only), "--checkpoint", str(tmp_path / "ckpt")), "(train) has no 'bg' labels"),
        ((*erase, "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "full")), "exists and is not an empty folder"),
        ((*erase, "--checkpoint", str(tmp_path / "nothing")), "cannot load checkpoint"),
        ((*erase, "--checkpoint", str(tmp_path / "ckpt"), "--split", "test"), "has no 'test' split"),
    ]
    for args, message in cases:
        code, err = run_main(capsys, *args)
        assert code == 2 and len(err) == 1 and err[0].startswith("d3s erase: error:") and message in err[0], (args, err)
    assert not (tmp_path / "ckpt" / "erasure.json").exists()


def test_disentangling_runs_erase_by_default_and_baselines_do_not(ftoy, tmp_path, capsys):
    """`d3s train` with no --erase/--no-erase: erasers for wasserstein and adversarial with their critics on; none for
    the ablation (--critic-weight 0: the reference leakage is measured against) nor for a baseline; --no-erase wins."""
    from d3s.cli import build_parser, main
    from d3s.train import erases_by_default

    assert erases_by_default("wasserstein", {"critic_weight": 2.5}) and erases_by_default("adversarial", {"critic_weight": 1.0})
    assert not erases_by_default("wasserstein", {"critic_weight": 0}) and not erases_by_default("erm", {})
    parse = build_parser().parse_args
    assert [parse(["train", "--data", "d", "--out", "o", *flag]).erase for flag in ([], ["--erase"], ["--no-erase"])] == [None, True, False]

    base = ["train", "--data", str(ftoy), "--iters", "5", "--no-progress", "--fg-dim", "96", "--bg-dim", "32"]
    assert main(base + ["--out", str(tmp_path / "default")]) == 0
    out = capsys.readouterr().out
    assert "erasure: LEACE erasers fitted on the train split" in out and "with LEACE erasers (erasure.json)" in out
    report = json.loads((tmp_path / "default" / "erasure.json").read_text())
    assert set(report["probes"]["after"]) == {"linear"}  # the default probes around erasure: linear only (cheap)
    assert load_disentangler(str(tmp_path / "default")).erasure["z_fg"]["rank"] == 4
    for name, flags in (("ablation", ["--critic-weight", "0"]), ("off", ["--no-erase"])):
        assert main(base + ["--out", str(tmp_path / name), *flags]) == 0
        assert "erasure:" not in capsys.readouterr().out and not (tmp_path / name / "erasure.json").exists()
        assert load_disentangler(str(tmp_path / name)).erasure is None


def test_auto_leaves_out_an_eraser_that_would_empty_its_part(ftoy, tmp_path, capsys):
    """20 fg classes over a 4-feature z_bg: the fg class means span all of it, so erasing fg leaves z_bg constant and the
    bg head at chance. --parts auto (the default) leaves that eraser out and says why; --parts both keeps it."""
    from d3s.cli import main

    run = tmp_path / "narrow"
    assert main(["train", "--data", str(ftoy), "--out", str(run), "--iters", "150", "--no-progress", "--fg-dim", "124",
                 "--bg-dim", "4", "--no-erase"]) == 0
    capsys.readouterr()
    assert main(["erase", "--checkpoint", str(run), "--data", str(ftoy), "--out", str(tmp_path / "auto"), "--probe", "none"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "auto" / "erasure.json").read_text())
    assert report["z_bg"]["erases"] is None and report["z_fg"] == {"erases": "bg", "rank": 4, "dim": 124}
    assert len(report["left_out"]) == 1 and report["left_out"][0].startswith("z_bg: fg not erased") and "z_bg: fg not erased" in out
    assert report["heads"]["after"]["bg_head"] == report["heads"]["before"]["bg_head"] > 0.5
    assert main(["erase", "--checkpoint", str(run), "--data", str(ftoy), "--out", str(tmp_path / "both"), "--probe", "none",
                 "--parts", "both"]) == 0
    both = json.loads((tmp_path / "both" / "erasure.json").read_text())
    assert both["z_bg"]["rank"] == 4 and "left_out" not in both and both["heads"]["after"]["bg_head"] < 0.3  # constant: chance 0.2


def test_auto_may_leave_both_erasers_out_and_says_so(tmp_path, capsys):
    """The README tour's toy (20 fg x 5 bg over 64 features, z_fg 56 / z_bg 8) after a short run: both erasers cost
    their heads over 0.05 on train, so the defaults save the extractor without erasers and say why (not a crash)."""
    from d3s.cli import main
    from d3s.toy import FeatureToyConfig, write_feature_toy

    toy = tmp_path / "toy"
    write_feature_toy(FeatureToyConfig(out=str(toy), fg_classes=20, bg_classes=5, dim=64, train_per_pair=20, val_per_pair=8))
    assert main(["train", "--data", str(toy), "--out", str(tmp_path / "wd"), "--iters", "600", "--warmup", "100",
                 "--critic-ramp", "200", "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "wd" / "erasure.json").read_text())
    assert report["z_fg"] == {"erases": None, "rank": 0, "dim": 56} and report["z_bg"] == {"erases": None, "rank": 0, "dim": 8}
    assert [line.split(":")[0] for line in report["left_out"]] == ["z_fg", "z_bg"]
    assert "without LEACE erasers: both cost their heads too much" in out and load_disentangler(str(tmp_path / "wd")).erasure is None
