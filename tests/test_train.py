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

from conftest import CLI_ENV, ROOT, fg_only_copy, run_cli


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
    assert train(_cfg(tiny_toy, tmp_path / "cut"), stop_after=5) == {"step": 5, "done": False, "main_process": True}
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
    algo.remember(z_fg, z_bg, torch.randint(0, 3, (16,)), torch.randint(0, 3, (16,)))
    algo.critic_update(16, torch.Generator().manual_seed(0))
    assert z.grad is None and all(p.grad is not None for p in algo.critic_fg.parameters())


def test_split_sizes_checked():
    from d3s.models import ModelError

    with pytest.raises(ModelError, match="add up to"):
        DisentangledExtractor("test_resnet", ["a", "b"], ["x", "y"], fg_dim=50, bg_dim=50)


def test_extra_data_rows_have_no_bg_label_and_stay_out_of_the_bg_terms(tiny_toy, tmp_path):
    from d3s.data import ImageTable, SeededBatches, load_split

    extra_dir = fg_only_copy(tiny_toy, tmp_path / "fg_only")
    table = ImageTable(load_split(str(tiny_toy), "train"), 16)
    extra = ImageTable(load_split(str(extra_dir), "train", need_bg=False), 16)
    batch = SeededBatches(table, 16, 0, 1.0, extra, 8)
    batch.steps = range(1)
    b = batch[0]
    assert b["images"].shape[0] == b["fg"].shape[0] == b["bg"].shape[0] == 24
    assert (b["bg"][:16] >= 0).all() and (b["bg"][16:] == -1).all()

    # D_fg(z_fg, l_bg) needs a bg label: the extra rows change D_bg's gap, never D_fg's
    model = DisentangledExtractor("test_efficientnet", ["a", "b", "c"], ["x", "y", "z"], image_size=16)
    algo = build("wasserstein", model, hparams_for("wasserstein"))
    g = torch.Generator().manual_seed(0)
    z_fg, z_bg = torch.randn(16, model.fg_dim, generator=g), torch.randn(16, model.bg_dim, generator=g)
    fg, bg = torch.randint(0, 3, (16,), generator=g), torch.randint(0, 3, (16,), generator=g)
    gap_fg, gap_bg = algo.gaps(z_fg, z_bg, fg, bg)
    more = lambda z: torch.cat([z, 100 + 50 * torch.randn(8, z.shape[1], generator=g)])  # noqa: E731
    gap_fg2, gap_bg2 = algo.gaps(more(z_fg), more(z_bg), torch.cat([fg, torch.arange(8) % 3]), torch.cat([bg, torch.full((8,), -1)]))
    assert torch.allclose(gap_fg, gap_fg2) and not torch.allclose(gap_bg, gap_bg2)


def test_crop_prob_leaves_that_share_of_images_whole(tiny_toy):
    """--crop-prob: a cropped image differs from the whole image and from its mirror; the others are one of the two.
    The critics only make z independent of the other label on the images they see, so some must be whole."""
    from d3s.data import ImageTable, SeededBatches, load_split

    table = ImageTable(load_split(str(tiny_toy), "train"), 32)
    batches = {p: SeededBatches(table, 64, 0, 0.35, crop_prob=p) for p in (0.0, 0.5, 1.0)}
    whole = {}
    for p, batch in batches.items():
        batch.steps = range(1)
        images = batch[0]["images"]
        plain = table.batch(SeededBatches._indices(len(table), 64, 0, 0, 0))
        whole[p] = sum(bool(torch.equal(a, b) or torch.equal(a, b.flip(-1))) for a, b in zip(images, plain))
    assert whole[0.0] == 64 and whole[1.0] == 0 and 16 <= whole[0.5] <= 48, whole
    with pytest.raises(Exception, match="crop-prob"):
        _cfg(tiny_toy, "unused", crop_prob=1.5).check()


@pytest.mark.parametrize("method", ["wasserstein", "groupdro"])
def test_training_with_extra_data(tiny_toy, tmp_path, method):
    extra_dir = fg_only_copy(tiny_toy, tmp_path / "fg_only")
    hp = {"warmup_iters": 2} if method == "wasserstein" else {}
    summary = train(_cfg(tiny_toy, tmp_path / "run", method=method, iters=4, extra_data=str(extra_dir), extra_batch_size=8, hparams=hp))
    assert summary["done"]
    lines = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(v) for l in lines for v in l.values())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["extra_data"] == str(extra_dir)


def test_extra_data_with_other_classes_is_refused(tiny_toy, tmp_path):
    import datasets
    from PIL import Image

    from d3s.dataset import write_shard
    from d3s.train import TrainError

    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(),
                               "fg": datasets.ClassLabel(names=["cat", "dog"])})
    write_shard(tmp_path / "pets", "train", [{"item_id": i, "image": Image.new("RGB", (16, 16)), "fg": i % 2} for i in range(4)], feats)
    with pytest.raises(TrainError, match="are not the first classes"):
        train(_cfg(tiny_toy, tmp_path / "run", extra_data=str(tmp_path / "pets")))


def test_two_processes_train_like_one(tiny_toy, tmp_path):
    """`accelerate launch` with 2 processes (torchrun, gloo on CPU): each process takes half of every global
    batch, augmented as a single process would, and DDP averages the gradients; so the extractor ends where a
    1-process run of the same command ends (test_vit: no BatchNorm, whose statistics would be per process).
    The baseline methods leave the bg head unused, which DDP must be told about."""
    args = ["--data", str(tiny_toy), "--method", "erm", "--backbone", "test_vit", "--no-pretrained", "--iters", "6",
            "--batch-size", "16", "--workers", "0", "--no-progress", "--crop-scale", "0.5"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "d3s", "train", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(launch, cwd=ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 6 iterations") == 1  # one report, from the main process
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    r = run_cli("train", *args, "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    torch.manual_seed(0)
    start = DisentangledExtractor.create("test_vit", ["circle", "square", "triangle"], ["h-stripes", "v-stripes", "checker"],
                                         pretrained=False, image_size=16).state_dict()
    norm = lambda d: sum((v.double() ** 2).sum() for v in d.values()) ** 0.5  # noqa: E731
    moved = norm({k: one[k] - start[k] for k in one})
    apart = norm({k: one[k] - two[k] for k in one})
    assert moved > 0.1 and apart < 0.01 * moved, (float(apart), float(moved))


def test_cosine_schedule_is_a_function_of_the_step():
    model = DisentangledExtractor("test_efficientnet", ["a", "b"], ["x", "y"], image_size=16)
    algo = build("erm", model, hparams_for("erm", {"lr_schedule": "cosine", "lr": 0.002}))
    lrs = []
    for done in (0.0, 0.5, 1.0, 0.5):
        algo.set_progress(done)
        lrs.append(algo.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.002, 0.001, 0.0, 0.001], abs=1e-12)
    from d3s.algorithms import HparamError

    with pytest.raises(HparamError, match="lr_schedule"):
        hparams_for("erm", {"lr_schedule": "linear"})
