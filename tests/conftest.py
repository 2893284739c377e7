import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if os.cpu_count() and os.cpu_count() <= 2:
    torch.set_num_threads(1)  # on a 2-core box shared with another job, 2 threads contend badly


CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m d3s ...` from the repository root (so this checkout's package is the one run)."""
    env = CLI_ENV
    return subprocess.run([sys.executable, "-m", "d3s", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """A small independent toy dataset (5 shapes x 5 textures)."""
    from d3s.toy import ToyConfig, write_toy

    out = tmp_path_factory.mktemp("toy")
    write_toy(ToyConfig(out=str(out), train_per_pair=120, val_per_pair=16))
    return out


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory) -> Path:
    """A very small toy for plumbing tests."""
    from d3s.toy import ToyConfig, write_toy

    out = tmp_path_factory.mktemp("tiny_toy")
    write_toy(ToyConfig(out=str(out), fg_classes=3, bg_classes=3, train_per_pair=8, val_per_pair=3, size=16))
    return out
