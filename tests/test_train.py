import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from d3s.algorithms import HPARAMS, build, hparams_for
from d3s.models import DisentangledExtractor, load_extractor
from d3s.train import TrainConfig, train

from conftest import CLI_ENV, ROOT, run_cli


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), backbone="test_efficientnet", pretrained=False, iters=8, batch_size=16,
                checkpoint_every=3, workers=0, progress=False, crop_scale=0.5, hparams={"warmup_iters": 2})
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", list(HPARAMS))
def test_every_method_trains_and_saves(tiny_toy, tmp_path, method):
    hp = {"warmup_iters": 2} if method == "wasserstein" else {}
    summary = train(_cfg(tiny_toy, tmp_path, method=method, iters=4, hparams=hp))
    assert summary["done"] and summary["step"] == 4
    lines = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and all(np.isfinite(v) for l in lines for v in l.values())
    model = load_extractor(str(tmp_path))
    assert model.fg_names == ["circle", "square", "triangle"] and model.bg_names == ["h-stripes", "v-stripes", "checker"]


def test_resume_after_stop_is_exact(tiny_toy, tmp_path):
    """A run stopped at step 5 (checkpoint every 3, so it resumes from 5) ends with the same
    parameters, critics and optimizers as an uninterrupted run."""
    train(_cfg(tiny_toy, tmp_path / "full"))
    assert train(_cfg(tiny_toy, tmp_path / "cut"), stop_after=5) == {"step": 5, "done": False}
    train(_cfg(tiny_toy, tmp_path / "cut"))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for k, v in a["algorithm"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["algorithm"][k]), k
    full = load_file(tmp_path / "full" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "model.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    log = [json.loads(l)["step"] for l in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert log == sorted(set(log))  # no step logged twice after the resume


def test_killed_cli_run_resumes(tiny_toy, tmp_path):
    """SIGKILL a real `d3s train` after its first checkpoint; the same command finishes the run
    with the parameters of an uninterrupted run."""
    args = ["--data", str(tiny_toy), "--backbone", "test_efficientnet", "--no-pretrained", "--iters", "150", "--batch-size", "16",
            "--checkpoint-every", "10", "--workers", "0", "--no-progress", "--warmup", "5"]
    proc = subprocess.Popen([sys.executable, "-m", "d3s", "train", *args, "--out", str(tmp_path / "cut")], cwd=ROOT, env=CLI_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    r = run_cli("train", *args, "--out", str(tmp_path / "cut"))
    assert r.returncode == 0, r.stderr
    assert "resuming at step" in r.stdout
    r = run_cli("train", *args, "--out", str(tmp_path / "full"))
    assert r.returncode == 0, r.stderr
    full, cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_from_pretrained_round_trip_gives_identical_features(tmp_path):
    torch.manual_seed(0)
    model = DisentangledExtractor("test_resnet", ["a", "b", "c"], ["x", "y"], image_size=24).eval()
    assert (model.fg_dim, model.bg_dim) == (84, 12)  # 96 features, the paper's 250/2048 proportion
    model.save_pretrained(tmp_path)
    again = DisentangledExtractor.from_pretrained(str(tmp_path), strict=True).eval()
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(model.features(x), again.features(x)):
            assert torch.equal(a, b)
    assert json.loads((tmp_path / "config.json").read_text())["fg_names"] == ["a", "b", "c"]


def test_critics_never_backpropagate_through_the_backbone(tiny_toy):
    """Critic updates use detached features: the backbone's gradients come from the model loss only."""
    model = DisentangledExtractor("test_efficientnet", ["a", "b", "c"], ["x", "y", "z"], image_size=16)
    algo = build("wasserstein", model, hparams_for("wasserstein", {"warmup_iters": 0}))
    z = torch.randn(16, model.num_features, requires_grad=True)
    z_fg, z_bg = model.split(z)
    algo.critic_update(z_fg, z_bg, torch.randint(0, 3, (16,)), torch.randint(0, 3, (16,)), torch.Generator().manual_seed(0))
    assert z.grad is None


def test_split_sizes_checked():
    from d3s.models import ModelError

    with pytest.raises(ModelError, match="add up to"):
        DisentangledExtractor("test_resnet", ["a", "b"], ["x", "y"], fg_dim=50, bg_dim=50)
