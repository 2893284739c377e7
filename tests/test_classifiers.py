"""The classifier registry: every default name resolves offline with its own preprocessing; CLIP heads."""

from __future__ import annotations

import pytest
import torch

from d3s import cli
from d3s.classifiers import (CLIP_TINY, DEFAULT_MODELS, NAME_STYLES, PROMPT_SETS, SINGLE_PROMPT, ClassifierError, class_names,
                             parse_model_list, prompt_templates, resolve_classifier, zero_shot_head, _tiny_clip)


@pytest.mark.parametrize("name,family,extra", DEFAULT_MODELS)
def test_every_default_model_resolves_with_its_own_preprocessing(name, family, extra):
    """Generated from the registry: a renamed timm tag or CLIP weight fails here, not in a user's run."""
    spec = resolve_classifier(name)  # no weights are loaded
    assert (spec.family, spec.extra_data) == (family, extra)
    c = spec.data_config
    assert set(c) >= {"input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std"}
    if spec.is_clip:
        assert c["crop_pct"] == 1.0 and c["mean"][0] == pytest.approx(0.4815, abs=1e-3)
    else:
        import timm

        assert c == timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())


def test_default_list_spans_the_papers_families():
    families = {f for _, f, _ in DEFAULT_MODELS}
    assert families >= {"supervised CNN", "transformer", "adversarially trained", "semi-supervised", "semi-weakly supervised",
                        "self-supervised fine-tuned", "CLIP zero-shot"}
    assert parse_model_list("default") == [n for n, _, _ in DEFAULT_MODELS]
    assert parse_model_list("test_vit, default,test_vit")[:2] == ["test_vit", DEFAULT_MODELS[0][0]]


def test_zero_shot_names_tell_the_crane_bird_from_the_machine():
    names = class_names("lemma")
    assert len(names) == len(set(names)) == 1000
    assert names[134].startswith("crane, large long-necked wading bird") and names[517].startswith("crane, lifts and moves")
    assert names[281] == "tabby" and names[0] == "tench"
    assert class_names("definition")[281].startswith("tabby, a cat with a grey or tawny coat")
    assert class_names("openai")[134] == "crane bird"
    with pytest.raises(ClassifierError, match="valid: lemma, definition, openai"):
        class_names("wordnet")


def test_prompts_single_is_the_papers_and_ensemble_averages_80_templates():
    assert prompt_templates("single") == [SINGLE_PROMPT] and SINGLE_PROMPT.format("tabby") == "a photo of a tabby."
    templates = prompt_templates("ensemble")
    assert len(templates) == 80 and all("{}" in t for t in templates)
    import open_clip

    model, tok = _tiny_clip(), open_clip.get_tokenizer("ViT-B-32")
    single = zero_shot_head(model, tok, ["tabby", "tench"], templates[:1])
    ensemble = zero_shot_head(model, tok, ["tabby", "tench"], templates[:4])
    assert single.shape == ensemble.shape == (32, 2)
    assert torch.allclose(ensemble.norm(dim=0), torch.ones(2), atol=1e-5) and not torch.allclose(single, ensemble)


def test_tiny_clip_is_a_1000_class_classifier_offline():
    spec = resolve_classifier(CLIP_TINY)
    clf = spec.build("cpu")
    with torch.inference_mode():
        logits = clf.model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and spec.options == {"prompts": "single", "names": "lemma"}


def test_cli_choices_match_the_registry():
    from d3s import algorithms, choices

    assert choices.CLIP_PROMPTS == PROMPT_SETS and choices.CLIP_NAMES == NAME_STYLES
    assert tuple(algorithms.METHODS) == choices.METHODS and set(algorithms.HPARAMS) == set(choices.METHODS)


def test_label_offset_models_drop_the_background_logit():
    from d3s.classifiers import _DropLeadingLogits

    inner = torch.nn.Linear(4, 1001)
    assert _DropLeadingLogits(inner, 1)(torch.randn(3, 4)).shape == (3, 1000)
