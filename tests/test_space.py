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


# --- reviews that survive a restart --------------------------------------------------------------------------------

class LocalHub:
    """The HfApi calls a reviews repository needs, on a local folder standing in for the Hub dataset (no network)."""

    def __init__(self, root):
        self.root, self.created, self.commits = root, [], 0

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False, **_):
        from types import SimpleNamespace

        self.created.append((repo_id, repo_type, private))
        self.root.mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def list_repo_files(self, repo_id, repo_type=None, **_):
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def hf_hub_download(self, repo_id, filename, repo_type=None, local_dir=None, **_):
        import shutil
        from pathlib import Path

        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / filename, target)
        return str(target)

    def run_as_future(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(err)
        return future

    def create_commit(self, repo_id, operations, commit_message=None, repo_type=None, revision=None, **_):
        for op in operations:
            with op.as_file() as f:
                (self.root / op.path_in_repo).write_bytes(f.read())
        self.commits += 1


def test_reviews_uploaded_to_a_hub_dataset_come_back_after_a_restart_on_a_fresh_disk(tmp_path, synth_train, capsys):
    """--reviews-repo: answers go to a local folder that CommitScheduler uploads; a Space restarted on an empty disk
    reads them back from the repository, and `d3s split --reviews FOLDER` reads the folder."""
    from conftest import run_main
    from d3s.review import dataset_key
    from d3s.review_hub import open_app_store

    hub, key = LocalHub(tmp_path / "hub"), dataset_key(synth_train)
    first = open_app_store(str(tmp_path / "space-1" / "reviews"), "me/d3s-reviews", api=hub)
    try:
        assert set(hub.created) == {("me/d3s-reviews", "dataset", True)}  # a private dataset: reviewer names are in it
        first.add(key, 0, "ann", True, False)
        first.add(key, 1, "ann", False, True)
        first.scheduler.trigger().result()  # the scheduled upload
        first.add(key, 2, "ann", True, False)
        first.scheduler.trigger().result()  # what the exit handler does (app.py turns SIGTERM into a clean exit)
    finally:
        first.scheduler.stop()
    assert [p.name for p in (tmp_path / "hub").glob("*.jsonl")] == [p.name for p in (tmp_path / "space-1" / "reviews").glob("*.jsonl")]
    second = open_app_store(str(tmp_path / "space-2" / "reviews"), "me/d3s-reviews", api=hub)  # a fresh disk
    try:
        assert {(r.item_id, r.object_present, r.unsafe) for r in second.reviews(key)} == {(0, True, False), (1, False, True),
                                                                                         (2, True, False)}
        second.add(key, 3, "bob", True, False)
        second.scheduler.trigger().result()
    finally:
        second.scheduler.stop()
    assert len(list((tmp_path / "hub").glob("*.jsonl"))) == 2  # one file per run: runs never write each other's
    code, err = run_main(capsys, "split", "--data", str(synth_train), "--out", str(tmp_path / "splits"), "--reviews",
                         str(tmp_path / "space-2" / "reviews"), "--validation-fraction", "0.5")
    assert code == 0, err
    validation, benchmark = (split_ids(tmp_path / "splits", s) for s in ("validation", "benchmark"))
    assert validation and benchmark == validation & {0, 2, 3}  # kept: seen by everyone who answered, flagged by none
    with pytest.raises(Exception, match="give --reviews a folder"):
        open_app_store(str(tmp_path / "reviews.sqlite"), "me/d3s-reviews", api=hub)


@pytest.fixture()
def synth_train(tmp_path):
    from conftest import write_d3s_split

    # 2 classes x 2 backgrounds x 2 rows, no diffusion: `d3s split` sends one row of each cell to validation
    return write_d3s_split(tmp_path / "d3s", split="train", classes=(0, 207), backgrounds=range(2), per_cell=2)


def split_ids(folder, split: str) -> set[int]:
    import pyarrow.parquet as pq

    from d3s.dataset import find_splits

    return {i for path in find_splits(folder)[split] for i in pq.read_table(path, columns=["item_id"])["item_id"].to_pylist()}


def test_every_acknowledged_answer_survives_sigterm_and_a_restart(tmp_path, synth_train, capsys):
    """The app as a process: answers given through it, SIGTERM between answers (a Space stopping it), a restart on the
    same folder, more answers, then SIGKILL (no exit handler at all): every answer the app acknowledged is there."""
    import signal

    from gradio_client import Client

    from conftest import run_main, start_app

    reviews = tmp_path / "reviews"  # a folder of JSON lines, the form --reviews-repo uploads
    args = ("--model", "tiny", "--data", f"d3s={synth_train}", "--reviews", str(reviews))
    proc, url, log = start_app(tmp_path, *args)  # 127.0.0.1: the typed reviewer name is trusted
    try:
        ann = Client(url, verbose=False)
        *_, text, _ = ann.predict("d3s", "ann", api_name="/review_next")
        assert "0 of 8 reviewed by ann" in text
        ann.predict("ann", False, api_name="/review_present")
        *_, text, _ = ann.predict("ann", True, api_name="/review_missing")  # acknowledged: the next image is shown
        assert "2 of 8 reviewed by ann" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # a clean exit, as Ctrl+C: the exit handlers ran
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "reviews in " + str(reviews) in log.read_text()
    proc, url, log = start_app(tmp_path, *args)
    try:
        bob, ann = Client(url, verbose=False), Client(url, verbose=False)
        *_, text, _ = ann.predict("d3s", "ann", api_name="/review_next")
        assert "2 of 8 reviewed by ann" in text  # nothing answered before the restart is asked again
        bob.predict("d3s", "bob", api_name="/review_next")
        *_, text, _ = bob.predict("bob", False, api_name="/review_present")
        assert "1 of 8 reviewed by bob" in text
    finally:
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    from d3s.review import dataset_key, open_store

    answers = {(r.reviewer, r.item_id): (r.object_present, r.unsafe) for r in open_store(reviews).reviews(dataset_key(synth_train))}
    assert sorted(answers.values()) == [(False, True), (True, False), (True, False)] and len(answers) == 3
    assert {who for who, _ in answers} == {"ann", "bob"}
    code, err = run_main(capsys, "split", "--data", str(synth_train), "--out", str(tmp_path / "splits"), "--reviews",
                         str(reviews), "--validation-fraction", "0.5")
    assert code == 0, err
    by_item: dict[int, list] = {}
    for (_, item), answer in answers.items():
        by_item.setdefault(item, []).append(answer)
    kept = {item for item, given in by_item.items() if all(present and not unsafe for present, unsafe in given)}
    assert kept  # bob's first image is ann's first, which she saw too
    assert split_ids(tmp_path / "splits", "benchmark") == split_ids(tmp_path / "splits", "validation") & kept


def test_on_a_space_the_review_store_defaults_to_its_persistent_storage(tmp_path, monkeypatch):
    import app
    from d3s import review_hub

    monkeypatch.setattr(review_hub, "PERSISTENT_STORAGE", tmp_path / "data")
    for name in ("SPACE_ID", "D3S_REVIEWS", "D3S_REVIEWS_REPO"):
        monkeypatch.delenv(name, raising=False)

    def store(*argv):
        return app.settings_from_args(app.parse_args(["--model", "tiny", *argv])).reviews

    assert store() == "reviews.sqlite" and store("--reviews-repo", "me/r") == "reviews"  # off a Space: the working folder
    monkeypatch.setenv("SPACE_ID", "me/d3s")
    assert store() == "reviews.sqlite"  # a Space without persistent storage
    (tmp_path / "data").mkdir()
    assert store() == str(tmp_path / "data" / "reviews.sqlite")
    monkeypatch.setenv("D3S_REVIEWS_REPO", "me/r")
    assert store() == str(tmp_path / "data" / "reviews")  # JSON lines, uploaded to the repository
    assert store("--reviews", "elsewhere.sqlite") == "elsewhere.sqlite"  # the operator's choice wins
