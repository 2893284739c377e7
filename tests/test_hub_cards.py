"""Cards the Hub's way (issue 18 part 7, issue 19 part 4): the checkpoint card is a `huggingface_hub.ModelCard` whose
`model-index` holds the results of probe.json, spurious.json and the checkpoint's own benchmark results; the dataset
card is a `DatasetCard` that says what the staged rows are, counted, and loads a split that exists; the dataset is
uploaded by the resumable, many-commit upload, and a rerun after an interruption resumes without staging again.
No network: the Hub is met at `HfApi`'s methods."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import datasets
import pytest
from huggingface_hub import DatasetCard, HfApi, ModelCard

from conftest import REPO, write_d3s_split
from d3s.hub import PublishError, stage_dataset
from d3s.hub_checkpoint import stage_checkpoint

PLACEHOLDERS = (r"More Information Needed", r"\[More", r"TODO", r"\{\{", r"\|\s*\?\s*\|", r"`\?`", r"\bNone\b", r"\bnan\b")
SHAPES, TEXTURES = ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"]
PROBES = {"linear": {"fg_from_fg": 0.91, "bg_from_bg": 0.82, "fg_from_bg": 0.41, "bg_from_fg": 0.36},
          "mlp": {"fg_from_fg": 0.95, "bg_from_bg": 0.87, "fg_from_bg": 0.52, "bg_from_fg": 0.47}}


def no_placeholders(text: str) -> None:
    found = [m.group(0) for p in PLACEHOLDERS for m in [re.search(p, text)] if m]
    assert not found, found


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "hub" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained extractor with probe (linear and MLP, and ImageNet rows), spurious and run records: what the card reads."""
    from d3s.models import DisentangledExtractor

    folder = tmp_path_factory.mktemp("ckpt") / "wd"
    DisentangledExtractor("test_efficientnet", SHAPES, TEXTURES, image_size=32).save_pretrained(folder)
    probe = {kind: {"validation": {name: {"top1": v, "top5": 1.0, "train_top1": 0.99} for name, v in values.items()},
                    "imagenet": {name: {"top1": 0.123, "top5": 0.5, "train_top1": 0.99} for name in ("fg_from_fg", "fg_from_bg")},
                    "chance": {"fg": 1 / 3, "bg": 1 / 3}}
             for kind, values in PROBES.items()}
    (folder / "probe.json").write_text(json.dumps(probe))
    row = {"corr_fg": 0.9, "anticorr_fg": 0.6, "corr_bg": 0.8, "anticorr_bg": 0.5, "average_4": 0.7, "worst": 0.25}
    (folder / "spurious.json").write_text(json.dumps({"correct": row, "all": {**row, "average_4": 0.65}, "baseline": {**row, "average_4": 0.55},
                                                      "counts": {"corr": 9, "anticorr_fg": 18, "anticorr_bg": 18}}))
    (folder / "run.json").write_text(json.dumps({"config": {"data": "someone/d3s-toy", "method": "wasserstein", "pretrained": False}}))
    return folder


def test_checkpoint_card_model_index_holds_probe_json(checkpoint, tmp_path):
    report = stage_checkpoint(checkpoint, tmp_path / "repo", "someone/d3s-tiny")
    card = ModelCard.load(tmp_path / "repo" / "README.md")
    probe = json.loads((checkpoint / "probe.json").read_text())
    got = {(r.dataset_type, r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    for kind in ("linear", "mlp"):
        for name in ("fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg"):
            key = ("someone/d3s-toy", "validation", f"{kind} probe {name} top-1")
            assert got[key] == pytest.approx(probe[kind]["validation"][name]["top1"], abs=1e-4), key
    assert got[("someone/d3s-toy", "validation", "spurious correlation average of 4, heads on z_fg / z_bg")] == 0.7
    assert got[("someone/d3s-toy", "validation", "spurious correlation average of 4, heads on all of z")] == 0.65
    assert 0.55 not in got.values() and 0.123 not in got.values()  # the baseline is another model; ImageNet rows: data unrecorded
    assert report["eval_results"] == len(got) == 12
    index = card.data.to_dict()["model-index"]  # as the Hub reads it
    assert index[0]["name"] == "d3s-tiny" and index[0]["results"][0]["dataset"] == {
        "name": "someone/d3s-toy", "type": "someone/d3s-toy", "split": "validation"}
    assert card.data.datasets == ["someone/d3s-toy"] and card.data.license == "mit" and card.data.base_model is None
    text = (tmp_path / "repo" / "README.md").read_text()
    assert "| fg_from_bg | 0.410 | 1.000 |" in text and "ImageNet rows (fg labels only)" in text  # the tables stay
    assert "Trained with `d3s train --method wasserstein`" in text and "on `someone/d3s-toy`." in text
    no_placeholders(text)

    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / "probe.json").unlink()
    with pytest.raises(PublishError, match=r"run `d3s probe --data someone/d3s-toy --checkpoint "):  # the data run.json records
        stage_checkpoint(bare, tmp_path / "repo2", "someone/d3s-tiny")


def test_benchmark_results_of_this_checkpoint_join_the_model_index(checkpoint, tmp_path):
    from d3s.classifiers import extractor_files
    from d3s.results import result_paths

    _, digest = extractor_files(str(checkpoint))
    results = tmp_path / "results"
    mine = {"model": f"d3s:{checkpoint}", "kind": "d3s", "identity": {"name": f"d3s:{checkpoint}", "weights": digest},
            "data": {"d3s": {"source": "/somewhere/d3s-splits", "split": "benchmark"},
                     "imagenet": {"source": "hf:ILSVRC/imagenet-1k:validation"}},
            "d3s": {"top1": 0.41, "top5": 0.77, "n": 40}, "imagenet": {"top1": 0.6, "top5": 0.9, "n": 50}, "drop_top1": 0.19,
            "precision": "fp32"}
    before = {**mine, "model": "d3s:before-erasure", "identity": {"name": "d3s:before-erasure", "weights": "0123456789abcdef"},
              "d3s": {"top1": 0.99, "top5": 0.99, "n": 40}}
    challenge = {"model": f"d3s:{checkpoint}", "kind": "d3s", "identity": mine["identity"],
                 "data": {"bgchallenge": {"source": "/data/bg_challenge"}}, "variations": {"original": {"top1": 0.8},
                 "mixed_rand": {"top1": 0.6}, "mixed_same": {"top1": 0.7}}, "bg_gap": 0.1, "adversarial": None, "precision": "fp32"}
    for folder, record in ((results, mine), (results, before), (results / "bgchallenge", challenge)):
        path = result_paths(folder, record["model"])[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    stage_checkpoint(checkpoint, tmp_path / "repo", "someone/d3s-tiny", dataset="someone/d3s", results=results)
    card = ModelCard.load(tmp_path / "repo" / "README.md")
    got = {(r.dataset_type, r.dataset_config, r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got[("someone/d3s", None, "benchmark", "fg head top-1 (ImageNet classes)")] == 0.41  # a local copy of --dataset
    assert got[("ILSVRC/imagenet-1k", None, "validation", "fg head top-1")] == 0.6
    assert got[("bg_challenge", "mixed_rand", "val", "IN-9 accuracy, mixed_rand")] == 0.6
    assert got[("someone/d3s", None, "validation", "linear probe fg_from_fg top-1")] == 0.91  # --dataset names the probes' data
    assert 0.99 not in got.values()  # the weights before erasure are another model
    text = (tmp_path / "repo" / "README.md").read_text()
    assert "| someone/d3s | benchmark | 40 | 0.410 | 0.770 | 0.600 | 0.190 | fp32 |" in text and "/somewhere" not in text
    assert "/data/bg_challenge" not in text and "| 80.0 |" in text  # no local path on a public card
    no_placeholders(text)

    (tmp_path / "empty" / "models").mkdir(parents=True)
    with pytest.raises(PublishError, match=r"holds no result of .*run `d3s benchmark --models d3s:"):
        stage_checkpoint(checkpoint, tmp_path / "repo2", "someone/d3s-tiny", results=tmp_path / "empty")
    with pytest.raises(PublishError, match="--dataset must be a Hub dataset id"):
        stage_checkpoint(checkpoint, tmp_path / "repo3", "someone/d3s-tiny", dataset=str(tmp_path))
    assert not (tmp_path / "repo2").exists() and not (tmp_path / "repo3").exists()


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A 3-class, 4-background run with train and validation splits only (no benchmark, no d3s_run.json)."""
    root = tmp_path_factory.mktemp("three") / "d3s"
    write_d3s_split(root, "train", backgrounds=range(4), per_cell=2)
    write_d3s_split(root, "validation", backgrounds=range(4))
    return root


def test_dataset_card_says_what_the_rows_are_and_its_snippet_loads(three_classes, tmp_path, monkeypatch):
    staged = tmp_path / "repo"
    stage_dataset(three_classes, staged, "someone/d3s", required_splits=("train", "validation"), progress=False)
    card = DatasetCard.load(staged / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.size_categories == ["n<1K"]
    assert [c["split"] for c in card.data.configs[0]["data_files"]] == ["train", "validation"]
    text = card.text
    assert "Images of 3 of the 1000 ImageNet classes (tench, golden retriever, tabby) on 4 backgrounds" in text
    assert "all 12 (class, background) pairs, 3 images each" in text and "36 distinct images" in text
    assert "the 1000 ImageNet classes on" not in text and "Every (class, background) pair is generated" not in text
    assert "not recorded with this data (it has no `d3s_run.json`)" in text  # no claim about how it was made
    assert "| `train` | 24 | 3 | 4 | 12 |" in text and "| `validation` | 12 | 3 | 4 | 12 |" in text
    assert "| in snow |" not in text  # backgrounds without rows are not listed
    no_placeholders(text)

    snippet = re.search(r"## Load\n\n```python\n(.*?)```", text, re.S).group(1)
    assert 'split="validation"' in snippet  # the split that exists (there is no benchmark)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(snippet.replace('"someone/d3s"', repr(str(staged))), namespace)
    assert namespace["ds"].num_rows == 12 and namespace["fg"] in ("tench", "golden retriever", "tabby")
    assert namespace["bg"] in ("on grass", "on a road", "in a forest", "in water")
    loaded = datasets.load_dataset(str(staged), cache_dir=str(tmp_path / "cache"))
    assert {s: loaded[s].num_rows for s in loaded} == {"train": 24, "validation": 12}
    assert loaded["train"].features["fg"].names[281] == "tabby"


def test_dataset_card_of_a_split_run_names_the_benchmark(three_classes, tmp_path):
    from d3s.curate import split

    split(three_classes, tmp_path / "splits", source_split="train", fraction=0.5)
    stage_dataset(tmp_path / "splits", tmp_path / "repo", "someone/d3s", progress=False)
    card = DatasetCard.load(tmp_path / "repo" / "README.md")
    assert 'load_dataset("someone/d3s", split="benchmark")' in card.text
    assert "(`benchmark` rows are also `validation` rows)" in card.text
    assert "24 distinct images" in card.text  # benchmark rows are not counted twice
    no_placeholders(card.text)


def test_missing_split_advice_carries_its_values(tmp_path):
    from d3s.curate import split

    gen = write_d3s_split(tmp_path / "gen", "train", per_cell=2, backgrounds=range(3))
    split(gen, tmp_path / "small")  # the default fraction leaves validation empty
    with pytest.raises(PublishError) as err:
        stage_dataset(tmp_path / "small", tmp_path / "repo", "someone/d3s")
    assert (f"Rerun `d3s split --data {gen} --out {tmp_path / 'small-resplit'} --validation-fraction 0.26` and publish "
            f"{tmp_path / 'small-resplit'}, or pass --splits train to publish the splits it has.") in str(err.value)
    with pytest.raises(PublishError) as err:
        stage_dataset(gen, tmp_path / "repo", "someone/d3s")
    assert f"run `d3s split --data {gen} --out {tmp_path / 'gen-splits'}` and publish that folder" in str(err.value)


class FakeHub:
    """HfApi's network methods, recorded; ``fail`` makes the next upload raise (an interrupted upload)."""

    def __init__(self, monkeypatch, large: bool):
        self.calls: list[tuple] = []
        self.fail: Exception | None = None
        hub = self

        def create_repo(api, repo_id, repo_type=None, private=False, exist_ok=False, **kw):
            hub.calls.append(("create_repo", repo_id, repo_type))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload(name):
            def method(api, *, repo_id, folder_path, repo_type=None, ignore_patterns=None, **kw):
                hub.calls.append((name, repo_id, repo_type, folder_path, ignore_patterns))
                if hub.fail is not None:
                    err, hub.fail = hub.fail, None
                    raise err
            return method

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload("upload_folder"))
        if large:  # huggingface_hub before 2.x; 2.4 (installed) has no upload_large_folder
            monkeypatch.setattr(HfApi, "upload_large_folder", upload("upload_large_folder"), raising=False)
        else:
            monkeypatch.delattr(HfApi, "upload_large_folder", raising=False)


def test_publish_dataset_uses_upload_large_folder(three_classes, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch, large=True)
    script = load_script("publish_dataset")
    stage = tmp_path / "stage"
    assert script.main(["--data", str(three_classes), "--repo-id", "someone/d3s", "--splits", "train,validation",
                        "--stage", str(stage)]) == 0
    assert [c[:3] for c in hub.calls] == [("create_repo", "someone/d3s", "dataset"), ("upload_large_folder", "someone/d3s", "dataset")]
    assert hub.calls[1][3] == str(stage) and ".d3s-staged.json" in hub.calls[1][4]  # the kept folder; the record stays local
    assert (stage / "README.md").exists() and "published: https://huggingface.co/datasets/someone/d3s" in capsys.readouterr().out


def test_an_interrupted_upload_resumes_without_staging_again(three_classes, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch, large=False)  # the installed huggingface_hub: upload_folder is the resumable upload
    token = "hf_SecretTokenValue123456"
    monkeypatch.setenv("HF_TOKEN", token)
    script = load_script("publish_dataset")
    stage = tmp_path / "stage"
    args = ["--data", str(three_classes), "--repo-id", "someone/d3s", "--splits", "train,validation", "--stage", str(stage)]
    hub.fail = OSError(f"connection reset while sending Authorization: Bearer {token}")
    assert script.main(args) == 1
    out = capsys.readouterr()
    assert token not in out.out + out.err and "hf_***" in out.err
    assert f"run the same command again (with --stage {stage}) to resume the upload" in out.err
    assert (stage / ".d3s-staged.json").exists() and (stage / "README.md").exists()  # kept

    monkeypatch.setattr(script, "stage_dataset", lambda *a, **k: pytest.fail("staged again"))
    assert script.main(args) == 0
    out = capsys.readouterr().out
    assert f"reusing the repository folder staged in {stage}" in out and "published:" in out
    uploads = [c for c in hub.calls if c[0] == "upload_folder"]
    assert len(uploads) == 2 and all(c[1:4] == ("someone/d3s", "dataset", str(stage)) for c in uploads)
    assert token not in out

    other = args[:-4] + ["--splits", "train", "--stage", str(stage)]
    assert script.main(other) == 2
    assert f"{stage} holds a staging of other inputs (splits differ)" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "data").mkdir()  # a staging killed before it finished
    assert script.main(args[:-1] + [str(tmp_path / "half")]) == 2
    assert "is not empty and holds no finished staging (an interrupted one?)" in capsys.readouterr().err
