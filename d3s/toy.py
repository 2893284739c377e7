"""A procedural dataset with known factors: a foreground shape on a background texture.

The ``fg`` label is the shape (circle, square, ...) and the ``bg`` label the texture (stripes,
checkerboard, ...). Colours, positions, sizes and texture phases are drawn at random for every
image and independently of both labels, so a label can only be read from shape or texture. Images
are tiny (32 px by default), so a network learns both factors on a CPU in a minute or two. It is
how the tests and the README show that disentanglement works, and a quick playground::

    d3s toy --out out/toy                       # fg and bg independent (every pair equally often)
    d3s toy --out out/toy-c90 --correlation 0.9 # fg i appears on bg i 90% of the time

The folder is in the project's dataset format (``train`` and ``validation`` splits, ``fg``/``bg``
ClassLabels with the toy's own names) plus ``pairs.json``, the fg -> bg pairing the correlation knob
uses, ready for ``d3s spurious --pairs``. Pairs are one to one, as the paper's (each IN-9 class has its own
background): shape ``i`` goes with texture ``i``. With more shapes than textures, the extra shapes have no
texture of their own; they are unpaired (drawn on any texture, whatever the correlation) and ``d3s spurious``
leaves them out, as the paper leaves out ``indoors``. (Pairing two shapes with one texture would make the
experiment's two heads read one label from the other.)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
TEXTURES: tuple[str, ...] = ("h-stripes", "v-stripes", "checker", "dots", "diagonal", "grid", "blobs", "plain")


class ToyError(ValueError):
    """Toy dataset settings out of range."""


@dataclass
class ToyConfig:
    """Settings of ``d3s toy``.

    Args:
        out (`str`): output folder.
        fg_classes (`int`, defaults to 5): number of shapes (at most ``len(SHAPES)``).
        bg_classes (`int`, defaults to 5): number of textures (at most ``len(TEXTURES)``).
        train_per_pair (`int`, defaults to 200): train images per (fg, bg) pair when independent;
            with a correlation, the same total is drawn at random.
        val_per_pair (`int`, defaults to 20): validation images per pair (always independent, so
            the validation split measures what a model learned, not the correlation).
        correlation (`float`, defaults to 0): in the train split, the probability that an image of
            fg ``i`` is put on its paired bg ``i`` rather than a uniformly drawn one (shapes beyond the number
            of textures have no pair: always a uniformly drawn texture).
        size (`int`, defaults to 32): image side in pixels.
        seed (`int`, defaults to 0): everything is a function of it.
        shapes (`list[str]`, *optional*): the shapes to use, by name (defaults to the first
            ``fg_classes`` of :data:`SHAPES`); gives ``fg_classes`` when set.
        textures (`list[str]`, *optional*): the textures, likewise (defaults to the first ``bg_classes``).
    """

    out: str
    fg_classes: int = 5
    bg_classes: int = 5
    train_per_pair: int = 200
    val_per_pair: int = 20
    correlation: float = 0.0
    size: int = 32
    seed: int = 0
    shapes: list[str] | None = None
    textures: list[str] | None = None

    def __post_init__(self) -> None:
        if self.shapes:
            self.fg_classes = len(self.shapes)
        if self.textures:
            self.bg_classes = len(self.textures)

    @property
    def shape_names(self) -> list[str]:
        return list(self.shapes or SHAPES[: self.fg_classes])

    @property
    def texture_names(self) -> list[str]:
        return list(self.textures or TEXTURES[: self.bg_classes])

    def check(self) -> None:
        for kind, names, known in (("--shapes", self.shapes, SHAPES), ("--textures", self.textures, TEXTURES)):
            unknown = [n for n in names or () if n not in known]
            if unknown or len(set(names or ())) != len(names or ()):
                raise ToyError(f"{kind} must name distinct ones of {', '.join(known)}; got {', '.join(names)}.")
        if not 2 <= self.fg_classes <= len(SHAPES):
            raise ToyError(f"--fg-classes must be in 2..{len(SHAPES)} ({', '.join(SHAPES)}), got {self.fg_classes}.")
        if not 2 <= self.bg_classes <= len(TEXTURES):
            raise ToyError(f"--bg-classes must be in 2..{len(TEXTURES)} ({', '.join(TEXTURES)}), got {self.bg_classes}.")
        if not 0.0 <= self.correlation <= 1.0:
            raise ToyError(f"--correlation must be in [0, 1], got {self.correlation}.")
        if self.size < 16:
            raise ToyError(f"--size must be at least 16 pixels, got {self.size}.")
        if self.train_per_pair < 1 or self.val_per_pair < 1:
            raise ToyError("--train-per-pair and --val-per-pair must be at least 1.")


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> np.ndarray:
    return rng.integers(lo, hi, size=3)


def texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 uint8 background of the given texture, with random colours and phase."""
    a, b = _colour(rng), _colour(rng)
    while np.abs(a - b).sum() < 150:  # both colours visible, whatever was drawn
        b = _colour(rng)
    period = int(rng.integers(5, 9))
    phase = int(rng.integers(0, period))
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "h-stripes":
        mask = ((yy + phase) // (period // 2 + 1)) % 2 == 0
    elif kind == "v-stripes":
        mask = ((xx + phase) // (period // 2 + 1)) % 2 == 0
    elif kind == "checker":
        mask = (((yy + phase) // period) + ((xx + phase) // period)) % 2 == 0
    elif kind == "dots":
        cy, cx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
        mask = cy**2 + cx**2 <= (period / 3.5) ** 2
    elif kind == "diagonal":
        mask = ((xx + yy + phase) // (period // 2 + 1)) % 2 == 0
    elif kind == "grid":
        mask = ((yy + phase) % period == 0) | ((xx + phase) % period == 0)
    elif kind == "blobs":
        coarse = rng.random((size // 8 + 1, size // 8 + 1))
        up = np.kron(coarse, np.ones((8, 8)))[:size, :size]
        mask = up > 0.5
    elif kind == "plain":
        t = (xx * math.cos(phase) + yy * math.sin(phase)) / (2 * size) + 0.5
        img = a[None, None, :] * (1 - t[..., None]) * 0.3 + a[None, None, :] * 0.7
        return np.clip(img, 0, 255).astype(np.uint8)
    else:
        raise ToyError(f"unknown texture {kind!r}")
    return np.where(mask[..., None], a, b).astype(np.uint8)


def draw_shape(img: Image.Image, kind: str, rng: np.random.Generator) -> None:
    """Draw a filled shape of random colour, size and position onto ``img`` (in place)."""
    size = img.size[0]
    r = rng.uniform(0.22, 0.32) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    col = tuple(int(c) for c in _colour(rng))
    edge = tuple(255 - c for c in col)  # an outline of the opposite colour keeps the shape visible on any texture
    d = ImageDraw.Draw(img)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        d.ellipse(box, fill=col, outline=edge)
    elif kind == "square":
        d.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=col, outline=edge)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=col, outline=edge)
    elif kind == "cross":
        w = 0.35 * r
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col, outline=edge)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col, outline=edge)
    elif kind == "ring":
        d.ellipse(box, fill=None, outline=col, width=max(2, int(0.35 * r)))
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=col, outline=edge)
    elif kind == "bar":
        d.rectangle([cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r], fill=col, outline=edge)
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        d.polygon(pts, fill=col, outline=edge)
    else:
        raise ToyError(f"unknown shape {kind!r}")


def render(shape: str, texture_name: str, size: int, rng: np.random.Generator) -> Image.Image:
    img = Image.fromarray(texture(texture_name, size, rng))
    draw_shape(img, shape, rng)
    return img


def _labels(cfg: ToyConfig, split: str, rng: np.random.Generator) -> list[tuple[int, int]]:
    pairs = [(f, b) for f in range(cfg.fg_classes) for b in range(cfg.bg_classes)]
    per_pair = cfg.train_per_pair if split == "train" else cfg.val_per_pair
    if split != "train" or cfg.correlation == 0.0:
        return [p for p in pairs for _ in range(per_pair)]
    n = per_pair * len(pairs)
    fg = rng.integers(0, cfg.fg_classes, size=n)
    paired = (rng.random(n) < cfg.correlation) & (fg < cfg.bg_classes)  # one to one: the extra shapes have no pair
    bg = np.where(paired, fg, rng.integers(0, cfg.bg_classes, size=n))
    return list(zip(fg.tolist(), bg.tolist()))


def pairs(cfg: ToyConfig) -> dict[str, str]:
    """The fg -> bg pairing of the correlation knob, by class name (for ``d3s spurious --pairs``): one to one,
    shape ``i`` with texture ``i``, for the first ``min(fg_classes, bg_classes)`` shapes."""
    shapes, textures = cfg.shape_names, cfg.texture_names
    return {shapes[f]: textures[f] for f in range(min(cfg.fg_classes, cfg.bg_classes))}


def unpaired(cfg: ToyConfig) -> list[str]:
    """The shapes without a texture of their own (more shapes than textures)."""
    return cfg.shape_names[cfg.bg_classes :]


def write_toy(cfg: ToyConfig, shard_size: int = 1000) -> dict[str, int]:
    """Write the toy dataset to ``cfg.out``; returns the number of rows per split."""
    import datasets
    from tqdm.auto import tqdm

    from .dataset import label_features, write_card, write_shard

    cfg.check()
    out = Path(cfg.out)
    features = datasets.Features({
        "item_id": datasets.Value("int64"),
        "image": datasets.Image(),
        **label_features(cfg.shape_names, cfg.texture_names),
    })
    counts: dict[str, int] = {}
    item_id = 0
    pairs_count = len(cfg.shape_names) * len(cfg.texture_names)
    bar = tqdm(total=pairs_count * (cfg.train_per_pair + cfg.val_per_pair), desc="toy images", unit="img", dynamic_ncols=True,
               disable=pairs_count * (cfg.train_per_pair + cfg.val_per_pair) < 1000)
    for split_index, split in enumerate(("train", "validation")):
        rng = np.random.default_rng([cfg.seed, split_index])
        labels = _labels(cfg, split, rng)
        order = rng.permutation(len(labels))  # shuffled rows, so any prefix of a split is balanced-ish
        rows = []
        for i in order:
            f, b = labels[i]
            rows.append({"item_id": item_id, "image": render(cfg.shape_names[f], cfg.texture_names[b], cfg.size, rng), "fg": f, "bg": b})
            item_id += 1
            bar.update(1)
        for start in range(0, len(rows), shard_size):
            write_shard(out, split, rows[start : start + shard_size], features)
        counts[split] = len(rows)
    bar.close()
    (out / "pairs.json").write_text(json.dumps(pairs(cfg), indent=2) + "\n")
    (out / "d3s_toy.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    body = f"""# d3s toy dataset

Procedural images with known factors: `fg` is a shape ({', '.join(cfg.shape_names)}),
`bg` a texture ({', '.join(cfg.texture_names)}); colours, positions and sizes are random.
Train: {counts['train']} images, fg-bg correlation {cfg.correlation} (pairing in `pairs.json`).
Validation: {counts['validation']} images, every pair equally often. Settings: `d3s_toy.json`.
"""
    write_card(out, features, body)
    return counts


# --- known factors at the paper's dimensions: a features dataset -----------------------------------------

FEATURE_MIXINGS: dict[str, str] = {  # --mixing NAME: how the fg, bg and nuisance codes become the features
    "relu2": "a fixed random two-layer ReLU network of the three codes side by side (they add before each ReLU)",
    "relu1": "one fixed random ReLU layer of the three codes side by side: each feature a rectified sum of the three",
    "gated": "the bg code gates the fg code: each hidden unit's fg input is multiplied by a factor in (0, 2) that the bg "
             "code sets (a sigmoid of a bg projection), then relu2's output layer",
    "rotate": "the fg code is turned, plane by plane, by angles of up to 45 degrees that are a nonlinear (tanh) function of "
              "the bg code, then the relu2 network: each bg class sees the fg classes in another orientation",
    "product": "each hidden unit is (fg projection + 1) x (bg projection + 1) plus the nuisance: every unit carries fg, bg "
               "and their product, then relu2's output layer",
}


@dataclass
class FeatureToyConfig:
    """Settings of ``d3s toy --kind features``: precomputed "backbone features" with known factors.

    Each row's features are a fixed random network applied to three latent parts: a fg code (its class's
    prototype plus noise), a bg code (likewise) and a nuisance code (noise only, correlated with neither
    label). With the default mixing (``relu2``, a two-layer ReLU network) they are, like real backbone
    features, non-negative and wide, and they mix fg and bg nonlinearly: no linear map separates the two, so
    a model must learn what to keep where. The defaults are the paper's sizes (2048 features, split 1798 /
    250; 1000 fg classes, 10 bg classes). The other knobs move the regime: how strongly the background is
    encoded (``bg_scale``), how many rows each class has (``train_per_pair``), how fg and bg are combined
    (``mixing``, :data:`FEATURE_MIXINGS`: in ``gated``, ``rotate`` and ``product`` they do not merely add),
    and how much nuisance there is (``nuisance``, ``nuisance_scale``, ``noise_dims``).

    Args:
        out (`str`): output folder (the project's dataset format, a ``features`` column).
        fg_classes (`int`, defaults to 1000), bg_classes (`int`, defaults to 10): label counts.
        dim (`int`, defaults to 2048): features per row.
        train_per_pair (`int`, defaults to 1), val_per_pair (`int`, defaults to 1): rows per (fg, bg) pair
            (10 train rows per fg class by default: the probes of 1000 classes stay affordable on a CPU; 2 per
            pair is 20 per fg class with 10 bg classes).
        fg_latent (`int`, defaults to 64), bg_latent (`int`, defaults to 16), nuisance (`int`, defaults to 32):
            sizes of the latent codes (``nuisance`` 0: no nuisance code).
        hidden (`int`, defaults to 512): width of the mixing network's hidden layer (unused by ``relu1``).
        fg_noise (`float`, defaults to 1.0), bg_noise (`float`, defaults to 0.6): within-class spread of the fg
            and bg codes (the fg prototypes have unit variance): with the other defaults a linear probe on all
            features then reads fg at about 0.94 and bg at about 0.98.
        mixing (`str`, defaults to ``"relu2"``): how the codes become features, one of :data:`FEATURE_MIXINGS`.
        bg_scale (`float`, defaults to 1.0): spread (standard deviation) of the bg prototypes, against the bg
            noise and the fg prototypes' unit spread: above 1 the background is more strongly encoded (at 2.5 a
            linear probe on the raw first 1798 of the 2048 default features reads bg at 1.00), below 1 more weakly.
        nuisance_scale (`float`, defaults to 1.0): spread of the nuisance code (its share of every feature grows with it).
        noise_dims (`int`, defaults to 0): features (fixed random columns) replaced by rectified unit Gaussian
            noise, correlated with nothing (neither label nor the nuisance code).
        paired (`bool`, defaults to False): each object on every background, as ``d3s generate --paired``: a row's fg
            and nuisance codes (the object and everything about the picture but its background) are drawn once per
            object and shared by its ``bg_classes`` rows, one per background; the bg code is drawn per row. Rows
            carry a ``group`` column (the object). Each fg class then has ``train_per_pair`` objects in train
            (``val_per_pair`` in validation); without it every row is a new object.
        seed (`int`, defaults to 0): everything is a function of it.
    """

    out: str
    fg_classes: int = 1000
    bg_classes: int = 10
    dim: int = 2048
    train_per_pair: int = 1
    val_per_pair: int = 1
    fg_latent: int = 64
    bg_latent: int = 16
    nuisance: int = 32
    hidden: int = 512
    fg_noise: float = 1.0
    bg_noise: float = 0.6
    mixing: str = "relu2"
    bg_scale: float = 1.0
    nuisance_scale: float = 1.0
    noise_dims: int = 0
    paired: bool = False
    seed: int = 0

    def check(self) -> None:
        if self.fg_classes < 2 or self.bg_classes < 2:
            raise ToyError(f"--fg-classes and --bg-classes must be at least 2, got {self.fg_classes} and {self.bg_classes}.")
        if self.dim < 4 or min(self.fg_latent, self.bg_latent, self.hidden) < 1 or self.nuisance < 0:
            raise ToyError(f"--dim must be at least 4, the fg and bg codes and the hidden layer at least 1 wide and the nuisance "
                           f"code 0 or more; got dim {self.dim}, fg_latent {self.fg_latent}, bg_latent {self.bg_latent}, "
                           f"hidden {self.hidden}, nuisance {self.nuisance}.")
        if self.train_per_pair < 1 or self.val_per_pair < 1:
            raise ToyError(f"--train-per-pair and --val-per-pair must be at least 1, got {self.train_per_pair} and {self.val_per_pair}.")
        if not (min(self.fg_noise, self.bg_noise) >= 0 and max(self.fg_noise, self.bg_noise) <= 100):
            raise ToyError(f"--fg-noise and --bg-noise must be in [0, 100], got {self.fg_noise} and {self.bg_noise}.")
        if self.mixing not in FEATURE_MIXINGS:
            raise ToyError(f"--mixing must be one of {', '.join(FEATURE_MIXINGS)}, got {self.mixing!r}.")
        if self.mixing == "rotate" and self.fg_latent < 2:
            raise ToyError(f"--mixing rotate turns the fg code in planes, so it needs a fg code of at least 2 dimensions, got {self.fg_latent}.")
        if not 0 < self.bg_scale <= 100:
            raise ToyError(f"--bg-scale must be in (0, 100], got {self.bg_scale}.")
        if not 0 <= self.nuisance_scale <= 100:
            raise ToyError(f"--nuisance-scale must be in [0, 100], got {self.nuisance_scale}.")
        if not 0 <= self.noise_dims <= self.dim - 2:
            raise ToyError(f"--noise-dims must be in 0..{self.dim - 2} (--dim {self.dim} less 2 features that carry the labels), "
                           f"got {self.noise_dims}.")


def latent_codes(cfg: FeatureToyConfig, fg: np.ndarray, bg: np.ndarray, rng: np.random.Generator,
                 params: dict[str, np.ndarray], shared: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fg, bg and nuisance codes (float64) of rows with labels ``fg``, ``bg``; fresh noise from ``rng``.

    ``shared``: the rows' fg and nuisance noise, given (the noise of each row's object, for a paired toy) instead of
    drawn; the bg noise is always drawn."""
    n = len(fg)
    fg_noise = rng.standard_normal((n, cfg.fg_latent)) if shared is None else shared[0]
    u_bg = cfg.bg_scale * params["bg_proto"][bg] + cfg.bg_noise * rng.standard_normal((n, cfg.bg_latent))
    nuisance = rng.standard_normal((n, cfg.nuisance)) if shared is None else shared[1]
    return params["fg_proto"][fg] + cfg.fg_noise * fg_noise, u_bg, cfg.nuisance_scale * nuisance


def mix_features(cfg: FeatureToyConfig, fg: np.ndarray, bg: np.ndarray, rng: np.random.Generator,
                 params: dict[str, np.ndarray], shared: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float32 features (N, dim) of rows with labels ``fg``, ``bg``; fresh noise from ``rng``, or the fg and nuisance
    noise ``shared`` gives (:func:`latent_codes`).

    Every kind in :data:`FEATURE_MIXINGS` is a few matrix products over the whole batch of rows."""
    u_fg, u_bg, u_nu = latent_codes(cfg, fg, bg, rng, params, shared)
    nf, nb = cfg.fg_latent, cfg.fg_latent + cfg.bg_latent  # where the bg and nuisance rows of w1 start
    if cfg.mixing == "relu1":
        x = np.maximum(np.concatenate([u_fg, u_bg, u_nu], axis=1) @ params["w"] + params["b"], 0)
    else:
        if cfg.mixing in ("relu2", "rotate"):
            if cfg.mixing == "rotate":
                angle = 0.25 * math.pi * np.tanh(u_bg @ params["angle"])  # (N, fg_latent // 2), one per plane
                a, b = u_fg[:, 0 : 2 * angle.shape[1] : 2], u_fg[:, 1 : 2 * angle.shape[1] : 2]
                cos, sin = np.cos(angle), np.sin(angle)
                u_fg[:, 0 : 2 * angle.shape[1] : 2], u_fg[:, 1 : 2 * angle.shape[1] : 2] = a * cos - b * sin, a * sin + b * cos
            pre = np.concatenate([u_fg, u_bg, u_nu], axis=1) @ params["w1"]
        elif cfg.mixing == "gated":
            gate = 1.0 + np.tanh(0.5 * (u_bg @ params["gate"]))  # 2 sigmoid(.), in (0, 2), without overflow
            pre = (u_fg @ params["w1"][:nf]) * gate + u_bg @ params["w1"][nf:nb] + u_nu @ params["w1"][nb:]
        else:  # product
            pre = (u_fg @ params["p"] + 1.0) * (u_bg @ params["q"] + 1.0) + u_nu @ params["w1"][nb:]
        h = np.maximum(pre + params["b1"], 0)
        x = np.maximum(h @ params["w2"] + params["b2"], 0)
    if cfg.noise_dims:
        x[:, params["noise_cols"]] = np.maximum(rng.standard_normal((len(fg), cfg.noise_dims)), 0)
    return x.astype(np.float32)


def mixing_params(cfg: FeatureToyConfig) -> dict[str, np.ndarray]:
    """The class prototypes and the fixed random mixing network (a function of the seed).

    The prototypes and relu2's weights are drawn first, whatever the mixing, so one seed gives every
    mixing the same classes; a kind's own weights are drawn after them."""
    rng = np.random.default_rng([cfg.seed, 99])
    width = cfg.fg_latent + cfg.bg_latent + cfg.nuisance
    params = {
        "fg_proto": rng.standard_normal((cfg.fg_classes, cfg.fg_latent)),
        "bg_proto": rng.standard_normal((cfg.bg_classes, cfg.bg_latent)),
        "w1": rng.standard_normal((width, cfg.hidden)) / math.sqrt(width),
        "b1": 0.1 * rng.standard_normal(cfg.hidden),
        "w2": rng.standard_normal((cfg.hidden, cfg.dim)) * math.sqrt(2 / cfg.hidden),
        "b2": 0.1 * rng.standard_normal(cfg.dim) - 0.2,
    }
    if cfg.mixing == "relu1":
        params["w"] = rng.standard_normal((width, cfg.dim)) * math.sqrt(2 / width)
        params["b"] = 0.1 * rng.standard_normal(cfg.dim) - 0.2
    elif cfg.mixing == "gated":
        params["gate"] = 1.5 * rng.standard_normal((cfg.bg_latent, cfg.hidden)) / math.sqrt(cfg.bg_latent)
    elif cfg.mixing == "rotate":
        params["angle"] = rng.standard_normal((cfg.bg_latent, cfg.fg_latent // 2)) / math.sqrt(cfg.bg_latent)
    elif cfg.mixing == "product":
        params["p"] = rng.standard_normal((cfg.fg_latent, cfg.hidden)) / math.sqrt(cfg.fg_latent)
        params["q"] = rng.standard_normal((cfg.bg_latent, cfg.hidden)) / math.sqrt(cfg.bg_latent)
    if cfg.noise_dims:
        params["noise_cols"] = np.sort(rng.permutation(cfg.dim)[: cfg.noise_dims])
    return params


def feature_toy_settings(cfg: FeatureToyConfig) -> str:
    """The knobs of a features toy in one line, for its card and the commands' reports."""
    return (f"mixing {cfg.mixing}, bg scale {cfg.bg_scale}, fg / bg noise {cfg.fg_noise} / {cfg.bg_noise}, "
            f"nuisance {cfg.nuisance} dims at scale {cfg.nuisance_scale}, {cfg.noise_dims} pure-noise features, "
            f"{cfg.train_per_pair} train / {cfg.val_per_pair} validation rows per pair"
            f"{', paired (each object on every background)' if cfg.paired else ''}, seed {cfg.seed}")


def write_feature_toy(cfg: FeatureToyConfig, shard_size: int = 4096) -> dict[str, int]:
    """Write the features toy to ``cfg.out``; returns the number of rows per split."""
    import datasets
    import pyarrow as pa
    from tqdm.auto import tqdm

    from .dataset import label_features, write_card, write_table

    cfg.check()
    out = Path(cfg.out)
    fg_names = [f"fg{i:0{len(str(cfg.fg_classes - 1))}d}" for i in range(cfg.fg_classes)]
    bg_names = [f"bg{j:0{len(str(cfg.bg_classes - 1))}d}" for j in range(cfg.bg_classes)]
    features = datasets.Features({
        "item_id": datasets.Value("int64"),
        "features": datasets.List(datasets.Value("float32"), length=cfg.dim),
        **label_features(fg_names, bg_names),
        **({"group": datasets.Value("int64")} if cfg.paired else {}),  # the object, as `d3s generate --paired` rows
    })
    params = mixing_params(cfg)
    counts: dict[str, int] = {}
    item_id = 0
    total = cfg.fg_classes * cfg.bg_classes * (cfg.train_per_pair + cfg.val_per_pair)
    bar = tqdm(total=total, desc="features toy", unit="row", disable=total < 50_000, dynamic_ncols=True)
    group_start = 0
    for split_index, (split, per_pair) in enumerate((("train", cfg.train_per_pair), ("validation", cfg.val_per_pair))):
        rng = np.random.default_rng([cfg.seed, split_index])
        fg = np.repeat(np.arange(cfg.fg_classes), cfg.bg_classes * per_pair)
        bg = np.tile(np.repeat(np.arange(cfg.bg_classes), per_pair), cfg.fg_classes)
        if cfg.paired:  # object o (of class o // per_pair) on every background: its noise drawn once
            objects = np.repeat(np.arange(cfg.fg_classes * per_pair), cfg.bg_classes)
            fg, bg = objects // per_pair, np.tile(np.arange(cfg.bg_classes), cfg.fg_classes * per_pair)
            object_noise = (rng.standard_normal((len(objects) // cfg.bg_classes, cfg.fg_latent)),
                            rng.standard_normal((len(objects) // cfg.bg_classes, cfg.nuisance)))
        order = rng.permutation(len(fg))
        fg, bg = fg[order], bg[order]
        if cfg.paired:
            objects = objects[order]
        for start in range(0, len(fg), shard_size):
            f, b = fg[start : start + shard_size], bg[start : start + shard_size]
            shared = None
            if cfg.paired:
                o = objects[start : start + shard_size]
                shared = (object_noise[0][o], object_noise[1][o])
            x = mix_features(cfg, f, b, rng, params, shared)
            columns = {
                "item_id": pa.array(np.arange(item_id, item_id + len(f)), pa.int64()),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), cfg.dim),
                "fg": pa.array(f, pa.int64()),
                "bg": pa.array(b, pa.int64()),
            }
            if cfg.paired:
                columns["group"] = pa.array(group_start + o, pa.int64())
            write_table(out, split, pa.table(columns, schema=features.arrow_schema))
            item_id += len(f)
            bar.update(len(f))
        if cfg.paired:
            group_start += cfg.fg_classes * per_pair
        counts[split] = len(fg)
    bar.close()
    (out / "d3s_toy.json").write_text(json.dumps({"kind": "features", **asdict(cfg)}, indent=2) + "\n")
    knobs = "\n".join(f"| `{k}` | {v} |" for k, v in asdict(cfg).items() if k != "out")
    paired = (" Each object is on every background: its rows share the fg and nuisance codes (`group` is the object), "
              "as the rows of `d3s generate --paired`." if cfg.paired else "")
    body = f"""# d3s features toy

Precomputed "backbone features" with known factors: {cfg.dim} non-negative features per row made from a fg code
({cfg.fg_classes} classes), a bg code ({cfg.bg_classes} classes) and a nuisance code by a fixed random network,
`{cfg.mixing}`: {FEATURE_MIXINGS[cfg.mixing]}. Every (fg, bg) pair appears equally often: train {counts['train']} rows,
validation {counts['validation']}.{paired} Train on it with `d3s train --data {out.name}`.

Settings (also in `d3s_toy.json`; `d3s toy --kind features` takes each as a flag, `_` written `-`):

| setting | value |
|---|---|
{knobs}
"""
    write_card(out, features, body)
    return counts
