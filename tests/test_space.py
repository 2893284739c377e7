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


# --- ZeroGPU -----------------------------------------------------------------------------------------------------

def diffusion_handlers(limits):
    from d3s.handlers import Models, Settings, make_across_fn, make_generate_fn

    models, settings = Models(pipe=None, model="sd", tiny=False, banner=""), Settings(limits=limits)  # 512 px, 50 steps
    return make_generate_fn(models, settings), make_across_fn(models, settings)


def test_the_diffusion_handlers_hold_a_zerogpu_only_for_their_work(monkeypatch):
    """spaces.GPU wraps the work function of Generate and Across backgrounds, under `served`: the validator (bounds,
    admission) runs before the queue and never asks for a GPU."""
    import functools

    import spaces

    from d3s.hosting import Limits

    recorded, calls = {}, []

    def gpu(task=None, *, duration=None, size=None):  # what spaces.GPU does on ZeroGPU, recorded
        def decorate(fn):
            @functools.wraps(fn)
            def on_zerogpu(*args, **kwargs):
                calls.append((fn.__name__, duration(*args, **kwargs)))
                return fn(*args, **kwargs)

            recorded[fn.__name__] = on_zerogpu
            return on_zerogpu

        return decorate

    monkeypatch.setattr(spaces, "GPU", gpu)
    generate, across = diffusion_handlers(Limits())
    assert generate.__wrapped__ is recorded["generate"] and across.__wrapped__ is recorded["generate_all"]
    verdict = generate.validator("tabby (281)", "in snow", 0, None, None, 0, 20, 0.9, 5.0, request=None)
    assert all(v.get("is_valid", True) for v in verdict) and not calls  # admitted, with no GPU asked for
    refused = across.validator("tabby (281)", 0, None, 0, 9999, request=None)
    assert any(v.get("is_valid") is False for v in refused) and not calls


def test_the_gpu_duration_grows_with_steps_size_and_images_within_the_time_limit():
    from d3s.hosting import Limits
    from d3s.zerogpu import SECONDS_PER_IMAGE, SECONDS_PER_REQUEST

    generate, across = diffusion_handlers(Limits(time_limit=120))
    seconds = generate.gpu_seconds  # kept by on_gpu, carried to the served handler

    def one(size, steps, strength=0.9):
        return seconds("tabby (281)", "in snow", 0, None, None, size, steps, strength, 5.0, request=None)

    assert one(256, 20) < one(512, 20) < one(512, 40)
    assert one(512, 40, strength=0.5) < one(512, 40)
    assert one(0, 0) == one(512, 50)  # 0: the handler's defaults
    assert across.gpu_seconds("tabby (281)", 0, None, 512, 40) > one(512, 40)  # ten images
    assert across.gpu_seconds("tabby (281)", 0, None, 256, 40) < across.gpu_seconds("tabby (281)", 0, None, 512, 40)
    # Past the time limit denoising is stopped: the request never asks for more than the limit and what it cannot stop.
    short, short_across = diffusion_handlers(Limits(time_limit=5))
    assert short.gpu_seconds("tabby (281)", "in snow", 0, None, None, 512, 50) == 5 + SECONDS_PER_REQUEST + SECONDS_PER_IMAGE
    assert short_across.gpu_seconds("tabby (281)", 0, None, 512, 50) == 5 + SECONDS_PER_REQUEST + 10 * SECONDS_PER_IMAGE


def test_off_zerogpu_spaces_leaves_the_handlers_as_they_are():
    """With `spaces` installed but not on ZeroGPU (SPACES_ZERO_GPU unset), spaces.GPU returns the function itself: the
    served handler calls the plain work function (the app's tests run it on the tiny preset)."""
    import spaces.config

    from d3s.hosting import Limits

    assert not spaces.config.Config.zero_gpu
    generate, _ = diffusion_handlers(Limits())
    assert generate.__wrapped__.__code__.co_name == "generate" and not hasattr(generate.__wrapped__, "__wrapped__")
