"""d3s diversity (issue 4, acceptance 3): same-class pairs, LPIPS offline, the three means and the histogram."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_d3s_split
from d3s import cli
from d3s.diversity import HIST_TITLE, DiversityConfig, DiversityError, lpips_model, run_diversity, same_class_pairs


def test_pairs_are_same_class_distinct_and_never_an_image_with_itself():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])  # class 2 has one image: no pair
    rng = np.random.default_rng(0)
    pairs = same_class_pairs(labels, None, 8, rng)
    assert len(pairs) == 8
    assert all(i != j and labels[i] == labels[j] for i, j in pairs)
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 8  # no pair twice, mirrored or not
    everything = same_class_pairs(labels, None, 1000, rng)  # more asked than exist: all 3 + 1 + 6 pairs
    assert len(everything) == 10 and 5 not in everything
    cross = same_class_pairs(labels, np.array([0, 2, 2, 9]), 100, rng)
    assert sorted(map(tuple, cross.tolist())) == [(0, 0), (1, 0), (2, 0), (5, 1), (5, 2)]


def test_lpips_offline_is_zero_for_an_image_with_itself_and_symmetric():
    model = lpips_model("alex", pretrained=False)
    a, b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        assert model(a, a).item() == pytest.approx(0.0, abs=1e-6)
        assert model(a, b).item() == pytest.approx(model(b, a).item(), rel=1e-5) and model(a, b).item() > 0


def _identical_photos(root, per_class=2):
    """Reference photos identical within a class (different between classes): same-class LPIPS is exactly 0."""
    from conftest import SYNTH_COLOURS
    from d3s.labels import imagenet_classes

    for fg, colour in SYNTH_COLOURS.items():
        (root / imagenet_classes()[fg].wnid).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (48, 48), colour).save(root / imagenet_classes()[fg].wnid / f"{j}.png")
    return root


def test_diversity_prints_three_means_and_writes_the_histogram(tmp_path, capsys):
    data = write_d3s_split(tmp_path / "d3s", per_cell=1, backgrounds=range(4), size=48, decoy_bg=None)
    ref = _identical_photos(tmp_path / "ref")
    code = cli.main(["diversity", "--data", str(data), "--reference", str(ref), "--pairs", "12", "--size", "48",
                     "--no-pretrained", "--out", str(tmp_path / "div")])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = [line for line in out.splitlines() if "mean LPIPS" in line]
    assert [line.split(":")[0] for line in lines] == ["D3S-D3S", "reference-reference", "reference-D3S"]
    # 3 classes x 4 images: 18 same-class D3S pairs exist, 12 asked; 2 photos per class: 3 pairs; 3 x 2 x 4 = 24 cross pairs
    assert "over 12 same-class pairs" in lines[0] and "over 3 same-class pairs" in lines[1] and "over 12 same-class" in lines[2]
    result = json.loads((tmp_path / "div" / "diversity.json").read_text())
    means = {k: v["mean"] for k, v in result["sets"].items()}
    assert all(np.isfinite(m) and m >= 0 for m in means.values())
    for k, v in result["distances"].items():
        assert np.mean(v) == pytest.approx(means[k])
    # pairs are same-class: identical reference photos give exactly 0; the noisy D3S images do not
    assert means["reference-reference"] == pytest.approx(0.0, abs=1e-6)
    assert means["D3S-D3S"] > 1e-4 and means["reference-D3S"] > 1e-4
    with Image.open(tmp_path / "div" / "diversity_hist.png") as im:
        assert im.format == "PNG" and im.text["Title"] == HIST_TITLE


def test_diversity_without_pairs_or_with_bad_counts_fails_in_one_line(tmp_path, capsys):
    data = write_d3s_split(tmp_path / "d3s", per_cell=1, backgrounds=range(1), decoy_bg=None)  # one image per class
    for argv, expected in ((["--pairs", "0"], "--pairs must be at least 1"),
                           (["--pairs", "5"], "No same-class pairs for D3S-D3S: no class has two images")):
        code = cli.main(["diversity", "--data", str(data), "--no-pretrained", "--out", str(tmp_path / "o"), *argv])
        _, err = capsys.readouterr()
        assert code == 2 and err.strip().count("\n") == 0 and expected in err, err


def test_diversity_config_defaults_are_the_papers():
    c = DiversityConfig(data="x")
    assert (c.pairs, c.net, c.pretrained) == (7500, "alex", True)
    with pytest.raises(DiversityError, match="--size"):
        run_diversity(DiversityConfig(data="x", size=8))
