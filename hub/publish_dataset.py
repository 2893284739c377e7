"""Publish a D3S dataset folder to the Hugging Face Hub.

    python hub/publish_dataset.py --data out/d3s-splits --repo-id ORG/d3s --stage staged/   # stage, check, upload
    python hub/publish_dataset.py --data out/d3s-splits --repo-id ORG/d3s --dry-run staged/ # stage only, no network

The staged folder is the exact repository: parquet shards with the images embedded, every split, and a
dataset card (what the rows are, counted: classes, backgrounds, pairs and rows per split; generation
settings; features; example images; how it was checked; licence; citation). After an upload,
``datasets.load_dataset("ORG/d3s")`` works; after a dry run, ``datasets.load_dataset("staged/")`` does.

The upload is resumable and made of many commits (a D3S dataset is large): ``HfApi.upload_large_folder``
where the installed huggingface_hub has it (it keeps its resume cache in STAGE/.cache/huggingface/);
otherwise (huggingface_hub 2.4, pinned in requirements.txt, has none) ``HfApi.upload_folder``, which there
is that upload when ``hf_xet`` is installed (huggingface_hub installs it on x86-64 and ARM): committed in
batches, resumed by running it again. So keep the staged folder: with ``--stage DIR``, an upload that was
interrupted (even killed) resumes when the same command is run again: the folder is uploaded as it is,
without staging again, and what is already on the Hub is not sent again (a staging killed before it
finished is refused: remove DIR and rerun). Without ``--stage`` the folder
is temporary and removed after the upload. A folder staged by ``--dry-run DIR`` is uploaded as it is by
the same command with ``--stage DIR`` in place of ``--dry-run DIR``.

The token comes from HF_TOKEN or `hf auth login`, and is never printed.
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
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dry-run", metavar="DIR", help="write the repository folder here and upload nothing")
    where.add_argument("--stage", metavar="DIR", help="write the repository folder here and keep it (and upload_large_folder's "
                                                      "resume cache, where that is used): rerun the same command after an "
                                                      "interruption to resume (default: a temporary folder, removed after "
                                                      "the upload)")
    parser.add_argument("--splits", default=",".join(REQUIRED_SPLITS), help="splits that must be present (default: %(default)s)")
    parser.add_argument("--license", default="cc-by-4.0")
    args = parser.parse_args(argv)
    required = [s for s in args.splits.split(",") if s]
    local = Path(args.data)
    inputs = {"data": str(local.resolve()) if local.exists() else args.data, "repo_id": args.repo_id,
              "splits": required, "license": args.license}
    return publish(lambda folder: stage_dataset(args.data, folder, args.repo_id, required, license=args.license),
                   args.dry_run, lambda folder, report: [(folder, args.repo_id, "dataset")], keep=args.stage,
                   inputs=inputs, large=True)


if __name__ == "__main__":
    sys.exit(main())
