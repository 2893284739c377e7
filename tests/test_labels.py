"""Labels and prompts: the facts of SPEC.md sections 1, 2 and 5."""

import json

import pytest

from d3s import labels as L
from d3s.prompts import BACKGROUNDS, load_recipe, slug

SPEC_BACKGROUNDS = ["on grass", "on a road", "in a forest", "in water", "in a cave", "in sand", "indoors", "in snow",
                    "in rain", "at night"]


def test_1000_classes_with_unique_names():
    classes = L.imagenet_classes()
    assert len(classes) == 1000
    assert len({c.name for c in classes}) == 1000
    assert len({c.wnid for c in classes}) == 1000
    assert [c.imagenet_index for c in classes] == list(range(1000))
    assert classes[0].wnid == "n01440764" and classes[0].lemmas[:2] == ("tench", "Tinca tinca")
    assert classes[0].prompt_name == "tench"


def test_crane_and_maillot_are_told_apart():
    classes = L.imagenet_classes()
    bird, machine = classes[134], classes[517]
    assert bird.wnid == "n02012849" and "bird" in bird.definition
    assert machine.wnid == "n03126707" and "lifts and moves heavy objects" in machine.definition
    assert bird.prompt_name == machine.prompt_name == "crane"
    assert bird.name != machine.name
    assert classes[638].name != classes[639].name


def test_definitions_are_wordnet_30_glosses():
    from nltk.corpus import wordnet as wn

    for c in L.imagenet_classes():
        assert wn.synset_from_pos_and_offset("n", int(c.wnid[1:])).definition() == c.definition, c


def test_lookup_by_index_wnid_and_name():
    assert L.imagenet_class(281).wnid == "n02123045"
    assert L.imagenet_class("n02123045").imagenet_index == 281
    assert L.imagenet_class("tabby").imagenet_index == 281
    assert L.imagenet_class("tabby cat").imagenet_index == 281  # any lemma, when unique


def test_unknown_and_ambiguous_names_say_what_is_valid():
    with pytest.raises(L.LabelError, match="tabby"):
        L.imagenet_class("tabbby")
    with pytest.raises(L.LabelError, match="ambiguous.*134.*517"):
        L.imagenet_class("crane")
    with pytest.raises(L.LabelError, match="0..999"):
        L.imagenet_class(1000)


def test_parse_foregrounds_lists_ranges_and_wordnet():
    got = L.parse_foregrounds("0-2,281,tabby,wordnet:giraffe.n.01")
    assert [c.imagenet_index for c in got[:4]] == [0, 1, 2, 281]
    giraffe = got[-1]
    assert giraffe.imagenet_index is None and giraffe.prompt_name == "giraffe"
    assert "tallest living quadruped" in giraffe.definition
    assert len(got) == 5  # 'tabby' is 281 again: duplicates dropped
    space = L.label_space(got)
    assert len(space) == 1001 and space[1000].wnid == giraffe.wnid
    # An ImageNet synset reached through WordNet keeps its ImageNet index.
    assert L.resolve_concept("wordnet:red_panda.n.01").imagenet_index == 387


def test_unknown_wordnet_concept_suggests_synsets():
    with pytest.raises(L.LabelError, match="giraffe.n.01"):
        L.wordnet_concept("giraffe.n.07")


def test_in9_class_counts_match_the_backgrounds_challenge():
    counts = {name: len(members) for name, members in L.IN9_MEMBERS.items()}
    assert counts == {"dog": 116, "bird": 52, "wheeled vehicle": 42, "reptile": 36, "carnivore": 35, "insect": 27,
                      "musical instrument": 26, "primate": 20, "fish": 16}
    mapping = L.imagenet_to_in9()
    assert len(mapping) == 370 == sum(counts.values())  # disjoint; the other 630 classes are absent
    assert mapping[291] == L.IN9_CLASSES.index("carnivore") and mapping[0] == L.IN9_CLASSES.index("fish")
    assert 281 not in mapping  # domestic cats (281-285) are not in IN-9


def test_backgrounds_in_spec_order():
    assert list(BACKGROUNDS) == SPEC_BACKGROUNDS


def test_paper_prompts():
    recipe = load_recipe()
    otter = L.imagenet_class("otter")
    assert recipe.prompt_for(otter, "in a cave") == (
        "a photo of a otter, freshwater carnivorous mammal having webbed and clawed feet and dark brown fur, in a cave")
    assert recipe.prompt_for(L.imagenet_class(281), "in snow") == (
        "a photo of a tabby, a cat with a grey or tawny coat mottled with black, in snow")


def test_background_lookup():
    recipe = load_recipe()
    assert recipe.shift_index("in snow") == 7 == recipe.shift_index("in_snow") == recipe.shift_index("snow")
    assert recipe.parse_shifts("all") == list(range(10))
    with pytest.raises(L.LabelError, match="Valid backgrounds: on grass"):
        recipe.shift_index("in space")


def test_recipes_are_data(tmp_path):
    for name in ("geography", "time"):
        assert load_recipe(name).shifts
    path = tmp_path / "weather.json"
    path.write_text(json.dumps({"name": "weather", "description": "d", "prompt": "a photo of a {name}, {shift}",
                                "template_prompt": "an empty scene {shift}", "shifts": ["in fog", "in a storm"]}))
    recipe = load_recipe(path)
    assert recipe.prompt_for(L.imagenet_class(281), "in fog") == "a photo of a tabby, in fog"
    path.write_text(json.dumps({"name": "bad", "prompt": "x"}))
    with pytest.raises(L.LabelError, match="lacks the field"):
        load_recipe(path)
    with pytest.raises(L.LabelError, match="backgrounds, geography, time"):
        load_recipe("nope")


def test_slug():
    assert slug("in a forest") == "in_a_forest" and slug("At Night") == "at_night"
