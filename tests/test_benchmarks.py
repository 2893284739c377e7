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
    """The grid end to end at tiny sizes (one setting, a handful of steps): toy, the defaults and the ablation side by
    side, both probes, the table's columns, the worst-row line, grid.json and grid.md; a rerun redoes no run."""
    grid = _grid_module()
    cmd = [sys.executable, "benchmarks/disentangle_grid.py", "--quick", "--rows", "strong-bg-2pp", "--steps", "3", "--jobs", "2",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-3].split() == [w for c in grid.COLUMNS for w in c.split()]  # the header: every column, in order
    row = lines[-2].split()
    assert row[:2] == ["strong-bg-2pp", "wasserstein+erase"] and len(row) == len(grid.COLUMNS)  # the defaults: they erase
    assert "z_fg" in row[grid.COLUMNS.index("complete LEACE")]  # 10 bg classes: bg erased from z_fg along all 9 directions
    assert all(0.0 <= float(v) <= 1.0 for v in row[2:11]) and set(row[-4:]) <= {"PASS", "FAIL"}
    assert lines[-1].startswith("worst: strong-bg-2pp / wasserstein+erase: ") and "targets fail" in lines[-1]
    result = json.loads((tmp_path / "grid.json").read_text())
    assert result["settings"][0]["toy"]["bg_scale"] == 2.5 and result["settings"][0]["toy"]["train_per_pair"] == 2
    assert result["settings"][0]["toy"]["seed"] == 1 and result["settings"][0]["toy"]["dim"] == 256
    (scored,) = result["rows"]
    assert set(scored["numbers"]) == {"linear", "mlp"} and set(scored["score"]["pass"]) == set(grid.CRITERIA)
    assert result["ablations"][0]["commands"][0].endswith("--critic-weight 0 --no-erase") and result["worst_line"] == lines[-1]
    assert scored["commands"][0].endswith("--erase") and (tmp_path / "runs-quick" / "strong-bg-2pp" / "wasserstein+erase-3" / "erasure.json").exists()
    assert "| strong-bg-2pp | wasserstein+erase |" in (tmp_path / "grid.md").read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "2 already probed, 0 to do" in again.stdout and again.stdout.splitlines()[-2:] == lines[-2:]
    # --common: flags for every run, the ablation too, in runs of their own (the plain sweep's are not reused)
    common = subprocess.run([*cmd, "--common", "s1=--seed 1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert common.returncode == 0 and "0 already probed, 2 to do" in common.stdout, common.stderr[-3000:]
    assert common.stdout.splitlines()[-2].split()[:2] == ["strong-bg-2pp", "wasserstein+erase@s1"]
    result = json.loads((tmp_path / "grid.json").read_text())
    assert result["common"] == ["--seed", "1"] and result["ablations"][0]["method"] == "ablation@s1"
    assert result["ablations"][0]["commands"][0].endswith("--critic-weight 0 --no-erase --seed 1")
    assert result["rows"][0]["commands"][0].endswith("--erase --seed 1")
    assert (tmp_path / "runs-quick" / "strong-bg-2pp" / "ablation@s1-3" / "probe.json").exists()
    assert json.loads((tmp_path / "runs-quick" / "strong-bg-2pp" / "ablation@s1-3" / "run.json").read_text())["config"]["seed"] == 1


def test_disentangle_grid_methods_targets_and_refusals(capsys, tmp_path):
    grid = _grid_module()
    methods = grid.parse_methods("wasserstein,adversarial+erase,cw5=--critic-weight 5")
    assert methods == {"wasserstein": ("--no-erase",), "adversarial+erase": ("--method", "adversarial", "--erase"),
                       "cw5": ("--critic-weight", "5")}
    # a comma inside the flags' JSON (or quotes) does not start another method
    assert grid.parse_methods("""wd=--hparams '{"weight_decay": 0.01, "lr": 0.002}',relu1x=--neck linear""") == {
        "wd": ("--hparams", '{"weight_decay": 0.01, "lr": 0.002}'), "relu1x": ("--neck", "linear")}
    # an erasing method erases a copy of its base method's run when that method is in the grid too
    assert grid.erase_base(methods["adversarial+erase"], {**methods, "adversarial": ("--method", "adversarial")}) == "adversarial"
    assert grid.erase_base(methods["adversarial+erase"], methods) is None and grid.erase_base((), methods) is None
    assert grid.erases("adversarial+erase", methods["adversarial+erase"]) and not grid.erases("cw5", methods["cw5"])
    assert [s.name for s in grid.pick_rows("weak-bg,default")] == ["default", "weak-bg"]  # the grid's order
    assert len(grid.GRID) >= 8 and len({s.name for s in grid.GRID}) == len(grid.GRID)

    def numbers(ff, bb, fb, bf):
        return {"ff": ff, "bb": bb, "fb": fb, "bf": bf, "chance_fg": 0.001, "chance_bg": 0.1}

    ablation = {"linear": numbers(0.98, 0.99, 0.761, 0.985), "mlp": numbers(0.94, 0.98, 0.266, 0.982)}
    good = grid.score({"linear": numbers(0.955, 0.986, 0.282, 0.408), "mlp": numbers(0.85, 0.98, 0.013, 0.322)}, ablation)
    assert good["failed"] == [] and abs(good["fraction"]["lin_bf"] - 0.308 / 0.885) < 1e-9
    # the held-out regime: bg left in z_fg (0.95 of the ablation's excess), fg fine
    bad = grid.score({"linear": numbers(0.97, 0.99, 0.30, 0.9408), "mlp": numbers(0.9, 0.98, 0.05, 0.95)}, ablation)
    assert bad["failed"] == ["lin", "mlp"] and abs(bad["fraction"]["lin_bf"] - 0.95) < 1e-3
    erased_well = {"linear": numbers(0.97, 0.99, 0.03, 0.11), "mlp": numbers(0.9, 0.98, 0.05, 0.3)}
    both = frozenset({"z_fg", "z_bg"})
    assert grid.score(erased_well, ablation, both)["failed"] == ["lin"]  # fg from z_bg 0.029 over chance: erased, so > 0.02
    assert grid.score(erased_well, ablation, frozenset({"z_fg"}))["failed"] == []  # z_bg not erased: the critics' target
    assert grid.erases("w", ("--erase", "--erase-parts", "z_fg")) == {"z_fg"} and grid.erases("w+erase", ()) == both
    # which parts are held to the erasure's target: those whose eraser reached k - 1 directions (or the part's width)
    import json
    report = {"fg_classes": 1000, "bg_classes": 10, "z_fg": {"erases": "bg", "rank": 9, "dim": 1798},
              "z_bg": {"erases": "fg", "rank": 92, "dim": 250}}
    (tmp_path / "erasure.json").write_text(json.dumps(report))
    assert grid.complete_erasers(tmp_path) == {"z_fg"}  # 1000 class means over 250 features: 92 directions erased
    report["z_bg"]["rank"] = 250
    (tmp_path / "erasure.json").write_text(json.dumps(report))
    assert grid.complete_erasers(tmp_path) == both and grid.complete_erasers(tmp_path / "none") == frozenset()
    rows = [{"setting": "a", "method": "m", "score": good}, {"setting": "b", "method": "m", "score": bad}]
    assert grid.worst(rows)["setting"] == "b" and grid.worst_line(rows).startswith("worst: b / m: 2 of 4 targets fail (lin, mlp)")
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
    for argv, message in ((["--rows", "nope"], "--rows: unknown nope"), (["--common", "a b=--seed 1"], "give NAME=FLAGS"), (["--methods", "magic"], "unknown method 'magic'"),
                          (["--jobs", "0"], "--jobs must be in 1..64, got 0"), (["--steps", "0"], "--steps must be at least 1, got 0")):
        capsys.readouterr()
        assert grid.main(["--out", "/nonexistent/never-written", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("disentangle_grid: error: ") and message in err[0], err


def test_image_toys_quick_smoke(tmp_path):
    """The image toys' score end to end at tiny sizes (one toy, 3 steps): the toy as its row says, the defaults and the
    ablation with the row's backbone and augmentation, scored by the grid's targets; a rerun redoes no run."""
    grid = _grid_module()
    cmd = [sys.executable, "benchmarks/image_toys.py", "--quick", "--toys", "6x4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    row = lines[-2].split()
    assert row[:2] == ["6x4", "wasserstein+erase"] and len(row) == len(grid.COLUMNS) and set(row[-4:]) <= {"PASS", "FAIL"}
    assert lines[-1].startswith("worst: 6x4 / wasserstein+erase: ")
    toy = json.loads((tmp_path / "toys-quick" / "6x4" / "d3s_toy.json").read_text())
    assert toy["seed"] == 3 and len(toy["shapes"]) == 6 and len(toy["textures"]) == 4 and toy["train_per_pair"] == 8, toy
    result = json.loads((tmp_path / "image_toys.json").read_text())
    (scored,) = result["rows"]
    assert scored["flags"][:5] == ["--backbone", "test_resnet", "--no-pretrained", "--seed", "0"] and scored["chosen_on"] is False
    ablation = json.loads((tmp_path / "runs-quick" / "6x4" / "ablation-3" / "run.json").read_text())["config"]
    assert ablation["hparams"]["critic_weight"] == 0.0 and ablation["backbone"] == "test_resnet"
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "2 already probed, 0 to do" in again.stdout and again.stdout.splitlines()[-2:] == lines[-2:]
    bad = subprocess.run([*cmd[:2], "--toys", "nope", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip() == ("image_toys: error: --toys: unknown nope; choose from readme, 64px, "
                                                          "resnet10t-5x5, 6x4.")
