"""Scoring over many processes (issue 18, part 4): `d3s benchmark`, `d3s bgchallenge` and `d3s score` share their work
among ranks, and the ranks' union is one process's run, file for file.

Two ranks are simulated in one process, as in test_frozen's embed test: threads named by their rank, a patched
``d3s.generate.distributed_state`` and a barrier with a timeout (a rank that fails breaks it instead of hanging CI).
"""

from __future__ import annotations

import collections
import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import BG_EXPECTED, BG_EXPECTED_SAFE, SYNTH_COLOURS, write_d3s_split
from d3s import benchmark as bm
from d3s import chunks
from d3s.benchmark import BenchmarkConfig, run_benchmark
from d3s.bgchallenge import VARIATIONS, BgChallengeConfig, run_bgchallenge
from d3s.classifiers import ClassifierSpec, resolve_classifier
from d3s.curate import score
from test_bgchallenge import _timm_colour, _with_weights, colour_clip
from test_benchmark import ColourReader

RUNTIME = ("seconds", "device")  # a result's run-time fields: the only ones ranks may change


def two_ranks(run, timeout: float = 60) -> dict:
    """``run(rank)`` in two threads that act as two processes of one `accelerate launch`; their returns by rank."""
    barrier = threading.Barrier(2, timeout=timeout)
    results, errors = {}, {}

    def body() -> None:
        rank = int(threading.current_thread().name)
        try:
            results[rank] = run(rank)
        except BaseException as err:  # noqa: BLE001 - reported below, after the other rank stops waiting
            errors[rank] = err
            barrier.abort()

    with pytest.MonkeyPatch.context() as m:
        m.setattr("d3s.generate.distributed_state", lambda: (int(threading.current_thread().name), 2, barrier.wait, None))
        threads = [threading.Thread(target=body, name=str(rank), daemon=True) for rank in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=2 * timeout)
    assert not any(t.is_alive() for t in threads), "a rank hangs"
    assert not errors, errors
    return results


def same_files(one: Path, two: Path) -> list[str]:
    """Both folders hold the same files with the same contents (JSON results but for their run-time fields)."""
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    for name in files:
        a, b = (one / name).read_bytes(), (two / name).read_bytes()
        if name.endswith(".json"):
            a, b = json.loads(a), json.loads(b)
            for r in (a, b):
                for k in RUNTIME:
                    r.pop(k, None)
        assert a == b, name
    return files


# --- d3s benchmark -----------------------------------------------------------------------------------

class Counted(torch.nn.Module):
    """A model that counts the images it sees, per model name."""

    seen: collections.Counter = collections.Counter()

    def __init__(self, name: str, inner: torch.nn.Module):
        super().__init__()
        self.name, self.inner = name, inner

    def forward(self, x):
        Counted.seen[self.name] += len(x)
        return self.inner(x)


BUILDS: collections.Counter = collections.Counter()


def colour_model(name: str, side: int) -> ClassifierSpec:
    """test_benchmark's colour reader at ``side`` px (so two sides make two preprocessing groups), counted."""
    config = {"input_size": (3, side, side), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
              "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def build(device):
        BUILDS[name] += 1
        return Counted(name, ColourReader(config["mean"], config["std"]))

    return ClassifierSpec(name, "timm", "supervised CNN", False, config, False, {}, build)


SPECS = (("reader-32", 32), ("reader-24", 24))


@pytest.fixture(scope="module")
def d3s_data(tmp_path_factory):
    """60 images (3 classes x 10 backgrounds x 2) whose colours a colour reader gets right except on the decoy."""
    return write_d3s_split(tmp_path_factory.mktemp("mp") / "d3s", split="benchmark", per_cell=2)


def bench(data, out, colour_photos, **kw) -> dict:
    config = BenchmarkConfig(data=str(data), out=str(out), imagenet_val=str(colour_photos), progress=False, workers=1,
                             plots=False, chunk_size=8, **kw)
    return run_benchmark(config, specs=[colour_model(*s) for s in SPECS], log=lambda line: None)


def test_two_ranks_share_the_chunks_and_write_what_one_writes(d3s_data, colour_photos, tmp_path, monkeypatch):
    one = bench(d3s_data, tmp_path / "one", colour_photos)
    assert one["evaluated"] == ["reader-32", "reader-24"] and one["rank"] == 0
    assert json.loads((tmp_path / "one" / "models" / "reader-32.json").read_text())["d3s"]["top1"] == pytest.approx(0.9)

    decoded = []
    real = bm.decode
    monkeypatch.setattr(bm, "decode", lambda images, config, *a, **k: decoded.append(
        (threading.current_thread().name, images.name, config["input_size"][1], len(images))) or real(images, config, *a, **k))
    Counted.seen.clear()
    BUILDS.clear()
    two = two_ranks(lambda rank: bench(d3s_data, tmp_path / "two", colour_photos))
    assert two[0]["evaluated"] == ["reader-32", "reader-24"]
    assert two[1] == {"rank": 1, "evaluated": [], "skipped": [], "failed": []}
    files = same_files(tmp_path / "one", tmp_path / "two")
    assert "models/reader-32.json" in files and not any(f.startswith(chunks.CHUNKS_DIR) for f in files)
    # 8 D3S chunks (60 images) and 1 ImageNet chunk (6) per preprocessing group: ranks take every other one (the
    # round-robin going on from group to group) and decode the images of their own chunks only, once per group
    mine = {(side, rank): {(s, n) for t, s, px, n in decoded if t == str(rank) and px == side}
            for side in (32, 24) for rank in (0, 1)}
    assert mine == {(32, 0): {("d3s", 32), ("imagenet", 6)}, (32, 1): {("d3s", 28)},
                    (24, 0): {("d3s", 28)}, (24, 1): {("d3s", 32), ("imagenet", 6)}}
    assert len(decoded) == 6 and BUILDS == {"reader-32": 2, "reader-24": 2}  # each model built once per rank
    assert Counted.seen == {"reader-32": 66, "reader-24": 66}  # every image scored once


def test_a_killed_run_resumes_without_scoring_a_chunk_twice(d3s_data, colour_photos, tmp_path, monkeypatch):
    """Killed after 10 of its 18 chunk files (both models' 9), rerun with two ranks: the 8 missing chunks are scored,
    the first model (all its chunks written) is not even built, and the results are an uninterrupted run's."""
    bench(d3s_data, tmp_path / "whole", colour_photos)
    written = []
    real_write = chunks.ChunkStore.write

    def write(self, chunk, *a, **k):
        if len(written) == 10:
            raise KeyboardInterrupt  # a kill: not a model failure, nothing after it runs
        written.append((self.model.name, chunk.name))
        return real_write(self, chunk, *a, **k)

    monkeypatch.setattr(chunks.ChunkStore, "write", write)
    with pytest.raises(KeyboardInterrupt):
        bench(d3s_data, tmp_path / "out", colour_photos)
    assert not list((tmp_path / "out" / "models").glob("*.json"))  # no result yet: the main process merges at the end
    Counted.seen.clear()
    BUILDS.clear()
    written.append("rerun")
    two = two_ranks(lambda rank: bench(d3s_data, tmp_path / "out", colour_photos))
    assert two[0]["evaluated"] == ["reader-32", "reader-24"]
    first, rerun = written[: written.index("rerun")], written[written.index("rerun") + 1 :]
    assert len(first) == 10 and len(rerun) == 8 and not set(first) & set(rerun)
    assert {model for model, _ in rerun} == {"reader-24"} and "reader-32" not in BUILDS
    assert Counted.seen == {"reader-24": 52 + 6}  # D3S rows 8..59 and ImageNet: each once
    same_files(tmp_path / "whole", tmp_path / "out")


def test_chunks_made_otherwise_are_never_reused(d3s_data, colour_photos, tmp_path, monkeypatch):
    """A killed fp32 run's chunks are not merged into a bf16 run: its chunk folder (another key) goes, unread."""
    real_write = chunks.ChunkStore.write
    state = {"left": 4, "keys": collections.Counter()}

    def write(self, chunk, *a, **k):
        if state["left"] == 0:
            raise KeyboardInterrupt
        state["left"] -= 1
        state["keys"][self.folder.name] += 1
        return real_write(self, chunk, *a, **k)

    monkeypatch.setattr(chunks.ChunkStore, "write", write)
    with pytest.raises(KeyboardInterrupt):
        bench(d3s_data, tmp_path / "out", colour_photos)
    stale = {p.parent.name: p.name for p in (tmp_path / "out" / chunks.CHUNKS_DIR).glob("*/*")}
    assert stale and sum(state["keys"].values()) == 4
    state.update(left=10**6, keys=collections.Counter())
    bench(d3s_data, tmp_path / "out", colour_photos, precision="bf16")
    keys = state["keys"]
    assert sum(keys.values()) == 18 and not set(keys) & set(stale.values())  # every chunk scored at bf16, none reused
    assert not (tmp_path / "out" / chunks.CHUNKS_DIR).exists()  # the stale chunks went with the merged ones
    assert bm.load_result(tmp_path / "out", "reader-32")["precision"] == "bf16"


def no_weights(device):
    raise OSError("no weights on this node")


def test_a_model_failing_on_one_rank_is_reported_once_and_keeps_the_other_ranks_chunks(d3s_data, tmp_path):
    def failing(rank):
        spec = colour_model("fragile", 32)
        if rank == 1:
            spec = replace(spec, _builder=no_weights)
        return run_benchmark(BenchmarkConfig(data=str(d3s_data), out=str(tmp_path), progress=False, workers=1, plots=False,
                                             chunk_size=8), specs=[spec], log=lambda line: None)

    two = two_ranks(failing)
    assert two[0]["failed"] == [{"model": "fragile", "error": "OSError: no weights on this node"}] and two[1]["failed"] == []
    (folder,) = (tmp_path / chunks.CHUNKS_DIR).glob("*/*")
    assert sorted(p.name for p in folder.glob("*.npz")) == [f"d3s-{s:08d}-{s + 7:08d}.npz" for s in (0, 16, 32, 48)]
    again = run_benchmark(BenchmarkConfig(data=str(d3s_data), out=str(tmp_path), progress=False, workers=1, plots=False,
                                          chunk_size=8), specs=[colour_model("fragile", 32)], log=lambda line: None)
    assert again["evaluated"] == ["fragile"] and not again["failed"]


RANK_SCRIPT = """
import json, sys
from pathlib import Path
sys.path[:0] = [{tests!r}]
from test_multiprocess_scoring import bench
summary = bench(Path({data!r}), Path({out!r}), Path({photos!r}))
print(json.dumps({{k: summary[k] for k in ("rank", "evaluated", "failed")}}))
"""


def test_two_real_processes_write_what_one_writes(d3s_data, colour_photos, tmp_path):
    """The same through torch.distributed (gloo, on the CPU) in two processes, as `accelerate launch` starts them."""
    import os
    import subprocess
    import sys

    from conftest import REPO, free_port

    bench(d3s_data, tmp_path / "one", colour_photos)
    script = RANK_SCRIPT.format(tests=str(REPO / "tests"), data=str(d3s_data), out=str(tmp_path / "two"),
                                photos=str(colour_photos))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert summaries == [{"rank": 0, "evaluated": ["reader-32", "reader-24"], "failed": []},
                         {"rank": 1, "evaluated": [], "failed": []}]
    same_files(tmp_path / "one", tmp_path / "two")


# --- d3s bgchallenge ---------------------------------------------------------------------------------

def challenge(data, out, **kw) -> dict:
    specs = [_with_weights(resolve_classifier("test_resnet", pretrained=False), _timm_colour),
             _with_weights(resolve_classifier("clip:tiny"), colour_clip)]
    config = BgChallengeConfig(data=str(data), out=str(out), batch_size=4, workers=1, progress=False, plots=False,
                               chunk_size=4, search_chunk=4, **kw)
    return run_bgchallenge(config, specs=specs, log=lambda line: None)


def test_bgchallenge_two_ranks_give_one_rank_known_answers(bg_challenge, tmp_path):
    """Each variation in chunks of 4 of its 9 images, the search in chunks of 4 of its 9 foregrounds, shared by two
    ranks: the files are one rank's, and the answers are the challenge folder's known ones."""
    one = challenge(bg_challenge, tmp_path / "one")
    two = two_ranks(lambda rank: challenge(bg_challenge, tmp_path / "two"))
    assert one["evaluated"] == two[0]["evaluated"] == ["test_resnet", "clip:tiny"] and two[1]["rank"] == 1
    same_files(tmp_path / "one", tmp_path / "two")
    for path in (tmp_path / "two" / "bgchallenge" / "models").glob("*.json"):
        result = json.loads(path.read_text())
        for v in VARIATIONS:
            assert list(result["variations"][v]["per_class"].values()) == [float(x) for x in BG_EXPECTED[v]], v
        adv = result["adversarial"]
        assert (adv["n"], adv["vulnerable"], adv["search_chunk"]) == (9, 7, 4)
        assert list(adv["per_class"].values()) == [float(x) for x in BG_EXPECTED_SAFE]
        assert [f["tried"] for f in adv["foregrounds"][:2]] == [9, 9]  # the safe ones try every background


# --- d3s score ---------------------------------------------------------------------------------------

def shards(root: Path) -> Path:
    """Three shards of 10 colour images each (the split `d3s score` scores by default is train)."""
    write_d3s_split(root, split="train", backgrounds=range(10))
    table = pq.read_table(next((root / "data").glob("*.parquet")))
    for p in (root / "data").glob("*.parquet"):
        p.unlink()
    for k in range(3):
        part = table.slice(10 * k, 10)
        pq.write_table(part, root / "data" / f"train-{10 * k:08d}-{10 * k + 9:08d}.parquet")
    return root


def colour_check():
    """A zero-shot stand-in: logits from each image's mean colour (so ranks and margins vary), counted per rank."""
    classes = sorted(SYNTH_COLOURS)
    protos = np.asarray([SYNTH_COLOURS[c] for c in classes], dtype=np.float64)

    def check(images):
        calls[threading.current_thread().name] += len(images)
        rgb = np.stack([np.asarray(im, dtype=np.float64).mean((0, 1)) for im in images])
        logits = np.full((len(images), 1000), -1e3) + np.arange(1000) / 1000
        logits[:, classes] = -np.linalg.norm(rgb[:, None] - protos[None], axis=2)
        return logits

    calls = collections.Counter()
    check.calls, check.model_name, check.precision = calls, "colour-check", "fp32"
    check.identity = {"name": "colour-check"}
    return check


def test_score_two_ranks_write_the_columns_one_writes_and_a_rerun_keeps_them(tmp_path):
    data = shards(tmp_path / "one")
    shutil.copytree(data, tmp_path / "two")
    check = colour_check()
    one = score(data, zero_shot=check, batch_size=4, progress=False)
    assert (one["rows"], one["scored"], one["reused"]) == (30, 3, 0)
    check.calls.clear()
    two = two_ranks(lambda rank: score(tmp_path / "two", zero_shot=check, batch_size=4, progress=False))
    assert two[0] == {**one, "rank": 0} and two[1] == {"scored": 3, "reused": 0, "rank": 1}
    assert check.calls == {"0": 20, "1": 10}  # shards 0 and 2, shard 1
    for p in sorted((data / "data").glob("*.parquet")):
        a, b = pq.read_table(p), pq.read_table(tmp_path / "two" / "data" / p.name)
        assert a.equals(b) and a.schema.metadata == b.schema.metadata
        assert {"clip_rank", "clip_margin", "blank"} <= set(a.column_names)
    for name in ("README.md", "d3s_score.json"):
        assert (data / name).read_text() == (tmp_path / "two" / name).read_text()
    ranks = pq.read_table(data / "data" / "train-00000000-00000009.parquet").column("clip_rank").to_pylist()
    assert ranks.count(1) == 9  # class 0 on every background but the decoy

    check.calls.clear()
    again = score(data, zero_shot=check, batch_size=4, progress=False)  # the same check: every shard kept as it is
    assert (again["scored"], again["reused"], again["rows"]) == (0, 3, 30) and not check.calls
    anonymous = colour_check()
    anonymous.identity = None  # a check that cannot be told apart from another is always run again
    assert score(data, zero_shot=anonymous, batch_size=4, progress=False)["scored"] == 3
