"""What a Hugging Face Space needs: the runtime requirements apart from the test tools, and ZeroGPU's decorator on the
two diffusion handlers (validation and admission outside the GPU allocation)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest

from conftest import REPO

TEST_TOOLS = {"pytest", "playwright", "scikit-image"}


def requirements(name: str) -> dict[str, str]:
    """A requirements file -> {normalised name (with its extras): the line}, comments and ``-r`` includes left out."""
    out = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out[re.split(r"[=<>~!\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")] = line
    return out


def imported_distributions() -> set[str]:
    """The distributions that d3s/, app.py and hub/ import (top-level third-party modules, mapped to what installs them)."""
    modules = set()
    for path in [*(REPO / "d3s").rglob("*.py"), REPO / "app.py", *(REPO / "hub").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    modules = {m for m in modules if m not in sys.stdlib_module_names and m != "d3s"}
    known = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in known)
    assert not missing, f"imported but not installed here: {missing}"
    return {d.lower().replace("_", "-") for m in modules for d in known[m]}


def test_the_runtime_requirements_are_what_the_app_imports_and_no_test_tool():
    runtime, tests = requirements("requirements.txt"), requirements("requirements-test.txt")
    assert runtime["gradio"] == "gradio[oauth]==6.31.0"  # hf_oauth: true needs the oauth extra
    assert runtime["spaces"] == "spaces==0.51.3"
    assert not TEST_TOOLS & set(runtime), "test tools belong in requirements-test.txt"
    assert TEST_TOOLS <= set(tests) and not set(runtime) & set(tests)
    assert "-r requirements.txt" in (REPO / "requirements-test.txt").read_text().splitlines()
    assert all("==" in line for line in [*runtime.values(), *tests.values()]), "every requirement is pinned"
    # Nothing the code imports is installed only by the test file (or not at all).
    assert imported_distributions() <= set(runtime), imported_distributions() - set(runtime)
    # make test / make app set up the whole thing; the Docker image (like a Space) installs the runtime set only.
    assert "-r requirements-test.txt" in (REPO / "scripts" / "setup.sh").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile and "requirements-test.txt" not in dockerfile
