"""The science, pinned on a small CPU setting (test_resnet from scratch, 32 px toy, 600 steps).

The critics alone (``--no-erase``: LEACE after the last step would put the linear cross probes near chance whatever
the critics did), measured with held-out probes (cross-fitted on validation, rows no model saw). Measured on a shared
2-core CPU; thresholds leave a margin below the measured numbers (docs/disentanglement.md has the longer runs).
"""

import json
import os
import subprocess
import sys

import pytest

from d3s.probes import leakage, probe
from d3s.spurious import spurious
from d3s.toy import ToyConfig, write_toy

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three trainings run side by side, one thread each, as a user would run them (``d3s train``):
    a model this small keeps one core busy, not two, so three processes finish sooner than three runs in turn."""
    root = tmp_path_factory.mktemp("acceptance")
    data = root / "toy"
    write_toy(ToyConfig(out=str(data), train_per_pair=200, val_per_pair=20))
    common = ["--data", str(data), "--backbone", "test_resnet", "--no-pretrained", "--crop-scale", "1", "--workers", "0",
              "--no-progress", "--checkpoint-every", "10000"]
    args = {"wd": ["--iters", "600", "--no-erase"], "ablation": ["--iters", "600", "--critic-weight", "0"],
            "erm": ["--iters", "400", "--method", "erm"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "d3s", "train", *common, *extra, "--out", str(root / name)],
                                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, extra in args.items()}
    for name, proc in procs.items():
        output = proc.communicate(timeout=1800)[0]
        assert proc.returncode == 0, f"d3s train ({name}) failed:\n{output}"
    return {"data": data, **{name: root / name for name in args}}


def test_critics_reduce_leakage(runs):
    wd = probe(str(runs["data"]), str(runs["wd"]))
    ab = probe(str(runs["data"]), str(runs["ablation"]))
    assert wd["linear"]["fit"]["validation"]["held_out"] and json.loads((runs["wd"] / "config.json").read_text())["erasure"] is None
    v = wd["linear"]["validation"]
    # measured (one thread per run, held-out probes, no erasers): see MEASURED. fg reaches 0.94-0.96 in the 2500-step
    # runs of docs/disentanglement.md; here the critics only just reached full weight.
    assert v["fg_from_fg"]["top1"] >= 0.70 and v["bg_from_bg"]["top1"] >= 0.9
    assert leakage(wd, "validation") <= 0.5 * leakage(ab, "validation")  # the critics alone halve the cross-leakage


def test_spurious_correct_beats_all_and_baseline(runs, tmp_path):
    r = spurious(str(runs["data"]), str(runs["wd"]), str(runs["erm"]), pairs_file=str(runs["data"] / "pairs.json"),
                 out=str(tmp_path / "spurious.json"))
    assert set(r) == {"correct", "all", "baseline", "counts"}
    assert set(r["correct"]) == {"corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "average_4", "worst"}
    # measured: 0.866, 0.728, 0.604
    assert r["correct"]["average_4"] >= r["all"]["average_4"] + 0.08
    assert r["correct"]["average_4"] >= r["baseline"]["average_4"] + 0.10
    assert (tmp_path / "spurious.md").read_text().startswith("| Model |")
