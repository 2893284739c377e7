"""Install nltk's WordNet corpus offline, from Debian's ``wordnet-base`` package.

nltk expects ``corpora/wordnet/`` with the WordNet 3.0 database files and a ``lexnames`` file that
the Debian package does not ship. ``python -m d3s.wordnet_data`` copies ``/usr/share/wordnet`` into
the first nltk data directory and writes ``lexnames``; it does nothing if WordNet already loads.
Online, ``python -m nltk.downloader wordnet`` does the same job.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DEBIAN_WORDNET = Path("/usr/share/wordnet")

# WordNet 3.0's lexicographer files, by number (the standard `lexnames` table).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def wordnet_available() -> bool:
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return True
    except LookupError:
        return False


def install(source: Path = DEBIAN_WORDNET, target_root: Path | None = None) -> Path:
    """Copy the Debian WordNet files where nltk looks; returns the corpus folder."""
    import nltk

    if not (source / "data.noun").exists():
        raise FileNotFoundError(
            f"{source} has no WordNet database: `apt-get install -y wordnet-base wordnet-sense-index` first."
        )
    root = Path(target_root or os.environ.get("NLTK_DATA", "").split(os.pathsep)[0] or nltk.data.path[0])
    target = root / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file():
            shutil.copy2(f, target / f.name)
    lines = [f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
    (target / "lexnames").write_text("\n".join(lines) + "\n")
    return target


def main() -> int:
    if wordnet_available():
        print("nltk WordNet: already installed")
        return 0
    target = install()
    print(f"nltk WordNet: installed into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
