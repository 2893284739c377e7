"""Datasets in the Hub's own layout (issue 11, part 6): every command that reads a dataset reads a folder whose
shards are named as `push_to_hub` / `snapshot_download` leave them, or any other parquet layout `datasets` reads,
and refuses a folder that is not a dataset at once, saying what it found."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from conftest import REPO, write_d3s_split
from d3s import cli
from d3s.dataset import DatasetFormatError, find_splits, load, load_raw


def hub_layout(src: Path, dst: Path, style: str = "sharded", card: bool = True) -> Path:
    """Rewrite a dataset folder as the Hub leaves it: ``data/<split>-00000-of-00001.parquet`` and a card whose YAML
    ``configs`` name them (``push_to_hub``), or ``<split>/0000.parquet`` without a card (``style="dirs"``), or files
    the default patterns would not find, declared by the card (``style="declared"``). JSON records are copied."""
    declared = []
    for split in find_splits(src):
        ds = load_raw(src, split)
        rel = {"sharded": f"data/{split}-00000-of-00001.parquet", "dirs": f"{split}/0000.parquet",
               "declared": f"shards/part-{split}.parquet"}[style]
        ds.to_parquet(str(dst / rel))
        declared.append({"split": split, "path": rel if style == "declared" else f"data/{split}-*"})
    if card:
        meta = {"configs": [{"config_name": "default", "data_files": declared}]}
        (dst / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n# a dataset\n")
    for record in src.glob("*.json"):
        shutil.copy(record, dst / record.name)
    return dst


@pytest.fixture(scope="module")
def hub_toy(tiny_toy, tmp_path_factory) -> Path:
    return hub_layout(tiny_toy, tmp_path_factory.mktemp("hub_toy"))


@pytest.fixture(scope="module")
def hub_splits(tmp_path_factory) -> Path:
    """A D3S-format folder with train, validation and benchmark splits, in the Hub's shard names, without a card."""
    src = tmp_path_factory.mktemp("splits_src")
    write_d3s_split(src, "train", backgrounds=range(4))
    write_d3s_split(src, "validation", backgrounds=range(3))
    write_d3s_split(src, "benchmark", backgrounds=range(2))
    return hub_layout(src, tmp_path_factory.mktemp("hub_splits"), card=False)


@pytest.fixture(scope="module")
def trained(hub_toy, tmp_path_factory) -> Path:
    """`d3s train` on the Hub-layout toy (2 steps); --hparams with JSON integers in a tuple (issue 11, part 7)."""
    out = tmp_path_factory.mktemp("wd") / "wd"
    code = cli.main(["train", "--data", str(hub_toy), "--out", str(out), "--backbone", "test_efficientnet", "--no-pretrained",
                     "--iters", "2", "--batch-size", "16", "--workers", "0", "--no-progress", "--warmup", "1",
                     "--hparams", '{"betas": [0, 0.9]}'])
    assert code == 0
    return out


@pytest.mark.parametrize("style,card", [("sharded", True), ("sharded", False), ("dirs", False), ("declared", True)])
def test_the_layouts_datasets_reads_are_read_alike(tiny_toy, tmp_path, style, card):
    folder = hub_layout(tiny_toy, tmp_path / "hub", style, card)
    assert list(find_splits(folder)) == ["train", "validation"]
    assert set(datasets.load_dataset(str(folder))) == {"train", "validation"}  # what `datasets` itself finds
    ours, theirs = load(tiny_toy), load(folder)
    for split in ("train", "validation"):
        assert theirs[split].features["fg"].names == ["circle", "square", "triangle"]
        assert theirs[split]["item_id"] == ours[split]["item_id"] and theirs[split]["bg"] == ours[split]["bg"]


def test_train_probe_features_spurious_read_a_hub_layout_folder(hub_toy, trained, tmp_path, capsys):
    assert json.loads((trained / "done.json").read_text())["step"] == 2
    assert json.loads((trained / "run.json").read_text())["hparams"]["betas"] == [0.0, 0.9]
    assert cli.main(["probe", "--data", str(hub_toy), "--checkpoint", str(trained), "--out", str(tmp_path / "probe.json")]) == 0
    assert json.loads((tmp_path / "probe.json").read_text())["linear"]["validation"]["fg_from_fg"]["top1"] >= 0
    assert cli.main(["features", "--data", str(hub_toy), "--checkpoint", str(trained), "--out", str(tmp_path / "v.npz")]) == 0
    assert np.load(tmp_path / "v.npz")["fg"].shape == (27,)
    assert cli.main(["spurious", "--data", str(hub_toy), "--checkpoint", str(trained), "--baseline", str(trained),
                     "--pairs", str(hub_toy / "pairs.json"), "--out", str(tmp_path / "s.json")]) == 0
    assert set(json.loads((tmp_path / "s.json").read_text())) == {"correct", "all", "baseline", "counts"}


def test_split_benchmark_publish_read_a_hub_layout_folder(hub_toy, hub_splits, tmp_path, capsys):
    assert cli.main(["split", "--data", str(hub_toy), "--out", str(tmp_path / "splits"), "--validation-fraction", "0.25"]) == 0
    report = json.loads((tmp_path / "splits" / "split_report.json").read_text())
    assert report["splits"]["train"]["rows"] + report["splits"]["validation"]["rows"] == 72
    assert cli.main(["benchmark", "--data", str(hub_splits), "--models", "test_resnet", "--no-pretrained", "--out",
                     str(tmp_path / "results"), "--quiet", "--workers", "1", "--no-plots"]) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["models"][0]["d3s_n"] == 3 * 2  # the benchmark split: 3 classes x 2 backgrounds
    spec = importlib.util.spec_from_file_location("publish_dataset", REPO / "hub" / "publish_dataset.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    assert publish.main(["--data", str(hub_splits), "--repo-id", "someone/d3s", "--dry-run", str(tmp_path / "repo")]) == 0
    staged = datasets.load_dataset(str(tmp_path / "repo"))
    assert {s: staged[s].num_rows for s in staged} == {"train": 12, "validation": 9, "benchmark": 6}


def test_a_hub_id_is_read_through_datasets_and_the_hub(hub_toy, tmp_path, monkeypatch):
    """Offline, the Hub is a stand-in: `datasets.load_dataset(ID)` and `snapshot_download(ID)` serve the local copy."""
    import huggingface_hub

    from d3s.curate import split
    from d3s.data import load_split

    real = datasets.load_dataset
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, *a, **k: asked.append(path) or
                        (real(str(hub_toy), *a, **k) if path == "someone/toy" else real(path, *a, **k)))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **k: asked.append(repo_id) or str(hub_toy))
    assert load_split("someone/toy", "validation").num_rows == 27
    report = split("someone/toy", tmp_path / "splits", fraction=0.25)
    assert report["splits"]["validation"]["rows"] == 9 * 2 and asked == ["someone/toy", "someone/toy"]
    with pytest.raises(DatasetFormatError, match="does not exist, and is not a Hub dataset id"):
        load_split(str(tmp_path / "nowhere" / "d3s"), "train")


def test_a_big_folder_that_is_not_a_dataset_is_refused_fast(tmp_path, monkeypatch, capsys):
    """Issue 11, part 7: `d3s train --data` on an ImageNet-like tree refuses in a moment, without a recursive glob,
    and says what it found (a parquet file buried deep inside changes nothing)."""
    big = tmp_path / "imagenet"
    for i in range(60):
        folder = big / f"n{i:08d}"
        folder.mkdir(parents=True)
        for j in range(100):
            (folder / f"{j}.JPEG").touch()
    deep = big / "n00000059" / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "stray.parquet").touch()

    def no_deep_scan(*a, **k):
        raise AssertionError("a recursive scan of the tree")

    monkeypatch.setattr(datasets.data_files, "resolve_pattern", no_deep_scan)
    monkeypatch.setattr(Path, "rglob", no_deep_scan)
    monkeypatch.setattr(Path, "glob", no_deep_scan)
    start = time.perf_counter()
    code = cli.main(["train", "--data", str(big), "--out", str(tmp_path / "out"), "--no-pretrained"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "is not a parquet dataset: found 60 folder(s) at the top (n00000000/" in err[0]
    assert "files: 4940 .jpeg" in err[0] and "no .parquet file among the first 5000 entries" in err[0]
    assert elapsed < 10 and not (tmp_path / "out").exists()


def test_refusals_say_what_was_found(tmp_path):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    (tmp_path / "photos" / "cats" / "a.png").touch()
    with pytest.raises(DatasetFormatError, match=r"found 1 folder\(s\) at the top \(cats/\); files: 1 .png; no .parquet file within 3"):
        find_splits(tmp_path / "photos")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text("a\n1\n")
    (tmp_path / "csv" / "x.parquet").touch()  # found near the top, so `datasets` resolves the layout: csv
    with pytest.raises(DatasetFormatError, match="holds data files but no parquet"):
        find_splits(tmp_path / "csv")
