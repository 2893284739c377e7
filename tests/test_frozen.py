"""Disentangling frozen backbone features: `d3s embed` (resumable, shared among processes), training the neck
and heads on the features, and the checkpoint joined to its backbone as an image extractor (probe, features,
spurious, Predict, publishing). The backbone is a tiny random test_resnet saved as a timm local folder, so
embedding and later loading use the same weights offline."""

from __future__ import annotations

import json
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from d3s.dataset import shard_paths
from d3s.embed import EmbedConfig, embed
from d3s.models import DisentangledExtractor, FeatureDisentangler, load_disentangler, load_extractor

SHAPES, TEXTURES = ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("backbone") / "test_resnet"
    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(folder), safe_serialization=True)
    return f"local-dir:{folder}"


def _embed_config(data, out, backbone) -> EmbedConfig:
    # 72 train rows in chunks of 16: 5 shards (the last of 8 rows); 27 validation rows: 2 shards
    return EmbedConfig(data=str(data), out=str(out), backbone=backbone, image_size=32, batch_size=8, shard_size=16, workers=1,
                       progress=False)


@pytest.fixture(scope="module")
def embedded(tiny_toy, backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded") / "features"
    assert embed(_embed_config(tiny_toy, out, backbone))["rows"] == {"train": 72, "validation": 27}
    return out


@pytest.fixture(scope="module")
def frozen(embedded, tmp_path_factory):
    """A checkpoint trained on the features (mlp neck, the default), with its probe results."""
    from d3s.probes import probe
    from d3s.train import TrainConfig, train

    out = tmp_path_factory.mktemp("frozen") / "run"
    summary = train(TrainConfig(data=str(embedded), out=str(out), iters=20, batch_size=16, progress=False, hparams={"warmup_iters": 5}))
    assert summary["done"] and "val_fg_head" in summary
    probe(str(embedded), str(out), out=str(out / "probe.json"))
    return out


def _rows(folder, split) -> dict[int, tuple]:
    rows = {}
    for path in shard_paths(folder, split):
        t = pq.read_table(path).to_pydict()
        for r, item, x, fg, bg in zip(t["row"], t["item_id"], t["features"], t["fg"], t["bg"]):
            assert r not in rows, f"row {r} twice"
            rows[r] = (item, np.asarray(x, dtype=np.float32), fg, bg)
    return rows


def _same_rows(a, b, n: int) -> None:
    assert sorted(a) == sorted(b) == list(range(n))  # exactly one row per image
    for r in a:
        assert a[r][0] == b[r][0] and a[r][2:] == b[r][2:] and np.array_equal(a[r][1], b[r][1]), r


def test_embed_stopped_and_rerun_equals_uninterrupted(tiny_toy, backbone, embedded, tmp_path):
    cut = tmp_path / "cut"
    first = embed(_embed_config(tiny_toy, cut, backbone), stop_after=3)
    assert first["embedded"] == 48 and not first["done"]
    # a writer killed mid-shard leaves only a temporary file: it is removed and its chunk done again
    (cut / "data" / ".train-00000048-00000063.parquet.4242.tmp").write_bytes(b"half a shard")
    second = embed(_embed_config(tiny_toy, cut, backbone))
    assert (second["already_done"], second["embedded"], second["done"]) == (48, 51, True)
    for split, n in (("train", 72), ("validation", 27)):
        _same_rows(_rows(embedded, split), _rows(cut, split), n)
    assert not list((cut / "data").glob(".*"))
    assert embed(_embed_config(tiny_toy, cut, backbone))["embedded"] == 0  # nothing left to do

    # features and labels of a row are those of its source image
    from d3s.data import load_split

    src = load_split(str(tiny_toy), "validation")
    rows = _rows(embedded, "validation")
    assert [rows[r][0] for r in range(27)] == src["item_id"] and [rows[r][2] for r in range(27)] == src["fg"]
    info = json.loads((embedded / "d3s_embed.json").read_text())
    assert (info["backbone"], info["feature_dim"], info["preprocessing"]["input_size"]) == (backbone, 96, [3, 32, 32])


def test_processes_share_chunks_and_their_union_is_one_run(tiny_toy, backbone, embedded, tmp_path, monkeypatch):
    """Two ranks (threads with a barrier, as `accelerate launch` processes): each embeds every other remaining
    chunk, and together they write exactly what one process writes."""
    barrier = threading.Barrier(2, timeout=120)  # a rank that fails breaks the barrier instead of hanging the other
    monkeypatch.setattr("d3s.generate.distributed_state", lambda: (int(threading.current_thread().name), 2, barrier.wait, None))
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=lambda: results.update({int(threading.current_thread().name):
                                                               embed(_embed_config(tiny_toy, tmp_path / "two", backbone))}),
                                name=str(rank), daemon=True) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0]["embedded"] == 8 + 16 + 16 + 11 and results[1]["embedded"] == 16 + 16 + 16  # chunks 0,2,4,6 / 1,3,5
    assert results[0]["rows"] == {"train": 72, "validation": 27}
    for split, n in (("train", 72), ("validation", 27)):
        _same_rows(_rows(embedded, split), _rows(tmp_path / "two", split), n)


def test_training_on_features_keeps_neck_and_heads_and_the_backbone_name(frozen, embedded, backbone):
    config = json.loads((frozen / "config.json").read_text())
    assert (config["feature_dim"], config["backbone"], config["neck"], config["pretrained"]) == (96, backbone, "mlp", True)
    assert config["preprocessing"]["input_size"] == [3, 32, 32]
    weights = load_file(frozen / "model.safetensors")
    assert not [k for k in weights if k.startswith("backbone.")]  # no backbone weights in a frozen checkpoint
    assert weights["neck.branch.0.weight"].shape == (96, 96) and weights["fg_head.weight"].shape == (3, 84)
    log = [json.loads(line) for line in (frozen / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 20 and all(np.isfinite(v) for line in log for v in line.values())
    model = load_disentangler(str(frozen))
    assert weights["neck.affine.weight"].ne(torch.eye(96)).any()  # the neck trained
    assert model.fg_names == SHAPES and model.bg_names == TEXTURES
    probe = json.loads((frozen / "probe.json").read_text())
    assert set(probe["linear"]["validation"]) == {"fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg"}


def test_fg_only_features_mix_into_training_as_fg_only_images_do(embedded, tmp_path):
    """--extra-data with fg-only features (ImageNet embedded by the same backbone): its rows come without a bg label."""
    from d3s.data import FeatureTable, SeededBatches, load_split
    from d3s.train import TrainConfig, train

    fg_only = tmp_path / "fg_only"
    load_split(str(embedded), "train").remove_columns(["bg"]).to_parquet(str(fg_only / "data" / "train-00000000-00000071.parquet"))
    extra = FeatureTable(load_split(str(fg_only), "train", need_bg=False))
    batches = SeededBatches(FeatureTable(load_split(str(embedded), "train")), 16, 0, 1.0, extra, 8)
    batches.steps = range(1)
    b = batches[0]
    assert b["images"].shape == (24, 96) and b["images"].dtype == torch.float32
    assert (b["bg"][:16] >= 0).all() and (b["bg"][16:] == -1).all()
    summary = train(TrainConfig(data=str(embedded), out=str(tmp_path / "run"), iters=3, batch_size=16, progress=False,
                                extra_data=str(fg_only), extra_batch_size=8, neck="linear", hparams={"warmup_iters": 1}))
    assert summary["done"] and json.loads((tmp_path / "run" / "config.json").read_text())["neck"] == "linear"


def test_frozen_checkpoint_gives_the_same_z_from_features_and_from_images(frozen, embedded, tiny_toy, backbone, tmp_path):
    from d3s.probes import export_features

    on_features = export_features(str(embedded), str(frozen), "validation", str(tmp_path / "f.npz"))
    on_images = export_features(str(tiny_toy), str(frozen), "validation", str(tmp_path / "i.npz"))  # backbone rebuilt by name
    for k in ("z_fg", "z_bg"):
        assert on_features[k].shape == on_images[k].shape and np.abs(on_features[k]).max() > 0.01
        np.testing.assert_allclose(on_images[k], on_features[k], atol=1e-5)
    assert (on_images["fg"] == on_features["fg"]).all() and (on_images["bg"] == on_features["bg"]).all()

    # the joined extractor saves and loads as a plain image extractor, without naming this machine's folder
    model = load_extractor(str(frozen))
    model.save_pretrained(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "config.json").read_text())["backbone"] == "test_resnet"
    again = DisentangledExtractor.from_pretrained(str(tmp_path / "full"), strict=True).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_spurious_on_features_with_an_untrained_linear_neck_equals_the_raw_features(embedded, tiny_toy, backbone, tmp_path):
    """An untrained linear neck is the identity: z is the backbone's features, so the "all" heads (on z) and the
    "baseline" heads (on the dataset's own features) must score alike."""
    from d3s.spurious import spurious

    info = json.loads((embedded / "d3s_embed.json").read_text())
    FeatureDisentangler(96, SHAPES, TEXTURES, neck="linear", backbone=backbone, preprocessing=info["preprocessing"]).save_pretrained(
        tmp_path / "linear")
    result = spurious(str(embedded), str(tmp_path / "linear"), "features", pairs_file=str(tiny_toy / "pairs.json"))
    assert result["all"] == pytest.approx(result["baseline"], abs=1e-6)


def test_predict_and_publish_a_frozen_checkpoint(frozen, backbone, tmp_path):
    import timm

    from d3s.hub_checkpoint import stage_checkpoint
    from d3s.predict import load_predictors, predict

    p = load_predictors(str(frozen), classifier=backbone)  # a local classifier: nothing here is a fallback
    assert not p.tiny and p.note == ""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    fg, bg, _ = predict(p, photo)
    # the Predict path equals the embed path: the backbone's eval transform, its features, the neck and heads
    net = timm.create_model(backbone, pretrained=True, num_classes=0).eval()
    from d3s.benchmark import eval_transform

    prep = json.loads((frozen / "config.json").read_text())["preprocessing"]
    x = torch.as_tensor(np.asarray(eval_transform(prep)(photo)))[None].float() / 255
    with torch.no_grad():
        feats = net((x - torch.tensor(prep["mean"]).view(1, 3, 1, 1)) / torch.tensor(prep["std"]).view(1, 3, 1, 1))
        _, fg_logits, bg_logits = load_disentangler(str(frozen))(feats, with_heads=True)
    assert bg == pytest.approx(dict(zip(TEXTURES, bg_logits.softmax(-1)[0].tolist())), abs=1e-5)
    assert fg == pytest.approx(dict(zip(SHAPES, fg_logits.softmax(-1)[0].tolist())), abs=1e-5)

    # published: the full extractor; with an MLP neck no timm copy (timm's linear classifier cannot hold it)
    report = stage_checkpoint(frozen, tmp_path / "repo", "someone/d3s-frozen")
    assert report["timm_repo_id"] is None and not (tmp_path / "repo" / "timm").exists()
    assert "No timm-format copy" in (tmp_path / "repo" / "README.md").read_text()
    staged = DisentangledExtractor.from_pretrained(str(tmp_path / "repo")).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(staged(images), load_extractor(str(frozen))(images))


def test_a_linear_neck_folds_into_the_timm_classifier(frozen, backbone, tmp_path):
    import timm

    from d3s.hub_checkpoint import stage_checkpoint

    torch.manual_seed(1)
    model = FeatureDisentangler(96, SHAPES, TEXTURES, neck="linear", backbone=backbone)
    with torch.no_grad():
        model.neck.affine.weight.add_(0.1 * torch.randn(96, 96))
        model.neck.affine.bias.normal_()
    model.save_pretrained(tmp_path / "linear")
    (tmp_path / "linear" / "probe.json").write_text((frozen / "probe.json").read_text())
    report = stage_checkpoint(tmp_path / "linear", tmp_path / "repo", "someone/d3s-linear")
    assert report["timm_repo_id"] == "someone/d3s-linear-timm"
    extractor = load_extractor(str(tmp_path / "linear"))
    net = timm.create_model(f"local-dir:{tmp_path / 'repo' / 'timm'}", pretrained=True).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(net(extractor.normalize(images)), extractor(images, with_heads=True)[1], atol=1e-5, rtol=1e-5)


def _features_dataset(root, feature, rows):
    import datasets

    from d3s.dataset import label_features, write_shard

    feats = datasets.Features({"item_id": datasets.Value("int64"), "features": feature, **label_features(SHAPES, TEXTURES)})
    write_shard(root, "train", [{"item_id": i, "features": x, "fg": i % 3, "bg": i % 3} for i, x in enumerate(rows)], feats)
    return root


def test_bad_features_and_backbones_get_one_line(frozen, tiny_toy, tmp_path, capsys):
    import datasets

    from d3s.cli import main

    ragged = _features_dataset(tmp_path / "ragged", datasets.List(datasets.Value("float32")), [[0.0] * 4] * 5 + [[0.0] * 5])
    words = _features_dataset(tmp_path / "words", datasets.List(datasets.Value("string")), [["a", "b"]] * 6)
    cases = [
        (["train", "--data", str(ragged), "--out", str(tmp_path / "o1")], "differ in length (row 0 has 4, row 5 has 5)"),
        (["train", "--data", str(words), "--out", str(tmp_path / "o2")], "must hold a list of numbers"),
        (["features", "--data", str(tiny_toy), "--checkpoint", str(frozen), "--backbone", "test_efficientnet", "--out",
          str(tmp_path / "f.npz")], "backbone 'test_efficientnet' gives 256 features, but this checkpoint's neck takes 96"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"d3s {args[0]}: error:") and message in err[0], (args, err)
