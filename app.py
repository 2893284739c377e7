"""d3s app: explore Diffusion Dreamed Distribution Shifts in the browser.

    python app.py                      # 127.0.0.1:7860, real weights if they can be had, else the tiny preset
    python app.py --model tiny --port 7861
    D3S_MODEL=/models/sd-v1-4 python app.py --host 0.0.0.0

The Generate tab makes one D3S image live: a foreground class on a background, from a guide (an
optional uploaded photo pasted on a background template) and the paper's prompt. The Benchmark tab
shows a `d3s benchmark` results folder as interactive plots (accuracy drop, D3S vs ImageNet, per
background).

API (``gradio_client``): ``/generate`` (foreground, background, seed) -> (guide, image, prompt);
``/benchmark_results`` (results folder) -> (drop plot, scatter plot, per-background plot, heatmap, table).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from d3s.diffusion import DEFAULT_MODEL, TINY, load_pipeline  # noqa: E402
from d3s.labels import LabelError, imagenet_classes  # noqa: E402
from d3s.live import MAX_UPLOAD_BYTES, UploadError, generate_one  # noqa: E402
from d3s.prompts import BACKGROUNDS  # noqa: E402

TINY_BANNER = (
    "**Tiny preset.** {reason} The app runs on tiny random-weight models of the same architectures, so every "
    "feature works but images look like noise. Start it with real weights (`--model CompVis/stable-diffusion-v1-4` "
    "or a local folder, with network access or a filled Hugging Face cache) for real images."
)


@dataclass
class Models:
    """What the app runs on, and the banner that says so."""

    pipe: object
    model: str
    tiny: bool
    banner: str


def load_models(model: str = DEFAULT_MODEL) -> Models:
    """Real weights when they load; otherwise the tiny preset, with the reason in the banner."""
    if model != TINY:
        try:
            return Models(load_pipeline(model), model, False, f"Running on `{model}`.")
        except Exception as err:  # offline, missing folder, no safetensors: fall back, and say why
            reason = f"Real weights `{model}` could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:160]})."
            return Models(load_pipeline(TINY), TINY, True, TINY_BANNER.format(reason=reason))
    return Models(load_pipeline(TINY), TINY, True, TINY_BANNER.format(reason="Started with `--model tiny`."))


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


def load_benchmark(folder: str):
    """A results folder of `d3s benchmark` -> the Benchmark tab's plots and table."""
    from d3s.plots import interactive_tables

    try:
        t = interactive_tables((folder or "").strip() or "results")
    except FileNotFoundError as err:
        raise gr.Error(str(err)) from err
    models, per_bg = t["models"], t["per_background"]
    with_ref = models.dropna(subset=["imagenet_top1"])
    drop = gr.BarPlot(with_ref, x="model", y="drop_top1", color="family", title=t["titles"].get("drop", "accuracy drop"),
                      y_title="top-1 drop, ImageNet to D3S (points)", sort="-y", x_label_angle=-45)
    scatter = gr.ScatterPlot(with_ref, x="imagenet_top1", y="d3s_top1", color="family", tooltip=["model", "d3s_top1", "imagenet_top1"],
                             title=t["titles"].get("scatter", "D3S vs ImageNet"), x_title="ImageNet top-1 (%)", y_title="D3S top-1 (%)")
    per_background = gr.BarPlot(per_bg, x="background", y="top1", color="model", title="D3S top-1 per background",
                                y_title="top-1 (%)", x_label_angle=-45)
    table = models[["model", "family", "d3s_top1", "d3s_top5", "imagenet_top1", "drop_top1", "worst_background"]].round(2)
    return drop, scatter, per_background, t["heatmap"], table


# --- the UI --------------------------------------------------------------------------------------------

def build_app(models: Models) -> gr.Blocks:
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
                        photo = gr.Image(type="filepath", label="Foreground photo (pasted into the guide)", sources=["upload"])
                        template = gr.Image(type="filepath", label="Background template", sources=["upload"])
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
                      outputs=[guide_out, image_out, prompt_out], api_name="generate", concurrency_limit=1)
        with gr.Tab("Benchmark", id="benchmark"):
            gr.Markdown("Results of `d3s benchmark --out RESULTS`: how much each model loses on D3S's shuffled backgrounds.")
            with gr.Row():
                folder = gr.Textbox(value=os.environ.get("D3S_RESULTS", "results"), label="Results folder", elem_id="results-folder")
                show = gr.Button("Show", variant="primary", elem_id="benchmark-button")
            with gr.Row():
                drop_plot = gr.BarPlot(label="Accuracy drop")
                scatter_plot = gr.ScatterPlot(label="D3S vs ImageNet")
            with gr.Row():
                bg_plot = gr.BarPlot(label="Per background")
                heatmap_img = gr.Image(label="Background x model heatmap", type="filepath")
            table = gr.Dataframe(label="Summary (%)")
            show.click(load_benchmark, inputs=[folder], outputs=[drop_plot, scatter_plot, bg_plot, heatmap_img, table],
                       api_name="benchmark_results", concurrency_limit=4)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The d3s app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("D3S_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; use 0.0.0.0 only inside a container)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("D3S_PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))))
    parser.add_argument("--model", default=os.environ.get("D3S_MODEL", DEFAULT_MODEL),
                        help="diffusers img2img model id or folder, or 'tiny' (default: %(default)s; falls back to tiny)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    models = load_models(args.model)
    print(models.banner.replace("**", ""))
    demo = build_app(models)
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES, show_error=True)


if __name__ == "__main__":
    main()
