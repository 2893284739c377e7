"""The functions behind the app's tabs (``app.py`` builds the page on top of them).

One factory per tab, each taking the operator's :class:`Settings` (what may be shown, to whom, how much work a
request may ask for) and returning plain functions that Gradio calls. Every handler goes through :func:`served`:
its inputs are bounded and the job admitted *before* it is queued (a Gradio validator), and any refusal reaches the
client as a fixed sentence (:class:`d3s.hosting.Refused` -> ``gr.Error``), never as exception text. The rules
themselves (catalogue, limits, admission, reviewers) are in :mod:`d3s.hosting`, free of UI code.
"""

from __future__ import annotations

import functools
import inspect
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .browse import next_review, open_view
from .dataset import DatasetFormatError
from .diffusion import DEFAULT_MODEL, TINY, load_pipeline
from .generate import GenerationError, GenerationStopped
from .hosting import Admission, Catalog, Deadline, Limits, Refused, Reviewers, bounded, client_address
from .labels import LabelError, imagenet_classes
from .live import UploadError, decode_stored, generate_across, generate_one, read_upload
from .predict import DEFAULT_CLASSIFIER, Predictors, load_predictors, predict, shown_name
from .prompts import BACKGROUNDS
from .review import ReviewError, ReviewStore, dataset_key, open_store
from .zerogpu import on_gpu

TINY_BANNER = (
    "**Tiny preset.** {reason} The app runs on tiny random-weight models of the same architectures, so every "
    "feature works but images look like noise. Start it with real weights (`--model CompVis/stable-diffusion-v1-4` "
    "or a local folder, with network access or a filled Hugging Face cache) for real images."
)
SERVER_ERROR = "Something went wrong on the server; try again, and if it persists tell the operator (see SECURITY.md)."


@dataclass
class Settings:
    """The operator's choices: what the app shows, to whom, and how much work one request may ask for."""

    catalog: Catalog = field(default_factory=Catalog)
    reviews: str | ReviewStore = "reviews.sqlite"  # a store's path (d3s.review.open_store), or the store itself
    reviewers: Reviewers = field(default_factory=lambda: Reviewers("typed"))
    limits: Limits = field(default_factory=Limits)
    public: bool = False  # listening beyond 127.0.0.1: only the 1000 ImageNet classes, light endpoints rate-limited
    safety_off: bool = False  # the operator turned the safety checker off explicitly (--safety-checker off)
    proxy_hops: int = 0  # trusted proxies in front of the app (a Space: 1), see d3s.hosting.client_address
    cache_dir: str | None = None  # the `datasets` Arrow copies of the catalogued datasets (removed at exit)
    admission: Admission = field(default_factory=lambda: Admission(per_session={"diffusion": 1, "light": 10**9},
                                                                   per_client={"diffusion": 3, "light": 10**9}))


@dataclass
class Models:
    """What the app runs on, and the banner that says so."""

    pipe: object
    model: str
    tiny: bool
    banner: str
    predictors: Predictors | None = field(default=None)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one request inside the pipeline at a time


def load_models(model: str = DEFAULT_MODEL, extractor: str | None = None, classifier: str = DEFAULT_CLASSIFIER,
                extractor_backbone: str | None = None, safety_checker: bool = False) -> Models:
    """Real weights when they load; otherwise the tiny preset, with the reason in the banner (one sentence; the
    full error goes to the operator's log)."""
    predictors = load_predictors(extractor, classifier, extractor_backbone)
    if predictors.details:
        print(f"[d3s app] Predict tab: {predictors.details}", flush=True)
    extra = f" Predict tab: {predictors.note}." if predictors.note else ""
    if model != TINY:
        try:
            return Models(load_pipeline(model, safety_checker=safety_checker), model, False,
                          f"Running on `{shown_name(model)}`.{extra}", predictors)
        except Exception as err:  # offline, missing folder, no safetensors: fall back, and say why
            print(f"[d3s app] {model} could not be loaded: {type(err).__name__}: {err}", flush=True)
            reason = f"Real weights `{shown_name(model)}` could not be loaded here (the app's log says why)."
            return Models(load_pipeline(TINY, safety_checker=safety_checker), TINY, True,
                          TINY_BANNER.format(reason=reason) + extra, predictors)
    return Models(load_pipeline(TINY, safety_checker=safety_checker), TINY, True,
                  TINY_BANNER.format(reason="Started with `--model tiny`.") + extra, predictors)


def class_choices() -> list[str]:
    return [f"{c.name} ({c.imagenet_index})" for c in imagenet_classes()]


def parse_class_choice(text: str) -> str:
    """``'tabby (281)'`` -> ``'281'``; anything else (a name, ``wordnet:...``) is passed through."""
    text = (text or "").strip()
    if text.endswith(")") and "(" in text:
        inner = text[text.rindex("(") + 1 : -1]
        if inner.isdigit():
            return inner
    return text


def foreground_key(choice: str | None, settings: Settings) -> str:
    """The class a request names: on a public bind one of the 1000 listed ImageNet classes, else any class or
    ``wordnet:`` noun the labels module resolves."""
    from .labels import resolve_concept

    choice = (choice or "").strip()
    if not choice:
        raise Refused("Choose a foreground class first.", field="foreground")
    if settings.public and choice not in _class_choice_set():
        raise Refused("Choose a foreground from the list of the 1000 ImageNet classes (type to search).", field="foreground")
    key = parse_class_choice(choice)
    try:
        resolve_concept(key)
    except LabelError:
        raise Refused("Unknown foreground class: pick one of the 1000 ImageNet classes from the list (type to search), "
                      "or enter wordnet:<synset>, e.g. wordnet:red_panda.n.01.", field="foreground") from None
    return key


@functools.lru_cache(maxsize=1)
def _class_choice_set() -> frozenset:
    return frozenset(class_choices())


# --- how every handler is served: fixed-sentence errors, admission before the queue -----------------------------

def _quiet(fn):
    """Expected refusals become ``gr.Error`` with their fixed sentence; anything else is logged for the operator and
    answered with one fixed sentence (never exception text, never a path)."""

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Refused as err:
            raise gr.Error(str(err)) from None
        except Exception:
            print(f"[d3s app] {fn.__name__} failed:\n{traceback.format_exc()}", flush=True)
            raise gr.Error(SERVER_ERROR) from None

    return handler


SPECIAL_PARAMETERS = ("request", "progress", "profile")  # filled by Gradio, not inputs of the event
_KINDS = {"str": (str,), "float": (int, float), "bool": (bool,)}


def _check_types(signature: inspect.Signature, arguments: dict) -> None:
    """Inputs annotated ``str``, ``float`` or ``bool`` (``| None`` allowed) hold a value of that kind: anything
    else (a list where a class name goes, a dict where a number goes) is refused before any rule reads it."""
    for name, value in arguments.items():
        annotation = str(signature.parameters[name].annotation).replace(" ", "")
        kind, _, none = annotation.partition("|")
        if kind not in _KINDS or (value is None and none == "None"):
            continue
        if not isinstance(value, _KINDS[kind]) or (kind == "float" and isinstance(value, bool)):
            raise Refused("One of the values sent is not of the kind this field takes; use the app's page or its "
                          "documented API.", field=name)


def served(settings: Settings, lane: str, check=None):
    """Decorator for an event handler (last parameters ``request: gr.Request`` and any of ``progress``, ``profile``).

    One gate, whatever route reaches the handler: its event gets a Gradio validator (``handler.validator``) that
    runs *before* the job is queued, and the handler itself runs the same gate again when it starts (a route that
    skips validators meets it there). ``check`` (the handler's arguments by name -> raises :class:`Refused`) bounds
    the inputs; then the job is admitted in ``lane`` (:class:`d3s.hosting.Admission`: the validator's admission is
    claimed, or the job admitted now). The job's slot is released when the handler returns.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        inputs = [p for p in signature.parameters if p not in SPECIAL_PARAMETERS]
        quiet = _quiet(fn)

        def gate(arguments: dict, take) -> None:
            """The one gate: kinds, then ``check``, then ``take`` (admit or enter) in ``lane``; raises Refused."""
            request = arguments.get("request")
            _check_types(signature, arguments)
            if check is not None:
                check(arguments)
            take(lane, _session(request), client_address(request, settings.proxy_hops))

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            arguments = signature.bind_partial(*args, **kwargs).arguments
            request = arguments.get("request")
            try:
                gate(arguments, settings.admission.enter)
            except Refused as err:
                raise gr.Error(str(err)) from None
            try:
                return quiet(*args, **kwargs)
            finally:
                settings.admission.release(lane, _session(request))

        @functools.wraps(fn)
        def validator(*args, **kwargs):
            arguments = signature.bind_partial(*args, **kwargs).arguments
            verdict = [gr.validate(True, "") for _ in inputs]
            try:
                gate(arguments, settings.admission.admit)
            except Refused as err:
                verdict[inputs.index(err.field) if err.field in inputs else 0] = gr.validate(False, str(err))
            except Exception:  # a validator's own error text would reach the client: log it, refuse plainly
                print(f"[d3s app] validating {fn.__name__} failed: {_last_line()}", flush=True)
                verdict[0] = gr.validate(False, SERVER_ERROR)
            return verdict or [gr.validate(True, "")]

        handler.validator = validator
        return handler

    return decorate


def _last_line() -> str:
    """The current exception in one line (its type and message), for the operator's log."""
    import sys

    err = sys.exc_info()[1]
    return f"{type(err).__name__}: {err}"[:500] if err is not None else "-"


def queued_sessions(demo) -> "callable":
    """``alive(session)`` for :class:`d3s.hosting.Admission`: whether ``demo``'s queue still holds an event of the
    session, waiting or running (a client that went away, or cancelled, has none). Reads the queue's table of
    events, which Gradio keeps on ``demo._queue`` (gradio 6.x)."""

    def alive(session: str) -> bool:
        queue = getattr(demo, "_queue", None)
        events = getattr(queue, "event_ids_to_events", None)
        if events is None:
            return True  # cannot tell: keep the job until it is stale
        return any(getattr(e, "session_hash", None) == session for e in list(events.values()))

    return alive


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "local"


def wire(trigger, handler, inputs, outputs, **kw):
    """``trigger(handler, ...)`` with the handler's validator, when it has one."""
    return trigger(handler, inputs=inputs, outputs=outputs, validator=getattr(handler, "validator", None), **kw)


# --- Generate and Across backgrounds -------------------------------------------------------------------------------

def _check_background(background: str | None) -> str:
    if background not in BACKGROUNDS:
        raise Refused(f"Choose a background from the list: {', '.join(BACKGROUNDS)}.", field="background")
    return background


def _require_safety(models: Models, settings: Settings) -> None:
    if settings.public and getattr(models.pipe, "safety_checker", None) is None and not settings.safety_off:
        raise Refused("Generation is off on this public demo: its model has no safety checker.")


def make_generate_fn(models: Models, settings: Settings | None = None):
    settings = settings or Settings()
    limits = settings.limits
    default_size, default_steps = (128, 10) if models.tiny else (512, 50)

    def check(a: dict) -> None:
        foreground_key(a.get("foreground"), settings)
        _check_background(a.get("background", BACKGROUNDS[0]) or BACKGROUNDS[0])
        limits.seed(a.get("seed", 0)), limits.size(a.get("size", 0), default_size), limits.steps(a.get("steps", 0), default_steps)
        limits.strength(a.get("strength", 0.9)), limits.guidance(a.get("guidance", 5.0))

    @served(settings, "diffusion", check)
    @on_gpu(limits, default_size, default_steps)  # under `served`: checks and admission hold no GPU
    def generate(foreground: str, background: str, seed: float = 0, photo=None, template=None, size: float = 0,
                 steps: float = 0, strength: float = 0.9, guidance: float = 5.0, request: gr.Request = None,
                 progress=gr.Progress()):
        _require_safety(models, settings)
        deadline = Deadline(limits.time_limit, lambda i, n: progress((i, n), desc="denoising"))
        try:
            with models.lock:
                result = generate_one(models.pipe, foreground_key(foreground, settings), background or BACKGROUNDS[0],
                                      limits.seed(seed), photo=photo, template=template,
                                      size=limits.size(size, default_size), steps=limits.steps(steps, default_steps),
                                      strength=limits.strength(strength), guidance=limits.guidance(guidance),
                                      callback=deadline)
        except UploadError as err:
            raise Refused(str(err)) from None
        except GenerationStopped:
            raise Refused(f"This image took longer than this demo's limit of {limits.time_limit:g} seconds and was "
                          "stopped; try fewer steps or a smaller size.") from None
        if result.nsfw:
            raise Refused("The safety checker flagged this image, so it is withheld; try another seed or class.")
        return result.guide, result.image, result.prompt

    return generate


FLIP_COLOUR = (214, 39, 40)  # the standard classifier changed its answer on this background
FG_FLIP_COLOUR = (255, 140, 0)  # only the disentangled fg head did
NO_FLIP_COLOUR = (235, 235, 235)
WITHHELD_COLOUR = (128, 128, 128)


def _framed(image, colour):
    """The image with a coloured frame (a flip is seen at a glance in the gallery)."""
    from PIL import ImageOps

    return ImageOps.expand(image, border=max(3, image.width // 20), fill=colour)


def make_across_fn(models: Models, settings: Settings | None = None):
    settings = settings or Settings()
    limits = settings.limits
    default_size, default_steps = (64, 4) if models.tiny else (512, 50)  # tiny: ten images in a few seconds on a CPU

    def check(a: dict) -> None:
        foreground_key(a.get("foreground"), settings)
        limits.seed(a.get("seed", 0)), limits.size(a.get("size", 0), default_size), limits.steps(a.get("steps", 0), default_steps)

    @served(settings, "diffusion", check)
    @on_gpu(limits, default_size, default_steps, images=len(BACKGROUNDS))
    def generate_all(foreground: str, seed: float = 0, photo=None, size: float = 0, steps: float = 0,
                     request: gr.Request = None, progress=gr.Progress()):
        """One object on all ten backgrounds, with both classifiers' top-1 on each and the flips marked."""
        import pandas as pd
        from PIL import Image

        from .counterfactual import flips, majority_answer
        from .labels import resolve_concept

        _require_safety(models, settings)
        key, size, steps = foreground_key(foreground, settings), limits.size(size, default_size), limits.steps(steps, default_steps)
        deadline = Deadline(limits.time_limit, lambda i, n: progress((i, n), desc=f"denoising on {len(BACKGROUNDS)} backgrounds"))
        try:
            with models.lock:
                result = generate_across(models.pipe, key, limits.seed(seed), photo=photo, size=size, steps=steps,
                                         callback=deadline)
        except (UploadError, GenerationError) as err:
            raise Refused(str(err).splitlines()[0] if isinstance(err, UploadError) else
                          "These settings cannot make one object on every background; try the defaults.") from None
        except GenerationStopped:
            raise Refused(f"Ten images took longer than this demo's limit of {limits.time_limit:g} seconds and were "
                          "stopped; try fewer steps or a smaller size.") from None
        truth = resolve_concept(key).name
        p = models.predictors
        shown = [not flagged for flagged in result.nsfw]
        standard, fg_head = [], []
        for i, (image, ok) in enumerate(zip(result.images, shown)):
            progress((i + 1, len(result.images)), desc="classifying")
            if not ok:  # withheld by the safety checker: neither shown nor classified
                standard.append("-"), fg_head.append("-")
                continue
            fg_top, _, ref_top = predict(p, image, k=1)
            fg_head.append(next(iter(fg_top)))
            standard.append(next(iter(ref_top)))
        standard_flips, fg_flips = flips(standard, truth), flips(fg_head, truth)
        gallery, rows = [], []
        for bg, image, ok, s, sf, f, ff in zip(result.backgrounds, result.images, shown, standard, standard_flips, fg_head, fg_flips):
            if not ok:
                gallery.append((_framed(Image.new("RGB", image.size, WITHHELD_COLOUR), WITHHELD_COLOUR),
                                f"{bg}: withheld by the safety checker"))
                rows.append({"background": bg, "standard top-1": "withheld", "standard flips": False,
                             "fg head top-1": "withheld", "fg head flips": False})
                continue
            colour = FLIP_COLOUR if sf else FG_FLIP_COLOUR if ff else NO_FLIP_COLOUR
            caption = f"{bg}: standard {s}{' (FLIP)' if sf else ''} | fg head {f}{' (FLIP)' if ff else ''}"
            gallery.append((_framed(image, colour), caption))
            rows.append({"background": bg, "standard top-1": s, "standard flips": sf, "fg head top-1": f, "fg head flips": ff})

        def verdict(name: str, answers: list[str], flipped: list[bool]) -> str:
            majority, _ = majority_answer(answers, truth)
            where = ", ".join(bg for bg, x in zip(result.backgrounds, flipped) if x)
            return (f"**{name}**: majority answer *{majority}*; changes on {sum(flipped)} of {len(flipped)} backgrounds"
                    + (f" ({where})" if where else "") + ".")

        choice = result.choices[0]
        photo_text = "your photo" if choice.photo == "upload" else (f"`{choice.photo}`" if choice.photo else "none (template only)")
        withheld = len(shown) - sum(shown)
        summary = "\n\n".join([
            f"One **{truth}**: photo {photo_text}, paste box {list(choice.paste_box)}, noise seed {result.seed}; "
            f"only the template and the prompt's background change ({size} px, {steps} steps).",
            verdict(f"Standard classifier (`{p.classifier_name}`)", standard, standard_flips) + " Red frame: it flipped.",
            verdict("Disentangled fg head", fg_head, fg_flips) + " Orange frame: only the fg head flipped.",
            *([f"{withheld} image(s) withheld by the safety checker (grey)."] if withheld else []),
        ])
        return gallery, summary, pd.DataFrame(rows)

    return generate_all


# --- Predict -----------------------------------------------------------------------------------------------------

def make_predict_fn(models: Models, settings: Settings | None = None):
    settings = settings or Settings()

    @served(settings, "light")
    def predict_photo(photo, request: gr.Request = None):
        if photo is None:
            raise Refused("Upload a photo first (or click an example).")
        try:
            image = read_upload(photo)
        except UploadError as err:
            raise Refused(str(err)) from None
        return predict(models.predictors, image)

    return predict_photo


def make_preview_fn(settings: Settings):
    """The upload as the models see it (UI only: not part of /predict, whose outputs stay labels)."""

    @served(settings, "light")
    def decoded_preview(photo, request: gr.Request = None):
        try:
            return read_upload(photo) if photo is not None else None
        except UploadError:
            return None

    return decoded_preview


def example_photos(folder: Path, n: int = 3) -> list[str]:
    """A few example pictures to click: drawn backgrounds with a coloured object pasted on them."""
    from PIL import Image

    from .guides import compose, draw_procedural_template

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (bg, colour) in enumerate([("on_grass", (200, 40, 40)), ("in_snow", (40, 40, 200)), ("in_sand", (30, 160, 60))][:n]):
        path = folder / f"example_{k}_{bg}.png"
        compose(draw_procedural_template(bg, 0, 224), Image.new("RGB", (80, 80), colour), (70, 90, 150, 170)).save(path)
        paths.append(str(path))
    return paths


def make_example_fn(settings: Settings, paths: list[str]):
    """The example picture clicked (a ``gr.Dataset`` of ``type="index"``): its index in ``paths``, nothing else."""

    def check(a: dict) -> None:
        bounded(a.get("index"), 0, len(paths) - 1, "Example", integer=True)

    @served(settings, "light", check)
    def load_example(index, request: gr.Request = None):
        return paths[int(index)]

    return load_example


# --- Dataset and Review: the operator's datasets, by label -------------------------------------------------------

ALL = "all"


def _view(settings: Settings, label: str | None, split: str | None = None):
    """The catalogued dataset ``label`` (one of its own splits, or its default one)."""
    folder = str(settings.catalog.dataset_folder(label))
    try:
        view = open_view(folder, None, settings.cache_dir)
        if split and split != view.split:
            if split not in view.splits:
                raise Refused("Choose a split of this dataset from the list.")
            view = open_view(folder, split, settings.cache_dir)
    except DatasetFormatError as err:
        print(f"[d3s app] dataset {label!r} could not be opened: {err}", flush=True)
        raise Refused("This dataset could not be opened; the operator can see why in the app's log.") from None
    return view


def _class_index(view, choice: str | None) -> int | None:
    if choice in (None, "", ALL):
        return None
    if not view.has_class_choice(choice):
        raise Refused("Choose a class of this dataset from the list.")
    return int(parse_class_choice(choice))


def make_browse_fn(settings: Settings):
    @served(settings, "light")
    def browse_dataset(source: str, split: str | None, fg_choice: str | None, bg_choice: str | None,
                       request: gr.Request = None):
        """Gallery of a class across backgrounds (or a background across classes), with a summary line."""
        view = _view(settings, source, split)
        fg = _class_index(view, fg_choice)
        if bg_choice not in (None, "", ALL) and bg_choice not in view.bg_names:
            raise Refused("Choose a background of this dataset from the list.")
        bg = view.bg_names.index(bg_choice) if bg_choice in view.bg_names else None
        items, skipped = view.gallery(fg, bg)
        summary = (f"**{len(view)}** images in split `{view.split}` of `{source}` "
                   f"({view.class_count} classes x {view.background_count} backgrounds); showing {len(items)}."
                   + (f" {skipped} image(s) not shown: stored as a path or address, or too large." if skipped else ""))
        return (items, summary, gr.update(choices=view.splits, value=view.split),
                gr.update(choices=[ALL] + view.classes_present(), value=fg_choice or ALL),
                gr.update(choices=[ALL] + view.bg_names, value=bg_choice or ALL))

    return browse_dataset


@functools.lru_cache(maxsize=16)
def _dataset_key(folder: str) -> str:
    return dataset_key(folder)


def make_review_fns(settings: Settings):
    """(show, answer, signed_in): the next image for the reviewer, the answer to it, and who is signed in."""
    store = settings.reviews if isinstance(settings.reviews, ReviewStore) else open_store(settings.reviews)

    def reviewer_of(typed, request, profile) -> str:
        return settings.reviewers.name(typed, request, profile)

    def next_card(source: str, reviewer: str):
        view = _view(settings, source)
        key = _dataset_key(str(settings.catalog.dataset_folder(source)))
        try:
            card = next_review(view, store, key, reviewer)
        except UploadError:
            raise Refused("The next image of this dataset cannot be shown (it is not stored as image bytes).") from None
        if card is None:
            return None, None, f"All {len(view)} images are reviewed by {reviewer}. Thank you!", None, False
        text = (f"### {card.title}\n*{card.definition}*\n\nPrompt: `{card.prompt}`\n\n"
                f"Is the **{card.title.split(' / ')[0]}** there? (keys: **y** yes, **n** no, **u** unsafe)\n\n{card.progress}")
        return card.image, card.guide, text, (source, key, card.item_id), False

    @_quiet
    def show(source: str, reviewer: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        return next_card(source, reviewer_of(reviewer, request, profile))

    @_quiet
    def answer(reviewer: str, current, unsafe: bool, present: bool, request: gr.Request = None,
               profile: gr.OAuthProfile | None = None):
        name = reviewer_of(reviewer, request, profile)
        if not current:
            raise Refused("Press Start first: there is no image to answer.")
        if not isinstance(unsafe, bool):
            raise Refused("The unsafe box is either ticked or not; reload the page and try again.")
        source, key, item_id = current  # set by `show` in this session's state; never sent by the client
        settings.reviewers.rate.hit(name)
        try:
            store.add(key, int(item_id), name, present, unsafe)
        except ReviewError:
            raise Refused("This answer could not be recorded; reload the page and try again.") from None
        return next_card(source, name)

    def present(reviewer: str, current, unsafe: bool, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        return answer(reviewer, current, unsafe, True, request, profile)

    def missing(reviewer: str, current, unsafe: bool, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        return answer(reviewer, current, unsafe, False, request, profile)

    def signed_in(request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
        try:
            return f"Reviewing as **{reviewer_of('', request, profile)}**."
        except Refused as err:
            return str(err)

    gate = served(settings, "light")  # one gate for every event, as the other tabs' handlers
    return gate(show), gate(present), gate(missing), gate(signed_in)


# --- Benchmark: the operator's results folders, by label ---------------------------------------------------------

def _image_file(settings: Settings, label: str, relative: str):
    """A PNG of a results folder, decoded on the server under the upload caps (no path is handed to the client)."""
    path = settings.catalog.results_file(label, relative)
    if path is None:
        return None
    try:
        return read_upload(path)
    except UploadError:
        return None


def make_benchmark_fns(settings: Settings):
    """(load_benchmark, load_bgchallenge, show_worst_cells) over the catalogued results folders."""
    from .benchmark import worst_cell_samples
    from .bgchallenge import PLOT, SUBDIR, TITLES, VARIATIONS, read_summary
    from .plots import FILES, interactive_tables

    @served(settings, "light")
    def load_benchmark(results: str, request: gr.Request = None):
        """A results folder of `d3s benchmark` -> the Benchmark tab's plots and table (empty when the folder only
        has Backgrounds Challenge results)."""
        folder = settings.catalog.results_folder(results)
        try:
            t = interactive_tables(folder)
        except FileNotFoundError:
            if read_summary(folder) is not None:
                return None, None, None, None, None, gr.Dropdown(choices=[], value=None), gr.BarPlot(visible=False)
            raise Refused("This results folder holds no benchmark results yet (`d3s benchmark --out` writes them).") from None
        models, per_bg = t["models"], t["per_background"]
        with_ref = models.dropna(subset=["imagenet_top1"])
        drop = gr.BarPlot(with_ref, x="model", y="drop_top1", color="family", title=t["titles"].get("drop", "accuracy drop"),
                          y_title="top-1 drop, ImageNet to D3S (points)", sort="-y", x_label_angle=-45)
        scatter = gr.ScatterPlot(with_ref, x="imagenet_top1", y="d3s_top1", color="family",
                                 tooltip=["model", "d3s_top1", "imagenet_top1"],
                                 title=t["titles"].get("scatter", "D3S vs ImageNet"), x_title="ImageNet top-1 (%)",
                                 y_title="D3S top-1 (%)")
        per_background = gr.BarPlot(per_bg, x="background", y="top1", color="model", title="D3S top-1 per background",
                                    y_title="top-1 (%)", x_label_angle=-45)
        counterfactual = [c for c in ("consistency", "all_backgrounds_top1") if c in models]
        table = models[["model", "family", "d3s_top1", "d3s_top5", "imagenet_top1", "drop_top1", "worst_background",
                        *counterfactual]].round(2)
        names = list(models["model"])
        picker = gr.Dropdown(choices=names, value=names[0] if names else None)
        flip_rates = t["flip_rates"]
        flip_plot = gr.BarPlot(flip_rates, x="background", y="flip_rate", color="model", visible=len(flip_rates) > 0,
                               title=t["titles"].get("counterfactual", "flip rate per background"),
                               y_title="flip rate (%): top-1 differs from the group's majority", x_label_angle=-45)
        return drop, scatter, per_background, _image_file(settings, results, FILES["heatmap"]), table, picker, flip_plot

    @served(settings, "light")
    def load_bgchallenge(results: str, request: gr.Request = None):
        """The Backgrounds Challenge results of a folder (`d3s bgchallenge --out`): a note, the table (%), the plot."""
        import pandas as pd

        summary = read_summary(settings.catalog.results_folder(results))
        if summary is None or not summary["models"]:
            return "No Backgrounds Challenge results in this folder (`d3s bgchallenge --out` adds them).", None, None
        cols = [*VARIATIONS, "bg_gap", "adversarial"]
        table = pd.DataFrame([{"model": r["model"], **{TITLES[c]: None if r[c] is None else round(100 * r[c], 1) for c in cols}}
                              for r in summary["models"]])
        note = ("**Backgrounds Challenge** (IN-9 accuracy, %; the top-1 ImageNet class mapped to its IN-9 class, a class "
                "outside IN-9 is wrong). BG-Gap: Mixed-Same - Mixed-Rand; Adversarial: foregrounds no background fools.")
        return note, table, _image_file(settings, results, f"{SUBDIR}/{PLOT}")

    @served(settings, "light")
    def show_worst_cells(results: str, model: str | None, request: gr.Request = None):
        """One model's worst (fg, bg) cells: a table and sample images with what the model predicted."""
        import pandas as pd

        folder = settings.catalog.results_folder(results)
        if not model:
            raise Refused("Press Show first, then pick a model.")
        try:
            w = worst_cell_samples(folder, model, decode=decode_stored, may_open=lambda source: Path(source).is_dir())
        except FileNotFoundError:
            raise Refused("This results folder has no result for that model; press Show and pick one from the list.") from None
        table = pd.DataFrame([{"class": c["fg_name"], "background": c["bg_name"], "images": c["n"],
                               "top1 (%)": round(100 * c["top1"], 1), "top5 (%)": round(100 * c["top5"], 1)}
                              for c in w["cells"]])
        note = w["note"] or f"The {len(w['cells'])} (class, background) cells where `{model}` does worst; misclassified images first."
        return table, w["gallery"], note

    return load_benchmark, load_bgchallenge, show_worst_cells
