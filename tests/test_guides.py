"""Guides: crop, resize, paste and seeded choices (paper section 3, SPEC.md section 2)."""

import numpy as np
import pytest
from PIL import Image

from d3s import guides as G
from d3s.labels import imagenet_class
from d3s.prompts import load_recipe


def test_center_crop_resize_is_square_and_centred():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # the centred square is white
    out = G.center_crop_resize(Image.fromarray(img), 50)
    assert out.size == (50, 50)
    assert np.asarray(out).min() > 240


def test_fg_size_is_04_of_the_side():
    assert G.fg_size(512) == 204  # as the authors: 0.4 x 512
    assert G.fg_size(64) == 25


def test_choices_come_from_the_seed_alone():
    photos, templates = [f"p{i}" for i in range(7)], [f"t{i}" for i in range(3)]
    a = G.choose(np.random.default_rng(42), photos, templates, 512)
    b = G.choose(np.random.default_rng(42), photos, templates, 512)
    assert a == b
    draws = {G.choose(np.random.default_rng(s), photos, templates, 512) for s in range(200)}
    assert len({d.photo for d in draws}) == 7 and len({d.template for d in draws}) == 3
    for d in draws:  # the photo is pasted whole, inside the image
        x0, y0, x1, y1 = d.paste_box
        assert 0 <= x0 and 0 <= y0 and x1 <= 512 and y1 <= 512 and x1 - x0 == y1 - y0 == 204
    assert len({d.paste_box[:2] for d in draws}) > 150  # positions spread out


def test_compose_overwrites_the_box_with_the_whole_photo():
    template = Image.new("RGB", (64, 64), (0, 0, 255))
    photo = Image.new("RGB", (30, 20), (255, 0, 0))
    guide = np.asarray(G.compose(template, photo, (10, 20, 35, 45)))
    assert (guide[20:45, 10:35] == [255, 0, 0]).all()
    assert (guide[:20] == [0, 0, 255]).all() and (guide[45:] == [0, 0, 255]).all()


def test_procedural_templates_are_deterministic_and_distinct():
    src = G.ProceduralTemplates()
    refs = src.refs("in snow")
    assert len(refs) == 3
    a, b = np.asarray(src.open(refs[0], 64)), np.asarray(src.open(refs[0], 64))
    assert (a == b).all()
    snow, night = np.asarray(src.open(refs[0], 64)).mean(), np.asarray(src.open(src.refs("at night")[0], 64)).mean()
    assert snow > 150 > 60 > night


def test_folder_templates_name_the_missing_background(tmp_path):
    recipe = load_recipe()
    (tmp_path / "on_grass").mkdir()
    Image.new("RGB", (80, 60), (0, 200, 0)).save(tmp_path / "on_grass" / "a.png")
    src = G.FolderTemplates(tmp_path)
    src.check(recipe, [0])
    with pytest.raises(G.GuideSourceError, match="in snow.*in_snow"):
        src.check(recipe, [0, 7])
    assert src.open("on_grass/a.png", 32).size == (32, 32)


def test_photo_folder_lists_per_wnid_and_refuses_empty_classes(photo_dir):
    src = G.FolderPhotos(photo_dir)
    refs = src.refs(imagenet_class(281))
    assert len(refs) == 3 and all(r.startswith("n02123045/") for r in refs)
    assert src.open(refs[0]).mode == "RGB"
    with pytest.raises(G.GuideSourceError, match="goldfish"):
        src.check([imagenet_class(1)])
    with pytest.raises(G.GuideSourceError, match="does not exist"):
        G.FolderPhotos(photo_dir / "nope")


def test_guide_rebuilds_from_its_record(photo_dir):
    photos, templates = G.FolderPhotos(photo_dir), G.ProceduralTemplates()
    choice = G.choose(np.random.default_rng(7), photos.refs(imagenet_class(0)), templates.refs("on grass"), 64)
    a = G.build_guide(choice, photos, templates, 64)
    b = G.build_guide(G.GuideChoice(choice.photo, choice.template, tuple(choice.paste_box)), photos, templates, 64)
    assert (np.asarray(a) == np.asarray(b)).all()
