"""Publish a D3S dataset folder to the Hugging Face Hub.

    python hub/publish_dataset.py --data out/d3s-splits --repo-id ORG/d3s                   # stage, check, upload
    python hub/publish_dataset.py --data out/d3s-splits --repo-id ORG/d3s --dry-run staged/  # stage only, no network

The staged folder is the exact repository: parquet shards with the images embedded, every split, and a
dataset card (generation settings, features, counts per split and background, example images, how it was
checked, licence, citation). After an upload, ``datasets.load_dataset("ORG/d3s")`` works; after a dry
run, ``datasets.load_dataset("staged/")`` does. The token comes from HF_TOKEN or `huggingface-cli login`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from d3s.hub import REQUIRED_SPLITS, publish, stage_dataset  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, metavar="DIR", help="a d3s dataset folder (see `d3s split`; any parquet layout `datasets` reads) or Hub dataset id")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    parser.add_argument("--dry-run", metavar="DIR", help="write the repository folder here and upload nothing")
    parser.add_argument("--splits", default=",".join(REQUIRED_SPLITS), help="splits that must be present (default: %(default)s)")
    parser.add_argument("--license", default="cc-by-4.0")
    args = parser.parse_args(argv)
    required = [s for s in args.splits.split(",") if s]
    return publish(lambda folder: stage_dataset(args.data, folder, args.repo_id, required, license=args.license),
                   args.dry_run, lambda folder, report: [(folder, args.repo_id, "dataset")])


if __name__ == "__main__":
    sys.exit(main())
