"""Live generation for the app and notebooks: one image from a foreground, a background and a seed
(:func:`generate_one`), or one object on every background (:func:`generate_across`).

The same steps as a dataset row (guide drawn from the seed, recipe prompt, one generator per image),
with optional user uploads standing in for the ImageNet photo and the background template.
:func:`generate_across` runs the very code of ``d3s generate --paired`` (plan, guides, batched denoising)
for one class. Uploaded files are decoded defensively: size and pixel caps, EXIF rotation, any mode to RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .guides import GuideChoice, PhotoSource, ProceduralTemplates, TemplateSource, center_crop_resize, choose, compose
from .labels import resolve_concept
from .prompts import load_recipe

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # larger images are refused (decompression bombs)
MAX_ASPECT = 8  # longer side / shorter side: what a resize to a square input costs grows with it
WORK_SIDE = 2048  # a decoded image is scaled down to this longer side at once: no step needs more


class UploadError(ValueError):
    """An uploaded file that is not a usable image; the message says why and what to do."""


def read_upload(path_or_image) -> Image.Image:
    """Decode an upload (a file path, or an already opened image) into an RGB image, or raise
    :class:`UploadError` with a readable reason."""
    if isinstance(path_or_image, Image.Image):
        return _to_rgb(path_or_image)
    path = Path(path_or_image)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UploadError(f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MB; please upload a smaller image.")
    return _to_rgb(_open_capped(path))


def decode_stored(cell) -> Image.Image:
    """Decode an image cell of a dataset row (``{"bytes": ..., "path": ...}``, as ``datasets.Image(decode=False)``
    gives it) from its bytes only, under the upload caps.

    A cell without bytes (an image stored as a path or URL) is refused, never followed: a row must not make the
    server open a file or fetch an address. Raises :class:`UploadError`.
    """
    data = cell.get("bytes") if isinstance(cell, dict) else cell if isinstance(cell, (bytes, bytearray)) else None
    if data is None:
        raise UploadError("This row stores its image as a path or an address, not as bytes; it is not shown.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"This image is larger than {MAX_UPLOAD_BYTES // 2**20} MB; it is not shown.")
    return _to_rgb(_open_capped(io.BytesIO(data)))


def _open_capped(source) -> Image.Image:
    """Open and load an image file or buffer under the caps read from its header (at most
    :data:`MAX_UPLOAD_PIXELS`, at most :data:`MAX_ASPECT` times longer than wide), scaled down at once to
    :data:`WORK_SIDE` on its longer side: what any later step (a classifier's resize, a guide) costs is then
    bounded too. A JPEG is decoded at a reduced scale where it can be (``draft``), never at full size first."""
    try:
        with Image.open(source) as probe:
            w, h = probe.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise UploadError(f"The image is {w}x{h} pixels; images up to {MAX_UPLOAD_PIXELS // 10**6} megapixels are accepted.")
            if max(w, h) > MAX_ASPECT * max(min(w, h), 1):
                raise UploadError(f"The image is {w}x{h} pixels; images at most {MAX_ASPECT} times as long as they are "
                                  "wide are accepted: crop it, then upload it again.")
            if max(w, h) > WORK_SIDE and probe.format == "JPEG":
                probe.draft("RGB", (WORK_SIDE * w // max(w, h), WORK_SIDE * h // max(w, h)))
            probe.load()
            if max(probe.size) <= WORK_SIDE:
                return probe.copy()
            smooth = probe.mode in ("RGB", "RGBA", "L", "LA")
            image = probe.resize(_working_size(probe.size), Image.Resampling.BOX if smooth else Image.Resampling.NEAREST)
            image.info.update(probe.info)  # the EXIF orientation, read later by exif_transpose
            return image
    except UploadError:
        raise
    except Image.DecompressionBombError as err:
        raise UploadError(f"The image is too large; images up to {MAX_UPLOAD_PIXELS // 10**6} megapixels are accepted.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UploadError(f"This file could not be read as an image ({type(err).__name__}); upload a JPEG, PNG or WebP photo.") from err


def _working_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    scale = WORK_SIDE / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """EXIF rotation applied, 16-bit greyscale scaled to 8 bits, transparency flattened on white, RGB."""
    if min(image.size) < 8:
        raise UploadError(f"The image is only {image.size[0]}x{image.size[1]} pixels; upload one at least 8 pixels on each side.")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits before RGB
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((255 * (arr - arr.min()) / max(arr.max() - arr.min(), 1)).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


@dataclass
class LiveResult:
    guide: Image.Image
    image: Image.Image
    prompt: str
    choice: GuideChoice
    nsfw: bool | None = None  # the pipeline's safety checker flagged the image (None: no checker loaded)


def generate_one(pipe, foreground: str, background: str, seed: int = 0, *, photo=None, template=None,
                 photos: PhotoSource | None = None, templates: TemplateSource | None = None, recipe: str = "backgrounds",
                 size: int = 512, steps: int = 50, strength: float = 0.9, guidance: float = 5.0,
                 fg_scale: float = 0.4, callback=None) -> LiveResult:
    """Generate one image as ``d3s generate`` would, optionally from an uploaded photo and/or template.

    ``callback(step, total)`` is called after each denoising step (for progress bars); when it returns true the
    pipeline is interrupted and ``GenerationStopped`` raised (a time limit).
    """
    from .generate import GenerationConfig, PreparedBatch, PlanItem, denoise

    r = load_recipe(recipe)
    concept = resolve_concept(foreground)
    shift = r.shifts[r.shift_index(background)]
    templates = templates or ProceduralTemplates()
    photo_refs = ["upload"] if photo is not None else (photos.refs(concept) if photos else [])
    template_refs = ["upload"] if template is not None else templates.refs(shift)
    choice = choose(np.random.default_rng(seed), photo_refs, template_refs, size, fg_scale)
    template_image = center_crop_resize(read_upload(template), size) if template is not None else templates.open(choice.template, size)
    photo_image = None
    if choice.photo:
        photo_image = read_upload(photo) if photo is not None else photos.open(choice.photo)
    guide = compose(template_image, photo_image, choice.paste_box)
    prompt = r.prompt_for(concept, shift)
    config = GenerationConfig(foregrounds=[foreground], out="", steps=steps, strength=strength, guidance=guidance)
    item = PlanItem(item_id=0, fg=0, bg=0, k=0, seed=seed)
    images, flags = denoise(pipe, PreparedBatch([item], [choice], [guide], [prompt]), config, callback=callback)
    return LiveResult(guide=guide, image=images[0], prompt=prompt, choice=choice, nsfw=flags[0])


class UploadedPhoto(PhotoSource):
    """A user's photo standing in for the ImageNet photos of the class; its reference is ``upload``."""

    description = "upload"

    def __init__(self, image: Image.Image):
        self.image = image

    def refs(self, concept) -> list[str]:
        return ["upload"]

    def open(self, ref: str) -> Image.Image:
        return self.image


@dataclass
class AcrossResult:
    """One object on several backgrounds: per background its guide, image and prompt, in the recipe's order."""

    backgrounds: list[str]
    guides: list[Image.Image]
    images: list[Image.Image]
    prompts: list[str]
    choices: list[GuideChoice]  # photo and paste box shared; the template is the background's
    seed: int  # the group's noise seed (as the ``seed`` column of ``d3s generate --paired --seed S``)
    nsfw: list[bool | None]  # per image: flagged by the pipeline's safety checker (None: no checker loaded)


def generate_across(pipe, foreground: str, seed: int = 0, *, photo=None, photos: PhotoSource | None = None,
                    templates: TemplateSource | None = None, recipe: str = "backgrounds", backgrounds: str = "all",
                    size: int = 512, steps: int = 50, strength: float = 0.9, guidance: float = 5.0, fg_scale: float = 0.4,
                    batch_size: int = 16, callback=None) -> AcrossResult:
    """The object of ``foreground`` dreamed on every background: group k = 0 of ``d3s generate --paired --seed seed``.

    One photo (the upload ``photo``, else one drawn from ``photos``, else none), one paste position and
    one noise seed for all backgrounds; only the template and the prompt's background differ. With the
    same photo source, settings and batch size, the images equal the dataset's. ``callback(step, total)``
    is called after each denoising step, counted over all batches; when it returns true the run stops
    (``GenerationStopped``). Raises ``LabelError``, ``GenerationError`` or ``UploadError`` on bad input.
    """
    from .generate import GenerationConfig, denoise, make_plan, prepare_batch

    resolve_concept(foreground)  # one class, not a list or 'all'
    source = UploadedPhoto(read_upload(photo)) if photo is not None else photos
    config = GenerationConfig(foregrounds=[foreground], out="", backgrounds=backgrounds, per_pair=1, model="live",
                              recipe=recipe, size=size, steps=steps, strength=strength, guidance=guidance,
                              fg_scale=fg_scale, seed=seed, batch_size=batch_size, paired=True)
    plan, photos, templates = make_plan(config, photos=source, templates=templates)
    batches = plan.batches()
    per_batch = max(1, int(steps * strength))
    guides, images, prompts, choices, flags = [], [], [], [], []
    for b, batch in enumerate(batches):
        prepared = prepare_batch(plan, batch, photos, templates)
        step = (lambda i, n, b=b: callback(b * per_batch + i, len(batches) * per_batch)) if callback else None
        out, flagged = denoise(pipe, prepared, config, callback=step)
        guides += prepared.guides
        images += out
        prompts += prepared.prompts
        choices += prepared.choices
        flags += flagged
    return AcrossResult([plan.recipe.shifts[i.bg] for i in plan.items], guides, images, prompts, choices, plan.items[0].seed,
                        flags)
