"""Background templates dreamed from text by the diffusion model itself (``d3s templates``).

The paper used three photos per background (appendix C) and notes the method is not sensitive to
the exact templates. Here the same Stable Diffusion model draws them from the recipe's
``template_prompt`` (e.g. ``a photo of an empty scene in snow, nothing in the foreground``), into
``OUT/<background slug>/<k>.png``, the layout ``d3s generate --templates OUT`` reads.
"""

from __future__ import annotations

from pathlib import Path

from .prompts import load_recipe, slug


def dream_templates(out: str | Path, model: str = "CompVis/stable-diffusion-v1-4", recipe: str = "backgrounds",
                    backgrounds: str = "all", per_shift: int = 3, size: int = 512, steps: int = 50,
                    guidance: float = 7.5, seed: int = 0, device=None) -> list[Path]:
    """Write ``per_shift`` templates for each chosen background; existing files are kept (resumable)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from tqdm.auto import tqdm

    from .diffusion import load_pipeline

    r = load_recipe(recipe)
    shifts = r.parse_shifts(backgrounds)
    jobs = [(i, k) for i in shifts for k in range(per_shift)
            if not (Path(out) / slug(r.shifts[i]) / f"{k}.png").exists()]
    written: list[Path] = []
    if not jobs:
        return written
    img2img = load_pipeline(model, device=device)
    text2img = StableDiffusionPipeline(**img2img.components)
    text2img.set_progress_bar_config(disable=True)
    for i, k in tqdm(jobs, desc="templates", unit="img"):
        generator = torch.Generator("cpu").manual_seed(seed * 1000 + i * 10 + k)
        image = text2img(r.template_prompt_for(r.shifts[i]), height=size, width=size, num_inference_steps=steps,
                         guidance_scale=guidance, generator=generator).images[0]
        path = Path(out) / slug(r.shifts[i]) / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        written.append(path)
    return written
