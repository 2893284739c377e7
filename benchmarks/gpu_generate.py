"""Generation throughput on a GPU with full-size Stable Diffusion architectures and random weights.

Speed does not depend on the weights, so this needs no download: it builds the SD 1.x architecture
(UNet 320-640-1280-1280, CLIP ViT-L/14 text encoder, the SD VAE) and, for the turbo setting, the
SD 2.1 architecture of SD-Turbo (OpenCLIP ViT-H text encoder, linear-projection attention), then times
``d3s.generate.denoise`` (the exact call ``d3s generate`` makes) at 512 px:

- faithful: 50 DDIM steps x strength 0.9 (45 denoising steps), guidance 5, over a batch-size sweep;
- turbo: 1 to 4 denoising steps, guidance 0 (no classifier-free guidance pass).

Finally one whole ``d3s generate`` run at the best faithful batch size shows what the orchestration costs there.

    python benchmarks/gpu_generate.py                 # on a CUDA machine
    python benchmarks/gpu_generate.py --smoke         # tiny architecture on CPU: checks the script runs

Targets on one H100: >= 5 images/s faithful, >= 50 images/s turbo.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's d3s, not an installed one

from d3s.diffusion import build_tiny_components, clip_tokenizer
from d3s.generate import GenerationConfig, PreparedBatch, PlanItem, denoise, generate
from d3s.guides import ProceduralTemplates

PROMPT = "a photo of a tabby, a cat with a grey or tawny coat mottled with black, in snow"


def full_size_components(arch: str) -> dict:
    """Random-weight components of SD 1.x (``sd1``) or SD 2.1 / SD-Turbo (``sd21``) at full size."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd21 = arch == "sd21"
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024 if sd21 else 768,
        attention_head_dim=(5, 10, 20, 20) if sd21 else 8,
        use_linear_projection=sd21,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024 if sd21 else 768, intermediate_size=4096 if sd21 else 3072,
        num_hidden_layers=23 if sd21 else 12, num_attention_heads=16 if sd21 else 12, max_position_embeddings=77,
        hidden_act="gelu" if sd21 else "quick_gelu", projection_dim=1024 if sd21 else 768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def make_pipeline(components: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import StableDiffusionImg2ImgPipeline

    components = {**components, "safety_checker": None, "feature_extractor": None}  # throughput of generation alone
    pipe = StableDiffusionImg2ImgPipeline(**components).to(device=device, dtype=dtype)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def batch_of(n: int, size: int) -> PreparedBatch:
    templates = ProceduralTemplates()
    guides = [templates.open(templates.refs("in snow")[i % 3], size) for i in range(n)]
    items = [PlanItem(i, 281, 7, 0, 1000 + i) for i in range(n)]
    return PreparedBatch(items, [], guides, [PROMPT] * n)


def images_per_second(pipe, config: GenerationConfig, batch: int, repeats: int) -> float:
    prepared = batch_of(batch, config.size)
    denoise(pipe, prepared, config)  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        denoise(pipe, prepared, config)
    sync()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny architecture on CPU, 64 px: only checks the script")
    parser.add_argument("--batches", default="1,4,8,16,32", help="faithful batch sizes to sweep")
    parser.add_argument("--turbo-batches", default="8,32,64")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    size = 64 if args.smoke else 512
    batches = [2] if args.smoke else [int(b) for b in args.batches.split(",")]
    turbo_batches = [2] if args.smoke else [int(b) for b in args.turbo_batches.split(",")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name()}")

    comps = build_tiny_components() if args.smoke else full_size_components("sd1")
    pipe = make_pipeline(comps, device, dtype)
    faithful = GenerationConfig(foregrounds="281", out="", size=size, steps=4 if args.smoke else 50, strength=0.9,
                                guidance=5.0)
    best = (0.0, batches[0])
    for b in batches:
        try:
            ips = images_per_second(pipe, faithful, b, args.repeats)
        except torch.cuda.OutOfMemoryError:
            print(f"faithful  batch {b:3d}: out of memory")
            break
        best = max(best, (ips, b))
        print(f"faithful  {size}px {faithful.steps}x{faithful.strength} guidance 5  batch {b:3d}: {ips:7.2f} images/s")

    out = tempfile.mkdtemp(prefix="d3s-gpu-")
    try:
        classes = max(1, best[1] * 4 // 10)  # about four batches: classes x 10 backgrounds
        run = GenerationConfig(foregrounds=f"0-{classes - 1}", backgrounds="all", per_pair=1, out=f"{out}/d", model="tiny",
                               size=size, steps=faithful.steps, batch_size=best[1], shard_size=64)
        start = time.perf_counter()
        summary = generate(run, pipe=pipe, progress=False)
        ips = summary["generated"] / (time.perf_counter() - start)
        print(f"d3s generate, batch {best[1]}: {ips:.2f} images/s over {summary['generated']} images "
              f"(guides, PNG, parquet included): {ips / best[0]:.2f} of the bare pipeline")
    finally:
        shutil.rmtree(out, ignore_errors=True)

    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    turbo_pipe = make_pipeline(build_tiny_components() if args.smoke else full_size_components("sd21"), device, dtype)
    best_turbo = 0.0
    for steps, strength in ((1, 1.0), (2, 0.5), (4, 1.0)):
        cfg = GenerationConfig(foregrounds="281", out="", size=size, steps=steps, strength=strength, guidance=0.0)
        for b in turbo_batches:
            ips = images_per_second(turbo_pipe, cfg, b, args.repeats)
            best_turbo = max(best_turbo, ips)
            print(f"turbo     {size}px {int(steps * strength)} denoising step(s), guidance 0  batch {b:3d}: {ips:7.2f} images/s")
    print(f"best faithful {best[0]:.2f} images/s (batch {best[1]}); best turbo {best_turbo:.2f} images/s")


if __name__ == "__main__":
    main()
