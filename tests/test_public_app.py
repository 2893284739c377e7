"""The app hosted as a public Space would be, replaying an anonymous stranger's attacks (gradio_client and plain HTTP).

Two servers: ``public`` (SPACE_ID set, bound where a Space expects, tiny preset, the operator's dataset and results,
no sign-in: no Review tab) and ``signed`` (public bind with ``--review-auth``: every user signs in, answers carry the
signed-in name). A secret file and its folder are watched with inotify for the whole module: no request may make the
server open, read or list them.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import REPO, huge_png_header, start_app, stop_app

IN_ACCESS, IN_OPEN = 0x1, 0x20


class Watch:
    """inotify on a file and its folder: any open, read or listing of either by any process is recorded."""

    def __init__(self, *paths: Path):
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        for p in paths:
            assert self.libc.inotify_add_watch(self.fd, str(p).encode(), IN_OPEN | IN_ACCESS) >= 0

    def events(self) -> int:
        try:
            return len(os.read(self.fd, 65536))
        except BlockingIOError:
            return 0


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A server-side folder with an image and a text file that nobody may reach through the app."""
    folder = tmp_path_factory.mktemp("server-secrets")
    Image.new("RGB", (32, 32), (250, 0, 0)).save(folder / "secret.png")
    (folder / "token.txt").write_text("hf_not_a_real_token")
    watch = Watch(folder, folder / "secret.png", folder / "token.txt")
    yield {"folder": folder, "png": folder / "secret.png", "watch": watch}
    assert watch.events() == 0, "the secret folder or its files were opened during the tests"


@pytest.fixture(scope="module")
def public(tmp_path_factory, tiny_run, bench_results, secret):
    folder = tmp_path_factory.mktemp("public-app")
    env = {"SPACE_ID": "d3s/demo", "GRADIO_SERVER_NAME": "0.0.0.0"}
    proc, url, log = start_app(folder, "--data", str(tiny_run), "--results", str(bench_results), "--reviews",
                               str(folder / "reviews.sqlite"), "--time-limit", "5", env=env, host=None)
    yield {"url": url, "log": log, "reviews": folder / "reviews.sqlite", "folder": folder}
    stop_app(proc)


@pytest.fixture(scope="module")
def client(public):
    return Client(public["url"], verbose=False)


SERVER_PATHS = ("/etc", "~", ".", "..", "/tmp", "/tmp/gradio", str(REPO), "/etc/passwd", "/no/such/folder")


def _no_server_text(text: str, secret_folder: Path) -> None:
    """Nothing of the server's folders in a response: no listing, no path, no exception text."""
    for needle in ("passwd", "PackageKit", "apache2", ".pem", "folder(s)", "Traceback", "Errno", str(REPO),
                   str(secret_folder), "secret.png", "token.txt", "hf_not_a_real_token", "cannot identify"):
        assert needle not in text, (needle, text[:300])


def _refusal(call) -> str:
    with pytest.raises(Exception) as refused:
        call()
    return str(refused.value)


def test_binds_where_a_space_expects_and_says_it_is_public(public):
    assert "Listening on 0.0.0.0:" in public["log"].read_text() and "(public)" in public["log"].read_text()
    config = httpx.get(public["url"] + "config", timeout=10).json()
    assert config.get("show_error") is False


def test_no_request_reads_a_server_folder(client, secret):
    """/browse, /benchmark_results, /bgchallenge_results and /benchmark_cells take a label from the operator's list
    only: folders, the app's own, Gradio's temp folder and Hub ids are refused with one fixed sentence."""
    for path in (*SERVER_PATHS, str(secret["folder"]), "someorg/private-dataset"):
        message = _refusal(lambda: client.predict(path, None, "all", "all", api_name="/browse"))
        assert "Choose one of the datasets this app offers from the list." in message
        _no_server_text(message, secret["folder"])
        for api in ("/benchmark_results", "/bgchallenge_results"):
            message = _refusal(lambda: client.predict(path, api_name=api))
            assert "Choose one of the results folders this app offers from the list." in message
            _no_server_text(message, secret["folder"])
        message = _refusal(lambda: client.predict(path, "test_resnet", api_name="/benchmark_cells"))
        assert "Choose one of the results folders" in message
    # whether a path exists cannot be told from the answer
    assert _refusal(lambda: client.predict("/etc/passwd", None, "all", "all", api_name="/browse")) == \
        _refusal(lambda: client.predict("/no/such/file", None, "all", "all", api_name="/browse"))


def test_the_operators_data_is_offered_by_label(client, public, secret):
    gallery, summary, *_ = client.predict("out", None, "all", "all", api_name="/browse")
    assert len(gallery) == 60 and "3 classes x 10 backgrounds" in summary
    _no_server_text(summary, secret["folder"])
    assert _refusal(lambda: client.predict("out", "../../etc", "all", "all", api_name="/browse")).endswith(
        "Choose a split of this dataset from the list.")
    drop, *_ = client.predict("results", api_name="/benchmark_results")
    assert drop is not None


def test_uploads_are_never_followed(client, secret, tmp_path):
    """A parquet in the d3s schema whose image is a *path* (or a URL), uploaded where a photo goes: the server reads it
    as an image file only, never opens what it names; a file reference to a server path is refused by Gradio."""
    import datasets

    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(),
                               "fg": datasets.ClassLabel(names=["a"]), "bg": datasets.ClassLabel(names=["b"])})
    table = datasets.Dataset.from_dict({"item_id": [0, 1], "image": [{"path": str(secret["png"]), "bytes": None},
                                                                     {"path": "hf://datasets/org/x/a.png", "bytes": None}],
                                        "fg": [0, 0], "bg": [0, 0]}, features=feats).with_format(None)
    trap = tmp_path / "trap.parquet"
    table.data.table.to_pandas().to_parquet(trap)
    disguised = tmp_path / "trap.png"  # past the file-type check, into the decoder
    disguised.write_bytes(trap.read_bytes())
    for upload in (trap, disguised):
        for call in (lambda: client.predict(handle_file(str(upload)), api_name="/predict"),
                     lambda: client.predict("tabby (281)", "in snow", 0, handle_file(str(upload)), api_name="/generate")):
            message = _refusal(call)
            # Gradio refuses a non-image file type before the job is queued (HTTP 400); an image name gets our sentence
            assert ("400 Bad Request" in message) if upload is trap else ("could not be read as an image" in message)
            _no_server_text(message, secret["folder"])
    # plain HTTP: Gradio's file route and a FileData naming a server path
    for path in (secret["png"], REPO / "app.py", Path("/etc/passwd")):
        assert httpx.get(f"{client.src}gradio_api/file={path}", timeout=10).status_code in (403, 404)
    status, text = _join(client, "/predict", [{"path": str(secret["png"]), "meta": {"_type": "gradio.FileData"}}])
    assert status != 200 or "process_completed" in text and '"success":false' in text.replace(" ", "")
    assert secret["watch"].events() == 0


def _join(client: Client, api_name: str, data: list) -> tuple[int, str]:
    """One event by plain HTTP (queue/join, then the SSE stream until it completes): (join status, stream text)."""
    config = httpx.get(client.src + "config", timeout=10).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name.strip("/"))
    session = f"attacker-{time.time_ns()}"
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
                      allow_nan=True)
    join = httpx.post(client.src + "gradio_api/queue/join", content=body, headers={"content-type": "application/json"},
                      timeout=30)
    if join.status_code != 200:
        return join.status_code, join.text
    with httpx.stream("GET", client.src + "gradio_api/queue/data", params={"session_hash": session}, timeout=120) as r:
        text = ""
        for line in r.iter_lines():
            text += line + "\n"
            if "process_completed" in line:
                break
    return 200, text


def test_every_number_is_bounded_on_the_server(client, secret):
    """Whatever the sliders allow: 1000 steps, 4096 px, a seed out of range or not a number are refused before
    they are queued, with a sentence naming the bound."""
    assert "Steps must be a whole number from 0 to 50." in _refusal(
        lambda: client.predict("tabby (281)", "in snow", 0, None, None, 0, 1000, api_name="/generate"))
    assert "Size must be a whole number from 0 to 256." in _refusal(  # the tiny preset's cap
        lambda: client.predict("tabby (281)", 0, None, 4096, 0, api_name="/generate_all"))
    assert "Seed must be a whole number" in _refusal(lambda: client.predict("tabby (281)", "in snow", -1, api_name="/generate"))
    # a slider's own range is enforced by Gradio before the job is queued (HTTP 400); the server's bound stands behind it
    status, text = _join(client, "/generate", ["tabby (281)", "in snow", 0, None, None, 0, 0, 0.9, 1e9])
    assert status == 400 and "maximum" in text
    for value in (float("nan"), float("inf"), 2**70):
        status, text = _join(client, "/generate", ["tabby (281)", "in snow", value, None, None, 0, 0, 0.9, 5.0])
        assert status in (400, 422), (value, status, text[:300])  # refused before it is queued
        assert status == 400 or "Seed must be a whole number" in text  # 400: Gradio's own check of a number came first
        _no_server_text(text, secret["folder"])
    # public: only the 1000 ImageNet classes, and the request is not echoed back
    message = _refusal(lambda: client.predict("wordnet:red_panda.n.01", "in snow", 0, api_name="/generate"))
    assert "Choose a foreground from the list of the 1000 ImageNet classes" in message and "red_panda" not in message


def test_a_long_request_is_stopped_at_the_time_limit(client):
    """192 px x 50 steps takes ~20 s on this CPU; the server stops it after the 5 s limit, cleanly, and says so."""
    start = time.time()
    message = _refusal(lambda: client.predict("tabby (281)", "in snow", 0, None, None, 192, 50, api_name="/generate"))
    assert "longer than this demo's limit of 5 seconds and was stopped" in message
    assert time.time() - start < 30
    _, image, prompt = client.predict("tabby (281)", "in snow", 1, None, None, 64, 4, api_name="/generate")
    assert prompt.startswith("a photo of a tabby") and Image.open(image).size == (64, 64)  # the pipeline still works


def test_one_client_cannot_fill_the_queue(public):
    """33 submissions from one client: one is queued, the others refused at once; another client is served in its turn."""
    attacker, other = Client(public["url"], verbose=False), Client(public["url"], verbose=False)
    jobs = [attacker.submit("tabby (281)", 0, None, 64, 4, api_name="/generate_all") for _ in range(33)]
    start = time.time()
    _, _, prompt = other.predict("tench (0)", "on grass", 0, None, None, 64, 4, api_name="/generate")
    waited = time.time() - start
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=120)
            outcomes.append("served")
        except Exception as err:
            outcomes.append(str(err))
    assert prompt.startswith("a photo of a tench") and waited < 60
    assert outcomes.count("served") <= 1 and sum("already have a request of this kind" in o for o in outcomes) >= 32, outcomes[:3]
    assert not any("Queue is full" in o for o in outcomes)


def test_no_review_tab_without_sign_in(public, client):
    config = httpx.get(public["url"] + "config", timeout=10).json()
    tabs = [c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert "Review" not in tabs and {"Generate", "Predict", "Dataset", "Benchmark"} <= set(tabs)
    assert not {"review_next", "review_present", "review_missing"} & {d.get("api_name") for d in config["dependencies"]}
    assert not public["reviews"].exists() or "reviews.sqlite" not in json.dumps(config)


# --- signed-in reviewers --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_run):
    folder = tmp_path_factory.mktemp("signed-app")
    (folder / "auth.txt").write_text("# reviewers\nann:apple-pie\nbob:blue-moon\n")
    reviews = folder / "reviews.sqlite"
    proc, url, log = start_app(folder, "--model", "tiny", "--data", f"d3s={tiny_run}", "--reviews", str(reviews),
                               "--review-auth", str(folder / "auth.txt"), host="0.0.0.0")
    yield {"url": url, "reviews": reviews, "data": tiny_run}
    stop_app(proc)


def test_strangers_meet_a_login(signed):
    assert httpx.get(signed["url"] + "config", timeout=10).status_code == 401
    with pytest.raises(Exception):
        Client(signed["url"], verbose=False)
    with pytest.raises(Exception):
        Client(signed["url"], auth=("ann", "blue-moon"), verbose=False)


def test_answers_carry_the_signed_in_name(signed):
    """bob cannot answer as ann: the name is the signed-in one whatever the request says, ann's answers stay hers."""
    from d3s.review import ReviewStore, dataset_key

    ann = Client(signed["url"], auth=("ann", "apple-pie"), verbose=False)
    bob = Client(signed["url"], auth=("bob", "blue-moon"), verbose=False)
    endpoints = ann.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/review_present"]["parameters"]] == ["unsafe"]  # no name, no item
    *_, text, _ = ann.predict("d3s", api_name="/review_next")
    assert "0 of 60 reviewed by ann" in text
    ann.predict(False, api_name="/review_present")
    *_, text, _ = bob.predict("d3s", api_name="/review_next")
    assert "0 of 60 reviewed by bob" in text
    bob.predict(True, api_name="/review_missing")  # bob says the first image is missing its object, and unsafe
    store = ReviewStore(signed["reviews"])
    answers = {(r.reviewer, r.item_id): (r.object_present, r.unsafe) for r in store.reviews()}
    assert answers == {("ann", 0): (True, False), ("bob", 0): (False, True)}
    assert {r.dataset for r in store.reviews()} == {dataset_key(signed["data"])}  # keyed by the dataset, not the label
    config = httpx.get(signed["url"] + "config", cookies=ann.cookies, timeout=10).text
    assert str(signed["reviews"]) not in config and "reviews.sqlite" not in config


# --- the rules, in-process -------------------------------------------------------------------------------------------

def test_rows_stored_as_paths_or_too_large_are_skipped_unopened(tmp_path, secret):
    """A dataset the operator offers, with one row whose image is a path and one whose header claims 400 MP: the
    gallery shows the good row, counts the others, and never opens the file the row names."""
    import datasets

    from d3s.browse import DatasetView
    from d3s.dataset import write_table

    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(),
                               "fg": datasets.ClassLabel(names=["a"]), "bg": datasets.ClassLabel(names=["b"])})
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (0, 200, 0)).save(good)
    bomb = huge_png_header(tmp_path / "bomb.png")
    rows = [{"item_id": 0, "image": {"path": None, "bytes": good.read_bytes()}, "fg": 0, "bg": 0},
            {"item_id": 1, "image": {"path": str(secret["png"]), "bytes": None}, "fg": 0, "bg": 0},
            {"item_id": 2, "image": {"path": None, "bytes": bomb.read_bytes()}, "fg": 0, "bg": 0}]
    import pyarrow as pa

    write_table(tmp_path / "ds", "train", pa.Table.from_pylist(rows, schema=feats.arrow_schema))
    items, skipped = DatasetView(str(tmp_path / "ds")).gallery()
    assert len(items) == 1 and skipped == 2
    assert np.asarray(items[0][0]).mean(axis=(0, 1)).round().tolist() == [0, 200, 0]
    assert secret["watch"].events() == 0


def test_a_hub_dataset_is_fetched_without_the_token_and_refused_when_too_large(monkeypatch):
    import huggingface_hub

    from d3s.hosting import Catalog, Refused

    calls = []

    class FakeApi:
        def dataset_info(self, repo_id, files_metadata, token):
            calls.append(("info", repo_id, token))
            sibling = type("S", (), {"rfilename": "data/train-00000-of-00001.parquet", "size": 3 * 2**30})
            return type("Info", (), {"siblings": [sibling], "sha": "abc"})

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(("download", k.get("token"))))
    catalog = Catalog.from_entries(["org/big"], [], max_dataset_bytes=2**30)
    with pytest.raises(Refused, match="This dataset is not available right now"):
        catalog.dataset_folder("org/big")
    assert calls == [("info", "org/big", False)]  # no token sent, nothing downloaded
    with pytest.raises(Refused, match="Choose one of the datasets"):
        catalog.dataset_folder("org/other")


def test_reviewers_limits_and_admission_rules():
    from types import SimpleNamespace

    from d3s.hosting import Admission, Limits, RateLimit, Refused, Reviewers, read_auth_file, reviewers_mode

    assert reviewers_mode(public=True, review_auth=False, oauth=False) == "off"
    assert reviewers_mode(public=False, review_auth=False, oauth=False) == "typed"
    assert reviewers_mode(public=True, review_auth=True, oauth=False) == "password"
    assert reviewers_mode(public=True, review_auth=False, oauth=True) == "oauth"
    request = SimpleNamespace(username="ann")
    assert Reviewers("password").name("mallory", request) == "ann"
    assert Reviewers("oauth").name("mallory", request, SimpleNamespace(username="bob")) == "bob"
    with pytest.raises(Refused, match="Sign in first"):
        Reviewers("oauth").name("mallory", request, None)
    with pytest.raises(Refused, match="Enter a reviewer name"):
        Reviewers("typed").name("x" * 5 * 2**20)
    rate = RateLimit(3, 60)
    for _ in range(3):
        rate.hit("ann")
    with pytest.raises(Refused, match="faster than 3 images"):
        rate.hit("ann")
    rate.hit("bob")
    limits = Limits(max_steps=50, max_size=512)
    assert limits.steps(0, 10) == 10 and limits.size(0, 768) == 512 and limits.seed(2**32 - 1) == 2**32 - 1
    for bad in (lambda: limits.size(100, 512), lambda: limits.steps(2.5, 10), lambda: limits.strength("1e999")):
        with pytest.raises(Refused):
            bad()
    admission = Admission(per_session={"diffusion": 1}, per_client={"diffusion": 2})
    admission.admit("diffusion", "s1", "1.2.3.4")
    with pytest.raises(Refused, match="already have a request"):
        admission.admit("diffusion", "s1", "1.2.3.4")
    admission.admit("diffusion", "s2", "1.2.3.4")
    with pytest.raises(Refused, match="from your address"):
        admission.admit("diffusion", "s3", "1.2.3.4")
    admission.release("diffusion", "s1")
    admission.admit("diffusion", "s3", "1.2.3.4")
    with pytest.raises(ValueError, match="line 2"):
        read_auth_file(_write(["ann:pie", "no password here"]))


def _write(lines: list[str]) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "auth.txt"
    path.write_text("\n".join(lines))
    return path


def test_flagged_images_are_withheld(monkeypatch):
    """With the safety checker flagging everything: Generate withholds the image, Across backgrounds greys each out."""
    from types import SimpleNamespace

    import torch

    import app
    from d3s.diffusion import load_pipeline
    from d3s.handlers import WITHHELD_COLOUR

    pipe = load_pipeline("tiny", safety_checker=True)
    with torch.no_grad():
        pipe.safety_checker.concept_embeds_weights.fill_(-10.0)  # every image scores above every concept threshold
    models = app.Models(pipe, "tiny", True, "", SimpleNamespace(classifier_name="unused: nothing is shown to classify"))
    settings = app.Settings(public=True)
    with pytest.raises(Exception, match="The safety checker flagged this image, so it is withheld"):
        app.make_generate_fn(models, settings)("tabby (281)", "in snow", 0, None, None, 64, 4, progress=lambda *a, **k: None)
    gallery, summary, table = app.make_across_fn(models, settings)("tabby (281)", 0, None, 64, 2, progress=lambda *a, **k: None)
    assert all(caption.endswith("withheld by the safety checker") for _, caption in gallery)
    assert {image.getpixel((image.width // 2, image.height // 2)) for image, _ in gallery} == {WITHHELD_COLOUR}
    assert "10 image(s) withheld" in summary


def test_public_generation_needs_a_safety_checker():
    import app
    from d3s.diffusion import load_pipeline

    models = app.Models(load_pipeline("tiny"), "tiny", True, "")  # loaded without its checker
    with pytest.raises(Exception, match="no safety checker"):
        app.make_generate_fn(models, app.Settings(public=True))("tabby (281)", "in snow", 0, progress=lambda *a, **k: None)


def test_uploads_and_outputs_are_deleted_and_the_container_runs_as_a_user():
    import app

    from d3s.hosting import Catalog

    models = app.Models(None, "tiny", True, "banner", None)
    demo = app.build_app(models, app.Settings(catalog=Catalog()))
    assert demo.delete_cache == (3600, 3600)
    users = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.strip().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")


def test_security_md_names_the_threat_model():
    text = (REPO / "SECURITY.md").read_text()
    for needle in ("anonymous", "--data", "--review-auth", "hf_oauth", "--time-limit", "Reporting"):
        assert needle in text
