"""Guides: a foreground photo pasted whole, downsampled, onto a background template (Algorithm 1).

The template is centre-cropped to a square and resized (bicubic) to the output size; the photo is
centre-cropped and resized to ``fg_scale`` (0.4) of it and pasted at a random top-left position.
Every random choice (which photo, which template, where) is drawn from the image's own seed by
:func:`choose` and recorded as references that :func:`PhotoSource.open` / :func:`TemplateSource.open`
resolve again later, so any guide can be rebuilt exactly.

Photo sources: an ImageNet-style folder (``DIR/<wnid>/*.JPEG``; any WordNet id works, so a user's
own photos of any concept fit too), a Hub dataset with an ImageNet ``label`` column
(``hf:ORG/NAME[:split]``), or none (the guide is the template alone).
Template sources: a folder per background (``DIR/<slug>/*``, e.g. ``DIR/in_snow/``; see
``d3s templates``), or ``procedural`` (drawn from the seed-free recipe of each background; the
tiny preset and quick starts use it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from .labels import Concept
from .prompts import Recipe, slug

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PROCEDURAL = "procedural"
TEMPLATES_PER_SHIFT = 3  # as the paper: three templates per background
DEFAULT_FG_SCALE = 0.4


class GuideSourceError(ValueError):
    """A photo or template source that cannot serve the requested classes or backgrounds."""


def open_rgb(path_or_file) -> Image.Image:
    """Decode an image as RGB, honouring EXIF orientation."""
    with Image.open(path_or_file) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` x ``size`` with bicubic filtering."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def _list_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# --- photos -------------------------------------------------------------------------------------

def _listing_digest(refs: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(refs).encode()).hexdigest()[:16]


class PhotoSource:
    """Foreground photos per WordNet id; references are strings recorded in each row."""

    description = "none"

    def identity(self, concepts: Sequence[Concept]) -> dict:
        """Where the photos come from and a digest of what a run of ``concepts`` can draw from: a resumed run
        must draw from the same list (images are chosen by index into it)."""
        refs = [r for c in concepts for r in self.refs(c)]
        return {"source": self.description, "files": len(refs), "listing": _listing_digest(refs) if refs else None}

    def check(self, concepts: Sequence[Concept]) -> None:
        """Fail (before any model is loaded) if a concept has no photo."""

    def refs(self, concept: Concept) -> list[str]:
        return []

    def open(self, ref: str) -> Image.Image | None:
        return None


class NoPhotos(PhotoSource):
    """No foreground photo: the guide is the background template alone."""


class FolderPhotos(PhotoSource):
    """An ImageNet-style folder: ``root/<wnid>/<file>``; references are ``<wnid>/<file>`` (relative)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise GuideSourceError(f"Photo folder {str(root)!r} does not exist; give an ImageNet-style folder DIR/<wnid>/*.JPEG.")
        self.description = f"folder:{self.root.resolve()}"
        self._cache: dict[str, list[str]] = {}

    def refs(self, concept: Concept) -> list[str]:
        if concept.wnid not in self._cache:
            folder = self.root / concept.wnid
            self._cache[concept.wnid] = [f"{concept.wnid}/{n}" for n in _list_images(folder)] if folder.is_dir() else []
        return self._cache[concept.wnid]

    def check(self, concepts: Sequence[Concept]) -> None:
        empty = [c for c in concepts if not self.refs(c)]
        if empty:
            shown = ", ".join(f"{c.name} ({c.wnid})" for c in empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise GuideSourceError(
                f"Photo folder {str(self.root)!r} has no photos for {len(empty)} class(es): {shown}; "
                f"expected images in {self.root}/<wnid>/, e.g. {self.root}/{empty[0].wnid}/."
            )

    def open(self, ref: str) -> Image.Image:
        return open_rgb(self.root / ref)


class HubPhotos(PhotoSource):
    """A Hub (or local) dataset with ``image`` and an ImageNet-1k ``label`` column; references are ``row:<index>``."""

    def __init__(self, dataset_id: str, split: str = "train"):
        import datasets

        self.description = f"hf:{dataset_id}:{split}"
        try:
            self.ds = datasets.load_dataset(dataset_id, split=split)
        except Exception as err:  # network, auth or a wrong id: say which
            raise GuideSourceError(f"Could not load photo dataset {dataset_id!r} (split {split!r}): {err}") from err
        if "label" not in self.ds.column_names or "image" not in self.ds.column_names:
            raise GuideSourceError(f"Photo dataset {dataset_id!r} needs 'image' and 'label' columns, has {self.ds.column_names}.")
        labels = np.asarray(self.ds["label"])
        self._rows = {int(k): np.flatnonzero(labels == k).tolist() for k in np.unique(labels)}

    def refs(self, concept: Concept) -> list[str]:
        rows = self._rows.get(concept.imagenet_index, []) if concept.imagenet_index is not None else []
        return [f"row:{i}" for i in rows]

    def check(self, concepts: Sequence[Concept]) -> None:
        empty = [c for c in concepts if not self.refs(c)]
        if empty:
            raise GuideSourceError(f"Photo dataset {self.description} has no rows for: {', '.join(c.name for c in empty[:5])}.")

    def open(self, ref: str) -> Image.Image:
        image = self.ds[int(ref.split(":", 1)[1])]["image"]
        return ImageOps.exif_transpose(image).convert("RGB")


def photo_source(spec: str | None) -> PhotoSource:
    """``None`` -> no photos; ``hf:ORG/NAME[:split]`` -> a Hub dataset; anything else -> a folder."""
    if not spec:
        return NoPhotos()
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        return HubPhotos(name, split or "train")
    return FolderPhotos(spec)


# --- templates ------------------------------------------------------------------------------------

class TemplateSource:
    description = PROCEDURAL

    def refs(self, shift: str) -> list[str]:
        raise NotImplementedError

    def identity(self, shifts: Sequence[str]) -> dict:
        """As :meth:`PhotoSource.identity`, for the templates of ``shifts``."""
        refs = [r for s in shifts for r in self.refs(s)]
        return {"source": self.description, "files": len(refs), "listing": _listing_digest(refs)}

    def open(self, ref: str, size: int) -> Image.Image:
        raise NotImplementedError

    def check(self, recipe: Recipe, shift_indices: Sequence[int]) -> None:
        pass


class FolderTemplates(TemplateSource):
    """Background templates in ``root/<slug(shift)>/``; references are ``<slug>/<file>``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise GuideSourceError(f"Template folder {str(root)!r} does not exist; make one with `d3s templates --out DIR` or use 'procedural'.")
        self.description = f"folder:{self.root.resolve()}"

    def refs(self, shift: str) -> list[str]:
        folder = self.root / slug(shift)
        return [f"{slug(shift)}/{n}" for n in _list_images(folder)] if folder.is_dir() else []

    def check(self, recipe: Recipe, shift_indices: Sequence[int]) -> None:
        missing = [recipe.shifts[i] for i in shift_indices if not self.refs(recipe.shifts[i])]
        if missing:
            folders = ", ".join(f"{self.root}/{slug(m)}/" for m in missing)
            raise GuideSourceError(
                f"Template folder {str(self.root)!r} has no templates for background(s) {', '.join(missing)}: expected images in {folders}."
            )

    def open(self, ref: str, size: int) -> Image.Image:
        return center_crop_resize(open_rgb(self.root / ref), size)


# Sky (top) and ground (bottom) colours of the paper's backgrounds, for the procedural templates.
_PALETTES = {
    "on_grass": ((135, 190, 235), (70, 140, 50)),
    "on_a_road": ((150, 180, 210), (90, 90, 95)),
    "in_a_forest": ((40, 90, 40), (70, 50, 30)),
    "in_water": ((120, 170, 215), (30, 85, 140)),
    "in_a_cave": ((35, 30, 28), (80, 68, 55)),
    "in_sand": ((200, 220, 240), (222, 192, 135)),
    "indoors": ((205, 190, 165), (140, 100, 70)),
    "in_snow": ((195, 205, 222), (242, 244, 248)),
    "in_rain": ((105, 110, 120), (75, 80, 88)),
    "at_night": ((8, 12, 38), (22, 22, 32)),
}


class ProceduralTemplates(TemplateSource):
    """Simple drawn backgrounds (sky/ground colours, horizon, texture); references are ``procedural:<slug>:<k>``."""

    description = PROCEDURAL

    def refs(self, shift: str) -> list[str]:
        return [f"{PROCEDURAL}:{slug(shift)}:{k}" for k in range(TEMPLATES_PER_SHIFT)]

    def open(self, ref: str, size: int) -> Image.Image:
        _, name, k = ref.split(":")
        return draw_procedural_template(name, int(k), size)


def draw_procedural_template(shift_slug: str, variant: int, size: int) -> Image.Image:
    """A deterministic background picture for a background label and variant."""
    digest = hashlib.sha256(f"{shift_slug}:{variant}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    top, bottom = _PALETTES.get(shift_slug) or (tuple(rng.integers(0, 256, 3)), tuple(rng.integers(0, 256, 3)))
    horizon = 0.3 + 0.1 * variant
    y = np.linspace(0.0, 1.0, size)[:, None, None]
    mix = np.clip((y - horizon) * 8 + 0.5, 0, 1)
    img = (1 - mix) * np.array(top, float) + mix * np.array(bottom, float)
    img = np.broadcast_to(img, (size, size, 3)).copy()
    coarse = rng.normal(0, 1, (8, 8, 1))
    noise = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
    img += 12 * noise + rng.normal(0, 6, (size, size, 1))
    if shift_slug == "in_rain":
        cols = rng.integers(0, size, size // 4)
        img[:, cols] += 40
    if shift_slug == "at_night":
        stars = rng.integers(0, size, (size // 4, 2))
        img[stars[:, 0] % max(1, int(size * horizon)), stars[:, 1]] = 230
    if shift_slug == "on_a_road":
        mid = size // 2
        img[int(size * horizon):, mid - max(1, size // 64): mid + max(1, size // 64)] = (230, 220, 120)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def template_source(spec: str | None) -> TemplateSource:
    if not spec or spec == PROCEDURAL:
        return ProceduralTemplates()
    return FolderTemplates(spec)


# --- one guide --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuideChoice:
    """The recorded random choices of one guide."""

    photo: str  # photo reference, "" for none
    template: str  # template reference
    paste_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in guide pixels; (0, 0, 0, 0) for none


def choose(rng: np.random.Generator, photo_refs: Sequence[str], template_refs: Sequence[str], size: int,
           fg_scale: float = DEFAULT_FG_SCALE, template_rng: np.random.Generator | None = None) -> GuideChoice:
    """Draw photo, template and paste position, in that fixed order, from an image's own generator.

    With ``template_rng`` the template is drawn from it instead, so photo and position depend on ``rng``
    alone (see :func:`choose_paired`).
    """
    photo = photo_refs[int(rng.integers(len(photo_refs)))] if photo_refs else ""
    template = template_refs[int((template_rng or rng).integers(len(template_refs)))]
    fg = fg_size(size, fg_scale)
    x0, y0 = (int(v) for v in rng.integers(0, size - fg + 1, size=2))
    box = (x0, y0, x0 + fg, y0 + fg) if photo else (0, 0, 0, 0)
    return GuideChoice(photo, template, box)


def choose_paired(seed: int, shift: str, photo_refs: Sequence[str], template_refs: Sequence[str], size: int,
                  fg_scale: float = DEFAULT_FG_SCALE) -> GuideChoice:
    """One image of a paired group: photo and paste position from the group's ``seed`` (the same on every
    background), the template from a stream of its own per (seed, background).

    The template's draw is kept apart because the number of templates may differ between backgrounds,
    and drawing from a range of another size could move the paste position.
    """
    tag = int.from_bytes(hashlib.sha256(f"template:{shift}".encode()).digest()[:8], "little")
    return choose(np.random.default_rng(seed), photo_refs, template_refs, size, fg_scale,
                  template_rng=np.random.default_rng([seed, tag]))


def fg_size(size: int, fg_scale: float = DEFAULT_FG_SCALE) -> int:
    """Side of the pasted photo: ``int(fg_scale * size)`` (204 px at 512, as the authors)."""
    return max(1, int(fg_scale * size))


def compose(template: Image.Image, photo: Image.Image | None, box: Sequence[int]) -> Image.Image:
    """Paste the (centre-cropped, resized) photo whole into ``box`` of the template: a hard overwrite."""
    guide = template.copy()
    if photo is not None:
        x0, y0, x1, y1 = box
        guide.paste(center_crop_resize(photo, x1 - x0), (x0, y0))
    return guide


def build_guide(choice: GuideChoice, photos: PhotoSource, templates: TemplateSource, size: int) -> Image.Image:
    """Rebuild a guide from its recorded choices."""
    template = templates.open(choice.template, size)
    photo = photos.open(choice.photo) if choice.photo else None
    return compose(template, photo, choice.paste_box)
