"""Automatic checks and splits on a tiny generated dataset: columns added, counts that add up."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from datasets import load_dataset

from d3s.curate import Thresholds, assign_validation, format_report, removal_report, score, split
from d3s.dataset import DatasetFormatError
from d3s.review import ReviewStore, dataset_key


@pytest.fixture
def scored(tiny_run, tmp_path):
    data = tmp_path / "gen"
    shutil.copytree(tiny_run, data)

    def zero_shot(images):
        """A stand-in classifier: ranks class 281 first for every image (so tabby rows pass, others fail)."""
        logits = np.zeros((len(images), 1000))
        logits[:, 281] = 5.0
        logits[:, 207] = 1.0
        return logits

    summary = score(data, zero_shot=zero_shot, progress=False)
    assert summary["rows"] == 60
    return data


def test_score_adds_columns_and_keeps_labels(scored):
    ds = load_dataset(str(scored), split="train")
    for col in ("pixel_std", "blank", "clip_rank", "clip_margin"):
        assert col in ds.column_names
    assert ds.features["fg"].names[281] == "tabby"
    ranks = {fg: r for fg, r in zip(ds["fg"], ds["clip_rank"])}
    assert ranks == {281: 1, 207: 2, 0: 3}
    margins = {fg: round(m, 3) for fg, m in zip(ds["fg"], ds["clip_margin"])}
    assert margins == {281: 4.0, 207: -4.0, 0: -5.0}
    assert not any(ds["blank"])  # the tiny model's noise is not blank


def test_removal_report_counts_per_class_and_background(scored):
    report = removal_report(scored, thresholds=Thresholds(max_rank=1))
    assert report["rows"] == 60 and report["removed"] == 40
    assert report["per_class"] == {"tench": 20, "golden retriever": 20}
    assert sum(report["per_background"].values()) == 40 and len(report["per_background"]) == 10
    assert "40 of 60 images would be removed" in format_report(report)


def test_split_by_automatic_checks(scored, tmp_path):
    report = split(scored, tmp_path / "splits", thresholds=Thresholds(max_rank=1), fraction=0.5)
    s = report["splits"]
    assert s["train"]["rows"] + s["validation"]["rows"] == 60
    assert s["validation"]["rows"] == 30  # 1 of the 2 images of each of the 30 (fg, bg) cells
    assert s["benchmark"]["rows"] == 10  # only the tabby rows pass max_rank=1
    assert sum(report["removed"].values()) == 20
    ds = load_dataset(str(tmp_path / "splits"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 30, "validation": 30, "benchmark": 10}
    assert ds["benchmark"].features["bg"].names[7] == "in snow"
    assert set(ds["benchmark"]["fg"]) == {281}
    assert set(ds["benchmark"]["item_id"]) <= set(ds["validation"]["item_id"])
    assert not set(ds["train"]["item_id"]) & set(ds["validation"]["item_id"])


def test_split_by_human_review(tiny_run, tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    key = dataset_key(tiny_run)
    for item in range(60):
        store.add(key, item, "ann", object_present=item % 2 == 0, unsafe=item == 4)
        store.add("other-dataset", item, "bob", object_present=False, unsafe=True)  # must not count here
    report = split(tiny_run, tmp_path / "splits", reviews=tmp_path / "reviews.sqlite", fraction=0.5)
    val = load_dataset(str(tmp_path / "splits"), split="validation")["item_id"]
    bench = load_dataset(str(tmp_path / "splits"), split="benchmark")["item_id"]
    assert sorted(bench) == sorted(i for i in val if i % 2 == 0 and i != 4)
    assert report["basis"] == f"human review (unanimous, dataset key {key})"
    assert report["removed"].get("object missing", 0) == sum(1 for i in val if i % 2)


def test_validation_assignment_is_stratified_and_reproducible():
    fg = [c for c in range(5) for _ in range(12 * 10)]
    bg = [b for _ in range(5) for b in range(10) for _ in range(12)]
    seeds = list(range(len(fg)))
    mask = assign_validation(fg, bg, seeds)
    assert mask.sum() == 5 * 10 * 2  # 2 of 12 per (fg, bg) pair, as 20,000 of 120,000
    assert (mask == assign_validation(fg, bg, seeds)).all()
    with pytest.raises(DatasetFormatError, match="validation-fraction"):
        assign_validation(fg, bg, seeds, fraction=1.5)


def test_split_refuses_a_folder_without_shards(tmp_path):
    with pytest.raises(DatasetFormatError, match="is not a parquet dataset: found nothing"):
        split(tmp_path, tmp_path / "out")


def test_score_cli_with_a_tiny_clip(tiny_run, tmp_path):
    from conftest import run_d3s

    data = tmp_path / "gen"
    shutil.copytree(tiny_run, data)
    proc = run_d3s("score", "--data", str(data), "--clip", "clip:tiny", "--no-pretrained", "--max-rank", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "scored 60 images" in proc.stdout and "0 of 60 images would be removed" in proc.stdout
    ranks = load_dataset(str(data), split="train")["clip_rank"]
    assert len(ranks) == 60 and all(1 <= r <= 1000 for r in ranks)


def test_split_streams_shard_by_shard_with_the_same_rows_as_reading_all(tmp_path):
    """The source read a shard at a time (never whole): each split gets the source's rows in order, cut into shards of
    ``rows_per_shard`` named by their last row, and shards that lack a column other shards have (a partial `d3s score`)
    get it as nulls, as when the whole split was one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import write_d3s_split

    from d3s.dataset import shard_paths, write_table

    one = write_d3s_split(tmp_path / "one", split="train", per_cell=2)
    table = pq.read_table(shard_paths(one)[0])
    src = tmp_path / "src"
    for k, start in enumerate(range(0, table.num_rows, 7)):
        part = table.slice(start, 7)
        if k % 2 == 0:  # every other shard scored
            ids = part.column("item_id").to_numpy()
            part = part.append_column("clip_rank", pa.array(ids % 3 + 1, type=pa.int32()))
        write_table(src, "train", part)
    shutil.copy(one / "README.md", src / "README.md")
    report = split(src, tmp_path / "out", fraction=0.5, thresholds=Thresholds(max_rank=2), rows_per_shard=4)

    whole = pa.concat_tables([pq.read_table(p) for p in shard_paths(src, "train")], promote_options="default")
    fg, bg = whole.column("fg").to_pylist(), whole.column("bg").to_pylist()
    is_val = assign_validation(fg, bg, list(range(whole.num_rows)), 0.5)
    ranks = whole.column("clip_rank").to_pylist()
    keep = np.array([r is None or r <= 2 for r in ranks])
    for name, mask in {"train": ~is_val, "validation": is_val, "benchmark": is_val & keep}.items():
        paths = shard_paths(tmp_path / "out", name)
        expected = whole.filter(pa.array(mask))
        sizes = [pq.ParquetFile(p).metadata.num_rows for p in paths]
        assert sizes == [4] * (expected.num_rows // 4) + ([expected.num_rows % 4] if expected.num_rows % 4 else [])
        assert [p.name for p in paths] == [f"{name}-{k:08d}-{4 * k + n - 1:08d}.parquet" for k, n in enumerate(sizes)]
        got = pa.concat_tables([pq.read_table(p) for p in paths])
        assert got.to_pylist() == expected.to_pylist() and report["splits"][name]["rows"] == expected.num_rows
    assert 0 < report["splits"]["benchmark"]["rows"] < report["splits"]["validation"]["rows"]
    ds = load_dataset(str(tmp_path / "out"), split="benchmark")
    assert ds.features["bg"].names[7] == "in snow" and ds.num_rows == report["splits"]["benchmark"]["rows"]
