"""d3s benchmark (issue 4): the acceptance run, resume, breakdowns with known answers, failures, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import REPO, SYNTH_CLASSES, SYNTH_COLOURS, SYNTH_DECOY_BG, run_d3s, write_d3s_split
from d3s import benchmark as bm
from d3s import cli
from d3s.benchmark import BenchmarkConfig, BenchmarkError, run_benchmark
from d3s.classifiers import ClassifierSpec
from d3s.dataset import shard_paths
from d3s.plots import DROP_TITLE, HEATMAP_TITLE, SCATTER_TITLE

TINY_MODELS = "test_resnet,test_vit,clip:tiny"
PLOT_TITLES = {"accuracy_drop.png": DROP_TITLE, "d3s_vs_imagenet.png": SCATTER_TITLE, "background_heatmap.png": HEATMAP_TITLE}


def _png_title(path) -> str:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 200
        return im.text.get("Title", "")


def _all_top1_le_top5(result: dict) -> None:
    d = result["d3s"]
    assert d["top1"] <= d["top5"]
    assert all(v["top1"] <= v["top5"] for v in d["per_background"].values())
    assert all(c["correct_top1"] <= c["correct_top5"] <= c["n"] for c in d["per_cell"])
    if result["imagenet"]:
        assert result["imagenet"]["top1"] <= result["imagenet"]["top5"]


# --- acceptance 1 and 2: the tiny end-to-end run, then one more model ------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, photo_dir):
    """A tiny generated D3S split: 3 classes x 10 backgrounds, 64 px, one denoising step (cheaper than conftest's)."""
    from d3s.generate import GenerationConfig, generate

    out = tmp_path_factory.mktemp("gen") / "d3s"
    generate(GenerationConfig(foregrounds="0,207,281", out=str(out), per_pair=1, model="tiny", size=64, steps=2,
                              photos=str(photo_dir), batch_size=10, split="benchmark"), progress=False)
    return out


@pytest.fixture(scope="module")
def synth_d3s(tmp_path_factory):
    """conftest's synthetic split, as the split `d3s benchmark` scores by default."""
    return write_d3s_split(tmp_path_factory.mktemp("synth") / "d3s", split="benchmark")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, tiny_run, photo_dir):
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = run_d3s("benchmark", "--data", str(tiny_run), "--models", TINY_MODELS, "--imagenet-val", str(photo_dir),
                   "--no-pretrained", "--out", str(out), "--quiet", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_acceptance_files_counts_and_plots(tiny_results, tiny_run):
    out, proc = tiny_results
    n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shard_paths(tiny_run, "benchmark"))
    for name in ("test_resnet", "test_vit", "clip:tiny"):
        jpath, cpath = bm.result_paths(out, name)
        result = json.loads(jpath.read_text())
        cells = result["d3s"]["per_cell"]
        assert sum(c["n"] for c in cells) == result["d3s"]["n"] == n_rows == 30
        assert len(cells) == 3 * 10  # every (fg, bg) pair of the run
        assert sum(v["n"] for v in result["d3s"]["per_background"].values()) == n_rows
        per_bg = result["d3s"]["per_background"]
        tie = len({(v["top1"], v["top5"]) for v in per_bg.values()}) == 1
        assert result["d3s"]["worst_background"] is None if tie else result["d3s"]["worst_background"] in per_bg
        assert result["imagenet"]["n"] == 9
        _all_top1_le_top5(result)
        with open(cpath, newline="") as f:
            table = list(csv.DictReader(f))
        assert len(table) == 30 and sum(int(row["n"]) for row in table) == n_rows
        assert all(float(row["top1"]) <= float(row["top5"]) for row in table)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["clip:tiny", "test_resnet", "test_vit"]
    assert summary["failed"] == []
    assert (out / "summary.csv").read_text().count("\n") == 1 + 3
    assert (out / "per_background.csv").read_text().splitlines()[0].split(",")[1:] == summary["backgrounds"]
    for name, title in PLOT_TITLES.items():
        assert _png_title(out / name) == title
    plots = json.loads((out / "plots.json").read_text())
    assert set(plots["titles"].values()) == set(PLOT_TITLES.values())
    assert plots["fit"] is None  # random weights: both timm models score 0 on ImageNet, so no line (see the plots test)
    assert {m["model"] for m in plots["models"]} == {"clip:tiny", "test_resnet", "test_vit"}
    assert "evaluated now: 3, reused: 0, failed: 0" in proc.stdout


def test_rerun_with_one_more_model_evaluates_only_that_model(tiny_results, tiny_run, photo_dir):
    out, _ = tiny_results
    before = {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.json")}
    proc = run_d3s("benchmark", "--data", str(tiny_run), "--models", TINY_MODELS + ",test_efficientnet",
                   "--imagenet-val", str(photo_dir), "--no-pretrained", "--out", str(out), "--quiet", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already evaluated (results reused): test_resnet, test_vit, clip:tiny" in proc.stdout
    assert "evaluated now: 1, reused: 3, failed: 0" in proc.stdout
    decoded = [line for line in proc.stdout.splitlines() if line.startswith("decoded ")]
    assert len(decoded) == 1 and decoded[0].endswith("shared by 1 model(s): test_efficientnet")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "models").glob("*.json")}
    assert {k: after[k] for k in before} == before  # the old results were not rewritten
    assert set(after) - set(before) == {"test_efficientnet.json"}
    assert len(json.loads((out / "summary.json").read_text())["models"]) == 4


# --- breakdowns with known answers: a classifier that reads the mean colour -------------------------

class ColourReader(torch.nn.Module):
    """Predicts the synthetic class whose colour is nearest to the image's mean colour."""

    def __init__(self, mean, std, fail: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("protos", torch.tensor([SYNTH_COLOURS[c] for c in sorted(SYNTH_COLOURS)], dtype=torch.float32) / 255)
        self.classes = sorted(SYNTH_COLOURS)
        self.fail = fail

    def forward(self, x):
        if self.fail:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        rgb = (x * self.std + self.mean).mean(dim=(2, 3))
        logits = -torch.arange(1000, dtype=torch.float32).expand(len(x), 1000) / 1000 - 10  # fixed order for the rest
        logits = logits.clone()
        logits[:, self.classes] = -torch.cdist(rgb, self.protos)
        return logits


def colour_spec(name="colour-reader", fail=False, build_error=None) -> ClassifierSpec:
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
              "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def build(device):
        if build_error:
            raise build_error
        return ColourReader(config["mean"], config["std"], fail)

    return ClassifierSpec(name, "timm", "supervised CNN", False, config, False, {}, build)


def test_breakdowns_have_the_known_answers(tmp_path, synth_d3s, colour_photos):
    summary = run_benchmark(BenchmarkConfig(data=str(synth_d3s), out=str(tmp_path), imagenet_val=str(colour_photos),
                                            progress=False, workers=1), specs=[colour_spec()], log=lambda s: None)
    assert summary["evaluated"] == ["colour-reader"]
    r = json.loads((tmp_path / "models" / "colour-reader.json").read_text())
    d = r["d3s"]
    assert (d["n"], d["top1"], d["top5"]) == (30, pytest.approx(0.9), 1.0)  # wrong exactly on the decoy background
    assert d["worst_background"] == "in snow" and d["per_background"]["in snow"] == {"n": 3, "top1": 0.0, "top5": 1.0}
    assert all(v["top1"] == 1.0 for k, v in d["per_background"].items() if k != "in snow")
    wrong = {(c["fg"], c["bg"]) for c in d["per_cell"] if c["correct_top1"] == 0}
    assert wrong == {(0, SYNTH_DECOY_BG), (207, SYNTH_DECOY_BG), (281, SYNTH_DECOY_BG)}
    # IN-9: tench is a fish, golden retriever a dog, tabby (281) has no IN-9 class
    assert set(d["per_in9"]) == {"fish", "dog"} and d["per_in9"]["fish"] == {"n": 10, "top1": pytest.approx(0.9)}
    assert d["per_in9_background"]["dog"]["in snow"]["effect"] == pytest.approx(-0.9)
    assert {e["background"] for e in d["backgrounds_hurting_most"][:2]} == {"in snow"}
    assert d["backgrounds_helping_most"][0]["effect"] == pytest.approx(0.1)
    assert r["imagenet"] == {"n": 6, "top1": 1.0, "top5": 1.0}
    assert r["drop_top1"] == pytest.approx(0.1)
    assert _png_title(tmp_path / "accuracy_drop.png") == DROP_TITLE


def test_worst_cells_come_with_the_misclassified_images(tmp_path):
    from d3s.benchmark import worst_cell_samples
    from d3s.labels import imagenet_classes

    data = write_d3s_split(tmp_path / "d3s", split="benchmark")  # our own copy: the test changes it at the end
    run_benchmark(BenchmarkConfig(data=str(data), out=str(tmp_path), progress=False, workers=1),
                  specs=[colour_spec()], log=lambda s: None)
    w = worst_cell_samples(tmp_path, "colour-reader", cells=5)
    # the three decoy cells come first; each image there is read as the next class's colour
    assert {(c["fg"], c["bg"]) for c in w["cells"][:3]} == {(f, SYNTH_DECOY_BG) for f in SYNTH_CLASSES}
    assert all(c["top1"] == 0.0 for c in w["cells"][:3]) and w["cells"][3]["top1"] == 1.0
    nxt = {f: SYNTH_CLASSES[(k + 1) % len(SYNTH_CLASSES)] for k, f in enumerate(SYNTH_CLASSES)}
    assert [s["pred"] for c in w["cells"][:3] for s in c["samples"]] == [nxt[c["fg"]] for c in w["cells"][:3]]
    assert len(w["gallery"]) == 5 and w["note"] == ""
    image, caption = w["gallery"][0]
    name = imagenet_classes()[w["cells"][0]["fg"]].name
    assert caption.startswith(f"{name} / ") and f"predicted {imagenet_classes()[w['cells'][0]['samples'][0]['pred']].name}" in caption
    # the sample is the image of that row: its colour is the decoy's (the next class's)
    expected = np.array(SYNTH_COLOURS[nxt[w["cells"][0]["fg"]]])
    assert np.abs(np.asarray(image, dtype=float).mean((0, 1)) - expected).max() < 8
    with pytest.raises(FileNotFoundError, match="colour-reader"):
        worst_cell_samples(tmp_path, "resnet50")
    # the data changed since: cells are still listed, images are not shown from the wrong rows
    shard = next((data / "data").glob("*.parquet"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    stale = worst_cell_samples(tmp_path, "colour-reader")
    assert stale["gallery"] == [] and "changed since" in stale["note"] and len(stale["cells"]) == 8


def test_models_with_one_preprocessing_setting_share_one_decode(tmp_path, synth_d3s, monkeypatch):
    calls = []
    real = bm.decode
    monkeypatch.setattr(bm, "decode", lambda images, config, *a, **k: calls.append((images.name, config["input_size"])) or real(images, config, *a, **k))
    summary = run_benchmark(BenchmarkConfig(data=str(synth_d3s), out=str(tmp_path), models="test_vit,test_resnet,test_convnext",
                                            pretrained=False, progress=False, workers=1, plots=False), log=lambda s: None)
    assert sorted(summary["evaluated"]) == ["test_convnext", "test_resnet", "test_vit"]
    # test_vit and test_convnext: 160 px bicubic; test_resnet: 160 px bilinear -> two decodes, not three
    assert calls == [("d3s", (3, 160, 160)), ("d3s", (3, 160, 160))]


# --- acceptance 5b: a model failing mid-run is reported, the others complete -------------------------

def test_failing_model_is_reported_and_the_others_complete(tmp_path, synth_d3s, colour_photos, monkeypatch, capsys):
    specs = [colour_spec("first"), colour_spec("oom-mid-run", fail=True),
             colour_spec("no-weights", build_error=RuntimeError("could not download weights")), colour_spec("last")]
    monkeypatch.setattr(bm, "resolve_classifiers", lambda *a, **k: specs)
    code = cli.main(["benchmark", "--data", str(synth_d3s), "--imagenet-val", str(colour_photos), "--out", str(tmp_path),
                     "--models", "ignored", "--quiet", "--workers", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED oom-mid-run: OutOfMemoryError: CUDA out of memory" in out
    assert "d3s benchmark: model no-weights failed: RuntimeError: could not download weights" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["first", "last"]
    assert [f["model"] for f in summary["failed"]] == ["oom-mid-run", "no-weights"]
    assert not (tmp_path / "models" / "oom-mid-run.json").exists()  # so a rerun tries it again


def test_a_model_that_cannot_be_built_costs_no_decoding(tmp_path, synth_d3s, monkeypatch):
    calls = []
    monkeypatch.setattr(bm, "decode", lambda *a, **k: calls.append(1))
    summary = run_benchmark(BenchmarkConfig(data=str(synth_d3s), out=str(tmp_path), progress=False, plots=False),
                            specs=[colour_spec("no-weights", build_error=OSError("offline"))], log=lambda s: None)
    assert summary["failed"] == [{"model": "no-weights", "error": "OSError: offline"}] and calls == []


# --- acceptance 5a: bad input, one line each, exit 2 -------------------------------------------------

def _cli_error(capsys, *argv) -> str:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d3s benchmark: error: "), err
    return lines[0]


def test_unknown_timm_name_fails_up_front_with_close_matches(capsys, synth_d3s, tmp_path):
    msg = _cli_error(capsys, "benchmark", "--data", str(synth_d3s), "--models", "test_resnet,resnet5O", "--out", str(tmp_path / "r"))
    assert "Unknown model 'resnet5O'" in msg and "resnet50" in msg
    assert not (tmp_path / "r").exists()  # nothing evaluated, nothing written


def test_unknown_clip_name_fails_with_close_matches(capsys, synth_d3s, tmp_path):
    msg = _cli_error(capsys, "benchmark", "--data", str(synth_d3s), "--models", "clip:ViT-B-32/opnai", "--out", str(tmp_path))
    assert "Unknown CLIP model 'clip:ViT-B-32/opnai'" in msg and "clip:ViT-B-32/openai" in msg


def test_non_imagenet_label_space_is_refused_with_the_reason(capsys, synth_d3s, tmp_path):
    msg = _cli_error(capsys, "benchmark", "--data", str(synth_d3s), "--models", "vit_base_patch16_224.augreg_in21k", "--out", str(tmp_path))
    assert "predicts 21843 classes" in msg and "not the 1000 ImageNet-1k classes" in msg and "in1k" in msg


def test_missing_split_says_which_splits_exist(capsys, synth_d3s, tmp_path):
    msg = _cli_error(capsys, "benchmark", "--data", str(synth_d3s), "--split", "test", "--models", "test_resnet", "--out", str(tmp_path))
    assert "no 'test' split (found: benchmark)" in msg


def test_empty_split_says_so(capsys, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from d3s.dataset import label_features, write_card
    from d3s.labels import imagenet_classes
    from d3s.prompts import BACKGROUNDS

    feats = datasets.Features({"image": datasets.Image(), **label_features([c.name for c in imagenet_classes()], list(BACKGROUNDS))})
    (tmp_path / "d3s" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([], schema=feats.arrow_schema), tmp_path / "d3s" / "data" / "benchmark-00000000-00000000.parquet")
    write_card(tmp_path / "d3s", feats, "empty")
    msg = _cli_error(capsys, "benchmark", "--data", str(tmp_path / "d3s"), "--models", "test_resnet", "--out", str(tmp_path / "r"))
    assert "is empty (0 rows)" in msg


def test_split_without_fg_labels_says_so(capsys, tmp_path):
    import datasets

    from d3s.dataset import write_card, write_shard

    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(), "bg": datasets.ClassLabel(names=["a", "b"])})
    write_shard(tmp_path / "d3s", "benchmark", [{"item_id": 0, "image": Image.new("RGB", (8, 8)), "bg": 0}], feats)
    write_card(tmp_path / "d3s", feats, "no fg")
    msg = _cli_error(capsys, "benchmark", "--data", str(tmp_path / "d3s"), "--models", "test_resnet", "--out", str(tmp_path / "r"))
    assert "has no 'fg' ClassLabel column" in msg


def test_fg_labels_that_are_not_imagenet_are_refused(capsys, tmp_path):
    names = [f"class{i}" for i in range(1000)]
    write_d3s_split(tmp_path / "d3s", split="benchmark", fg_names=names, backgrounds=range(2))
    msg = _cli_error(capsys, "benchmark", "--data", str(tmp_path / "d3s"), "--models", "test_resnet", "--out", str(tmp_path / "r"))
    assert "not the ImageNet-1k classes" in msg and "'tench'" in msg


def test_bad_imagenet_folder_is_refused(capsys, synth_d3s, tmp_path):
    (tmp_path / "val" / "cats").mkdir(parents=True)
    msg = _cli_error(capsys, "benchmark", "--data", str(synth_d3s), "--imagenet-val", str(tmp_path / "val"), "--models", "test_resnet",
                     "--out", str(tmp_path / "r"))
    assert "not ImageNet-1k WordNet ids" in msg and "'cats'" in msg


def test_bad_input_exit_code_through_the_real_process(synth_d3s, tmp_path):
    proc = run_d3s("benchmark", "--data", str(synth_d3s), "--models", "clip:ViT-B-32", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs the weights too" in proc.stderr


def test_decode_benchmark_script_prints_its_ratio():
    proc = subprocess.run([sys.executable, "benchmarks/benchmark_decode.py", "--images", "6", "--size", "96", "--rounds", "1",
                           "--models", "2", "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio ") and float(last.split()[1]) > 0


# --- plots: what the titles say, with made-up numbers -------------------------------------------------

def _row(model, family, kind, imagenet, d3s, extra=False):
    return {"model": model, "family": family, "kind": kind, "extra_data": extra, "imagenet_top1": imagenet, "d3s_top1": d3s,
            "drop_top1": imagenet - d3s, "per_background": {"on grass": d3s + 0.05, "in snow": d3s - 0.2}}


def test_plots_show_what_their_titles_say(tmp_path):
    from d3s.plots import accuracy_scatter, background_heatmap, best_fit, drop_bar

    rows = [_row("a", "supervised CNN", "timm", 0.70, 0.60), _row("b", "transformer", "timm", 0.80, 0.66, True),
            _row("c", "semi-supervised", "timm", 0.75, 0.63), _row("clip", "CLIP zero-shot", "clip", 0.60, 0.72, True)]
    fit = best_fit(rows)  # d3s = 0.6 * imagenet + 0.18 for a, b, c; the CLIP outlier would bend it
    assert fit["models"] == 3 and fit["slope"] == pytest.approx(0.6) and fit["intercept"] == pytest.approx(0.18)
    scatter = accuracy_scatter(rows, tmp_path / "s.png")
    assert scatter["title"] == SCATTER_TITLE == _png_title(tmp_path / "s.png") and scatter["fit"] == fit
    drop = drop_bar(rows, tmp_path / "d.png")
    assert drop["models"] == ["b", "c", "a", "clip"]  # largest drop first; CLIP gains (negative drop)
    assert drop["drop_points"] == pytest.approx([14, 12, 10, -12]) and _png_title(tmp_path / "d.png") == DROP_TITLE
    heat = background_heatmap(rows, ["on grass", "in snow", "at night"], tmp_path / "h.png")
    assert heat["values"][1] == pytest.approx([40, 46, 43, 52]) and heat["values"][2] == [None] * 4
    assert _png_title(tmp_path / "h.png") == HEATMAP_TITLE


def test_app_benchmark_tab_shows_a_results_folder(tiny_results, tmp_path):
    import gradio as gr

    from PIL import Image

    import app
    from d3s.hosting import Catalog

    out, _ = tiny_results
    catalog = Catalog.from_entries([], [f"tiny={out}", f"empty={tmp_path}"])
    load_benchmark, _, show_worst_cells = app.make_benchmark_fns(app.Settings(catalog=catalog))
    drop, scatter, per_bg, heatmap, table, picker, flips = load_benchmark("tiny")
    assert isinstance(drop, gr.BarPlot) and isinstance(scatter, gr.ScatterPlot) and isinstance(per_bg, gr.BarPlot)
    assert not flips.visible and "consistency" not in table  # unpaired data: no counterfactual scores
    with Image.open(out / "background_heatmap.png") as png:  # decoded on the server: no path goes to the client
        assert isinstance(heatmap, Image.Image) and heatmap.size == png.size
    assert set(table["model"]) >= {"clip:tiny", "test_resnet", "test_vit"}
    assert set(picker.choices) == {(m, m) for m in table["model"]} or set(picker.choices) == set(table["model"])
    cells, gallery, note = show_worst_cells("tiny", picker.value)
    assert len(cells) == 8 and list(cells.columns[:2]) == ["class", "background"] and len(gallery) >= 8
    with pytest.raises(gr.Error, match="holds no benchmark results"):
        load_benchmark("empty")
    with pytest.raises(gr.Error, match="has no result for that model"):
        show_worst_cells("tiny", "resnet50")
    with pytest.raises(gr.Error, match="Choose one of the results folders this app offers"):
        load_benchmark(str(out))  # a path is not a label


class AutocastSpy(ColourReader):
    """The colour reader, recording whether each forward ran under CPU autocast, and in which dtype."""

    seen: list = []

    def forward(self, x):
        AutocastSpy.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().forward(x)


def spy_spec(name: str) -> ClassifierSpec:
    spec = colour_spec(name)
    return ClassifierSpec(spec.name, spec.kind, spec.family, spec.extra_data, spec.data_config, False, {},
                          lambda device: AutocastSpy(spec.data_config["mean"], spec.data_config["std"]))


def test_precision_is_fp32_unless_asked_recorded_and_mixed_tables_say_so(tmp_path, synth_d3s):
    """No flag: fp32 on every device, no autocast (nothing patched; read from the model's forward); --precision bf16
    runs under bf16 autocast, is recorded, and a summary holding both says so."""
    AutocastSpy.seen = []
    config = dict(data=str(synth_d3s), out=str(tmp_path), progress=False, workers=1, plots=False)
    run_benchmark(BenchmarkConfig(**config), specs=[spy_spec("exact")], log=lambda s: None)
    assert AutocastSpy.seen and all(enabled is False for enabled, _ in AutocastSpy.seen)
    assert bm.load_result(tmp_path, "exact")["precision"] == "fp32"
    AutocastSpy.seen = []
    lines = []
    summary = run_benchmark(BenchmarkConfig(**config, precision="bf16"), specs=[spy_spec("fast")], log=lines.append)
    assert AutocastSpy.seen and all(seen == (True, torch.bfloat16) for seen in AutocastSpy.seen)
    assert bm.load_result(tmp_path, "fast")["precision"] == "bf16"
    assert {r["model"]: r["precision"] for r in summary["models"]} == {"exact": "fp32", "fast": "bf16"}
    assert "mixes precisions (bf16: 1 model(s), fp32: 1 model(s))" in summary["precision_note"]
    assert any("mixes precisions" in line for line in lines)
    with open(tmp_path / "summary.csv") as f:
        assert {r["model"]: r["precision"] for r in csv.DictReader(f)} == {"exact": "fp32", "fast": "bf16"}
    # a stored result is reused only at its own precision
    again = run_benchmark(BenchmarkConfig(**config, precision="bf16"), specs=[spy_spec("exact")], log=lambda s: None)
    assert again["evaluated"] == ["exact"] and bm.load_result(tmp_path, "exact")["precision"] == "bf16"
    with pytest.raises(BenchmarkError, match="--precision must be one of fp32, bf16, fp16"):
        run_benchmark(BenchmarkConfig(**config, precision="fp8"), specs=[spy_spec("x")], log=lambda s: None)


def test_the_summary_names_results_it_leaves_out(tmp_path, synth_d3s, colour_photos):
    """A result made with another ImageNet reference is not mixed into the table, and the table says so."""
    config = dict(data=str(synth_d3s), out=str(tmp_path), progress=False, workers=1, plots=False)
    run_benchmark(BenchmarkConfig(**config, imagenet_val=str(colour_photos)), specs=[colour_spec("with-reference")],
                  log=lambda s: None)
    lines = []
    summary = run_benchmark(BenchmarkConfig(**config), specs=[colour_spec("without")], log=lines.append)
    assert [r["model"] for r in summary["models"]] == ["without"]
    assert summary["left_out"] == [{"model": "with-reference", "why": "made on other data: the ImageNet reference"}]
    assert any(line.startswith("note: left out of this table, with-reference (made on other data: the ImageNet reference)")
               for line in lines)
