"""Publishing: the staged repository folder loads as the Hub would serve it; bad input fails before upload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset

from conftest import REPO
from d3s.curate import split
from d3s.dataset import shard_paths


def publish(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "hub/publish_dataset.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(REPO)})


@pytest.fixture(scope="module")
def split_data(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("splits") / "d3s"
    split(tiny_run, out, fraction=0.5)
    return out


def test_dry_run_folder_loads_with_all_splits(split_data, tmp_path):
    staged = tmp_path / "repo"
    proc = publish("--data", str(split_data), "--repo-id", "someone/d3s-tiny", "--dry-run", str(staged))
    assert proc.returncode == 0, proc.stderr
    assert "staged" in proc.stdout and "0 corrupt rows skipped" in proc.stdout
    ds = load_dataset(str(staged))
    assert set(ds) == {"train", "validation", "benchmark"}
    assert ds["train"].num_rows + ds["validation"].num_rows == 60
    assert ds["benchmark"].features["fg"].names[281] == "tabby"
    assert ds["validation"].features["bg"].names == ds["train"].features["bg"].names
    card = (staged / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])  # the card's YAML parses
    assert meta["license"] == "cc-by-4.0" and {c["split"] for c in meta["configs"][0]["data_files"]} == {"train", "validation", "benchmark"}
    assert "load_dataset(\"someone/d3s-tiny\", split=\"benchmark\")" in card and "| in snow |" in card
    assert (staged / "examples" / "backgrounds.png").exists()
    from huggingface_hub import DatasetCard

    loaded = DatasetCard.load(staged / "README.md")
    assert loaded.data.license == "cc-by-4.0" and "synthetic" in loaded.data.tags
    # what the rows are, counted: the tiny run's 3 classes x 10 backgrounds x 2, and how it was made (d3s_run.json)
    assert "Images of 3 of the 1000 ImageNet classes (tench, golden retriever, tabby) on 10 backgrounds" in loaded.text
    assert "all 30 (class, background) pairs, 2 images each" in loaded.text and "60 distinct images" in loaded.text
    assert "with the diffusion model `tiny`" in loaded.text and "More Information Needed" not in card


def test_missing_splits_fail_before_upload(tiny_run, tmp_path):
    proc = publish("--data", str(tiny_run), "--repo-id", "someone/d3s", "--dry-run", str(tmp_path / "repo"))
    assert proc.returncode == 2
    assert "lacks the split(s) validation, benchmark" in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_not_a_dataset_fails_before_upload(tmp_path):
    (tmp_path / "junk").mkdir()
    proc = publish("--data", str(tmp_path / "junk"), "--repo-id", "someone/d3s")  # no --dry-run: would upload
    assert proc.returncode == 2 and "not a d3s dataset folder" in proc.stderr
    proc = publish("--data", str(tmp_path / "junk"), "--repo-id", "no-slash")
    assert proc.returncode == 2 and "ORG/NAME" in proc.stderr


def test_corrupt_rows_are_reported_and_skipped(split_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(split_data, data)
    shard = shard_paths(data, "train")[0]
    table = pq.read_table(shard)
    cells = table.column("image").to_pylist()
    cells[1] = {"bytes": b"\x89PNG broken", "path": None}
    table = table.set_column(table.column_names.index("image"), "image", pa.array(cells, type=table.schema.field("image").type))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(shard).metadata), shard)
    proc = publish("--data", str(data), "--repo-id", "someone/d3s", "--dry-run", str(tmp_path / "repo"))
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {shard.name} row 1: image does not decode, skipped" in proc.stdout
    assert "1 corrupt rows skipped" in proc.stdout
    assert load_dataset(str(tmp_path / "repo"), split="train", cache_dir=str(tmp_path / "cache")).num_rows == 29


@pytest.fixture(scope="module")
def trained(tiny_toy, tmp_path_factory):
    """A tiny trained extractor with its probe results, as `d3s train` and `d3s probe` leave them."""
    from d3s.probes import probe
    from d3s.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "wd"
    train(TrainConfig(data=str(tiny_toy), out=str(out), backbone="test_efficientnet", pretrained=False, iters=4,
                      batch_size=16, workers=0, progress=False, hparams={"warmup_iters": 2}))
    probe(str(tiny_toy), str(out), out=str(out / "probe.json"))
    return out


def publish_ckpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "hub/publish_checkpoint.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(REPO)})


def test_checkpoint_dry_run_loads_in_d3s_and_timm(trained, tmp_path):
    import timm
    import torch

    from d3s.models import DisentangledExtractor

    staged = tmp_path / "repo"
    proc = publish_ckpt("--checkpoint", str(trained), "--repo-id", "someone/d3s-tiny", "--dry-run", str(staged))
    assert proc.returncode == 0, proc.stderr
    original = DisentangledExtractor.from_pretrained(str(trained)).eval()
    reloaded = DisentangledExtractor.from_pretrained(str(staged)).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        z0, fg0, bg0 = original(images, with_heads=True)
        z1, fg1, bg1 = reloaded(images, with_heads=True)
        assert torch.equal(z0, z1) and torch.equal(fg0, fg1) and torch.equal(bg0, bg1)
        net = timm.create_model(f"local-dir:{staged / 'timm'}", pretrained=True).eval()
        assert torch.allclose(net(original.normalize(images)), fg0, atol=1e-5)  # the fg head, in timm's format
    assert not list(staged.rglob("*.bin")) and not list(staged.rglob("*.pt"))  # safetensors only
    card = (staged / "README.md").read_text()
    assert "fg_from_bg" in card and "hf-hub:someone/d3s-tiny-timm" in card
    from huggingface_hub import ModelCard

    # the Hub's model index holds the probe numbers of probe.json, as the Hub parses it
    results = {(r.dataset_split, r.metric_name): r.metric_value for r in ModelCard.load(staged / "README.md").data.eval_results}
    probe = json.loads((trained / "probe.json").read_text())
    for name, r in probe["linear"]["validation"].items():
        assert results[("validation", f"linear probe {name} top-1")] == pytest.approx(r["top1"], abs=1e-4)
    assert "More Information Needed" not in card


def test_checkpoint_without_metrics_fails_before_upload(trained, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(trained, bare)
    (bare / "probe.json").unlink()
    proc = publish_ckpt("--checkpoint", str(bare), "--repo-id", "someone/d3s-tiny")  # no --dry-run: would upload
    assert proc.returncode == 2 and "no metrics" in proc.stderr and "d3s probe" in proc.stderr
    proc = publish_ckpt("--checkpoint", str(tmp_path / "nothing"), "--repo-id", "someone/x", "--dry-run", str(tmp_path / "r"))
    assert proc.returncode == 2 and "cannot load checkpoint" in proc.stderr
    assert not (tmp_path / "r").exists()
