"""The GPU throughput script must not rot while no GPU is around: its --smoke mode runs it on CPU."""

import subprocess
import sys

from conftest import REPO


def test_gpu_generate_script_runs_in_smoke_mode():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_generate.py", "--smoke", "--repeats", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "faithful" in proc.stdout and "turbo" in proc.stdout and "d3s generate, batch 2" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("best faithful")
