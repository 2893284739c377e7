"""The science, pinned on a small CPU setting (test_resnet from scratch, 32 px toy, 600 steps).

Measured on a shared 2-core CPU; thresholds leave a margin below the measured numbers (see the
README's "Disentanglement on the toy" for the longer run of acceptance point 1).
"""

import pytest

from d3s.probes import leakage, probe
from d3s.spurious import spurious
from d3s.toy import ToyConfig, write_toy
from d3s.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("acceptance")
    data = root / "toy"
    write_toy(ToyConfig(out=str(data), train_per_pair=200, val_per_pair=20))

    def run(name, method="wasserstein", iters=600, **hp):
        train(TrainConfig(data=str(data), out=str(root / name), method=method, backbone="test_resnet", pretrained=False,
                          iters=iters, crop_scale=1.0, workers=0, progress=False, hparams=hp, checkpoint_every=10_000))
        return root / name

    return {"data": data, "wd": run("wd"), "ablation": run("ablation", critic_weight=0.0), "erm": run("erm", method="erm", iters=400)}


def test_critics_reduce_leakage(runs):
    wd = probe(str(runs["data"]), str(runs["wd"]))
    ab = probe(str(runs["data"]), str(runs["ablation"]))
    v = wd["linear"]["validation"]
    # measured (2 threads): fg 0.762, bg 0.984, leakage 0.122 against 0.443 without critics. fg reaches
    # 0.92 in the README's 2500-step run; here the critics only just reached full weight.
    assert v["fg_from_fg"]["top1"] >= 0.70 and v["bg_from_bg"]["top1"] >= 0.9
    assert leakage(wd, "validation") <= 0.5 * leakage(ab, "validation")  # acceptance point 1's ratio


def test_spurious_correct_beats_all_and_baseline(runs, tmp_path):
    r = spurious(str(runs["data"]), str(runs["wd"]), str(runs["erm"]), pairs_file=str(runs["data"] / "pairs.json"),
                 out=str(tmp_path / "spurious.json"))
    assert set(r) == {"correct", "all", "baseline", "counts"}
    assert set(r["correct"]) == {"corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "average_4", "worst"}
    # measured: 0.832, 0.713, 0.621 (the README's 2500-step run: 0.953, 0.743, 0.691)
    assert r["correct"]["average_4"] >= r["all"]["average_4"] + 0.08
    assert r["correct"]["average_4"] >= r["baseline"]["average_4"] + 0.10
    assert (tmp_path / "spurious.md").read_text().startswith("| Model |")
