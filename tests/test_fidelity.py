"""Paper fidelity and the defaults a user trusts (issue 11, parts 2, 3, 4 and 7): the benchmark scores the checked
split, one result file per model name, the paper's ResNet-50 weights by default, and the small things a user hits."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO, SYNTH_CLASSES, write_d3s_split, write_photo_folder
from d3s import benchmark as bm
from d3s import cli
from d3s.classifiers import ClassifierSpec, default_model_names

TINY_CONFIG = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
               "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def tiny_spec(name: str) -> ClassifierSpec:
    """A named stand-in (mean colour -> 1000 logits): what is tested is where its results go, not its accuracy."""

    def build(device):
        torch.manual_seed(len(name))
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))

    kind = "clip" if name.startswith("clip:") else "timm"
    return ClassifierSpec(name, kind, "CLIP zero-shot" if kind == "clip" else "supervised CNN", False, TINY_CONFIG, False, {}, build)


# --- parts 2 and 3: the benchmark split by default, one file and one row per model ----------------------------

@pytest.fixture(scope="module")
def checked_splits(tmp_path_factory):
    """`d3s score` (a stand-in zero-shot model named clip:ViT-B-32/openai) then `d3s split`: train, validation and a
    benchmark checked by CLIP ranks (a threshold every image passes, so the counts stay known)."""
    from d3s.curate import Thresholds, score, split

    gen = write_d3s_split(tmp_path_factory.mktemp("gen"), "train", per_cell=2, backgrounds=range(3))

    def zero_shot(images):
        return np.tile(np.arange(1000.0), (len(images), 1))  # class 999 first: class c is ranked 1000 - c...

    zero_shot.model_name = "clip:ViT-B-32/openai"
    score(gen, zero_shot=zero_shot, progress=False)
    out = tmp_path_factory.mktemp("splits") / "d3s"
    report = split(gen, out, fraction=0.5, thresholds=Thresholds(max_rank=1000))  # ...so keep every rank (all pass)
    assert report["splits"]["benchmark"]["rows"] == report["splits"]["validation"]["rows"] == 9
    assert report["filter_model"] == "clip:ViT-B-32/openai" and "by clip:ViT-B-32/openai" in report["basis"]
    return out


def test_benchmark_scores_the_benchmark_split_and_each_default_model_gets_its_files(checked_splits, tmp_path, monkeypatch):
    """Acceptance 2: no --split scores `benchmark`; the default list gives one result file and one summary row per
    model (`resnet50.tv_in1k` and `resnet50.fb_ssl_yfcc100m_ft_in1k` no longer share `resnet50.json`); a rerun
    reuses all of them; CLIP rows are marked as favoured by the CLIP filter."""
    names = default_model_names()
    monkeypatch.setattr(bm, "_free", lambda device: None)  # a full gc.collect after each of the 18 tiny models: seconds
    logs = []
    config = bm.BenchmarkConfig(data=str(checked_splits), out=str(tmp_path), progress=False, workers=1, plots=False)
    summary = bm.run_benchmark(config, specs=[tiny_spec(n) for n in names], log=logs.append)
    assert f"scoring split 'benchmark' of {checked_splits}: 9 images; how they were kept: automatic checks (" in logs[0]
    assert summary["data"]["d3s"]["split"] == "benchmark" and summary["evaluated"] == names
    assert len(list((tmp_path / "models").glob("*.json"))) == len(list((tmp_path / "models").glob("*.csv"))) == len(names) == 18
    assert sorted(r["model"] for r in summary["models"]) == sorted(names)
    assert all(r["d3s_n"] == 9 for r in summary["models"])
    marked = {r["model"]: r["filtered_by"] for r in summary["models"] if r["filtered_by"]}
    assert marked == {n: "clip:ViT-B-32/openai" for n in names if n.startswith("clip:")}
    assert "filtered_by" in (tmp_path / "summary.csv").read_text().splitlines()[0]
    again = bm.run_benchmark(config, specs=[tiny_spec(n) for n in names], log=logs.append)
    assert again["evaluated"] == [] and again["skipped"] == names and len(again["models"]) == 18


def test_other_splits_need_the_flag_and_warn(checked_splits, tmp_path, capsys):
    gen_only = write_d3s_split(tmp_path / "gen", "train", backgrounds=range(2))
    assert cli.main(["benchmark", "--data", str(gen_only), "--models", "test_resnet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has no 'benchmark' split (found: train)" in err and "pass --split train" in err
    logs = []
    summary = bm.run_benchmark(bm.BenchmarkConfig(data=str(checked_splits), out=str(tmp_path / "v"), split="validation",
                                                  progress=False, workers=1, plots=False),
                               specs=[tiny_spec("clip:tiny")], log=logs.append)
    assert logs[0].startswith("warning: scoring split 'validation'") and "unchecked" in logs[0]
    assert summary["models"][0]["filtered_by"] is None  # unchecked images: no filter to favour anyone


def test_every_model_name_round_trips_through_its_own_files(tmp_path):
    names = default_model_names() + ["resnet50", "clip:tiny", "hf-hub:org/name", "hf-hub:org_name", "hf-hub_org_name",
                                     "local-dir:/a/b", "local-dir:a/b", "timm/resnet50.a1_in1k", ".hidden", "a b"]
    paths = [bm.result_paths(tmp_path, n) for n in names]
    assert len({j for j, _ in paths}) == len({c for _, c in paths}) == len(names)
    assert all(j.parent == tmp_path / "models" and j.suffix == ".json" and not j.name.startswith(".") for j, _ in paths)
    assert bm.result_paths(tmp_path, "resnet50.tv_in1k")[0].name == "resnet50.tv_in1k.json"  # plain names stay readable
    row = {"top1": 0.5, "top5": 1.0, "n": 1, "per_cell": [], "per_background": {}, "worst_background": None, "per_in9_background": {}}
    for n in names:
        bm.write_result(tmp_path, {"model": n, "data": {"d": 1}, "d3s": row, "family": "f", "extra_data": False, "kind": "timm"})
    assert [bm.load_result(tmp_path, n)["model"] for n in names] == names
    assert sorted(r["model"] for r in bm.collect_results(tmp_path, {"d": 1})) == sorted(names)


def test_result_files_of_an_older_d3s_still_load_once(tmp_path):
    """Before, `with_suffix` named files `resnet50.json` for `resnet50.fb_ssl...` and `clip_tiny.json` for `clip:tiny`."""
    legacy = {"resnet50.fb_ssl_yfcc100m_ft_in1k": "resnet50.json", "clip:tiny": "clip_tiny.json"}
    (tmp_path / "models").mkdir()
    for name, file in legacy.items():
        (tmp_path / "models" / file).write_text(json.dumps({"model": name, "data": {"d": 1}}))
    assert all(bm.load_result(tmp_path, n)["model"] == n for n in legacy)
    assert bm.load_result(tmp_path, "resnet50") is None  # the legacy file holds another model
    (tmp_path / "models" / bm.result_paths(tmp_path, "clip:tiny")[0].name).write_text(json.dumps({"model": "clip:tiny", "data": {"d": 1}, "new": 1}))
    results = bm.collect_results(tmp_path, {"d": 1})
    assert sorted(r["model"] for r in results) == sorted(legacy) and next(r for r in results if r["model"] == "clip:tiny")["new"] == 1


# --- part 4: the paper's weights by default ----------------------------------------------------------------

def test_the_paper_resnet50_weights_are_the_default():
    import timm

    from d3s.models import PAPER_BACKBONE
    from d3s.predict import DEFAULT_CLASSIFIER
    from d3s.train import TrainConfig

    assert PAPER_BACKBONE == "resnet50.tv_in1k" == TrainConfig(data="d", out="o").backbone == DEFAULT_CLASSIFIER
    cfg = timm.create_model(PAPER_BACKBONE, pretrained=False).pretrained_cfg
    assert cfg["tag"] == "tv_in1k" and cfg["url"].startswith("https://download.pytorch.org/models/resnet50-")  # PyTorch's own
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert sub["train"].parse_args(["--data", "d", "--out", "o"]).backbone == PAPER_BACKBONE
    assert sub["spurious"].parse_args(["--data", "d", "--checkpoint", "c"]).baseline == PAPER_BACKBONE
    assert "resnet50.tv_in1k" in sub["train"].format_help() and "resnet50.tv_in1k" in sub["spurious"].format_help()
    readme = "".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])  # the documentation
    assert "resnet50.tv_in1k" in readme and "--baseline resnet50 " not in readme and "--baseline resnet50`" not in readme


# --- part 7: small things a user hits --------------------------------------------------------------------------

def test_hparams_from_json_fit_the_defaults_types():
    from d3s.algorithms import HparamError, build, hparams_for
    from d3s.models import DisentangledExtractor

    hp = hparams_for("wasserstein", {"betas": [0, 0.9], "critic_steps": 2.0, "lr": 1})
    assert hp["betas"] == (0.0, 0.9) and all(type(b) is float for b in hp["betas"])
    assert type(hp["critic_steps"]) is int and type(hp["lr"]) is float
    model = DisentangledExtractor("test_efficientnet", ["a", "b"], ["x", "y"], image_size=16)
    algorithm = build("wasserstein", model, hp)  # Adam refused integer betas here before
    assert [g["betas"] for g in algorithm.optimizer.param_groups] == [(0.0, 0.9)]
    for bad, what in (({"betas": 0.9}, "betas"), ({"betas": [0, 0.9, 1]}, "betas"), ({"critic_steps": 2.5}, "critic_steps")):
        with pytest.raises(HparamError, match=f"'{what}' must be like its default"):
            hparams_for("wasserstein", bad)


def test_labels_shows_both_senses_of_an_ambiguous_name(capsys):
    docs = (REPO / "docs" / "generate.md").read_text()
    assert "d3s labels tabby crane" in docs
    assert cli.main(["labels", "tabby", "crane"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^281\tn02123045\ttabby\t", out, re.M)
    assert "'crane' names 2 classes; pick one by index or WordNet id (134 / n02012849 or 517 / n03126707)" in out
    assert re.search(r"^134\tn02012849\tcrane \(n02012849\)\tIN-9: bird\tlarge long-necked wading bird", out, re.M)
    assert re.search(r"^517\tn03126707\tcrane \(n03126707\)\tIN-9: -\tlifts and moves heavy objects", out, re.M)
    assert cli.main(["generate", "--model", "tiny", "--foregrounds", "crane", "--dry-run"]) == 2  # generating needs one sense
    assert "ambiguous" in capsys.readouterr().err


def test_generate_out_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "d3s.parquet").write_text("not a folder")
    assert cli.main(["generate", "--model", "tiny", "--foregrounds", "0", "--out", str(tmp_path / "d3s.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"d3s generate: error: --out {tmp_path / 'd3s.parquet'} is a file; give a folder for the dataset "
                   "(it is laid out as a Hub dataset repository)."]


def test_generate_without_photos_says_the_guides_have_none(tmp_path, capsys):
    assert cli.main(["generate", "--model", "tiny", "--foregrounds", "0", "--backgrounds", "snow", "--dry-run"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "foreground photo" in line]
    assert notes == ["note: no --imagenet photos: the guides have no foreground photo (templates only), unlike the paper's "
                     "Algorithm 1, which pastes an ImageNet photo of the class"]
    photos = write_photo_folder(tmp_path / "photos", per_class=1)
    assert cli.main(["generate", "--model", "tiny", "--foregrounds", "0", "--imagenet", str(photos), "--dry-run"]) == 0
    assert "foreground photo" not in capsys.readouterr().out


def test_resuming_with_other_photos_or_templates_is_refused(tmp_path, capsys):
    from d3s.generate import GenerationConfig, GenerationError, check_output, create_output, make_plan
    from d3s.guides import draw_procedural_template

    photos = write_photo_folder(tmp_path / "photos", per_class=2)
    for shift in ("in_snow", "at_night"):
        (tmp_path / "templates" / shift).mkdir(parents=True)
        draw_procedural_template(shift, 0, 32).save(tmp_path / "templates" / shift / "0.png")
    out = tmp_path / "out"

    def plan(photo_dir, template_dir):
        config = GenerationConfig(foregrounds="0,207", backgrounds="snow,night", out=str(out), model="tiny", per_pair=1,
                                  photos=str(photo_dir), templates=str(template_dir))
        return make_plan(config)[0]

    create_output(plan(photos, tmp_path / "templates"))
    check_output(plan(photos, tmp_path / "templates"))  # the same folders resume
    other = shutil.copytree(photos, tmp_path / "other_photos")
    (other / "n01440764" / "n01440764_1.JPEG").unlink()
    with pytest.raises(GenerationError, match=r"photos: folder made from folder:\S+/photos \(4 files, listing \w+\), "
                                              r"this run reads folder:\S+/other_photos \(3 files"):
        check_output(plan(other, tmp_path / "templates"))
    more = shutil.copytree(tmp_path / "templates", tmp_path / "more_templates")
    draw_procedural_template("in_snow", 1, 32).save(more / "in_snow" / "1.png")
    with pytest.raises(GenerationError, match=r"templates: folder made from folder:\S+/templates \(2 files.*more_templates \(3 files"):
        check_output(plan(photos, more))
    moved = shutil.copytree(photos, tmp_path / "moved_photos")  # the same files elsewhere: resumed, with a note
    check_output(plan(moved, tmp_path / "templates"))
    assert "note: photos moved from folder:" in capsys.readouterr().out
    code = cli.main(["generate", "--model", "tiny", "--foregrounds", "0,207", "--backgrounds", "snow,night", "--per-pair", "1",
                     "--imagenet", str(other), "--templates", str(tmp_path / "templates"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "photos: folder made from" in err[0]


def test_an_empty_validation_split_is_explained_up_to_publishing(tmp_path, capsys):
    from d3s.curate import format_split_report, split
    from d3s.hub import PublishError, stage_dataset

    gen = write_d3s_split(tmp_path / "gen", "train", per_cell=2, backgrounds=range(3))  # 9 cells of 2 images
    report = split(gen, tmp_path / "small")  # the default fraction, 1/6
    assert report["splits"]["validation"]["rows"] == 0
    text = format_split_report(report)
    assert ("warning: the validation split is empty: cells of 2 image(s) give round(0.167 x 2) = 0 to validation; "
            "--validation-fraction 0.26 (any value above 0.25) gives every cell one.") in text
    with pytest.raises(PublishError) as err:
        stage_dataset(tmp_path / "small", tmp_path / "repo", "someone/d3s")
    assert "`d3s split` left them empty" in str(err.value) and "--validation-fraction 0.26" in str(err.value)
    assert cli.main(["benchmark", "--data", str(tmp_path / "small"), "--models", "test_resnet", "--out", str(tmp_path / "r")]) == 2
    assert "no 'benchmark' split (found: train): `d3s split` left it empty (the validation split is empty" in capsys.readouterr().err
    fixed = split(gen, tmp_path / "fixed", fraction=0.26)
    assert fixed["splits"]["validation"]["rows"] == 9 and fixed["validation_note"] is None  # the advice works


def test_toy_with_more_shapes_than_textures_gives_pairs_spurious_accepts(tmp_path, capsys):
    from d3s.dataset import load
    from d3s.spurious import coarse_fg_map, load_pairs
    from d3s.toy import SHAPES, TEXTURES

    assert cli.main(["toy", "--out", str(tmp_path), "--fg-classes", "4", "--bg-classes", "3", "--train-per-pair", "40",
                     "--val-per-pair", "1", "--correlation", "0.9", "--size", "16"]) == 0
    assert "note: more shapes than textures: cross have no texture of their own" in capsys.readouterr().out
    pairs = load_pairs(str(tmp_path / "pairs.json"))  # `d3s spurious` refused the old pairs file here
    assert pairs == {"circle": "h-stripes", "square": "v-stripes", "triangle": "checker"}
    fg_map, bg_map = coarse_fg_map(pairs, list(SHAPES[:4]), list(TEXTURES[:3]))
    assert fg_map.tolist() == [0, 1, 2, -1] and bg_map.tolist() == [0, 1, 2]
    train = load(tmp_path, "train")
    fg, bg = np.array(train["fg"]), np.array(train["bg"])
    assert 0.88 < (bg[fg < 3] == fg[fg < 3]).mean() < 0.97  # 0.9 + 0.1 / 3 for the paired shapes
    assert np.bincount(bg[fg == 3], minlength=3).min() > 0.2 * (fg == 3).sum()  # the cross: every texture alike
