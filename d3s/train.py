"""``d3s train``: fit a disentangled extractor (or a baseline) on a dataset's ``train`` split.

The loop reads top to bottom: check inputs -> data -> model and method -> resume -> steps ->
save. A run leaves in ``--out``:

- ``model.safetensors`` + ``config.json``: the extractor (``d3s.models.load_extractor``);
- ``run.json``: versions, arguments and hyper-parameters;
- ``train_log.jsonl``: one JSON line of losses every ``--log-every`` steps (plot it with any tool);
- ``checkpoint.pt``: model, critics, optimizers and step, every ``--checkpoint-every`` steps; a
  killed run given the same command continues from it, exactly as if it had not stopped;
- ``done.json``: written last, with the final validation accuracy of the heads;
- with ``--erase`` (the default of a disentangling method): LEACE erasers fitted on the train split after the last
  step, stored in the extractor (:mod:`d3s.erase`), with ``erasure.json`` (heads and held-out leakage probes before
  and after; ``d3s probe`` gives Table 2 of the erased extractor).

Batches and every random draw of a step are functions of (seed, step), so a resumed run is
bit-for-bit the uninterrupted one on the same machine. ``accelerate launch -m d3s train ...``
splits each batch across processes (DDP); mixed precision (bf16) is used on CUDA.

On a features dataset (a ``features`` column, e.g. from ``d3s embed``) only the disentangling part
trains: a :class:`~d3s.models.FeatureDisentangler` (neck from the frozen backbone's features to z, and
the heads), with the critics, on batches of features instead of images (no decoding, no augmentation).
Its checkpoint records the backbone that made the features, so ``load_extractor`` rebuilds the image
extractor from it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .choices import DISENTANGLING, PAPER_BACKBONE

if TYPE_CHECKING:  # torch is imported where it is used, so `d3s train --help` answers at once
    import torch

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


class TrainError(ValueError):
    """Training settings that cannot work, or an output folder holding another run."""


@dataclass
class TrainConfig:
    """Settings of ``d3s train`` (each default is what the command line uses).

    Args:
        data (`str`): dataset folder (or Hub id) with ``image`` (or ``features``), ``fg``, ``bg`` and a ``train`` split.
        out (`str`): output folder (see the module docstring).
        method (`str`, defaults to ``"wasserstein"``): ``wasserstein``, ``erm``, ``groupdro`` or ``irm``.
        backbone (`str`, defaults to ``"resnet50.tv_in1k"``): any timm model name; the default is the paper's
            ResNet-50 with PyTorch's ImageNet weights (timm's plain ``resnet50`` is ``resnet50.a1_in1k``). Image
            data only: a features dataset records its own backbone.
        pretrained (`bool`, defaults to True): start the backbone from timm's ImageNet weights.
        neck (`str`, *optional*): features data only: ``linear`` or ``mlp`` map from the features to
            z (defaults to ``d3s.models.DEFAULT_NECK``).
        neck_hidden (`int`, *optional*): hidden width of an ``mlp`` neck (defaults to the feature size).
        iters (`int`, defaults to 2000): model updates.
        batch_size (`int`, defaults to 64): rows of the dataset per step (global, over all processes).
        image_size (`int`, *optional*): input side; defaults to the data's image side, capped at 224.
        fg_dim, bg_dim (`int`, *optional*): the feature split (defaults: the paper's proportion).
        extra_data (`str`, *optional*): a second dataset with fg labels only (ImageNet), mixed into
            every batch for the terms that need no bg label; its fg names must be the data's.
        extra_batch_size (`int`, defaults to 0 = ``batch_size``): its rows per step.
        crop_scale (`float`, defaults to 0.35): smallest area of RandomResizedCrop (1 = flip only).
        crop_prob (`float`, defaults to 0.5): share of images cropped; the others are whole (flipped or not), as
            the images the features will be used on. The critics only make z independent of the other label on
            the images they see: trained on crops alone, z_fg kept the background of whole images (see README).
        hparams (`dict`): overrides of the method's hyper-parameters (see ``d3s.algorithms.HPARAMS``).
        seed (`int`, defaults to 0).
        checkpoint_every (`int`, defaults to 500), log_every (`int`, defaults to 10).
        workers (`int`, defaults to 2): data loader processes (0: decode in the main process).
        mixed_precision (`str`, defaults to ``"auto"``): ``auto`` (bf16 on CUDA), ``no``, ``bf16``, ``fp16``.
        erase (`bool`, *optional*): after the last step, fit LEACE erasers (bg from z_fg, fg from z_bg) on the
            train split and save them in the extractor (``d3s erase``, :mod:`d3s.erase`). Defaults to
            :func:`erases_by_default`: on for a disentangling method (wasserstein, adversarial) with its critics on,
            off for the baselines and the ablation (``--critic-weight 0``). Not part of the run's identity:
            rerunning a finished run with ``--erase`` only adds them.
        erase_parts (`str`, defaults to ``"auto"``): ``auto``, ``both``, ``z_fg`` or ``z_bg``: the parts that get an
            eraser (:func:`d3s.erase.erase_model`; auto leaves out one that would cost its own part's head).
        erase_probe (`str`, defaults to ``"linear"``): the leakage probes measured before and after erasure,
            cross-fitted on the validation split: what ``d3s probe --probe`` takes (``linear``, ``mlp``, ``kernel``, a
            comma list, ``both``, ``all``) or ``none``.
    """

    data: str
    out: str
    method: str = "wasserstein"
    backbone: str = PAPER_BACKBONE
    pretrained: bool = True
    iters: int = 2000
    batch_size: int = 64
    image_size: int | None = None
    fg_dim: int | None = None
    bg_dim: int | None = None
    neck: str | None = None
    neck_hidden: int | None = None
    extra_data: str | None = None
    extra_batch_size: int = 0
    crop_scale: float = 0.35
    crop_prob: float = 0.5
    hparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    workers: int = 2
    mixed_precision: str = "auto"
    progress: bool = True
    erase: bool | None = None
    erase_parts: str = "auto"
    erase_probe: str = "linear"

    def check(self) -> None:
        if self.iters < 1:
            raise TrainError(f"--iters must be at least 1, got {self.iters}.")
        if self.batch_size < 2:
            raise TrainError(f"--batch-size must be at least 2 (the critics shuffle labels within a batch), got {self.batch_size}.")
        if not 0.05 <= self.crop_scale <= 1.0:
            raise TrainError(f"--crop-scale must be in [0.05, 1], got {self.crop_scale}.")
        if not 0.0 <= self.crop_prob <= 1.0:
            raise TrainError(f"--crop-prob must be in [0, 1], got {self.crop_prob}.")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise TrainError("--checkpoint-every and --log-every must be at least 1.")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise TrainError(f"--mixed-precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}.")
        from .models import NECKS

        if self.neck is not None and self.neck not in NECKS:
            raise TrainError(f"--neck must be one of {', '.join(NECKS)}, got {self.neck!r}.")
        if self.neck_hidden is not None and self.neck_hidden < 1:
            raise TrainError(f"--neck-hidden must be at least 1, got {self.neck_hidden}.")
        from .erase import PARTS, EraseError, probe_kinds_of

        if self.erase_parts not in PARTS:
            raise TrainError(f"--erase-parts must be one of {', '.join(PARTS)}, got {self.erase_parts!r}.")
        try:
            probe_kinds_of(self.erase_probe)
        except EraseError as err:
            raise TrainError(f"--erase-probe: {err}") from None

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        d = asdict(self)
        for k in ("out", "iters", "checkpoint_every", "log_every", "workers", "progress", "erase", "erase_parts", "erase_probe"):
            d.pop(k)
        return d


def _versions() -> dict[str, str]:
    import accelerate
    import timm
    import torch

    from . import __version__

    return {"d3s": __version__, "torch": torch.__version__, "timm": timm.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(algorithm, out: Path, step: int) -> None:
    """Model, critics, method buffers, optimizers and step. Only tensors and plain containers,
    so it loads with ``torch.load(weights_only=True)``."""
    state = {
        "step": step,
        "algorithm": {k: _to_cpu(v) for k, v in _unwrapped_state(algorithm).items()},
        "optimizers": {name: opt.state_dict() for name, opt in algorithm.optimizers().items()},
    }
    _atomic_torch_save(state, out / CHECKPOINT)


def _to_cpu(v):
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, dict):
        return {k: _to_cpu(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_cpu(x) for x in v)
    return v


def _unwrapped_state(algorithm) -> dict[str, torch.Tensor]:
    # keys as if the model were not DDP-wrapped, so a checkpoint moves between 1 and N processes
    return {k.replace("model.module.", "model."): v for k, v in algorithm.state_dict().items()}


def load_checkpoint(algorithm, out: Path) -> int:
    import torch

    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    target = algorithm.state_dict()
    wrapped = any(k.startswith("model.module.") for k in target)
    weights = {(k.replace("model.", "model.module.", 1) if wrapped and k.startswith("model.") else k): v
               for k, v in state["algorithm"].items()}
    algorithm.load_state_dict(weights, strict=True)
    for name, opt in algorithm.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    return int(state["step"])


def _resume_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint the run resumes from (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _model_hparams(config: TrainConfig):
    from .algorithms import hparams_for

    return hparams_for(config.method, config.hparams)


def train(config: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary written to ``done.json``.

    ``stop_after`` ends this invocation after that many steps, leaving a checkpoint (for time-sliced
    jobs, and for tests of resuming).
    """
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    from .algorithms import METHODS, build
    from .data import SeededBatches, fg_column, is_features, label_info, load_split, table_for

    # 1. check inputs
    config.check()
    hparams = _model_hparams(config)
    erase = config.erase if config.erase is not None else erases_by_default(config.method, hparams)
    out = Path(config.out)
    run_file = out / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())["config"]
        mine = json.loads(json.dumps(config.identity()))
        defaults = json.loads(json.dumps(asdict(TrainConfig(data="", out=""))))  # a run from before a setting existed had its default
        diff = sorted(k for k in mine if previous.get(k, defaults.get(k)) != mine[k])
        if diff:
            raise TrainError(f"{out} holds a run with other settings ({', '.join(diff)} differ); use another --out or the same settings to resume.")

    # 2. data
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)  # one voice under accelerate launch
    say(f"d3s train: reading the train split of {config.data}", flush=True)
    ds = load_split(config.data, "train")
    info = label_info(ds, f"{config.data} (train)")
    say(f"d3s train: {len(ds):,} rows, {len(info.fg_names)} fg x {len(info.bg_names)} bg classes", flush=True)
    extra_ds = extra_info = None
    if config.extra_data:
        extra_ds = load_split(config.extra_data, "train", need_bg=False)
        extra_info = label_info(extra_ds, f"{config.extra_data} (train)", need_bg=False)
        if extra_info.fg_names != info.fg_names[: len(extra_info.fg_names)]:
            raise TrainError(f"the fg classes of --extra-data {config.extra_data} are not the first classes of {config.data}'s fg labels.")
    frozen = is_features(ds)
    if extra_ds is not None and is_features(extra_ds) != frozen:
        kinds = ("features", "images") if frozen else ("images", "features")
        raise TrainError(f"--data {config.data} holds {kinds[0]} but --extra-data {config.extra_data} holds {kinds[1]}; give both of one kind.")
    if config.neck is not None and not frozen:
        raise TrainError(f"--neck applies to features datasets (from `d3s embed`); {config.data} holds images, whose backbone is trained.")
    image_size = None if frozen else config.image_size or min(224, max(ds[0]["image"].size))

    # 3. model and method
    say(f"d3s train: building {'the neck and heads' if frozen else config.backbone} "
        f"({'on frozen features' if frozen else 'pretrained' if config.pretrained else 'random init'})", flush=True)
    # The baselines never use the bg head: DDP must be told, or it waits for gradients that never come.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not METHODS[config.method].trains_bg_head)
    accelerator = Accelerator(
        kwargs_handlers=[ddp],
        mixed_precision=("bf16" if torch.cuda.is_available() else "no") if config.mixed_precision == "auto" else config.mixed_precision,
        cpu=not torch.cuda.is_available(),
    )
    torch.manual_seed(config.seed)  # the initial weights
    model = _build_model(config, ds, extra_ds, info, image_size)
    algorithm = build(config.method, model, hparams)
    algorithm.to(accelerator.device)
    algorithm.prepare(accelerator)

    # 4. resume
    start = 0
    if (out / CHECKPOINT).exists():
        start = load_checkpoint(algorithm, out)
        _resume_log(out / LOG, start)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        run = {"config": config.identity(), "hparams": hparams, "versions": _versions(), "image_size": image_size,
               "fg_dim": model.fg_dim, "bg_dim": model.bg_dim, "processes": accelerator.num_processes}
        if frozen:
            run.update(feature_dim=model.feature_dim, neck=model.neck_kind, backbone=model.backbone_name)
        if start == 0:
            run_file.write_text(json.dumps(run, indent=2, default=list) + "\n")
        if frozen:
            what = (f"{config.method} on frozen features ({model.feature_dim} from {model.backbone_name or 'an unrecorded backbone'}), "
                    f"{model.neck_kind} neck")
        else:
            what = f"{config.method} on {config.backbone} ({'pretrained' if config.pretrained else 'random init'})"
        print(f"d3s train: {what}, z_fg {model.fg_dim} / z_bg {model.bg_dim}, {len(info.fg_names)} fg x {len(info.bg_names)} bg classes, "
              f"{len(ds)} train {'rows' if frozen else f'images at {image_size}px'}" + (f", resuming at step {start}" if start else ""))
        print("hparams: " + json.dumps(hparams, default=list))
        for line in schedule_lines(config.iters, hparams):
            print(line)
        if erase:
            print("erasure: LEACE erasers fitted on the train split after the last step (bg from z_fg, fg from z_bg: "
                  f"{config.erase_parts}); --no-erase leaves them out")

    # 5. steps
    table = table_for(ds, size=image_size)
    extra = table_for(extra_ds, size=image_size, fg_column=fg_column(extra_ds)) if extra_ds else None
    world, rank = accelerator.num_processes, accelerator.process_index
    batches = SeededBatches(table, config.batch_size, config.seed, config.crop_scale, extra,
                            config.extra_batch_size or (config.batch_size if extra else 0), rank, world, config.crop_prob)
    end = config.iters if stop_after is None else min(config.iters, start + stop_after)
    batches.steps = range(start, end)
    workers = 0 if frozen else config.workers  # a batch of features is an index into memory: nothing to do ahead
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    log_f = open(out / LOG, "a") if accelerator.is_main_process else None
    bar = tqdm(total=config.iters, initial=start, desc=config.method, disable=not (config.progress and accelerator.is_main_process),
               dynamic_ncols=True)
    t0 = time.time()
    algorithm.train()
    step = start
    try:
        for batch in loader:
            step = int(batch["step"])
            gen = torch.Generator(device=accelerator.device).manual_seed(config.seed * 1_000_003 + step)
            images, fg, bg = (batch[k].to(accelerator.device, non_blocking=True) for k in ("images", "fg", "bg"))
            algorithm.set_progress(step / config.iters)
            with accelerator.autocast():
                logs = algorithm.update(images, fg, bg, gen)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == end:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("ce_fg", "ce_bg", "gap_fg", "gap_bg", "loss")})
                if log_f:
                    log_f.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in logs.items()}, "time": round(time.time() - t0, 2)}) + "\n")
                    log_f.flush()
            if (step % config.checkpoint_every == 0 or step == end) and accelerator.is_main_process:
                log_f.flush()
                save_checkpoint(algorithm, out, step)
    finally:
        bar.close()
        if log_f:
            log_f.close()
    accelerator.wait_for_everyone()
    if step < config.iters:
        return {"step": step, "done": False, "main_process": accelerator.is_main_process}

    # 6. save
    summary: dict[str, Any] = {"step": step, "done": True, "seconds_this_run": round(time.time() - t0, 1)}
    if accelerator.is_main_process:
        core = algorithm.core
        if erase:  # after the last step, before the final save: the saved extractor holds the erasers
            from .erase import erase_model, format_report, probe_kinds_of, retire_stale, write_model, write_reports

            t_erase = time.time()
            report = erase_model(core, config.data, "train", probe_kinds_of(config.erase_probe), device=str(accelerator.device),
                                 progress=config.progress, parts=config.erase_parts)
            write_model(core, out)  # each file replaced atomically, as `d3s erase` does (a finished run may be rerun with --erase)
            retire_stale(out, write_reports(out, report))
            print(format_report(report))
            summary["erasure"] = {"z_fg_rank": report["z_fg"]["rank"], "z_bg_rank": report["z_bg"]["rank"],
                                  "seconds": round(time.time() - t_erase, 1),
                                  **({"heads_before": report["heads"]["before"]} if "heads" in report else {})}
        else:
            core.save_pretrained(out)
            if (out / "erasure.json").exists():
                print(f"warning: {out} held LEACE erasers (erasure.json), and this run saved its extractor without them; "
                      "rerun with --erase to fit them again.")
        summary.update(evaluate_heads(core, config.data, accelerator.device))
        (out / "done.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "main_process": accelerator.is_main_process}


def _build_model(config: TrainConfig, ds, extra_ds, info, image_size: int | None):
    """The model to train: an image extractor, or for a features dataset the neck and heads, recording the
    backbone that made the features (the dataset's ``d3s_embed.json``)."""
    from .data import feature_dim, is_features
    from .embed import read_embed_info
    from .models import DEFAULT_NECK, DisentangledExtractor, FeatureDisentangler

    if not is_features(ds):
        return DisentangledExtractor.create(config.backbone, info.fg_names, info.bg_names, pretrained=config.pretrained,
                                            fg_dim=config.fg_dim, bg_dim=config.bg_dim, image_size=image_size)
    dim = feature_dim(ds, f"{config.data} (train)")
    if extra_ds is not None and feature_dim(extra_ds, config.extra_data) != dim:
        raise TrainError(f"--extra-data {config.extra_data} has {feature_dim(extra_ds, config.extra_data)} features per row, "
                         f"{config.data} has {dim}: they come from different backbones.")
    embed = read_embed_info(config.data) or {}
    return FeatureDisentangler(dim, info.fg_names, info.bg_names, fg_dim=config.fg_dim, bg_dim=config.bg_dim,
                               neck=config.neck or DEFAULT_NECK, neck_hidden=config.neck_hidden, backbone=embed.get("backbone"),
                               pretrained=embed.get("pretrained", True), preprocessing=embed.get("preprocessing"))


def erases_by_default(method: str, hparams: dict) -> bool:
    """Whether ``d3s train`` fits LEACE erasers when ``--erase``/``--no-erase`` is not given: for a disentangling
    method with its critics (or adversaries) on. Erasure never makes a linear probe read more, and the critics alone
    left the background linearly readable in z_fg on some regimes (``benchmarks/disentangle_grid.py``); a baseline
    has no cross-leakage to remove, and the ablation (``--critic-weight 0``) is the reference the leakage is measured
    against."""
    return method in DISENTANGLING and float(hparams.get("critic_weight", 0)) > 0


def schedule_lines(iters: int, hparams: dict) -> list[str]:
    """What a disentangling run does when (warm-up, then the critics' weight ramps up), and a warning when ``iters``
    ends before the critics count at all; nothing for the baselines."""
    if "warmup_iters" not in hparams:
        return []
    warm, ramp = int(hparams["warmup_iters"]), int(hparams.get("critic_ramp_iters", 0))
    lines = [f"schedule: steps 0-{warm} cross-entropy only (warm-up); the critics' weight ramps up over steps "
             f"{warm}-{warm + ramp}, full from step {warm + ramp} to {iters}"]
    if iters <= warm:
        lines.append(f"warning: --iters {iters} ends before the critics count (warm-up: {warm} steps): this run trains like the "
                     f"ablation (--critic-weight 0); pass --iters above {warm + ramp}, or --warmup {max(0, iters // 10)} for a short run")
    elif iters < warm + ramp:
        lines.append(f"warning: --iters {iters} ends while the critics' weight is still ramping up (full at step {warm + ramp})")
    return lines


def evaluate_heads(model, data: str, device) -> dict[str, float]:
    """Accuracy of the model's own fg and bg heads on the ``validation`` split, if there is one."""
    import torch

    from .data import extract, load_split, table_for
    from .dataset import DatasetFormatError

    try:
        ds = load_split(data, "validation")
    except DatasetFormatError:
        return {}
    table = table_for(ds, model)
    with torch.no_grad():
        z = extract(model, table, device=device).to(device)
        z_fg, z_bg = model.split(z)
        fg_acc = (model.fg_head(z_fg).argmax(1).cpu() == table.fg).float().mean().item()
        bg_acc = (model.bg_head(z_bg).argmax(1).cpu() == table.bg).float().mean().item()
    return {"val_fg_head": round(fg_acc, 4), "val_bg_head": round(bg_acc, 4)}
