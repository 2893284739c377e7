"""The README's tour runs as it is written: its code block, verbatim, in a fresh folder, offline.

The block is taken from README.md (the first ```bash block under "A tour") and run by bash with `set -e`, from a
folder where `app.py` and `hub/` are this checkout's (as from the repository root) and `d3s` is this checkout's
command. Its last command starts the app; the test waits for it to answer, uses it as a visitor would (the operator's
dataset and results are offered by name), then stops it, as Ctrl+C would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conftest import REPO, free_port


def tour_block() -> str:
    readme = (REPO / "README.md").read_text()
    after = readme[readme.index("## A tour"):]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match, "README.md has no ```bash block under 'A tour'"
    return match.group(1)


def test_the_tour_is_on_the_first_screen():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    body = lines[lines.index("---", 1) + 1:]  # after the Space's front matter
    first_screen = "\n".join(body[:75])
    assert "make app" in first_screen and "make test" in first_screen and "## A tour" in first_screen
    commands = [line for line in tour_block().splitlines() if line and not line.startswith(("#", " ", "import", "from", "for", '"'))]
    assert len(commands) <= 14, commands


def front_matter() -> dict:
    import yaml

    readme = (REPO / "README.md").read_text()
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_the_front_matter_configures_the_space(tmp_path):
    """The Space's config: sign-in, suggested hardware, the models the app loads by default, and those models' files
    preloaded into the image (the fp16 files a GPU run reads), so a cold start downloads nothing large."""
    import torch
    from timm.models import get_pretrained_cfg

    from d3s import diffusion
    from d3s.predict import DEFAULT_CLASSIFIER

    config = front_matter()
    assert config["sdk"] == "gradio" and config["app_file"] == "app.py" and config["hf_oauth"] is True
    requirements = (REPO / "requirements.txt").read_text()
    assert f"gradio[oauth]=={config['sdk_version']}" in requirements  # the Space runs the pinned Gradio
    assert config["suggested_hardware"] in ("a10g-small", "a10g-large", "l4x1", "t4-medium", "a100-large")
    classifier = get_pretrained_cfg(DEFAULT_CLASSIFIER).hf_hub_id
    assert config["models"] == [diffusion.DEFAULT_MODEL, classifier]
    assert "datasets" not in config  # no published D3S id exists yet (hub/publish_dataset.py makes one)
    preload = dict(entry.split(" ", 1) for entry in config["preload_from_hub"])
    assert set(preload) == set(config["models"])
    assert preload[classifier] == "model.safetensors"
    # What the fp16 variant of the same pipeline class reads: a pipeline saved so lists it (the tiny preset has the
    # components of SD v1.4, safety checker included). Its tokenizer is written in transformers' current layout; the
    # repo's is vocab.json and merges.txt with two small configs.
    assert diffusion.pretrained_kwargs(diffusion.DEFAULT_MODEL, torch.float16)["variant"] == "fp16"
    pipe = diffusion.load_pipeline(diffusion.TINY, device="cpu", dtype=torch.float16, safety_checker=True)
    pipe.save_pretrained(tmp_path / "sd", variant="fp16")
    saved = {p.relative_to(tmp_path / "sd").as_posix() for p in (tmp_path / "sd").rglob("*") if p.is_file()}
    files = set(preload[diffusion.DEFAULT_MODEL].split(","))
    assert {f for f in files if not f.startswith("tokenizer/")} == {f for f in saved if not f.startswith("tokenizer/")}
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt"} <= files
    assert not any(f.endswith((".bin", ".ckpt")) or (f.endswith(".safetensors") and ".fp16." not in f) for f in files)


def test_the_tour_runs_verbatim(tmp_path):
    os.symlink(REPO / "app.py", tmp_path / "app.py")
    os.symlink(REPO / "hub", tmp_path / "hub")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "d3s").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m d3s "$@"\n')
    (bin_dir / "d3s").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    (tmp_path / "tour.sh").write_text("set -e\n" + tour_block())
    port = free_port()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO), "D3S_PORT": str(port),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    env.pop("D3S_MODEL", None)
    log = tmp_path / "tour.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", "tour.sh"], cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 900
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the tour stopped (exit {proc.returncode}) before the app answered:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, f"the app of the tour did not answer:\n{log.read_text()[-4000:]}"
            time.sleep(1)
        from gradio_client import Client

        client = Client(url, verbose=False)
        gallery, summary, *_ = client.predict("d3s-splits", None, "all", "all", api_name="/browse")
        assert "in split `benchmark` of `d3s-splits`" in summary and len(gallery) > 0
        table = client.predict("results", api_name="/benchmark_results")[4]
        assert {row[0] for row in table["data"]} == {"tf_efficientnet_lite0.pypi_in1k", "test_resnet"}
    finally:
        if proc.poll() is None:  # the tour ended early: its failure is reported above, not a missing process
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    out = tmp_path / "out"
    assert all((tmp_path / "photos" / wnid).is_dir() for wnid in ("n02123045", "n07920052", "n03773504"))
    assert "done: 60 of 60 images in out/d3s" in text
    assert "train 30, validation 30, benchmark 30" in text
    probes = json.loads((out / "wd" / "probe.json").read_text())
    assert {"linear", "mlp"} <= set(probes)
    assert "Dataset({" in text and "num_rows: 30" in text  # the staged folder, loaded back
