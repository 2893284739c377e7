"""Generation: Algorithm 1 of the paper, as a resumable, reproducible, multi-process run.

A run reads as the steps of :func:`generate`:

1. check every input (classes, backgrounds, photo and template sources, settings) before any model
   is loaded, so mistakes cost nothing;
2. plan: every (foreground, background, k) item gets an id and its own seed; items are cut into
   fixed batches (so which images are denoised together never depends on the number of processes).
   A paired run (``--paired``) instead gives every (foreground, k) group one seed, photo and paste
   position shared by all its backgrounds, and lists a group's images next to each other;
3. open the output folder: its ``d3s_run.json`` must match the settings, finished items are skipped;
4. share the remaining batches among processes (``accelerate launch``), round-robin;
5. for each batch: draw guides from each item's seed, run the img2img pipeline with one generator
   per image, turn the outputs into rows;
6. write rows as parquet shards, atomically, and finally the dataset card.

Every row records what is needed to regenerate exactly that image (:func:`regenerate`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .dataset import label_features, read_column, remove_partial_files, shard_paths, write_card, write_shard
from .guides import (DEFAULT_FG_SCALE, GuideChoice, NoPhotos, PhotoSource, TemplateSource, build_guide, choose, choose_paired,
                     photo_source, template_source)
from .labels import Concept, label_space, parse_foregrounds
from .prompts import Recipe, load_recipe

MANIFEST = "d3s_run.json"


class GenerationError(ValueError):
    """Bad input to a generation run; raised before any model is loaded or any file written."""


class GenerationStopped(RuntimeError):
    """A denoising call stopped early at its caller's request (the app's per-request time limit)."""


@dataclass
class GenerationConfig:
    """Everything that decides a run's images. Defaults are the authors' settings (their public code:
    Stable Diffusion v1.4, DDIM with eta 0, 50 steps at strength 0.9, guidance 5, 512 px, photos pasted at 0.4 of the side).

    Args:
        foregrounds (`str`): classes, e.g. ``"0,207,281"``, ``"0-99"``, ``"all"``, ``"wordnet:red_panda.n.01"``.
        backgrounds (`str`, defaults to ``"all"``): shift names or indices of the recipe.
        out (`str`): output dataset folder.
        per_pair (`int`, defaults to 12): images per (foreground, background) pair (paper: 12).
        model (`str`): diffusers img2img model id or folder, or ``tiny``.
        recipe (`str`): built-in recipe name or JSON path (prompt template and shifts).
        photos (`str`, *optional*): ImageNet-style folder or ``hf:ORG/NAME[:split]``; none = template-only guides.
        templates (`str`, defaults to ``"procedural"``): template folder (``d3s templates``) or ``procedural``.
        size (`int`, defaults to 512), steps (`int`, 50), strength (`float`, 0.9), guidance (`float`, 5.0):
            the img2img settings; ``int(steps * strength)`` denoising steps are run.
        scheduler (`str`, defaults to ``"ddim"``): ``ddim`` (eta 0) or ``model`` (keep the model's own).
        fg_scale (`float`, defaults to 0.4): pasted photo side as a fraction of the image side.
        seed (`int`, defaults to 0): the run seed; each image's seed is derived from it and the item.
        batch_size (`int`, defaults to 8): images denoised together (fixed for the life of a run).
        shard_size (`int`, defaults to 256): rows per parquet shard (rounded up to whole batches).
        split (`str`, defaults to ``"train"``): split name of the shards.
        keep_guides (`bool`, defaults to `True`): store each guide as a second image column.
        safety_checker (`bool`, defaults to `False`): run the model's NSFW checker, record its flag.
        paired (`bool`, defaults to `False`): counterfactual groups: for each (foreground, k), one photo,
            one paste position and one noise seed on every background (only the template and the prompt's
            background differ); rows carry a ``group`` id. Without it, every image draws its own.
    """

    foregrounds: str
    out: str
    backgrounds: str = "all"
    per_pair: int = 12
    model: str = "CompVis/stable-diffusion-v1-4"
    recipe: str = "backgrounds"
    photos: str | None = None
    templates: str = "procedural"
    size: int = 512
    steps: int = 50
    strength: float = 0.9
    guidance: float = 5.0
    scheduler: str = "ddim"
    fg_scale: float = DEFAULT_FG_SCALE
    seed: int = 0
    batch_size: int = 8
    shard_size: int = 256
    split: str = "train"
    keep_guides: bool = True
    safety_checker: bool = False
    paired: bool = False


# Settings that change pixels or the plan; a folder made with other values refuses to resume.
_PLAN_KEYS = ("foregrounds", "backgrounds", "per_pair", "model", "recipe", "photos_kind", "templates", "size", "steps",
              "strength", "guidance", "scheduler", "fg_scale", "seed", "batch_size", "split", "keep_guides", "safety_checker",
              "paired")
# Settings a manifest leaves out at their default (unpaired manifests are as they were before `paired`).
_ABSENT = {"paired": False}


@dataclass(frozen=True)
class PlanItem:
    item_id: int
    fg: int  # index in the run's fg label space (ImageNet index for ImageNet classes)
    bg: int  # index of the shift in the recipe
    k: int  # repeat index within the (fg, bg) pair
    seed: int
    group: int | None = None  # paired runs: one id per (fg, k), shared by its backgrounds


@dataclass
class Plan:
    """The resolved inputs of a run and its items, in a fixed order: fg, then bg, then k (paired: fg, k, bg)."""

    config: GenerationConfig
    recipe: Recipe
    concepts: list[Concept]
    classes: list[Concept]  # the fg label space
    shifts: list[int]
    items: list[PlanItem] = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # photo and template sources: path and a digest of their listing

    def batches(self) -> list[list[PlanItem]]:
        b = self.config.batch_size
        return [self.items[i : i + b] for i in range(0, len(self.items), b)]

    def counts(self) -> tuple[Counter, Counter]:
        return Counter(self.classes[i.fg].name for i in self.items), Counter(self.recipe.shifts[i.bg] for i in self.items)

    def manifest(self) -> dict:
        c = self.config
        settings = {k: v for k, v in asdict(c).items() if k not in ("out", "shard_size", "photos")}
        if not c.paired:  # unpaired manifests stay as they were before paired runs existed
            del settings["paired"]
        settings.update(
            foregrounds=[x.wnid for x in self.concepts],
            backgrounds=[self.recipe.shifts[i] for i in self.shifts],
            recipe=self.recipe.to_dict(),
            photos_kind=photo_kind(c.photos),
            templates="procedural" if c.templates == "procedural" else "folder",
        )
        return {"d3s_version": __version__, "items": len(self.items), "photos": c.photos, "template_folder": c.templates,
                "settings": settings, "sources": self.sources}


def photo_kind(spec: str | None) -> str:
    return "none" if not spec else ("hub" if spec.startswith("hf:") else "folder")


def item_seed(run_seed: int, concept: Concept, shift: str, k: int) -> int:
    """A stable 63-bit seed per image: adding classes or backgrounds to a plan never changes other images' seeds."""
    digest = hashlib.sha256(f"d3s:{run_seed}:{concept.wnid}:{shift}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def group_seed(run_seed: int, concept: Concept, k: int) -> int:
    """The seed of a paired group (noise, photo and paste position of every background), stable as :func:`item_seed`."""
    digest = hashlib.sha256(f"d3s-paired:{run_seed}:{concept.wnid}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --- 1. inputs ------------------------------------------------------------------------------------

def check_settings(c: GenerationConfig) -> None:
    """Numeric settings, each error naming the argument, the value and what is valid."""
    if not 0.0 < c.strength <= 1.0:
        raise GenerationError(f"--strength must be in (0, 1] (0.9 in the paper), got {c.strength}.")
    if c.steps < 1 or int(c.steps * c.strength) < 1:
        raise GenerationError(
            f"--steps x --strength must give at least one denoising step, got {c.steps} x {c.strength}; "
            f"for few-step models use e.g. --steps 2 --strength 0.5."
        )
    if c.size < 8 or c.size % 8:
        raise GenerationError(f"--size must be a positive multiple of 8 (512 for SD 1.x), got {c.size}.")
    for name in ("per_pair", "batch_size", "shard_size"):
        if getattr(c, name) < 1:
            raise GenerationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}.")
    if c.guidance < 0:
        raise GenerationError(f"--guidance must be >= 0 (5.0 in the paper, 0 for SD-Turbo), got {c.guidance}.")
    if not 0.0 < c.fg_scale <= 1.0:
        raise GenerationError(f"--fg-scale must be in (0, 1] (0.4 in the paper), got {c.fg_scale}.")
    if c.scheduler not in ("ddim", "model"):
        raise GenerationError(f"--scheduler must be 'ddim' or 'model', got {c.scheduler!r}.")


def make_plan(c: GenerationConfig, photos: PhotoSource | None = None,
              templates: TemplateSource | None = None) -> tuple[Plan, PhotoSource, TemplateSource]:
    """Resolve and check all inputs, then list the items. Raises on any bad input; touches no file.

    ``photos`` / ``templates`` replace the sources named in ``c`` (the app passes an uploaded photo).
    """
    from .guides import GuideSourceError
    from .labels import LabelError

    check_settings(c)
    try:
        recipe = load_recipe(c.recipe)
        concepts = parse_foregrounds(c.foregrounds)
        shifts = recipe.parse_shifts(c.backgrounds)
        photos = photo_source(c.photos) if photos is None else photos
        photos.check(concepts)
        templates = template_source(c.templates) if templates is None else templates
        templates.check(recipe, shifts)
    except (LabelError, GuideSourceError) as err:
        raise GenerationError(str(err)) from err
    if c.paired and len(shifts) < 2:
        raise GenerationError(f"--paired shows each object on several backgrounds; --backgrounds gives only "
                              f"{len(shifts)} ({', '.join(recipe.shifts[i] for i in shifts)}): name two or more, or 'all'.")
    classes = label_space(concepts)
    index = {x.wnid: i for i, x in enumerate(classes)}
    items = []
    with _collector_paused():  # 100,000 items (D3S) are 100,000 objects made at once
        for g, concept in enumerate(concepts):
            if c.paired:  # a group's images side by side, so a batch holds whole groups where the batch size allows
                for k in range(c.per_pair):
                    seed = group_seed(c.seed, concept, k)
                    items += [PlanItem(len(items) + j, index[concept.wnid], bg, k, seed, g * c.per_pair + k)
                              for j, bg in enumerate(shifts)]
                continue
            for bg in shifts:
                for k in range(c.per_pair):
                    seed = item_seed(c.seed, concept, recipe.shifts[bg], k)
                    items.append(PlanItem(len(items), index[concept.wnid], bg, k, seed))
    sources = {"photos": photos.identity(concepts), "templates": templates.identity([recipe.shifts[i] for i in shifts])}
    return Plan(c, recipe, concepts, classes, shifts, items, sources), photos, templates


@contextmanager
def _collector_paused():
    """Python's cycle collector off while many objects that form no cycle are made (a plan's items): otherwise it
    rescans the whole heap (torch's and timm's objects included) again and again as they pile up, which made a plan of
    100,000 items cost 2.5 times as much per item as one of 10,000."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def format_plan(plan: Plan) -> str:
    """The dry-run report: totals and counts per class and background."""
    per_class, per_bg = plan.counts()
    c = plan.config
    lines = [
        f"plan: {len(plan.items)} images = {len(plan.concepts)} foreground(s) x {len(plan.shifts)} background(s) x {c.per_pair} per pair",
        f"model {c.model}, {c.size}px, {c.steps} steps x strength {c.strength} = {int(c.steps * c.strength)} denoising steps, "
        f"guidance {c.guidance}, scheduler {c.scheduler}, batch {c.batch_size}, seed {c.seed}",
        *([f"paired: {len(plan.concepts) * c.per_pair} groups, each one object (photo, paste position, noise) "
           f"on {len(plan.shifts)} backgrounds"] if c.paired else []),
        f"recipe {plan.recipe.name!r}: {plan.recipe.prompt!r}",
        "per background:",
        *[f"  {bg:<14} {n}" for bg, n in per_bg.items()],
        "per foreground:",
        *[f"  {name:<30} {n}" for name, n in list(per_class.items())[:50]],
    ]
    if len(per_class) > 50:
        lines.append(f"  ... and {len(per_class) - 50} more classes, {c.per_pair * len(plan.shifts)} images each")
    if plan.items:
        first = plan.items[0]
        lines.append(f"first prompt: {plan.recipe.prompt_for(plan.classes[first.fg], plan.recipe.shifts[first.bg])}")
    return "\n".join(lines)


# --- 2-3. output folder and resume ------------------------------------------------------------------

def check_output(plan: Plan) -> None:
    """Refuse a folder made with other settings or other photos or templates, or one that is not a d3s generation
    folder (reads only)."""
    out = Path(plan.config.out)
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise GenerationError(f"--out {out} is a file; give a folder for the dataset (it is laid out as a Hub dataset repository).")
    if path.exists():
        manifest = json.loads(path.read_text())
        old = manifest["settings"]
        new = plan.manifest()["settings"]
        old, new = {**_ABSENT, **old}, {**_ABSENT, **new}
        diff = [k for k in _PLAN_KEYS if old.get(k) != new.get(k)]
        shown = [f"{k}: folder has {_short(old.get(k))}, this run asks {_short(new.get(k))}" for k in diff]
        shown += _source_differences(manifest.get("sources") or {}, plan.sources)
        if shown:
            raise GenerationError(
                f"{out} was generated with other settings ({'; '.join(shown)}). Rerun with the folder's settings to resume it, "
                f"or choose another --out."
            )
    elif out.exists() and any(out.iterdir()):
        raise GenerationError(f"{out} exists and is not a d3s generation folder (no {MANIFEST}); choose an empty or new --out.")


def _source_differences(old: dict, new: dict) -> list[str]:
    """What differs between the photo/template sources a folder was made from and this run's.

    Images are drawn by index into each class's sorted file list, so a resumed run must see the same list: a
    folder with other files is refused. The same list under another path (the folder moved, or mounted
    elsewhere on another machine) is accepted, with a note. Folders made before sources were recorded are not checked.
    """
    shown = []
    for kind in ("photos", "templates"):
        a, b = old.get(kind), new.get(kind)
        if not a or not b:
            continue
        if a.get("listing") != b.get("listing") or (a.get("listing") is None and a.get("source") != b.get("source")):
            shown.append(f"{kind}: folder made from {a.get('source')} ({a.get('files')} files, listing {a.get('listing')}), "
                         f"this run reads {b.get('source')} ({b.get('files')} files, listing {b.get('listing')})")
        elif a.get("source") != b.get("source"):
            print(f"note: {kind} moved from {a.get('source')} to {b.get('source')}; the same {b.get('files')} files, resuming")
    return shown


def create_output(plan: Plan) -> None:
    """Write the manifest of a new run (main process only)."""
    path = Path(plan.config.out) / MANIFEST
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan.manifest(), indent=2))
        os.replace(tmp, path)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) < 80 else text[:77] + "..."


def finished_items(out: str | Path, split: str, key: str = "item_id") -> set[int]:
    """Keys already in readable shards; an unreadable shard is set aside (its items are redone)."""
    paths = shard_paths(out, split)
    ids, bad = read_column(paths, key)
    for p in bad:
        p.rename(p.with_suffix(".parquet.unreadable"))
        print(f"warning: shard {p.name} is unreadable; moved aside, its rows will be made again")
    return set(ids)


def remaining_batches(plan: Plan, done: set[int]) -> list[list[PlanItem]]:
    return [rest for batch in plan.batches() if (rest := [i for i in batch if i.item_id not in done])]


# --- 5. one batch -------------------------------------------------------------------------------------

def features(plan: Plan):
    """The row schema: image (+ guide), labels, prompt, seed and provenance."""
    import datasets

    cols = {
        "item_id": datasets.Value("int64"),
        "image": datasets.Image(),
        **label_features([x.name for x in plan.classes], plan.recipe.shifts),
        "fg_wnid": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "k": datasets.Value("int32"),
        "photo": datasets.Value("string"),
        "template": datasets.Value("string"),
        "paste_box": datasets.Sequence(datasets.Value("int32"), length=4),
        "model": datasets.Value("string"),
        "scheduler": datasets.Value("string"),
        "steps": datasets.Value("int32"),
        "strength": datasets.Value("float32"),
        "guidance": datasets.Value("float32"),
        "size": datasets.Value("int32"),
        "batch_size": datasets.Value("int32"),
        "recipe": datasets.Value("string"),
        "nsfw": datasets.Value("bool"),
    }
    if plan.config.paired:
        cols["group"] = datasets.Value("int64")
    if plan.config.keep_guides:
        cols["guide"] = datasets.Image()
    return datasets.Features(cols)


@dataclass
class PreparedBatch:
    items: list[PlanItem]
    choices: list[GuideChoice]
    guides: list
    prompts: list[str]


def prepare_batch(plan: Plan, batch: Sequence[PlanItem], photos: PhotoSource, templates: TemplateSource) -> PreparedBatch:
    """Draw each item's guide from its own seed (paired: photo and position from the group's) and write its prompt."""
    c = plan.config
    choices, guides, prompts = [], [], []
    for item in batch:
        concept, shift = plan.classes[item.fg], plan.recipe.shifts[item.bg]
        if c.paired:
            choice = choose_paired(item.seed, shift, photos.refs(concept), templates.refs(shift), c.size, c.fg_scale)
        else:
            choice = choose(np.random.default_rng(item.seed), photos.refs(concept), templates.refs(shift), c.size, c.fg_scale)
        choices.append(choice)
        guides.append(build_guide(choice, photos, templates, c.size))
        prompts.append(plan.recipe.prompt_for(concept, shift))
    return PreparedBatch(list(batch), choices, guides, prompts)


def denoise(pipe, prepared: PreparedBatch, c: GenerationConfig, callback=None) -> tuple[list, list]:
    """Run img2img on a batch with one CPU generator per image (CPU noise is the same on every device).

    ``callback(step, total)``, if given, is called after each denoising step (for progress bars); when it
    returns true, the pipeline is interrupted (its own ``interrupt`` flag: the remaining steps are skipped) and
    :class:`GenerationStopped` is raised once it has returned, so a caller can bound a request's time.
    """
    import torch

    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in prepared.items]
    total = max(1, int(c.steps * c.strength))
    stopped = []

    def on_step(pipeline, step, timestep, kwargs):
        if callback(step + 1, total):
            pipeline._interrupt = True  # what diffusers' `interrupt` property reads; reset at the next call
            stopped.append(step + 1)
        return kwargs

    extra = {"callback_on_step_end": on_step} if callback is not None else {}
    out = pipe(
        prompt=prepared.prompts,
        image=prepared.guides,
        strength=c.strength,
        num_inference_steps=c.steps,
        guidance_scale=c.guidance,
        eta=0.0,
        generator=generators,
        output_type="pil",
        **extra,
    )
    if stopped:
        raise GenerationStopped(f"stopped after {stopped[0]} of {total} denoising steps")
    flags = out.nsfw_content_detected or [None] * len(out.images)
    return out.images, flags


def make_rows(plan: Plan, prepared: PreparedBatch, images: list, flags: list) -> list[dict]:
    c = plan.config
    rows = []
    for item, choice, guide, prompt, image, flag in zip(prepared.items, prepared.choices, prepared.guides, prepared.prompts, images, flags):
        row = dict(
            item_id=item.item_id, image=image, fg=item.fg, bg=item.bg, fg_wnid=plan.classes[item.fg].wnid,
            prompt=prompt, seed=item.seed, k=item.k, photo=choice.photo, template=choice.template,
            paste_box=list(choice.paste_box), model=c.model, scheduler=c.scheduler, steps=c.steps, strength=c.strength,
            guidance=c.guidance, size=c.size, batch_size=c.batch_size, recipe=plan.recipe.name,
            nsfw=None if flag is None else bool(flag),
        )
        if c.paired:
            row["group"] = item.group
        if c.keep_guides:
            row["guide"] = guide
        rows.append(row)
    return rows


# --- the run ----------------------------------------------------------------------------------------

def distributed_state():
    """(process index, process count, barrier, device) under ``accelerate launch`` / torchrun; plain values otherwise.

    torch.distributed is used directly (gloo on CPU, nccl on GPUs): generation only needs ranks and
    barriers, and accelerate's own state treats several CPU processes without MPI as one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, (lambda: None), None
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), dist.barrier, device


def generate(c: GenerationConfig, dry_run: bool = False, pipe=None, progress: bool = True) -> dict:
    """Generate (or finish generating) the dataset described by ``c``. Returns a summary dict."""
    plan, photos, templates = make_plan(c)
    if isinstance(photos, NoPhotos) and int(os.environ.get("RANK", "0")) == 0:
        print("note: no --imagenet photos: the guides have no foreground photo (templates only), unlike the paper's "
              "Algorithm 1, which pastes an ImageNet photo of the class")
    if dry_run:
        print(format_plan(plan))
        return {"planned": len(plan.items), "generated": 0}

    rank, world, barrier, device = distributed_state()
    check_output(plan)  # every process checks before any waits, so a refusal never leaves one hanging,
    barrier()  # and before any writes, so every process judges the same folder
    if rank == 0:
        create_output(plan)
        remove_partial_files(c.out)
    barrier()
    done = finished_items(c.out, c.split) if rank == 0 else None
    barrier()
    if done is None:
        done = finished_items(c.out, c.split)
    todo = remaining_batches(plan, done)[rank::world]
    feats = features(plan)
    if rank == 0:
        write_card(c.out, feats, dataset_card_body(plan, done_count=len(done)))

    generated = 0
    if todo:
        if pipe is None:
            from .diffusion import load_pipeline

            pipe = load_pipeline(c.model, device=device, scheduler=c.scheduler, safety_checker=c.safety_checker)
        generated = _run_batches(plan, todo, pipe, photos, templates, feats, progress and rank == 0)
    barrier()
    total = len(finished_items(c.out, c.split)) if rank == 0 else None
    if rank == 0:
        write_card(c.out, feats, dataset_card_body(plan, done_count=total))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {"planned": len(plan.items), "generated": generated, "already_done": len(done), "total": total, "rank": rank}


class _Inline:
    """A stand-in for a thread pool that runs work at once (see :func:`_run_batches`)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run_batches(plan: Plan, todo: list[list[PlanItem]], pipe, photos, templates, feats, show: bool) -> int:
    """Denoise batches, preparing guides before and writing shards after each.

    On a GPU, guide preparation (JPEG decoding) and shard writing (PNG encoding) run in threads while
    the GPU denoises. On a CPU the same threads would steal cores from torch's own, so they run inline.
    """
    from tqdm.auto import tqdm

    c = plan.config
    rows_per_shard = max(c.shard_size, c.batch_size)
    overlap = getattr(pipe, "device", None) is not None and pipe.device.type == "cuda"
    pool = (lambda: ThreadPoolExecutor(1)) if overlap else _Inline
    bar = tqdm(total=sum(map(len, todo)), unit="img", desc="generating", disable=not show, smoothing=0.1)
    buffer: list[dict] = []
    generated = 0
    with pool() as prep_pool, pool() as write_pool:
        writes = []
        pending = prep_pool.submit(prepare_batch, plan, todo[0], photos, templates)
        for i in range(len(todo)):
            prepared = pending.result()
            if i + 1 < len(todo):
                pending = prep_pool.submit(prepare_batch, plan, todo[i + 1], photos, templates)
            images, flags = denoise(pipe, prepared, c)
            buffer.extend(make_rows(plan, prepared, images, flags))
            generated += len(images)
            bar.update(len(images))
            if len(buffer) >= rows_per_shard or i + 1 == len(todo):
                writes.append(write_pool.submit(write_shard, c.out, c.split, sorted(buffer, key=lambda r: r["item_id"]), feats))
                buffer = []
        for w in writes:
            w.result()  # surface write errors
    bar.close()
    return generated


def dataset_card_body(plan: Plan, done_count: int | None) -> str:
    c = plan.config
    example = plan.recipe.prompt_for(plan.classes[plan.items[0].fg], plan.recipe.shifts[plan.items[0].bg]) if plan.items else ""
    return f"""# D3S: Diffusion Dreamed Distribution Shifts (generated with d3s {__version__})

Images of foreground classes on controlled backgrounds, made by Stable Diffusion image-to-image from a guide
(a foreground photo pasted on a background template) and the prompt `{plan.recipe.prompt}`
(recipe `{plan.recipe.name}`), following Algorithm 1 of *Invariant Learning via Diffusion Dreamed Distribution Shifts*.
Every (foreground, background) pair is generated, so `fg` and `bg` are independent by construction.

| setting | value |
|---|---|
| model | `{c.model}` |
| scheduler | {c.scheduler} (eta 0) |
| steps x strength | {c.steps} x {c.strength} |
| guidance scale | {c.guidance} |
| size | {c.size} px |
| foreground photos | {photo_kind(c.photos)} |
| templates | {"procedural" if c.templates == "procedural" else "folder"} |
| seed | {c.seed} (each row has its own derived `seed`) |
{_paired_card_row(plan)}| images | {done_count if done_count is not None else "?"} of {len(plan.items)} planned |

Example prompt: `{example}`
{_PAIRED_CARD_TEXT if c.paired else ""}
Each row holds `image`, `fg` and `bg` labels, the `prompt`, the `seed` and the provenance (`photo`, `template`,
`paste_box`, settings) needed to regenerate exactly that image with `d3s regenerate`.

```python
from datasets import load_dataset
ds = load_dataset("PATH_OR_REPO_ID", split="{c.split}")
print(ds.features["fg"].int2str(ds[0]["fg"]), ds.features["bg"].int2str(ds[0]["bg"]))
```
"""


_PAIRED_CARD_TEXT = """
**Paired run.** Each `group` is one object: the same photo, paste position and noise seed on every background;
only the template and the prompt's background differ. A classifier that changes its answer within a group
changed it because of the background (`d3s benchmark` reports consistency and flip rates on such splits).
"""


def _paired_card_row(plan: Plan) -> str:
    if not plan.config.paired:
        return ""
    return (f"| paired | yes: {len(plan.concepts) * plan.config.per_pair} groups (one per class and k), "
            f"each on the run's {len(plan.shifts)} backgrounds |\n")


# --- regenerate ------------------------------------------------------------------------------------

def load_manifest(data: str | Path) -> dict:
    path = Path(data) / MANIFEST
    if not path.exists():
        raise GenerationError(f"{data} has no {MANIFEST}: it was not made by `d3s generate`.")
    return json.loads(path.read_text())


def read_rows(data: str | Path, item_ids: Sequence[int], split: str = "train") -> list[dict]:
    """Rows with the given item ids, decoded (images as PIL), in id order."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = list(item_ids)
    tables = []
    for p in shard_paths(data, split):
        t = pq.read_table(p)
        t = t.filter(pc.is_in(t.column("item_id"), value_set=pa.array(wanted, type="int64")))
        if t.num_rows:
            tables.append(t)
    feats = datasets.Features.from_arrow_schema(tables[0].schema) if tables else None
    rows = [feats.decode_example(r) for t in tables for r in t.to_pylist()] if tables else []
    return sorted(rows, key=lambda r: r["item_id"])


def regenerate(data: str | Path, item_id: int, photos: str | None = None, templates: str | None = None,
               pipe=None, device=None) -> tuple:
    """Regenerate one row from the records of its batch; returns ``(image, stored_row)``.

    The images of a batch are denoised together (floating-point sums depend on the batch), so the
    row's batch-mates are regenerated with it. Guides come from the stored ``guide`` column, or are
    rebuilt from ``photo``, ``template`` and ``paste_box`` when ``photos``/``templates`` are given.
    """
    manifest = load_manifest(data)
    s = manifest["settings"]
    split = s.get("split", "train")
    b = s["batch_size"]
    first = item_id - item_id % b
    rows = read_rows(data, range(first, first + b), split)
    target = next((r for r in rows if r["item_id"] == item_id), None)
    if target is None:
        raise GenerationError(f"{data} has no row with item_id {item_id} in split {split!r}.")
    rebuild = photos is not None or templates is not None or "guide" not in target
    photo_src = photo_source(photos if photos is not None else manifest.get("photos")) if rebuild else None
    template_src = template_source(templates if templates is not None else manifest.get("template_folder")) if rebuild else None
    guides = []
    for r in rows:
        if rebuild:
            choice = GuideChoice(r["photo"], r["template"], tuple(r["paste_box"]))
            guides.append(build_guide(choice, photo_src, template_src, s["size"]))
        else:
            guides.append(r["guide"].convert("RGB"))
    config = GenerationConfig(foregrounds="0", out=str(data), model=s["model"], size=s["size"], steps=s["steps"],
                              strength=s["strength"], guidance=s["guidance"], scheduler=s["scheduler"], batch_size=b)
    items = [PlanItem(r["item_id"], r["fg"], r["bg"], r["k"], r["seed"]) for r in rows]
    prepared = PreparedBatch(items, [], guides, [r["prompt"] for r in rows])
    if pipe is None:
        from .diffusion import load_pipeline

        pipe = load_pipeline(s["model"], device=device, scheduler=s["scheduler"], safety_checker=s.get("safety_checker", False))
    images, _ = denoise(pipe, prepared, config)
    return images[[r["item_id"] for r in rows].index(item_id)], target
