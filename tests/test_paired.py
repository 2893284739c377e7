"""Counterfactual D3S (issue 12, parts 1-3): paired generation, its benchmark scores, the app's Across-backgrounds tab.

The paired run is acceptance 1's (3 classes x 10 backgrounds x 2) at 32 px with one denoising step; the
benchmark scores are checked against a classifier whose answer on every image is scripted in advance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch

from d3s import cli
from d3s.dataset import shard_paths
from d3s.generate import GenerationConfig, GenerationError, generate, make_plan, prepare_batch, read_rows, regenerate
from d3s.prompts import BACKGROUNDS, slug

CLASSES = (0, 207, 281)
PAIRED_ARGS = ["generate", "--model", "tiny", "--paired", "--foregrounds", "0,207,281", "--backgrounds", "all",
               "--per-pair", "2", "--size", "32", "--steps", "2", "--shard-size", "8"]


def paired_config(out, photo_dir, paired: bool = True) -> GenerationConfig:
    """PAIRED_ARGS as a config (the default batch of 8 cuts the groups of 10)."""
    return GenerationConfig(foregrounds="0,207,281", out=str(out), per_pair=2, model="tiny", size=32, steps=2,
                            shard_size=8, photos=str(photo_dir), paired=paired)

# The committed code before paired runs existed, on conftest's tiny_run settings and photo folder
# (3 classes x 10 backgrounds x 2, 64 px): (item_id, fg, bg, k, seed, photo, template, paste_box, prompt) of
# every row as JSON, and the guides' pixels.
UNPAIRED_ROWS_SHA256 = "1489d2db2bc969f1df98646c4efaf0d9c8de6bb74eb5dd1276f971ce91b92fdc"
UNPAIRED_GUIDES_SHA256 = "af6b4a2166db6afec57b5344605e792859100801b8681f310b14eab573d59bf6"
META = ("item_id", "fg", "bg", "k", "seed", "photo", "template", "paste_box", "prompt")


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps([{k: r[k] for k in META} for r in rows]).encode()).hexdigest()


@pytest.fixture(scope="module")
def pipe():
    from d3s.diffusion import cached_pipeline

    return cached_pipeline("tiny", "cpu")


@pytest.fixture(scope="module")
def paired_run(tmp_path_factory, photo_dir, pipe):
    out = tmp_path_factory.mktemp("paired") / "d3s"
    generate(paired_config(out, photo_dir), pipe=pipe, progress=False)
    return out


@pytest.fixture(scope="module")
def paired_rows(paired_run):
    return read_rows(paired_run, range(60))


# --- 1. paired generation ------------------------------------------------------------------------------

def test_unpaired_plan_and_guides_are_unchanged(photo_dir):
    """Without --paired, seeds, choices, prompts and guides are those of the code before paired runs."""
    plan, photos, templates = make_plan(GenerationConfig(foregrounds="0,207,281", out="x", per_pair=2, model="tiny",
                                                         size=64, photos=str(photo_dir)))
    rows, guides = [], hashlib.sha256()
    for batch in plan.batches():
        prepared = prepare_batch(plan, batch, photos, templates)
        for item, choice, guide, prompt in zip(prepared.items, prepared.choices, prepared.guides, prepared.prompts):
            rows.append({"item_id": item.item_id, "fg": item.fg, "bg": item.bg, "k": item.k, "seed": item.seed,
                         "photo": choice.photo, "template": choice.template, "paste_box": list(choice.paste_box),
                         "prompt": prompt})
            guides.update(np.asarray(guide).tobytes())
            assert item.group is None
    assert _digest(rows) == UNPAIRED_ROWS_SHA256
    assert guides.hexdigest() == UNPAIRED_GUIDES_SHA256
    assert "paired" not in plan.manifest()["settings"]  # an unpaired folder made before keeps resuming


def test_unpaired_run_rows_are_unchanged(tiny_run):
    """conftest's run (the CLI, no --paired): the same rows as before, no group column, no paired setting."""
    import pyarrow.parquet as pq

    rows = read_rows(tiny_run, range(60))
    assert _digest(rows) == UNPAIRED_ROWS_SHA256
    assert "group" not in pq.read_schema(shard_paths(tiny_run)[0]).names
    assert "paired" not in json.loads((tiny_run / "d3s_run.json").read_text())["settings"]
    assert "Paired run" not in (tiny_run / "README.md").read_text()


def test_paired_groups_share_photo_box_and_seed(paired_run, paired_rows):
    rows = paired_rows
    assert [r["item_id"] for r in rows] == list(range(60))
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    assert sorted(groups) == list(range(6))  # one per class and k
    seeds = set()
    for g, members in groups.items():
        assert [r["bg"] for r in members] == list(range(10))  # every background once, side by side
        assert {r["fg"] for r in members} == {CLASSES[g // 2]} and {r["k"] for r in members} == {g % 2}
        for key in ("photo", "paste_box", "seed"):
            assert len({json.dumps(r[key]) for r in members}) == 1, key
        assert members[0]["photo"].startswith(members[0]["fg_wnid"] + "/") and members[0]["paste_box"] != [0, 0, 0, 0]
        for r in members:  # the template and the prompt follow the background
            assert r["template"].startswith(f"procedural:{slug(BACKGROUNDS[r['bg']])}:")
            assert r["prompt"].endswith(", " + BACKGROUNDS[r["bg"]])
        x0, y0, x1, y1 = members[0]["paste_box"]
        pasted = [pixels(r["guide"])[y0:y1, x0:x1] for r in members]
        assert all((p == pasted[0]).all() for p in pasted)  # the very same photo pixels on every background
        assert len({pixels(r["image"]).tobytes() for r in members}) == 10
        seeds.add(members[0]["seed"])
    assert len(seeds) == 6
    assert len({r["template"] for r in rows}) > 10  # templates are drawn, not fixed per group

    manifest = json.loads((paired_run / "d3s_run.json").read_text())
    assert manifest["settings"]["paired"] is True
    card = (paired_run / "README.md").read_text()
    assert "| paired | yes: 6 groups (one per class and k), each on the run's 10 backgrounds |" in card
    assert "**Paired run.**" in card and "60 of 60 planned" in card


def test_paired_rows_regenerate_exactly_across_group_boundaries(paired_run, paired_rows, photo_dir, pipe):
    """Batches of 8 cut groups of 10: item 9 shares its batch with the next group, and still regenerates exactly."""
    assert paired_rows[8]["group"] == 0 and paired_rows[10]["group"] == 1
    image, row = regenerate(paired_run, 9, pipe=pipe)
    assert (pixels(image) == pixels(row["image"])).all()
    image, row = regenerate(paired_run, 12, photos=str(photo_dir), pipe=pipe)  # guide rebuilt from photo, template, box
    assert (pixels(image) == pixels(row["image"])).all()


def test_paired_run_resumes_to_the_same_pixels(paired_run, paired_rows, tmp_path, photo_dir, pipe):
    copy = tmp_path / "d3s"
    shutil.copytree(paired_run, copy)
    lost = shard_paths(copy)[2]  # items 16-23: the end of group 1 and the start of group 2
    lost.unlink()
    summary = generate(paired_config(copy, photo_dir), pipe=pipe, progress=False)
    assert (summary["generated"], summary["already_done"], summary["total"]) == (8, 52, 60)
    again = read_rows(copy, range(16, 24))
    for a, b in zip(again, paired_rows[16:24]):
        assert a["group"] == b["group"] and a["seed"] == b["seed"] and (pixels(a["image"]) == pixels(b["image"])).all()
    # an unpaired run cannot resume a paired folder
    with pytest.raises(GenerationError, match="paired: folder has true, this run asks false"):
        generate(paired_config(copy, photo_dir, paired=False), pipe=pipe, progress=False)


def test_paired_dry_run_and_one_background_refused(capsys, photo_dir):
    assert cli.main([*PAIRED_ARGS, "--imagenet", str(photo_dir), "--dry-run"]) == 0
    assert "paired: 6 groups, each one object (photo, paste position, noise) on 10 backgrounds" in capsys.readouterr().out
    assert cli.main(["generate", "--model", "tiny", "--paired", "--foregrounds", "0", "--backgrounds", "snow",
                     "--out", "never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--paired shows each object on several backgrounds" in err[0] and "in snow" in err[0]


def test_across_backgrounds_is_the_datasets_group(paired_rows, photo_dir, pipe):
    """The app's path (d3s.live.generate_across) draws what `d3s generate --paired` drew for group k = 0."""
    from PIL import Image

    from d3s.guides import FolderPhotos
    from d3s.live import generate_across

    steps = []
    r = generate_across(pipe, "tabby", 0, photos=FolderPhotos(photo_dir), size=32, steps=2, batch_size=8,
                        callback=lambda i, n: steps.append((i, n)))
    group = [row for row in paired_rows if row["group"] == 4]  # tabby, k = 0
    assert r.backgrounds == list(BACKGROUNDS) and r.seed == group[0]["seed"]
    assert [(c.photo, list(c.paste_box), c.template) for c in r.choices] == [(g["photo"], g["paste_box"], g["template"]) for g in group]
    assert r.prompts == [g["prompt"] for g in group]
    assert all((pixels(a) == pixels(b["guide"])).all() for a, b in zip(r.guides, group))
    assert steps == [(1, 2), (2, 2)]  # two batches (8 + 2 backgrounds) of one step each
    # an uploaded photo stands in for the ImageNet photo, at one position on every background
    upload = Image.new("RGB", (30, 20), (250, 10, 10))
    r = generate_across(pipe, "tabby", 0, photo=upload, size=32, steps=2)
    assert {(c.photo, c.paste_box) for c in r.choices} == {("upload", r.choices[0].paste_box)}
    x0, y0, x1, y1 = r.choices[0].paste_box
    assert all(tuple(np.asarray(g)[(y0 + y1) // 2, (x0 + x1) // 2]) == (250, 10, 10) for g in r.guides)


# --- 2. counterfactual scores --------------------------------------------------------------------------

def test_counterfactual_scores_by_hand():
    from d3s.counterfactual import counterfactual_scores, flips, majority_answer

    names = ["a", "b", "c"]
    # group 7: right on a and b, wrong on c (2-1: majority right); group 8: 1-1 tie without the truth;
    # group 9: one background only (not counted)
    top1 = np.array([5, 5, 6, 2, 3, 5])
    fg = np.array([5, 5, 5, 1, 1, 5])
    bg = np.array([0, 1, 2, 0, 1, 2])
    group = np.array([7, 7, 7, 8, 8, 9])
    s = counterfactual_scores(top1, fg, bg, group, names)
    assert (s["groups"], s["images"], s["consistency"], s["all_backgrounds_top1"], s["tied_groups"]) == (2, 5, 0.0, 0.0, 1)
    # group 8's majority is 2 (the smaller of the tied 2 and 3), so its image on b flips
    assert s["per_background"] == {"a": {"n": 2, "flips": 0, "flip_rate": 0.0}, "b": {"n": 2, "flips": 1, "flip_rate": 0.5},
                                   "c": {"n": 1, "flips": 1, "flip_rate": 1.0}}
    assert s["most_flips_background"] == "c"
    assert counterfactual_scores(top1, fg, bg, np.arange(6), names) is None  # no group on two backgrounds
    assert majority_answer(["x", "y"], truth="y") == ("y", True) and majority_answer(["x", "y"]) == ("x", True)
    assert flips(["cat", "cat", "dog"], truth="dog") == [False, False, True]


# Scripted answers on the paired run, per group (3 classes x 2) and background index:
#   group 0 (tench): right except in snow (7), where it answers golden retriever;
#   group 1 (tench): tabby everywhere (consistent, never right);
#   group 2 (golden retriever): right on 0-4, tench on 5-9 (a 5-5 tie: the true class is the majority);
#   group 3 (golden retriever): tabby on 0-2, tench on 3-5, goldfish on 6-8, right on 9 (a 3-3-3 tie
#   without the truth: the lowest index, tench, is the majority);
#   groups 4 and 5 (tabby): right everywhere.
def scripted_answer(group: int, bg: int, fg: int) -> int:
    if group == 0:
        return 207 if bg == 7 else fg
    if group == 1:
        return 281
    if group == 2:
        return fg if bg < 5 else 0
    if group == 3:
        return 281 if bg < 3 else 0 if bg < 6 else 1 if bg < 9 else fg
    return fg


# By hand: consistent groups 1, 4, 5 (3/6); right everywhere 4, 5 (2/6); flips against the majority:
# group 0 on bg 7; group 2 on 5-9; group 3 on 0-2 and 6-9.
EXPECTED_FLIPS = [1, 1, 1, 0, 0, 1, 2, 3, 2, 2]


class Scripted(torch.nn.Module):
    """Answers each image as scripted: looks the decoded uint8 pixels up in a table."""

    def __init__(self, table: dict[bytes, int], mean, std):
        super().__init__()
        self.table, self.mean, self.std = table, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def forward(self, x):
        u8 = torch.round((x * self.std + self.mean) * 255).to(torch.uint8).numpy()
        logits = torch.zeros(len(x), 1000)
        for i, img in enumerate(u8):
            logits[i, self.table[img.tobytes()]] = 1.0
        return logits


@pytest.fixture(scope="module")
def paired_results(tmp_path_factory, paired_run):
    from d3s import benchmark as bm
    from d3s.benchmark import BenchmarkConfig, run_benchmark
    from d3s.classifiers import ClassifierSpec

    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
              "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    images = bm.open_d3s(paired_run)
    transform = bm.eval_transform(config)
    table = {}
    for i in range(len(images)):
        (item,) = images.read(i, i + 1)
        key = np.asarray(transform(bm.open_image(item))).tobytes()
        table[key] = scripted_answer(int(images.group[i]), int(images.bg[i]), int(images.fg[i]))
    assert len(table) == 60  # every image decodes to its own pixels, so each answer is the scripted one
    spec = ClassifierSpec("scripted", "timm", "supervised CNN", False, config, False, {},
                          lambda device: Scripted(table, config["mean"], config["std"]))
    out = tmp_path_factory.mktemp("paired-bench") / "results"
    logs = []
    summary = run_benchmark(BenchmarkConfig(data=str(paired_run), out=str(out), split="train", progress=False, workers=1),
                            specs=[spec], log=logs.append)
    return out, summary, logs


def test_benchmark_counterfactual_scores_equal_the_hand_computed(paired_results):
    out, summary, logs = paired_results
    result = json.loads((out / "models" / "scripted.json").read_text())
    assert result["d3s"]["top1"] == pytest.approx(35 / 60)  # 9 + 0 + 5 + 1 + 10 + 10 right
    cf = result["d3s"]["counterfactual"]
    assert (cf["groups"], cf["images"], cf["tied_groups"]) == (6, 60, 2)
    assert cf["consistency"] == pytest.approx(3 / 6) and cf["all_backgrounds_top1"] == pytest.approx(2 / 6)
    assert [cf["per_background"][b]["flips"] for b in BACKGROUNDS] == EXPECTED_FLIPS
    assert [cf["per_background"][b]["flip_rate"] for b in BACKGROUNDS] == pytest.approx([n / 6 for n in EXPECTED_FLIPS])
    assert cf["most_flips_background"] == "in snow"
    assert any("consistency 50.0%, correct on all 33.3%; most flips: in snow" in line for line in logs)

    row = summary["models"][0]
    assert row["consistency"] == pytest.approx(0.5) and row["flip_rate"]["in snow"] == pytest.approx(0.5)
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["consistency", "all_backgrounds_top1", "most_flips_background", "groups"]
    flips_csv = (out / "flip_rates.csv").read_text().splitlines()
    assert flips_csv[0].split(",") == ["model", *BACKGROUNDS] and flips_csv[1].split(",")[8] == "0.500000"


def test_counterfactual_plot_and_benchmark_tab(paired_results):
    import gradio as gr
    from PIL import Image

    import app
    from d3s.hosting import Catalog
    from d3s.plots import COUNTERFACTUAL_TITLE

    out, _, _ = paired_results
    with Image.open(out / "counterfactual.png") as im:
        assert im.text.get("Title") == COUNTERFACTUAL_TITLE and im.size[0] > 500
    plots = json.loads((out / "plots.json").read_text())
    assert plots["titles"]["counterfactual"] == COUNTERFACTUAL_TITLE
    snow = next(r for r in plots["flip_rates"] if r["background"] == "in snow")
    assert snow["flip_rate"] == pytest.approx(0.5)
    load_benchmark, _, _ = app.make_benchmark_fns(app.Settings(catalog=Catalog.from_entries([], [str(out)])))
    *_, table, _, flip_plot = load_benchmark(out.name)
    assert table["consistency"].tolist() == [50.0] and table["all_backgrounds_top1"].tolist() == [33.33]
    assert isinstance(flip_plot, gr.BarPlot) and flip_plot.visible
    data = [dict(zip(flip_plot.value["columns"], r)) for r in flip_plot.value["data"]]
    assert [round(r["flip_rate"], 2) for r in data] == [round(100 * n / 6, 2) for n in EXPECTED_FLIPS]  # in %


# --- 3. the app: /generate_all through gradio_client ---------------------------------------------------

def test_generate_all_api_streams_progress_and_captions_every_background(app_server):
    from gradio_client import Client

    client = Client(app_server["url"], verbose=False)
    job = client.submit("tabby (281)", 4, None, 0, 0, api_name="/generate_all")
    gallery, summary, table = job.result(timeout=300)
    assert len(gallery) == 10
    captions = [g["caption"] for g in gallery]
    assert [c.split(":")[0] for c in captions] == list(BACKGROUNDS)
    assert all(" | fg head " in c and ": standard " in c for c in captions)
    assert "One **tabby**" in summary and "Standard classifier" in summary and "Disentangled fg head" in summary
    assert [r[0] for r in table["data"]] == list(BACKGROUNDS)
    updates = []
    while not job.communicator.updates.empty():
        updates.append(job.communicator.updates.get_nowait())
    progress = [u.progress_data[0] for u in updates if getattr(u, "progress_data", None)]
    denoise = [p for p in progress if p.desc == "denoising on 10 backgrounds"]
    assert denoise and all(p.length == 3 for p in denoise)  # 4 steps x 0.9 on the tiny preset
    with pytest.raises(Exception, match="Unknown foreground class"):
        client.predict("tabbby", 0, None, 0, 0, api_name="/generate_all")


def test_across_tab_marks_and_frames_the_flips(pipe, monkeypatch):
    """With scripted answers: the standard classifier leaves its majority in snow, the fg head on a road."""
    from types import SimpleNamespace

    import app
    from d3s import handlers

    calls = iter(range(10))

    def scripted_predict(p, image, k=5):
        i = next(calls)  # one call per background, in order
        standard = "snowplow" if BACKGROUNDS[i] == "in snow" else "tabby"
        fg_head = "tiger cat" if BACKGROUNDS[i] == "on a road" else "tabby"
        return {fg_head: 0.9}, {}, {standard: 0.8}

    monkeypatch.setattr(handlers, "predict", scripted_predict)
    models = app.Models(pipe, "tiny", True, "", SimpleNamespace(classifier_name="scripted"))
    gallery, summary, table = app.make_across_fn(models)("tabby (281)", 1, None, 64, 2, progress=lambda *a, **k: None)
    captions = [c for _, c in gallery]
    assert captions[7] == "in snow: standard snowplow (FLIP) | fg head tabby"
    assert captions[1] == "on a road: standard tabby | fg head tiger cat (FLIP)"
    assert sum("(FLIP)" in c for c in captions) == 2
    corner = [image.getpixel((0, 0)) for image, _ in gallery]
    assert corner[7] == app.FLIP_COLOUR and corner[1] == app.FG_FLIP_COLOUR
    assert {corner[i] for i in range(10) if i not in (1, 7)} == {app.NO_FLIP_COLOUR}
    assert "majority answer *tabby*; changes on 1 of 10 backgrounds (in snow)" in summary
    assert "changes on 1 of 10 backgrounds (on a road)" in summary
    assert table["standard flips"].tolist() == [i == 7 for i in range(10)]
