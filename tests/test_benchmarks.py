"""The GPU throughput script must not rot while no GPU is around: its --smoke mode runs it on CPU."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_gpu_generate_script_runs_in_smoke_mode():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_generate.py", "--smoke", "--repeats", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "faithful" in proc.stdout and "turbo" in proc.stdout and "d3s generate, batch 2" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("best faithful")


def _grid_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("disentangle_grid", REPO / "benchmarks" / "disentangle_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_disentangle_grid_quick_smoke(tmp_path):
    """The grid end to end at tiny sizes (one setting, one seed pair, a handful of steps): toy, the ablation and the
    defaults' twin side by side, the defaults as its erased copy, held-out probes of three kinds, the table's columns,
    the worst-row line, grid.json and grid.md; a rerun redoes no run."""
    grid = _grid_module()
    cmd = [sys.executable, "benchmarks/disentangle_grid.py", "--quick", "--rows", "strong-bg-2pp", "--steps", "3", "--jobs", "2",
           "--seeds", "101:1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-3].split() == [w for c in grid.COLUMNS for w in c.split()]  # the header: every column, in order
    row = lines[-2].split()
    assert row[:3] == ["strong-bg-2pp", "wasserstein+erase", "1/1"] and len(row) == len(grid.COLUMNS)  # the defaults: they erase
    assert "z_fg" in row[grid.COLUMNS.index("complete LEACE")]  # 10 bg classes: bg erased from z_fg along all 9 directions
    assert all(0.0 <= float(v.split("±")[0]) <= 1.0 for v in row[3:10])
    assert set(row[-5:]) <= {"PASS", "FAIL:1/1", "-"}
    assert lines[-1].startswith("worst: strong-bg-2pp / wasserstein+erase: ") and "targets fail" in lines[-1]
    result = json.loads((tmp_path / "grid.json").read_text())
    toy = result["settings"][0]["toy"]
    assert (toy["bg_scale"], toy["train_per_pair"], toy["val_per_pair"], toy["seed"], toy["dim"]) == (2.5, 2, 2, 101, 256)
    (scored,) = result["rows"]
    (seed,) = scored["seeds"]
    assert set(seed["numbers"]) == {"linear", "mlp", "kernel", "skeptic", "skeptic_kind", "fit", "converged"}
    assert "cross-fitted" in seed["numbers"]["fit"] and seed["numbers"]["converged"] is True
    assert set(seed["score"]["pass"]) == set(grid.CRITERIA) and seed["train_seed"] == 1
    assert all(seed["numbers"]["skeptic"][p] == max(seed["numbers"][k][p] for k in ("linear", "mlp", "kernel")) for p in ("fb", "bf"))
    ablation_cmds = result["ablations"][0]["seeds"][0]["commands"]
    assert ablation_cmds[0].endswith("--seed 1 --critic-weight 0 --no-erase") and result["worst_line"] == lines[-1]
    assert seed["commands"][0].endswith("--seed 1 --no-erase") and seed["commands"][1].startswith("d3s erase --checkpoint ")
    run = tmp_path / "runs-quick" / "strong-bg-2pp" / "seed101"
    assert (run / "wasserstein+erase-3" / "erasure.json").exists() and not (run / "wasserstein-3" / "probe.json").exists()
    assert "| strong-bg-2pp | wasserstein+erase | 1/1 |" in (tmp_path / "grid.md").read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "2 already probed, 0 to do" in again.stdout and again.stdout.splitlines()[-2:] == lines[-2:]
    # --no-train: the table of what is there; a seed pair not run counts as missing and nothing is trained for it
    partial = subprocess.run([*cmd[:cmd.index("--seeds")], "--seeds", "101:1,102:2", *cmd[cmd.index("--seeds") + 2:], "--no-train"],
                             cwd=REPO, capture_output=True, text=True, timeout=900)
    assert partial.returncode == 1 and "to do" not in partial.stdout, partial.stderr[-3000:]
    assert partial.stdout.splitlines()[-2].split()[:3] == ["strong-bg-2pp", "wasserstein+erase", "1/2"]
    assert not (run.parent / "seed102").exists()
    # --common: flags for every run, the ablation too, in runs of their own (the plain sweep's are not reused)
    common = subprocess.run([*cmd, "--common", """ls=--hparams '{"label_smoothing": 0.1}'"""], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert common.returncode == 0 and "0 already probed, 2 to do" in common.stdout, common.stderr[-3000:]
    assert common.stdout.splitlines()[-2].split()[:2] == ["strong-bg-2pp", "wasserstein+erase@ls"]
    result = json.loads((tmp_path / "grid.json").read_text())
    assert result["ablations"][0]["method"] == "ablation@ls"
    assert json.loads((run / "ablation@ls-3" / "run.json").read_text())["config"]["hparams"]["label_smoothing"] == 0.1
    assert (run / "wasserstein+erase@ls-3" / "skeptics.json").exists()


def test_disentangle_grid_methods_targets_and_refusals(capsys, tmp_path):
    grid = _grid_module()
    methods = grid.parse_methods("wasserstein,adversarial+erase,cw5=--critic-weight 5")
    assert methods == {"wasserstein": ("--no-erase",), "adversarial+erase": ("--method", "adversarial", "--erase"),
                       "cw5": ("--critic-weight", "5")}
    # a comma inside the flags' JSON (or quotes) does not start another method
    assert grid.parse_methods("""wd=--hparams '{"weight_decay": 0.01, "lr": 0.002}',relu1x=--neck linear""") == {
        "wd": ("--hparams", '{"weight_decay": 0.01, "lr": 0.002}'), "relu1x": ("--neck", "linear")}
    # an erasing method is a copy of its un-erased twin: one in the sweep, or one trained for it
    plan = grid.sweep("wasserstein+erase,adversarial+erase", None)
    assert plan.bases == {"wasserstein+erase": "wasserstein", "adversarial+erase": "adversarial"}
    assert plan.trained == {"ablation": ("--critic-weight", "0", "--no-erase"), "wasserstein": ("--no-erase",),
                            "adversarial": ("--method", "adversarial", "--no-erase")}
    assert grid.sweep("wasserstein+erase", "wd=--lr 0.01").bases == {"wasserstein+erase@wd": "wasserstein@wd"}
    assert grid.sweep("cw5e=--critic-weight 5 --erase", None).trained["cw5e-twin"] == ("--critic-weight", "5", "--no-erase")
    assert [s.name for s in grid.pick_rows("weak-bg,default")] == ["default", "weak-bg"]  # the grid's order
    assert len(grid.GRID) >= 8 and len({s.name for s in grid.GRID}) == len(grid.GRID)
    assert grid.parse_seeds("7:1, 8:2") == ((7, 1), (8, 2)) and grid.parse_seeds(None) == grid.SEEDS
    for bad in ("7", "7:1,7:2", "a:b"):
        with pytest.raises(grid.GridError, match="--seeds"):
            grid.parse_seeds(bad)

    def numbers(ff, bb, fb, bf, sk_fb=None, sk_bf=None):
        return {"linear": {"ff": ff, "bb": bb, "fb": fb, "bf": bf, "chance_fg": 0.001, "chance_bg": 0.1},
                "skeptic": {"fb": sk_fb if sk_fb is not None else fb, "bf": sk_bf if sk_bf is not None else bf},
                "skeptic_kind": {"fb": "linear", "bf": "linear"}}

    ablation = numbers(0.98, 0.99, 0.761, 0.985)
    good = grid.score(numbers(0.955, 0.986, 0.282, 0.408, 0.30, 0.45), ablation)
    assert good["failed"] == [] and abs(good["fraction"]["lin_bf"] - 0.308 / 0.885) < 1e-9
    # bg left in z_fg (0.95 of the ablation's excess): the linear target and the skeptic's fail, each probe judged alone
    bad = grid.score(numbers(0.97, 0.99, 0.05, 0.9408), ablation)
    assert bad["failed"] == ["lin", "skeptic"] and bad["probe_pass"]["lin"] == {"fb": True, "bf": False}
    # a skeptic that reads what the linear probe does not: the skeptic's target alone fails
    assert grid.score(numbers(0.97, 0.99, 0.05, 0.2, 0.05, 0.9), ablation)["failed"] == ["skeptic"]
    erased_well = numbers(0.97, 0.99, 0.03, 0.11)
    both = frozenset({"z_fg", "z_bg"})
    assert grid.score(erased_well, ablation, both)["failed"] == ["lin"]  # fg from z_bg 0.029 over chance: erased, so > 0.02
    assert grid.score(erased_well, ablation, frozenset({"z_fg"}))["failed"] == []  # z_bg not complete: the critics' target
    assert grid.score(erased_well, ablation, erasing=True)["first_rule"] is False  # the rule as first written: 0.02 for both
    assert grid.score(erased_well, ablation)["first_rule"] is None  # a method that does not erase
    # nothing to remove: an ablation excess under 0.02 is not judged
    clean = numbers(0.98, 0.99, 0.011, 0.985)
    lax = grid.score(numbers(0.97, 0.99, 0.03, 0.2), clean)
    assert lax["judged"]["lin"] == {"fb": False, "bf": True} and lax["probe_pass"]["lin"]["fb"] and lax["failed"] == []
    # fg: within 0.05 of the ablation's, and at least 0.90 where the ablation reaches 0.90
    assert grid.score(numbers(0.89, 0.99, 0.282, 0.408), numbers(0.92, 0.99, 0.761, 0.985))["failed"] == ["ff"]
    assert grid.score(numbers(0.86, 0.99, 0.282, 0.408), numbers(0.893, 0.99, 0.761, 0.985))["failed"] == []
    # over seeds: a target passes when it holds on every seed
    seeds = [{"numbers": n, "score": grid.score(n, ablation)} for n in (numbers(0.955, 0.986, 0.282, 0.408), numbers(0.97, 0.99, 0.05, 0.9408))]
    summary = grid.summarise(seeds)
    assert summary["failing"] == {"ff": 0, "bb": 0, "lin": 1, "skeptic": 1} and summary["numbers"]["lin_ff"]["mean"] == pytest.approx(0.9625)
    row = {"setting": "b", "method": "m", "summary": summary, "complete_erasers": []}
    cells = grid.table_cells(row)
    assert cells[2] == "2/2" and cells[-5:] == ["PASS", "PASS", "FAIL:1/2", "FAIL:1/2", "-"]
    ok = {"setting": "a", "method": "m", "summary": grid.summarise(seeds[:1]), "complete_erasers": []}
    assert grid.worst([ok, row])["setting"] == "b"
    assert grid.worst_line([ok, row]).startswith("worst: b / m: 2 of 4 targets fail (lin on 1 of 2 seeds, skeptic on 1 of 2 seeds)")
    # which parts are held to the erasure's target: those whose eraser reached k - 1 directions (or the part's width)
    report = {"fg_classes": 1000, "bg_classes": 10, "z_fg": {"erases": "bg", "rank": 9, "dim": 1798},
              "z_bg": {"erases": "fg", "rank": 92, "dim": 250}}
    (tmp_path / "erasure.json").write_text(json.dumps(report))
    assert grid.complete_erasers(tmp_path) == {"z_fg"}  # 1000 class means over 250 features: 92 directions erased
    report["z_bg"]["rank"] = 250
    (tmp_path / "erasure.json").write_text(json.dumps(report))
    assert grid.complete_erasers(tmp_path) == both and grid.complete_erasers(tmp_path / "none") == frozenset()
    # --common: added to every run; two --hparams become one, a key set twice differently is refused
    tag, common = grid.parse_common("""wd=--hparams '{"weight_decay": 0.0001}'""")
    assert tag == "@wd" and common == ("--hparams", '{"weight_decay": 0.0001}') and grid.parse_common(None) == ("", ())
    assert grid.with_common(("--critic-weight", "0", "--no-erase"), common) == ("--critic-weight", "0", "--no-erase", *common)
    merged = grid.with_common(("--hparams", '{"lr": 0.002}', "--erase"), common)
    assert merged[:-1] == ("--erase", "--hparams") and json.loads(merged[-1]) == {"weight_decay": 0.0001, "lr": 0.002}
    for bad, message in ((lambda: grid.with_common(("--hparams", '{"weight_decay": 0.1}'), common), "both set weight_decay"),
                         (lambda: grid.with_common(("--hparams", "[1]"), common), "wants a JSON object"),
                         (lambda: grid.parse_common("wd"), "give NAME=FLAGS")):
        with pytest.raises(grid.GridError, match=message):
            bad()
    for argv, message in ((["--rows", "nope"], "--rows: unknown nope"), (["--common", "a b=--seed 1"], "give NAME=FLAGS"),
                          (["--methods", "magic"], "unknown method 'magic'"), (["--seeds", "1"], "--seeds: give TOY:TRAIN"),
                          (["--jobs", "0"], "--jobs must be in 1..64, got 0"), (["--steps", "0"], "--steps must be at least 1, got 0")):
        capsys.readouterr()
        assert grid.main(["--out", "/nonexistent/never-written", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("disentangle_grid: error: ") and message in err[0], err


def test_image_toys_quick_smoke(tmp_path):
    """The image toys' score end to end at tiny sizes (one toy, one seed pair, 3 steps): the toy as its row says with
    the pair's seed, the ablation and the defaults with the row's backbone and augmentation, scored by the grid's
    targets; a rerun redoes no run."""
    grid = _grid_module()
    cmd = [sys.executable, "benchmarks/image_toys.py", "--quick", "--toys", "6x4", "--seeds", "101:1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    row = lines[-2].split()
    assert row[:3] == ["6x4", "wasserstein+erase", "1/1"] and len(row) == len(grid.COLUMNS)
    assert set(row[-5:]) <= {"PASS", "FAIL:1/1", "-"} and lines[-1].startswith("worst: 6x4 / wasserstein+erase: ")
    toy = json.loads((tmp_path / "toys-quick" / "6x4" / "seed101" / "d3s_toy.json").read_text())
    assert toy["seed"] == 101 and len(toy["shapes"]) == 6 and len(toy["textures"]) == 4 and toy["train_per_pair"] == 8, toy
    result = json.loads((tmp_path / "image_toys.json").read_text())
    (scored,) = result["rows"]
    assert scored["seeds"][0]["commands"][0].startswith("d3s train --data ") and "--backbone test_resnet --no-pretrained" in scored["seeds"][0]["commands"][0]
    assert scored["chosen_on"] is False
    ablation = json.loads((tmp_path / "runs-quick" / "6x4" / "seed101" / "ablation-3" / "run.json").read_text())["config"]
    assert ablation["hparams"]["critic_weight"] == 0.0 and ablation["backbone"] == "test_resnet" and ablation["seed"] == 1
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "2 already probed, 0 to do" in again.stdout and again.stdout.splitlines()[-2:] == lines[-2:]
    bad = subprocess.run([*cmd[:2], "--toys", "nope", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip() == ("image_toys: error: --toys: unknown nope; choose from readme, 64px, "
                                                          "resnet10t-5x5, 6x4.")


def test_erasure_benchmarks_quick_smoke(tmp_path):
    """The erasure benchmarks end to end at tiny sizes: the report's cost beside the training it ends, and held-out
    leakage after LEACE for one size of each design (the train-fitted probe reading chance by construction)."""
    cost = subprocess.run([sys.executable, "benchmarks/erasure_cost.py", "--quick", "--out", str(tmp_path / "cost")], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert cost.returncode == 0, cost.stderr[-3000:]
    first, last = cost.stdout.strip().splitlines()[-2:]
    assert first.startswith("d3s train, 60 steps on 800 train rows (one thread): training ") and "(linear probes, held out)" in first
    assert last.startswith("ratio ") and last.endswith("(--quick: not judged)")
    rows = subprocess.run([sys.executable, "benchmarks/erasure_rows.py", "--quick", "--rows", "2", "--regimes", "default relu2",
                           "--out", str(tmp_path / "rows")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rows.returncode == 0, rows.stderr[-3000:]
    result = json.loads((tmp_path / "rows" / "erasure_rows.json").read_text())["rows"]
    assert [(r["paired"], r["rows_per_bg_class"]) for r in result] == [(False, 80), (True, 80)]
    for r in result:
        b = r["bg_from_fg"]
        assert abs(b["after_train_fitted"] - r["chance"]["bg"]) < 0.01 and b["before"] > b["after"]
        assert (b["after_folds_by_row"] is None) == (not r["paired"])
    assert "| default relu2 | paired | 80 |" in (tmp_path / "rows" / "erasure_rows.md").read_text()
