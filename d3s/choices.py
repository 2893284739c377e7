"""The names a user chooses among, and the defaults the command line shows, without heavy imports.

``d3s --help`` and ``d3s <command> --help`` must answer at once, so the command line reads its choices from here
rather than from the modules that use them (which import torch or datasets). Those modules import their names from
here too: one definition each.
"""

from __future__ import annotations

# The paper's backbone and baseline: ResNet-50 with PyTorch's (torchvision's) ImageNet weights. In timm, plain
# ``resnet50`` is ``resnet50.a1_in1k``, other weights trained another way, so the tag is written out.
PAPER_BACKBONE = "resnet50.tv_in1k"

METHODS = ("wasserstein", "erm", "groupdro", "irm", "adversarial")  # d3s.algorithms.METHODS, in this order
ERASE_PARTS = ("auto", "both", "z_fg", "z_bg")  # d3s.erase.PARTS: which parts get a LEACE eraser (auto: see d3s.erase)
DISENTANGLING = ("wasserstein", "adversarial")  # the methods that make z_fg and z_bg independent (the rest are baselines)
LR_SCHEDULES = ("cosine", "constant")
# d3s.probes: linear (logistic regression), mlp (one hidden layer beside a linear path, tuned), kernel (RBF kernel ridge)
PROBE_KINDS = ("linear", "mlp", "kernel")
PROBE_SETS = {"both": ("linear", "mlp"), "all": PROBE_KINDS}  # --probe NAME: shorthands for a comma list of kinds
PROBE_FOLDS = 2  # d3s probe: probes fitted on one part of the scored split and scored on the other, k ways
NECKS = ("linear", "mlp")
DEFAULT_NECK = "mlp"  # of `d3s train` on features

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = ("fp32 (default: the reference harnesses' choice; scores are exact), bf16 or fp16 (autocast: faster on "
                  "GPUs, and a top-1 can change on a few percent of images); recorded in every result")

CLIP_PROMPTS = ("single", "ensemble")  # a photo of a {name}. / OpenAI's 80 ImageNet templates
CLIP_NAMES = ("lemma", "definition", "openai")
