"""d3s bgchallenge (issue 11, part 1): known answers for a timm model, a CLIP model and a d3s extractor; resume; bad input.

The test folder (conftest.write_bgchallenge) is painted in six colours; each model here is a real model of
its kind (timm's test_resnet, the tiny CLIP through its zero-shot head, a d3s extractor through its fg head)
whose weights are set so that it answers with the class of the colour covering most of the image. Every
accuracy, the BG-Gap and the adversarial search then have values known from the folder's design.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BG_COLOURS, BG_EXPECTED, BG_EXPECTED_SAFE, BG_READS_AS, write_bgchallenge
from d3s import cli
from d3s.bgchallenge import CLASS_FOLDERS, VARIATIONS, BgChallengeConfig, in9_of_imagenet, run_bgchallenge
from d3s.classifiers import resolve_classifier
from d3s.plots import BGCHALLENGE_TITLE

SHIFT = 4.0  # keeps the colour channels positive through the ResNet's ReLUs


def _protos(mean, std) -> dict[int, torch.Tensor]:
    """Each colour, normalised as the model normalises it, keyed by the ImageNet class it reads as."""
    return {BG_READS_AS[name]: (torch.tensor(rgb) / 255 - torch.tensor(mean)) / torch.tensor(std) for name, rgb in BG_COLOURS.items()}


@torch.no_grad()
def colour_resnet(net: torch.nn.Module) -> torch.nn.Module:
    """timm's test_resnet as a mean-colour encoder: features 0..2 = the mean normalised colour + SHIFT, the rest 0.

    The stem and shortcut convolutions pass the three colour channels through, every other convolution
    is zero (so each residual branch adds nothing), batch norms are identities; pooling then averages.
    """
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.weight.zero_()
            if name.startswith("conv1.") or name.endswith("downsample.1"):
                for c in range(3):
                    mod.weight[c, c, mod.kernel_size[0] // 2, mod.kernel_size[1] // 2] = 1.0
        elif isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.zero_()
            mod.running_var.fill_(1 - mod.eps)
            mod.weight.fill_(1.0)
            mod.bias.zero_()
    net.conv1[1].bias[:3] = SHIFT
    return net


@torch.no_grad()
def nearest_colour_head(linear: torch.nn.Linear, protos: dict[int, torch.Tensor]) -> None:
    """Logits -|f - p|^2 (+|f|^2, the same for every class) for each colour's class; every other class far below."""
    linear.weight.zero_()
    linear.bias.fill_(-1e4)
    for cls, p in protos.items():
        linear.weight[cls, :3] = 2 * (p + SHIFT)
        linear.bias[cls] = -((p + SHIFT) ** 2).sum()


@torch.no_grad()
def colour_clip(zs, data_config: dict) -> torch.nn.Module:
    """The tiny CLIP's image tower as a colour-direction encoder, and a zero-shot head of the colours' directions.

    Patch tokens carry (m, -m) for the patch's mean normalised colour m (zero-mean, so the layer norms keep
    its direction); the first block's attention (q = k = 0, v = identity) writes the mean patch direction
    into the class token; everything else is an identity.
    """
    v = zs.clip.visual
    for p in v.parameters():
        p.zero_()
    for mod in v.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.weight.fill_(1.0)
    k = v.conv1.kernel_size[0]
    for c in range(3):
        v.conv1.weight[c, c] = 1 / k**2
        v.conv1.weight[3 + c, c] = -1 / k**2
    width = v.conv1.out_channels
    first = v.transformer.resblocks[0].attn
    first.in_proj_weight[2 * width :] = torch.eye(width)
    first.out_proj.weight.copy_(torch.eye(width))
    v.proj.copy_(torch.eye(width, v.proj.shape[1]))
    head = torch.zeros_like(zs.head)
    for cls, p in _protos(data_config["mean"], data_config["std"]).items():
        d = torch.cat([p, -p])
        head[:6, cls] = d / d.norm()
    zs.head.copy_(head)
    return zs


def _with_weights(spec, fix):
    """The spec, its model built as the registry builds it, then its weights set by ``fix(model, data_config)``."""
    build = spec._builder
    return replace(spec, _builder=lambda device: fix(build(device), spec.data_config))


def _timm_colour(model, data_config):
    colour_resnet(model)
    nearest_colour_head(model.fc, _protos(data_config["mean"], data_config["std"]))
    return model


@pytest.fixture(scope="module")
def colour_extractor(tmp_path_factory):
    """A d3s checkpoint (test_resnet backbone, 32 px) whose fg head reads colours; its bg head answers otherwise."""
    from d3s.labels import imagenet_classes
    from d3s.models import DisentangledExtractor
    from d3s.prompts import BACKGROUNDS

    ext = DisentangledExtractor("test_resnet", [c.name for c in imagenet_classes()], list(BACKGROUNDS), image_size=32)
    colour_resnet(ext.backbone)
    nearest_colour_head(ext.fg_head, _protos(ext.mean, ext.std))
    with torch.no_grad():
        ext.bg_head.bias.fill_(1.0)
    path = tmp_path_factory.mktemp("ckpt") / "colour-extractor"
    ext.save_pretrained(path)
    return path


def _check_known_answers(result: dict) -> None:
    for v in VARIATIONS:
        got = result["variations"][v]
        assert got["n"] == 9 and got["top1"] == pytest.approx(sum(BG_EXPECTED[v]) / 9), (result["model"], v)
        assert list(got["per_class"].values()) == [float(x) for x in BG_EXPECTED[v]], (result["model"], v)
    assert result["bg_gap"] == pytest.approx(1 / 9)
    adv = result["adversarial"]
    assert (adv["n"], adv["vulnerable"], adv["accuracy"]) == (9, 7, pytest.approx(2 / 9))
    assert list(adv["per_class"].values()) == [float(x) for x in BG_EXPECTED_SAFE]
    # batch 9: all 9 foregrounds try the first background (bird-coloured: it fools the 7 vulnerable ones), then the
    # two safe ones try the other 8, 4 at a time: 9 + 8 + 8 composites instead of 81
    assert adv["composites"] == 25
    fgs = adv["foregrounds"]
    assert [f["fooled_by"] for f in fgs[:2]] == [None, None] and [f["tried"] for f in fgs] == [9, 9] + [1] * 7
    assert {f["fooled_by"] for f in fgs[2:]} == {f"only_bg_t/val/{CLASS_FOLDERS[0]}/n00000000_1.JPEG"}
    assert fgs[4]["image"] == f"original/val/{CLASS_FOLDERS[4]}/n00000004_1.JPEG"


# The challenge's IN-9 classes by ImageNet index, written out from its class list (the Backgrounds Challenge paper's
# in_to_in9 mapping), independently of d3s.labels: the whole 1000 -> 9 table is checked against it.
IN9_BY_INDEX = {
    0: [*range(151, 171), *range(173, 269)],
    1: [*range(7, 25), *range(87, 101), *range(127, 147)],
    2: [407, 408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 586, 603, 609, 612, 627, 656, 661, 665, 670, 671,
        675, 690, 705, 717, 734, 751, 757, 791, 802, 803, 817, 820, 829, 847, 864, 866, 867, 870, 880],
    3: [*range(33, 69)],
    4: [*range(269, 281), *range(286, 300), *range(356, 363), 387, 388],
    5: [*range(300, 327)],
    6: [401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684, 687, 699, 776, 822,
        875, 881, 889],
    7: [*range(365, 385)],
    8: [*range(0, 7), *range(389, 398)],
}


def test_in9_rule_is_the_superclass_of_the_top1_class():
    """The whole 1000 -> 9 table, entry by entry: 370 mapped classes (116 dogs ... 16 fish), the other 630 unmapped."""
    expected = np.full(1000, -1)
    for k, members in IN9_BY_INDEX.items():
        assert (expected[members] == -1).all()  # the classes are disjoint
        expected[members] = k
    table = in9_of_imagenet()
    assert table.tolist() == expected.tolist()
    assert (table >= 0).sum() == 370 and (table == -1).sum() == 630
    assert [int((table == k).sum()) for k in range(9)] == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    assert table[281] == -1  # tabby: no IN-9 class, so a carnivore read as tabby is wrong


def test_adversarial_search_finds_what_brute_force_finds():
    """Whatever the batch size (pool smaller or larger than the foregrounds), the search marks exactly the foregrounds
    that some background fools, names one that does, and evaluates no more composites than brute force."""
    from d3s.bgchallenge import adversarial_search

    rng = np.random.default_rng(0)
    n_fg, n_bg = 13, 17
    fgs, bgs = rng.integers(0, 256, (n_fg, 3, 2, 2), dtype=np.uint8), rng.integers(0, 256, (n_bg, 3, 2, 2), dtype=np.uint8)
    alphas = rng.choice([0, 255], (n_fg, 1, 2, 2)).astype(np.uint8)
    labels = rng.integers(0, 9, n_fg)
    answers = torch.tensor([207, 10, 407, 33, 269, 300, 401, 365, 0, 281])  # IN-9 classes 0..8, then tabby (none)

    def logits_of(x):  # the ImageNet class read from the mean red value, in ten bins
        out = torch.zeros(len(x), 1000)
        out[torch.arange(len(x)), answers[(x[:, 0].mean(dim=(1, 2)) / 25.6).long().clamp(0, 9)]] = 1.0
        return out

    def answer(i, j):
        a = alphas[i].astype(float) / 255
        x = torch.tensor(bgs[j] * (1 - a) + fgs[i] * a)[None].float()
        return int(in9_of_imagenet()[int(logits_of(x).argmax())])

    alphas[:4] = 255  # these four cover the whole image: no background changes the answer...
    labels[:3] = [answer(i, 0) for i in range(3)]  # ...right for three of them, so those are safe
    wrong = np.array([[answer(i, j) != labels[i] for j in range(n_bg)] for i in range(n_fg)])
    assert 0 < wrong.any(axis=1).sum() < n_fg  # some foregrounds are safe, some are not
    for batch_size in (1, 4, 64):
        r = adversarial_search(logits_of, fgs, alphas, labels, bgs, batch_size=batch_size)
        assert ((r["fooled_by"] >= 0) == wrong.any(axis=1)).all(), batch_size
        assert all(wrong[i, j] for i, j in enumerate(r["fooled_by"]) if j >= 0)
        assert (r["tried"][r["fooled_by"] < 0] == n_bg).all() and r["composites"] <= n_fg * n_bg


def test_known_answers_for_timm_clip_and_a_d3s_extractor(bg_challenge, colour_extractor, tmp_path):
    specs = [_with_weights(resolve_classifier("test_resnet", pretrained=False), _timm_colour),
             _with_weights(resolve_classifier("clip:tiny"), colour_clip),
             resolve_classifier(f"d3s:{colour_extractor}")]
    logs = []
    summary = run_bgchallenge(BgChallengeConfig(data=str(bg_challenge), out=str(tmp_path), batch_size=9, workers=1,
                                                progress=False), specs=specs, log=logs.append)
    assert summary["evaluated"] == [s.name for s in specs] and not summary["failed"]
    # three preprocessing settings (160 px bilinear, 64 px bicubic, 32 px bicubic): one decode each, no crop
    assert [line.split(" in ")[0] for line in logs if line.startswith("decoded")] == [
        "decoded 81 images at 160x160 (bilinear, crop 1.0)", "decoded 81 images at 64x64 (bicubic, crop 1.0)",
        "decoded 81 images at 32x32 (bicubic, crop 1.0)"]
    out = tmp_path / "bgchallenge"
    for spec in specs:
        (path,) = [p for p in (out / "models").glob("*.json") if json.loads(p.read_text())["model"] == spec.name]
        _check_known_answers(json.loads(path.read_text()))
    rows = {r["model"]: r for r in json.loads((out / "summary.json").read_text())["models"]}
    assert set(rows) == {s.name for s in specs} and rows["clip:tiny"]["kind"] == "clip"
    assert rows[f"d3s:{colour_extractor}"]["family"] == "d3s extractor (fg head)"
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[3:] == [*VARIATIONS, "bg_gap", "adversarial", "adversarial_n", "adversarial_se", "precision"]
    assert len(csv_lines) == 4
    assert "| clip:tiny | 55.6 | 22.2 | 33.3 | 33.3 | 33.3 | 44.4 | 33.3 | 22.2 | 11.1 | 22.2 | fp32 |" in (out / "table.md").read_text()
    assert {r["precision"] for r in rows.values()} == {"fp32"} and summary["precision_note"] is None  # no flag: fp32
    with Image.open(out / "accuracy.png") as im:
        assert im.text["Title"] == BGCHALLENGE_TITLE and im.size[0] > 300


def test_cli_rerun_with_one_more_model_evaluates_only_that_one(bg_challenge, colour_extractor, tmp_path, capsys):
    """Acceptance 1 through the command: the d3s extractor's known row, then one more model added to the same folder."""
    base = ["bgchallenge", "--data", str(bg_challenge), "--checkpoint", str(colour_extractor), "--no-pretrained",
            "--out", str(tmp_path), "--quiet", "--batch-size", "9", "--workers", "1"]
    assert cli.main(base + ["--models", "test_resnet"]) == 0
    first = capsys.readouterr().out
    assert f"| d3s:{colour_extractor} | 55.6 | 22.2 | 33.3 | 33.3 | 33.3 | 44.4 | 33.3 | 22.2 | 11.1 | 22.2 |" in first
    assert "evaluated now: 2, reused: 0, failed: 0" in first
    models = tmp_path / "bgchallenge" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.glob("*.json")}
    assert cli.main(base + ["--models", "test_resnet,clip:tiny"]) == 0
    second = capsys.readouterr().out
    assert f"already evaluated (results reused): test_resnet, d3s:{colour_extractor}" in second
    assert "evaluated now: 1, reused: 2, failed: 0" in second
    decoded = [line for line in second.splitlines() if line.startswith("decoded ")]
    assert len(decoded) == 1 and decoded[0].endswith("shared by 1 model(s): clip:tiny")
    after = {p.name: p.stat().st_mtime_ns for p in models.glob("*.json")}
    from d3s.benchmark import result_paths

    assert {k: after[k] for k in before} == before and set(after) - set(before) == {result_paths(models.parent, "clip:tiny")[0].name}
    assert len(json.loads((tmp_path / "bgchallenge" / "summary.json").read_text())["models"]) == 3

    # the app's Benchmark tab shows the table and the plot of this folder (which has no `d3s benchmark` results)
    import app
    from d3s.hosting import Catalog

    catalog = Catalog.from_entries([], [f"run={tmp_path}", f"inner={tmp_path / 'bgchallenge'}"])
    load_benchmark, load_bgchallenge, _ = app.make_benchmark_fns(app.Settings(catalog=catalog))
    note, table, plot = load_bgchallenge("run")
    with Image.open(tmp_path / "bgchallenge" / "accuracy.png") as png:
        assert "Backgrounds Challenge" in note and plot.size == png.size
    row = table.set_index("model").loc[f"d3s:{colour_extractor}"]
    assert list(row) == [55.6, 22.2, 33.3, 33.3, 33.3, 44.4, 33.3, 22.2, 11.1, 22.2] and len(table) == 3
    assert load_benchmark("run")[:5] == (None,) * 5
    assert "No Backgrounds Challenge results" in load_bgchallenge("inner")[0]


def test_adversarial_limit_and_skip(bg_challenge, colour_extractor, tmp_path):
    name = f"d3s:{colour_extractor}"
    config = BgChallengeConfig(data=str(bg_challenge), out=str(tmp_path), models=[name], adversarial_limit=0, workers=1,
                               progress=False, plots=False)
    r = run_bgchallenge(config, log=lambda s: None)
    assert r["models"][0]["adversarial"] is None and r["models"][0]["original"] == pytest.approx(5 / 9)
    assert "| - |" in (tmp_path / "bgchallenge" / "table.md").read_text()
    # another setting is another result: the model is evaluated again, not reused; all 9 foregrounds is a census
    r = run_bgchallenge(replace(config, adversarial_limit=9), log=lambda s: None)
    assert r["evaluated"] == [name] and r["models"][0]["adversarial"] == pytest.approx(2 / 9)
    assert r["models"][0]["adversarial_se"] is None
    # a sample of 3 of the 9 (one per class drawn): an estimate, with the seed, the list and a standard error recorded
    r = run_bgchallenge(replace(config, adversarial_limit=3, adversarial_seed=5), log=lambda s: None)
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "bgchallenge" / "models").glob("*.json")]
    adv = result["adversarial"]
    assert adv["sampled"] and adv["seed"] == 5 and adv["n"] == 3 and len(adv["foregrounds"]) == 3
    assert result["data"]["adversarial_seed"] == 5 and r["models"][0]["adversarial_se"] == adv["standard_error"]


def test_a_limited_search_is_a_sample_stratified_by_class():
    """--adversarial-limit 40 on nine classes of 450 masks (the challenge's): every class in proportion, the same
    foregrounds for the same seed, others for another seed; an unequal folder is shared out by its class sizes."""
    from d3s.bgchallenge import stratified_sample, stratified_standard_error

    sizes = [450] * 9
    picks = stratified_sample(sizes, 40, seed=0)
    assert sorted(len(p) for p in picks) == [4] * 5 + [5] * 4 and sum(len(p) for p in picks) == 40
    assert all(len(set(p.tolist())) == len(p) and p.max() < 450 for p in picks)
    assert all((a == b).all() for a, b in zip(picks, stratified_sample(sizes, 40, seed=0)))
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(picks, stratified_sample(sizes, 40, seed=1)))
    assert [len(p) for p in stratified_sample([300, 100], 8, seed=0)] == [6, 2]  # in proportion
    assert [len(p) for p in stratified_sample([3, 2], None)] == [3, 2]  # no limit: all
    firsts = {tuple(len(p) for p in stratified_sample([5] * 9, 1, seed)) for seed in range(20)}
    assert len(firsts) > 3  # one foreground of nine classes: the class is drawn too, not always the first
    # the standard error: zero for a census, the stratified formula for a sample
    labels = np.repeat(np.arange(2), 4)
    safe = np.array([1, 1, 0, 0, 1, 1, 1, 0], bool)
    assert stratified_standard_error(safe, labels, {0: 4, 1: 4}) == 0.0
    expected = np.sqrt(sum(0.5 ** 2 * (1 - 4 / 40) * p * (1 - p) / 3 for p in (0.5, 0.75)))
    assert stratified_standard_error(safe, labels, {0: 40, 1: 40}) == pytest.approx(expected)


def _error(capsys, *args) -> str:
    assert cli.main(["bgchallenge", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("d3s bgchallenge: error: "), err
    return err[0]


def test_bad_layouts_get_one_line_and_exit_2(tmp_path, capsys):
    root = write_bgchallenge(tmp_path / "bg", size=8)
    out = ["--out", str(tmp_path / "r"), "--models", "test_resnet", "--no-pretrained"]
    (root / "mixed_next" / "val").rename(root / "mixed_next" / "train")
    assert "mixed_next/val missing" in _error(capsys, "--data", str(root), *out)
    (root / "mixed_next" / "train").rename(root / "mixed_next" / "val")
    (root / "no_fg" / "val" / CLASS_FOLDERS[8]).rename(root / "no_fg" / "val" / "08_shark")
    msg = _error(capsys, "--data", str(root), *out)
    assert "no_fg/val has the class folders [" in msg and "08_shark" in msg and "expected the 9 IN-9 folders 00_dog" in msg
    (root / "no_fg" / "val" / "08_shark").rename(root / "no_fg" / "val" / CLASS_FOLDERS[8])
    np.save(root / "fg_mask" / "val" / CLASS_FOLDERS[0] / "n00000000_1.npy", np.zeros((5, 5)))
    assert "a mask must be a 2-D array of the image's height and width" in _error(capsys, "--data", str(root), *out)
    no_masks = write_bgchallenge(tmp_path / "bg2", size=8, masks=False)
    assert "fg_mask/val missing" in _error(capsys, "--data", str(no_masks), *out)
    assert "is not a folder" in _error(capsys, "--data", str(tmp_path / "nowhere"), *out)
    assert "not the 1000 ImageNet-1k classes" in _error(capsys, "--data", str(root), *out[:2], "--models", "",
                                                        "--checkpoint", str(_toy_checkpoint(tmp_path)))


def _toy_checkpoint(tmp_path):
    from d3s.models import DisentangledExtractor

    ext = DisentangledExtractor("test_resnet", ["circle", "square"], ["plain", "dots"], image_size=16)
    ext.save_pretrained(tmp_path / "toy-ckpt")
    return tmp_path / "toy-ckpt"


def test_a_d3s_checkpoint_resolves_to_its_own_preprocessing_and_weights(colour_extractor, tmp_path):
    """`d3s:<checkpoint>` in the registry (benchmark and bgchallenge alike): the extractor's size, bicubic, its mean/std,
    and an identity that changes with its weights, so a retrained checkpoint is not taken for the old one."""
    import shutil

    from d3s.models import DisentangledExtractor

    spec = resolve_classifier(f"d3s:{colour_extractor}")
    assert (spec.kind, spec.extra_data) == ("d3s", True)
    assert spec.data_config == {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                                "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    other = tmp_path / "retrained"
    shutil.copytree(colour_extractor, other)
    model = DisentangledExtractor.from_pretrained(other)
    with torch.no_grad():
        model.fg_head.bias.add_(1.0)
    model.save_pretrained(other)
    assert resolve_classifier(f"d3s:{other}").identity()["weights"] != spec.identity()["weights"]


def test_variations_score_a_subset(bg_challenge, colour_extractor, tmp_path):
    name = f"d3s:{colour_extractor}"
    config = BgChallengeConfig(data=str(bg_challenge), out=str(tmp_path), models=[name], adversarial_limit=0, workers=1,
                               progress=False, plots=False, variations=("original", "mixed_rand"))
    (row,) = run_bgchallenge(config, log=lambda s: None)["models"]
    assert row["original"] == pytest.approx(5 / 9) and row["mixed_rand"] == pytest.approx(3 / 9)
    assert row["only_fg"] is None and row["bg_gap"] is None  # not scored: shown as '-'
    with pytest.raises(Exception, match="--variations takes names among original"):
        run_bgchallenge(replace(config, variations=("mixed_random",)), log=lambda s: None)


def test_a_classifier_of_the_nine_in9_classes_scores_directly(bg_challenge, tmp_path):
    """A 9-output test_resnet whose head reads the design's colours as IN-9 classes (dog 0, bird 1, vehicle 2,
    reptile 3, insect 5; 'tabby', outside IN-9 for an ImageNet classifier, is read as fish, 8), fed with the
    challenge's own preprocessing (IN-9's mean and std). Its answers are the ImageNet colour reader's except where a
    fish image is read as tabby: only the no_fg image of class 8 (tabby over three quarters) becomes right."""
    import timm
    from timm.models import save_for_hf

    from d3s.classifiers import IN9_MEAN, IN9_STD
    from d3s.labels import imagenet_to_in9

    net = timm.create_model("test_resnet", pretrained=False, num_classes=9)
    colour_resnet(net)
    protos = {(imagenet_to_in9().get(cls, 8)): p for cls, p in _protos(IN9_MEAN, IN9_STD).items()}
    nearest_colour_head(net.fc, protos)
    save_for_hf(net, str(tmp_path / "in9-model"), safe_serialization=True)
    name = f"local-dir:{tmp_path / 'in9-model'}"
    summary = run_bgchallenge(BgChallengeConfig(data=str(bg_challenge), out=str(tmp_path / "out"), models="", in9_models=[name],
                                                batch_size=9, workers=1, progress=False, plots=False), log=lambda s: None)
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "bgchallenge" / "models").glob("*.json")]
    assert result["kind"] == "in9" and result["identity"]["data_config"]["mean"] == list(IN9_MEAN)
    expected = {v: list(BG_EXPECTED[v]) for v in VARIATIONS}
    expected["no_fg"][8] = 1
    for v in VARIATIONS:
        assert list(result["variations"][v]["per_class"].values()) == [float(x) for x in expected[v]], v
    assert result["adversarial"]["per_class"] == {k: float(x) for k, x in zip(result["adversarial"]["per_class"], BG_EXPECTED_SAFE)}
    assert summary["models"][0]["bg_gap"] == pytest.approx(1 / 9)
    with pytest.raises(Exception, match="predicts 1000 classes, not the 9 IN-9 classes"):
        run_bgchallenge(BgChallengeConfig(data=str(bg_challenge), out=str(tmp_path / "x"), models="",
                                          in9_models=["test_resnet"], pretrained=False), log=lambda s: None)
