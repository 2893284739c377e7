"""Publish a trained d3s extractor to the Hugging Face Hub.

    python hub/publish_checkpoint.py --checkpoint out/wd --repo-id ORG/d3s-resnet50                   # upload
    python hub/publish_checkpoint.py --checkpoint out/wd --repo-id ORG/d3s-resnet50 --dry-run staged/  # no network

Two repositories: ``ORG/NAME`` holds the full extractor (``DisentangledExtractor.from_pretrained("ORG/NAME")``,
safetensors + config) with a model card of its probe (Table 2) and spurious-correlation (Table 3) results, read
from ``probe.json`` / ``spurious.json`` in the checkpoint folder, and of ``d3s benchmark`` / ``d3s bgchallenge``
with ``--results DIR``: tables, and the card's ``model-index`` (``eval_results``), which the Hub renders. ``ORG/NAME-timm``
holds the backbone with the foreground head in timm's format (``timm.create_model("hf-hub:ORG/NAME-timm", pretrained=True)``;
locally ``local-dir:staged/timm``). The token comes from HF_TOKEN or `hf auth login`, and is never printed.

A checkpoint trained on frozen features (`d3s embed` + `d3s train`) is published as the full extractor: the
backbone that made its features (pretrained weights, or ``--backbone``) with its neck and heads. With an MLP neck
there is no ``-timm`` repository (timm's linear classifier cannot hold it); the card says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d3s.hub import publish  # noqa: E402
from d3s.hub_checkpoint import stage_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder made by `d3s train --out`")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    parser.add_argument("--dry-run", metavar="DIR", help="write the repository folder here and upload nothing")
    parser.add_argument("--probe", metavar="FILE", help="probe results (default: CHECKPOINT/probe.json)")
    parser.add_argument("--spurious", metavar="FILE", help="spurious results (default: CHECKPOINT/spurious.json)")
    parser.add_argument("--backbone", metavar="NAME", help="a checkpoint trained on frozen features: the backbone that made "
                                                           "them, e.g. local-dir:DIR (default: the one it records)")
    parser.add_argument("--dataset", metavar="ORG/NAME", help="the Hub dataset the probe and spurious results were measured on "
                                                              "(default: the training data run.json records, when it is a Hub id)")
    parser.add_argument("--results", metavar="DIR", help="a `d3s benchmark` / `d3s bgchallenge` --out folder: its results of "
                                                         "this checkpoint (same weights) go on the card and in its model index")
    args = parser.parse_args(argv)

    def uploads(folder, report):
        timm_repo = [(Path(folder) / "timm", report["timm_repo_id"], "model")] if report["timm_repo_id"] else []
        return [(folder, args.repo_id, "model"), *timm_repo]

    return publish(lambda folder: stage_checkpoint(args.checkpoint, folder, args.repo_id, args.probe, args.spurious, args.backbone,
                                                   dataset=args.dataset, results=args.results),
                   args.dry_run, uploads)


if __name__ == "__main__":
    sys.exit(main())
