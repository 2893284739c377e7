"""The ``d3s`` command line. Each sub-command is a thin wrapper over one module's function.

Heavy imports (torch, diffusers) happen inside the handlers, so ``d3s --help`` is instant.
User mistakes raise one of the project's ``*Error`` classes; they are printed as a one-line
``d3s: error: ...`` and the process exits with code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2

EPILOG = """examples:
  d3s labels tabby                               # look up a class: index, WordNet id, prompt name, definition
  d3s generate --model tiny --foregrounds 0,207,281 --per-pair 2 --size 64 --steps 10 --out out/d3s-tiny
  d3s generate --foregrounds all --imagenet /data/imagenet/train --templates templates/ --out d3s/
  accelerate launch --multi_gpu --num_processes 8 --no_python d3s generate ...   # split a run over 8 GPUs
"""


def _user_errors() -> tuple[type[Exception], ...]:
    from .dataset import DatasetFormatError
    from .generate import GenerationError
    from .guides import GuideSourceError
    from .labels import LabelError
    from .review import ReviewError

    return (GenerationError, LabelError, GuideSourceError, DatasetFormatError, ReviewError)


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
        split=args.split, keep_guides=not args.no_guides, safety_checker=args.safety_checker,
    )
    summary = generate(config, dry_run=args.dry_run)
    if not args.dry_run and summary.get("rank", 0) == 0:
        print(f"done: {summary['total']} of {summary['planned']} images in {args.out} "
              f"({summary['total'] - summary['already_done']} generated now, {summary['already_done']} were already there)")
    return 0


def _register_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate D3S images (Algorithm 1), resumable and multi-process",
                       description="Generate images of foreground classes on backgrounds with Stable Diffusion img2img. "
                                   "Rerunning the same command resumes; `accelerate launch --no_python d3s generate ...` splits it across processes.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p = sub.add_parser("templates", help="dream background templates from text with the diffusion model",
                       description="Make background templates (DIR/<background>/<k>.png) by text-to-image with the same model, "
                                   "so no photo collection is needed to start.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default="CompVis/stable-diffusion-v1-4", help="diffusers model id or folder, or 'tiny'")
    p.add_argument("--recipe", default="backgrounds")
    p.add_argument("--backgrounds", default="all")
    p.add_argument("--per-background", type=int, default=3, help="templates per background (default: 3, as the paper)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
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
    p = sub.add_parser("regenerate", help="regenerate one image from its record and compare with the stored pixels")
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
        from .classifiers import zero_shot_scorer

        zero_shot = zero_shot_scorer(args.clip)
    summary = score(args.data, split=args.split, zero_shot=zero_shot, batch_size=args.batch_size)
    print(f"scored {summary['rows']} images in {args.data} (split {args.split}); {summary['blank']} near-uniform")
    print(format_report(removal_report(args.data, args.split, _thresholds(args))))
    return 0


def _register_score(sub) -> None:
    p = sub.add_parser("score", help="add automatic quality columns (CLIP check, blank, nsfw) and report removals",
                       description="Add per-image check columns to a generated folder, then report what each threshold "
                                   "would remove, per class and background, before anything is dropped.")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--split", default="train")
    p.add_argument("--clip", metavar="NAME", help="zero-shot CLIP model for the foreground check, e.g. clip:ViT-B-32/openai")
    p.add_argument("--batch-size", type=int, default=64)
    _add_threshold_args(p)
    p.set_defaults(func=cmd_score)


def cmd_review(args: argparse.Namespace) -> int:
    import json

    from .review import ReviewStore

    store = ReviewStore(args.store)
    if args.action == "add":
        yes = {"yes": True, "y": True, "no": False, "n": False}
        store.add(args.item, args.reviewer, yes[args.present], yes[args.unsafe])
        print(f"recorded: item {args.item} by {args.reviewer}")
    elif args.action == "export":
        verdicts = store.verdicts(args.rule)
        rows = [{"item_id": v.item_id, "reviews": v.reviews, "present_votes": v.present_votes,
                 "unsafe_votes": v.unsafe_votes, "keep": v.keep} for v in verdicts.values()]
        text = json.dumps(rows, indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
            print(f"{len(rows)} reviewed images -> {args.out}")
        else:
            print(text)
    else:
        verdicts = store.verdicts(args.rule)
        kept = sum(v.keep for v in verdicts.values())
        print(f"{len(store.reviews())} answers on {len(verdicts)} images; {kept} kept under the {args.rule} rule")
    return 0


def _register_review(sub) -> None:
    p = sub.add_parser("review", help="record and export human reviews (SQLite store)",
                       description="The paper's two questions per image: is the intended object there? is it unsafe?")
    p.add_argument("action", choices=("add", "export", "status"))
    p.add_argument("--store", required=True, metavar="FILE", help="the SQLite review store (created if missing)")
    p.add_argument("--item", type=int, help="item_id of the image (add)")
    p.add_argument("--reviewer", help="reviewer name (add)")
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

    p = sub.add_parser("split", help="cut train / validation / benchmark splits into a new dataset folder",
                       description="Validation is cut per (fg, bg) cell by a hash of each row's seed; the benchmark is the "
                                   "validation rows that pass review (or, without reviews, the automatic checks).")
    p.add_argument("--data", required=True, metavar="DIR", help="a generated (and optionally scored) folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for the split dataset")
    p.add_argument("--split", default="train", help="source split (default: %(default)s)")
    p.add_argument("--validation-fraction", type=float, default=VALIDATION_FRACTION,
                   help="share of each (fg, bg) cell for validation (default: 1/6, as 20,000 of 120,000)")
    p.add_argument("--reviews", metavar="FILE", help="review store; the benchmark keeps images passing its consensus")
    p.add_argument("--rule", choices=("unanimous", "majority"), default="unanimous")
    _add_threshold_args(p)
    p.set_defaults(func=cmd_split)


# --- labels ----------------------------------------------------------------------------------------

def cmd_labels(args: argparse.Namespace) -> int:
    from .labels import imagenet_classes, imagenet_to_in9, IN9_CLASSES, resolve_concept
    from .prompts import load_recipe

    recipe = load_recipe(args.recipe)
    if args.query:
        concepts = [resolve_concept(q) for q in args.query]
    else:
        concepts = list(imagenet_classes())
    in9 = imagenet_to_in9()
    for c in concepts:
        idx = "-" if c.imagenet_index is None else c.imagenet_index
        group = IN9_CLASSES[in9[c.imagenet_index]] if c.imagenet_index in in9 else "-"
        print(f"{idx}\t{c.wnid}\t{c.name}\tIN-9: {group}\t{c.definition}")
        if args.query:
            print(f"\texample prompt: {recipe.prompt_for(c, recipe.shifts[0])}")
    if not args.query:
        print(f"backgrounds ({recipe.name}): " + ", ".join(f"{i} {s}" for i, s in enumerate(recipe.shifts)))
    return 0


def _register_labels(sub) -> None:
    p = sub.add_parser("labels", help="look up classes (index, WordNet id, name, wordnet:<synset>) and backgrounds")
    p.add_argument("query", nargs="*", help="classes to show; none lists all 1000 and the backgrounds")
    p.add_argument("--recipe", default="backgrounds")
    p.set_defaults(func=cmd_labels)


# --- entry point -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3s", description="Diffusion Dreamed Distribution Shifts: generate, benchmark and disentangle.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"d3s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in (_register_labels, _register_generate, _register_templates, _register_regenerate, _register_score,
                     _register_review, _register_split):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
