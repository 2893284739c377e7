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
