"""The diffusion model: diffusers' Stable Diffusion image-to-image pipeline, real or tiny.

``load_pipeline("CompVis/stable-diffusion-v1-4")`` loads real weights (safetensors only) by hub id
or folder. ``load_pipeline("tiny")`` builds the *same* pipeline classes with tiny random weights and
the real CLIP tokenizer, saves them once under ``~/.cache/d3s/tiny-sd`` and then loads them through
the very same ``from_pretrained`` path, so tests and offline runs exercise the real loading code.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
TINY = "tiny"
TINY_SEED = 0
TINY_VERSION = 2  # bump when the tiny architecture changes, so stale caches are rebuilt

CLIP_MAX_LENGTH = 77


def cache_dir() -> Path:
    return Path(os.environ.get("D3S_CACHE", Path.home() / ".cache" / "d3s"))


# --- the CLIP tokenizer, built offline from open_clip's BPE file ------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of the real 49,408-token CLIP vocabulary.

    They are derived from the BPE merges file that ``open_clip_torch`` ships, the same source as
    OpenAI's tokenizer, so token ids equal those of ``openai/clip-vit-large-patch14``.
    """
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def clip_tokenizer(folder: str | Path | None = None):
    """The real CLIP tokenizer (``transformers.CLIPTokenizer``), built offline."""
    from transformers import CLIPTokenizer

    folder = Path(folder or cache_dir() / "clip-tokenizer")
    if not (folder / "merges.txt").exists():
        write_clip_tokenizer_files(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH, pad_token="<|endoftext|>")


# --- the tiny preset ----------------------------------------------------------------------------------

def build_tiny_components(seed: int = TINY_SEED) -> dict:
    """Tiny random-weight components of the SD 1.x architecture (UNet channels (32, 64), 2-layer CLIP text
    encoder), with a tiny NSFW safety checker of the real class so ``--safety-checker`` runs offline too."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    safety_checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    ))
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=safety_checker, feature_extractor=feature_extractor, requires_safety_checker=False)


def tiny_pipeline_path() -> Path:
    """Folder of the tiny preset, built (deterministically) on first use."""
    from diffusers import StableDiffusionImg2ImgPipeline

    folder = cache_dir() / f"tiny-sd-v{TINY_VERSION}"
    if not (folder / "model_index.json").exists():
        pipe = StableDiffusionImg2ImgPipeline(**build_tiny_components())
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        pipe.save_pretrained(tmp, safe_serialization=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; its folder is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --- loading --------------------------------------------------------------------------------------------

def resolve_model(model: str) -> str:
    """``tiny`` -> the local tiny preset folder; anything else (hub id or folder) is returned as is."""
    return str(tiny_pipeline_path()) if model == TINY else model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (as SD is usually run), fp32 on CPU (fp16 convolutions are slow or missing there)."""
    return torch.float16 if device.type == "cuda" else torch.float32


FP16_VARIANT = "fp16"  # diffusers' name for the half-precision copies of the weights (`*.fp16.safetensors`)


def pretrained_kwargs(source: str, dtype: torch.dtype, safety_checker: bool = False) -> dict:
    """The ``from_pretrained`` arguments of :func:`load_pipeline`: safetensors only, and in fp16 the fp16 variant.

    In fp16 the weights' fp16 files are asked for (``variant="fp16"``: half the download and the disk of the full
    ones, e.g. about 2.7 GB instead of 5 GB for Stable Diffusion v1.4), except from a local folder that has none (the
    tiny preset, a folder saved without variants). A Hub repo is asked for them; :func:`load_pipeline` falls back to
    its full-precision files when it has none.
    """
    kwargs: dict = dict(dtype=dtype, use_safetensors=True)
    folder = Path(source)
    local_without = folder.is_dir() and not any(folder.glob(f"*/*.{FP16_VARIANT}.safetensors"))
    if dtype == torch.float16 and not local_without:
        kwargs["variant"] = FP16_VARIANT
    if not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return kwargs


def load_pipeline(model: str = DEFAULT_MODEL, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  scheduler: str = "ddim", safety_checker: bool = False):
    """Load ``StableDiffusionImg2ImgPipeline`` from a hub id, a folder, or ``tiny``.

    Args:
        model (`str`): hub id (``CompVis/stable-diffusion-v1-4``, ``stabilityai/sd-turbo``), folder, or ``tiny``.
        device (`torch.device`, *optional*): defaults to CUDA when available, else CPU.
        dtype (`torch.dtype`, *optional*): defaults to fp16 on CUDA, fp32 on CPU.
        scheduler (`str`, *optional*, defaults to ``"ddim"``): ``ddim`` (the authors' choice, eta 0)
            or ``model`` to keep the scheduler the model ships with (for distilled few-step models).
        safety_checker (`bool`, *optional*, defaults to `False`): load the model's NSFW safety checker;
            flagged images are recorded, not dropped.

    Weights are only read from safetensors files; a model that has none is refused. In fp16 the model's fp16 files
    are read when it has them (:func:`pretrained_kwargs`).
    """
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    source = resolve_model(model)
    kwargs = pretrained_kwargs(source, dtype, safety_checker)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError):
        if "variant" not in kwargs:
            raise
        # A Hub repo without fp16 files: its full-precision ones, cast to fp16 (an error here is the real one).
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(source, **{k: v for k, v in kwargs.items() if k != "variant"})
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif scheduler != "model":
        raise ValueError(f"scheduler must be 'ddim' or 'model', got {scheduler!r}")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@lru_cache(maxsize=2)
def cached_pipeline(model: str, device: str, scheduler: str = "ddim", safety_checker: bool = False):
    """One pipeline per (model, device) in a process: the app and ``regenerate`` reuse it."""
    return load_pipeline(model, device=device, scheduler=scheduler, safety_checker=safety_checker)


__all__ = [
    "DEFAULT_MODEL", "TINY", "clip_tokenizer", "build_tiny_components", "tiny_pipeline_path", "load_pipeline",
    "cached_pipeline", "pretrained_kwargs", "resolve_model", "default_device", "default_dtype", "write_clip_tokenizer_files",
]
