"""The app starts offline on the tiny preset, says so, and generates through its stable API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from gradio_client import Client

from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``python app.py`` with the default (real) model id, offline: it must fall back to the tiny preset."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("D3S_MODEL", None)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError(f"app did not start in time:\n{log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_banner_says_tiny_preset(app_url):
    config = httpx.get(app_url + "config", timeout=10).json()
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    banner = next(t for t in texts if isinstance(t, str) and "Tiny preset" in t)
    assert "CompVis/stable-diffusion-v1-4" in banner and "could not be loaded" in banner


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
    with pytest.raises(Exception, match="Unknown ImageNet class 'tabbby'"):
        client.predict("tabbby", "in snow", 0, api_name="/generate")
    _, _, prompt = client.predict("tench (0)", "on grass", 0, api_name="/generate")
    assert prompt.startswith("a photo of a tench")
