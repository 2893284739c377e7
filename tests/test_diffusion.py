"""The tiny preset is the real pipeline class with tiny weights, and the real CLIP tokenizer."""

import torch

from d3s import diffusion as D


def test_clip_tokenizer_has_the_real_vocabulary():
    tok = D.clip_tokenizer()
    assert len(tok) == 49408
    # ids of openai/clip-vit-large-patch14 for this text
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77
    assert len(tok("word " * 200, truncation=True).input_ids) == 77


def test_tiny_preset_loads_through_from_pretrained_with_safetensors():
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    folder = D.tiny_pipeline_path()
    assert (folder / "model_index.json").exists()
    assert list(folder.glob("unet/*.safetensors")) and not list(folder.rglob("*.bin"))
    pipe = D.load_pipeline(D.TINY, device="cpu")
    assert type(pipe) is StableDiffusionImg2ImgPipeline and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.config.block_out_channels == [32, 64]


def test_tiny_weights_are_deterministic():
    a = D.build_tiny_components()["unet"].state_dict()
    b = D.build_tiny_components()["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_model_folder_fails_clearly(tmp_path):
    import pytest

    with pytest.raises(Exception) as err:
        D.load_pipeline(str(tmp_path / "no-such-model"), device="cpu")
    assert "no-such-model" in str(err.value)


def test_fp16_asks_for_the_fp16_variant_where_there_is_one(tmp_path):
    tiny = str(D.tiny_pipeline_path())  # saved without variants
    assert D.pretrained_kwargs(D.DEFAULT_MODEL, torch.float16)["variant"] == "fp16"  # a Hub id: its fp16 files
    assert "variant" not in D.pretrained_kwargs(D.DEFAULT_MODEL, torch.float32)
    assert "variant" not in D.pretrained_kwargs(tiny, torch.float16)  # a folder without fp16 files
    kwargs = D.pretrained_kwargs(tiny, torch.float16)
    assert kwargs["use_safetensors"] and kwargs["safety_checker"] is None and kwargs["dtype"] == torch.float16
    assert "safety_checker" not in D.pretrained_kwargs(tiny, torch.float16, safety_checker=True)
    # A folder saved with the fp16 variant (as a Hub repo has it) is read through it.
    pipe = D.load_pipeline(D.TINY, device="cpu", dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16", safe_serialization=True)
    assert D.pretrained_kwargs(str(tmp_path / "fp16"), torch.float16)["variant"] == "fp16"
    assert D.load_pipeline(str(tmp_path / "fp16"), device="cpu", dtype=torch.float16).vae.dtype == torch.float16


def test_a_repo_without_fp16_files_falls_back_to_its_full_precision_ones(monkeypatch):
    asked = []
    real = D.pretrained_kwargs

    def always_fp16(source, dtype, safety_checker=False):  # as for a Hub id: the variant is asked for
        asked.append(kwargs := {**real(source, dtype, safety_checker), "variant": "fp16"})
        return kwargs

    monkeypatch.setattr(D, "pretrained_kwargs", always_fp16)
    pipe = D.load_pipeline(D.TINY, device="cpu", dtype=torch.float16)  # the tiny folder has no fp16 files
    assert asked and pipe.unet.dtype == torch.float16
