"""Generation end to end on the tiny preset: the acceptance points of the generation issue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, load_dataset

from conftest import REPO, run_d3s, run_main
from d3s.dataset import shard_paths
from d3s.generate import GenerationConfig, GenerationError, make_plan, read_rows, regenerate
from d3s.labels import imagenet_classes

SMALL = ["--model", "tiny", "--size", "64", "--steps", "4", "--batch-size", "4", "--shard-size", "4"]


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_acceptance_command_gives_60_rows_with_labels_and_prompts(tiny_run):
    ds = load_dataset(str(tiny_run), split="train")
    assert ds.num_rows == 60
    assert isinstance(ds.features["fg"], ClassLabel) and ds.features["fg"].num_classes == 1000
    assert ds.features["fg"].names == [c.name for c in imagenet_classes()]
    assert ds.features["bg"].names[7] == "in snow" and ds.features["bg"].num_classes == 10
    for col in ("image", "guide", "prompt", "seed", "photo", "template", "paste_box", "model", "steps", "strength", "nsfw"):
        assert col in ds.column_names
    assert sorted(set(ds["fg"])) == [0, 207, 281]
    assert sorted(ds["item_id"]) == list(range(60))
    rows = [r for r in ds.select_columns(["fg", "bg", "prompt", "photo"]) if r["fg"] == 281 and r["bg"] == 7]
    assert len(rows) == 2
    assert rows[0]["prompt"] == "a photo of a tabby, a cat with a grey or tawny coat mottled with black, in snow"
    assert rows[0]["photo"].startswith("n02123045/")  # relative reference, never an absolute path
    assert ds[0]["image"].size == (64, 64)
    assert len(set(ds["seed"])) == 60
    card = (tiny_run / "README.md").read_text()
    assert "configs:" in card and "class_label" in card and "60 of 60 planned" in card


def test_row_regenerates_to_the_same_pixels(tiny_run, photo_dir):
    ds = load_dataset(str(tiny_run), split="train")
    item = [r["item_id"] for r in ds.select_columns(["item_id", "fg", "bg"]) if r["fg"] == 281 and r["bg"] == 7][0]
    # From the stored guide ...
    image, row = regenerate(tiny_run, item)
    assert (pixels(image) == pixels(row["image"])).all()
    # ... and with the guide rebuilt from the recorded photo, template and paste box.
    image2, _ = regenerate(tiny_run, item, photos=str(photo_dir))
    assert (pixels(image2) == pixels(row["image"])).all()


def test_regenerate_cli_reports_identical(tiny_run, tmp_path):
    proc = run_d3s("regenerate", "--data", str(tiny_run), "--item", "3", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 0, proc.stderr
    assert "identical to the stored image" in proc.stdout
    assert (tmp_path / "x.png").exists()


def test_dry_run_prints_counts_and_touches_nothing(tmp_path, photo_dir, capsys):
    from d3s.cli import main

    out = tmp_path / "never"
    code = main(["generate", "--model", "tiny", "--foregrounds", "0,281", "--backgrounds", "snow,grass",
                 "--per-pair", "3", "--imagenet", str(photo_dir), "--out", str(out), "--dry-run"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "plan: 12 images" in stdout
    assert "in snow        6" in stdout and "tabby" in stdout
    assert not out.exists()


def test_killed_run_resumes_to_exactly_the_plan(tmp_path, photo_dir):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "d3s", "generate", *SMALL, "--foregrounds", "0,207,281", "--backgrounds", "all",
            "--per-pair", "2", "--imagenet", str(photo_dir), "--out", str(out)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(shard_paths(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = sum(pq.read_metadata(p).num_rows for p in shard_paths(out))
    assert 0 < before < 60, f"the kill should land mid-run, found {before} rows"

    run_d3s("generate", *SMALL, "--foregrounds", "0,207,281", "--backgrounds", "all", "--per-pair", "2",
            "--imagenet", str(photo_dir), "--out", str(out), check=True)
    ids = [i for p in shard_paths(out) for i in pq.read_table(p, columns=["item_id"]).column(0).to_pylist()]
    assert sorted(ids) == list(range(60))  # no duplicate, no hole
    assert not [p for p in (out / "data").iterdir() if p.name.endswith(".tmp")]
    assert load_dataset(str(out), split="train").num_rows == 60  # every shard readable

    # A third run has nothing left to do.
    proc = run_d3s("generate", *SMALL, "--foregrounds", "0,207,281", "--backgrounds", "all", "--per-pair", "2",
                   "--imagenet", str(photo_dir), "--out", str(out), check=True)
    assert "0 generated now, 60 were already there" in proc.stdout


def test_two_processes_equal_one(tmp_path, photo_dir):
    """The union of a 2-process accelerate run equals a 1-process run: same rows, same pixels.

    CPU float sums depend on the thread count, and torchrun gives each process one thread, so the
    single-process reference runs with one thread too.
    """
    common = [*SMALL, "--foregrounds", "0,281", "--backgrounds", "snow,grass,night", "--per-pair", "2",
              "--imagenet", str(photo_dir)]
    run_d3s("generate", *common, "--out", str(tmp_path / "one"), env={"OMP_NUM_THREADS": "1"}, check=True)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "d3s", "generate", *common, "--out", str(tmp_path / "two")]
    proc = subprocess.run(launch, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_rows(tmp_path / "one", range(12)), read_rows(tmp_path / "two", range(12))
    assert [r["item_id"] for r in two] == list(range(12))
    shards_two = shard_paths(tmp_path / "two")
    assert len(shards_two) == 3  # one shard per batch, written by both processes
    for a, b in zip(one, two):
        for key in ("fg", "bg", "prompt", "seed", "photo", "template", "paste_box"):
            assert a[key] == b[key]
        assert (pixels(a["guide"]) == pixels(b["guide"])).all()
        assert (pixels(a["image"]) == pixels(b["image"])).all()


BAD_INPUTS = [
    (["--foregrounds", "0,tabbby"], "Unknown ImageNet class 'tabbby'. Closest valid names: tabby"),
    (["--foregrounds", "0", "--backgrounds", "in space"], "Valid backgrounds: on grass, on a road"),
    (["--foregrounds", "0", "--imagenet", "/nonexistent/photos"], "does not exist"),
    (["--foregrounds", "0,1", "--imagenet", "PHOTOS"], "no photos for 1 class(es): goldfish (n01443537)"),
    (["--foregrounds", "0", "--templates", "PHOTOS"], "no templates for background(s) on grass"),
    (["--foregrounds", "0", "--strength", "0"], "--strength must be in (0, 1]"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=["class", "background", "photo-folder", "class-without-photos",
                                                          "template-folder", "strength"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, photo_dir, args, message, capsys):
    args = [str(photo_dir) if a == "PHOTOS" else a for a in args]
    out = tmp_path / "out"
    start = time.time()
    code, lines = run_main(capsys, "generate", "--model", "tiny", *args, "--out", str(out))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("d3s generate: error:"), lines
    assert message in lines[0]
    assert not out.exists()
    assert time.time() - start < 60  # fails up front: no model is loaded


def test_bad_input_through_the_real_process(tmp_path):
    """The same refusal from `python -m d3s`: exit status 2 and one line on stderr."""
    proc = run_d3s("generate", "--model", "tiny", "--foregrounds", "0,tabbby", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Closest valid names: tabby" in proc.stderr


def test_other_settings_refuse_to_resume(tiny_run, photo_dir, capsys):
    before = sorted(p.name for p in (tiny_run / "data").iterdir())
    code, err = run_main(capsys, "generate", "--model", "tiny", "--foregrounds", "0,207,281", "--per-pair", "2", "--size", "64",
                         "--steps", "20", "--imagenet", str(photo_dir), "--out", str(tiny_run))
    assert code == 2
    assert "other settings (steps: folder has 10, this run asks 20)" in " ".join(err)
    assert sorted(p.name for p in (tiny_run / "data").iterdir()) == before


def test_unrelated_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GenerationError, match="not a d3s generation folder"):
        from d3s.generate import generate

        generate(GenerationConfig(foregrounds="0", out=str(tmp_path), model="tiny", size=64, steps=4, per_pair=1))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_plan_seeds_are_stable_when_the_plan_grows():
    small, _, _ = make_plan(GenerationConfig(foregrounds="0,281", backgrounds="snow", per_pair=2, out="x", model="tiny"))
    big, _, _ = make_plan(GenerationConfig(foregrounds="0-3,281", backgrounds="all", per_pair=3, out="x", model="tiny"))
    seeds_big = {(big.classes[i.fg].wnid, i.bg, i.k): i.seed for i in big.items}
    for i in small.items:
        assert seeds_big[(small.classes[i.fg].wnid, i.bg, i.k)] == i.seed


def test_wordnet_concepts_extend_the_label_space(tmp_path):
    photos = tmp_path / "photos"
    from conftest import write_photo_folder

    write_photo_folder(photos, wnids=("n02439033",), per_class=2)  # giraffe.n.01: not an ImageNet class
    out = tmp_path / "out"
    run_d3s("generate", "--model", "tiny", "--foregrounds", "wordnet:giraffe.n.01", "--backgrounds", "sand",
            "--per-pair", "2", "--size", "64", "--steps", "2", "--imagenet", str(photos), "--out", str(out), check=True)
    ds = load_dataset(str(out), split="train")
    assert ds.features["fg"].num_classes == 1001
    assert ds.features["fg"].int2str(ds[0]["fg"]) == "giraffe (n02439033)"
    assert ds[0]["prompt"].startswith("a photo of a giraffe, tallest living quadruped")


def test_manifest_records_settings_without_absolute_photo_paths_in_rows(tiny_run):
    manifest = json.loads((tiny_run / "d3s_run.json").read_text())
    assert manifest["settings"]["steps"] == 10 and manifest["settings"]["strength"] == 0.9
    assert manifest["settings"]["recipe"]["name"] == "backgrounds"
    rows = read_rows(tiny_run, [0])
    assert not rows[0]["photo"].startswith("/")


def test_safety_checker_flags_are_recorded_not_dropped(tmp_path):
    """The tiny preset carries a random-weight safety checker of the real class; rigged to flag every image."""
    import numpy as np
    from datasets import load_dataset

    from d3s.diffusion import load_pipeline
    from d3s.generate import generate

    pipe = load_pipeline("tiny", device="cpu", safety_checker=True)
    config = GenerationConfig(foregrounds="281", backgrounds="snow,grass", per_pair=1, out=str(tmp_path / "ok"),
                              model="tiny", size=64, steps=2, batch_size=2, safety_checker=True)
    generate(config, pipe=pipe, progress=False)
    assert load_dataset(str(tmp_path / "ok"), split="train")["nsfw"] == [False, False]  # the checker ran

    pipe.safety_checker.concept_embeds_weights.data.fill_(-1.0)  # every image now scores as unsafe
    config.out = str(tmp_path / "flagged")
    generate(config, pipe=pipe, progress=False)
    ds = load_dataset(str(tmp_path / "flagged"), split="train")
    assert ds.num_rows == 2 and ds["nsfw"] == [True, True]
    assert np.asarray(ds[0]["image"]).max() == 0  # diffusers blacks flagged images out; the row stays


def test_unreadable_shard_is_set_aside_and_redone(tmp_path, capsys):
    from d3s.diffusion import load_pipeline
    from d3s.generate import generate

    pipe = load_pipeline("tiny", device="cpu")
    config = GenerationConfig(foregrounds="0,281", backgrounds="snow,grass", per_pair=1, out=str(tmp_path / "out"),
                              model="tiny", size=64, steps=2, batch_size=2, shard_size=2)
    generate(config, pipe=pipe, progress=False)
    shards = shard_paths(config.out)
    assert len(shards) == 2
    shards[0].write_bytes(b"not parquet")  # e.g. a disk fault
    summary = generate(config, pipe=pipe, progress=False)
    assert "unreadable" in capsys.readouterr().out
    assert summary["generated"] == 2 and summary["total"] == 4
    assert sorted(read_rows(config.out, range(4)), key=lambda r: r["item_id"])[0]["item_id"] == 0
    assert list((tmp_path / "out" / "data").glob("*.unreadable"))


def test_photos_from_a_hub_style_dataset(tmp_path):
    """``--imagenet hf:ID`` reads an image/label dataset (here a local folder, as load_dataset accepts both)."""
    import datasets
    from PIL import Image

    from d3s.diffusion import load_pipeline
    from d3s.generate import generate

    photos = tmp_path / "imagenet-hub"
    (photos / "data").mkdir(parents=True)
    colors = {0: (255, 0, 0), 281: (0, 255, 0)}
    table = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (40, 30), colors[k]) for k in (0, 281, 281)], "label": [0, 281, 281]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    table.to_parquet(str(photos / "data" / "train-0.parquet"))
    config = GenerationConfig(foregrounds="0,281", backgrounds="snow", per_pair=2, out=str(tmp_path / "out"),
                              model="tiny", size=64, steps=2, batch_size=4, photos=f"hf:{photos}")
    generate(config, pipe=load_pipeline("tiny", device="cpu"), progress=False)
    rows = read_rows(config.out, range(4))
    assert {r["photo"] for r in rows if r["fg"] == 0} == {"row:0"}
    assert {r["photo"] for r in rows if r["fg"] == 281} <= {"row:1", "row:2"}
    for r in rows:  # the pasted pixels are the class's photo colour
        x0, y0, x1, y1 = r["paste_box"]
        assert tuple(np.asarray(r["guide"])[(y0 + y1) // 2, (x0 + x1) // 2]) == colors[r["fg"]]
    with pytest.raises(GenerationError, match="no rows for: goldfish"):
        make_plan(GenerationConfig(foregrounds="1", out="x", model="tiny", photos=f"hf:{photos}"))
