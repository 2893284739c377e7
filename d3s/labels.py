"""Labels: the 1000 ImageNet classes, WordNet concepts beyond them, and the IN-9 superclasses.

Every foreground is a :class:`Concept`: a WordNet noun synset with its lemmas and gloss. The 1000
ImageNet-1k classes come from the synset, lemma and definition tables that timm ships (offline);
any other WordNet noun synset can be used through nltk's WordNet corpus.

Facts kept here (from the paper, its authors' code and the Backgrounds Challenge):
- the prompt name of a class is the first lemma (``tench, Tinca tinca`` -> ``tench``);
- the definition is the WordNet 3.0 gloss of the class's own synset, so class 134 (``crane`` the
  bird, n02012849) gets the bird's gloss, not the machine's;
- the display names must be unique (they become ``datasets.ClassLabel`` names), so the first-lemma
  collisions (``crane`` 134/517, ``maillot`` 638/639) are told apart by their WordNet id.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

NUM_IMAGENET_CLASSES = 1000


class LabelError(ValueError):
    """A class, concept or background name that does not exist; the message lists valid ones."""


@dataclass(frozen=True)
class Concept:
    """A foreground concept: one WordNet noun synset.

    Args:
        wnid (`str`): WordNet id, ``n`` + the 8-digit synset offset (``n02123045``).
        lemmas (`tuple[str, ...]`): the synset's lemmas, in WordNet order.
        definition (`str`): the synset's WordNet gloss.
        name (`str`): a display name, unique within its label space.
        imagenet_index (`int`, *optional*): index among the 1000 ImageNet-1k classes, if it is one.
    """

    wnid: str
    lemmas: tuple[str, ...]
    definition: str
    name: str
    imagenet_index: int | None = None

    @property
    def prompt_name(self) -> str:
        """The name used in prompts: the first lemma, as the authors did."""
        return self.lemmas[0]


def _wnid_to_offset(wnid: str) -> int:
    return int(wnid[1:])


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[Concept, ...]:
    """The 1000 ImageNet-1k classes, in the standard index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = list(info.label_names())
    rows = []
    for wnid in wnids:
        lemma_text = info.label_name_to_description(wnid)
        detailed = info.label_name_to_description(wnid, detailed=True)
        definition = detailed[len(lemma_text) + 2 :]
        rows.append((wnid, tuple(s.strip() for s in lemma_text.split(", ")), definition))
    first = [lemmas[0] for _, lemmas, _ in rows]
    collisions = {n for n in first if first.count(n) > 1}
    return tuple(
        Concept(
            wnid=wnid,
            lemmas=lemmas,
            definition=definition,
            name=f"{lemmas[0]} ({wnid})" if lemmas[0] in collisions else lemmas[0],
            imagenet_index=index,
        )
        for index, (wnid, lemmas, definition) in enumerate(rows)
    )


@functools.lru_cache(maxsize=1)
def _imagenet_lookup() -> dict[str, int]:
    table: dict[str, int] = {}
    for i, c in enumerate(imagenet_classes()):
        table[c.wnid.lower()] = i
        table[c.name.lower()] = i
    return table


def close_matches(word: str, choices: Iterable[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    """The valid names closest to a mistyped one, without repeats (for "did you mean" errors)."""
    return difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=n, cutoff=cutoff)


def imagenet_class(key: int | str) -> Concept:
    """Look up an ImageNet class by index (``281``), WordNet id (``n02123045``) or name (``tabby``).

    A name shared by two classes (``crane``, ``maillot``) is refused with both candidates named;
    an unknown name is refused with the closest valid names.
    """
    classes = imagenet_classes()
    if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
        index = int(key)
        if not 0 <= index < len(classes):
            raise LabelError(f"ImageNet class index {index} is out of range: valid indices are 0..{len(classes) - 1}.")
        return classes[index]
    text = key.strip()
    hit = _imagenet_lookup().get(text.lower())
    if hit is not None:
        return classes[hit]
    ambiguous = [c for c in classes if c.prompt_name.lower() == text.lower()]
    if ambiguous:
        options = ", ".join(f"{c.imagenet_index} ({c.wnid}: {c.definition})" for c in ambiguous)
        raise LabelError(f"ImageNet class name {text!r} is ambiguous; use an index or WordNet id: {options}.")
    by_lemma = [c for c in classes if text.lower() in (lemma.lower() for lemma in c.lemmas)]
    if len(by_lemma) == 1:
        return by_lemma[0]
    names = [c.name for c in classes] + [lemma for c in classes for lemma in c.lemmas]
    close = close_matches(text, names)
    hint = f" Closest valid names: {', '.join(close)}." if close else " Use an index 0..999, a WordNet id, or a class name."
    raise LabelError(f"Unknown ImageNet class {text!r}.{hint}")


# --- WordNet concepts beyond ImageNet (nltk) -----------------------------------------------------

WORDNET_PREFIX = "wordnet:"


def _wordnet():
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except LookupError as err:  # corpus missing
        raise LabelError(
            "nltk's WordNet corpus is not installed; run `python -m d3s.wordnet_data` "
            "(offline, from Debian's wordnet-base) or `python -m nltk.downloader wordnet`."
        ) from err
    return wordnet


def wordnet_concept(key: str) -> Concept:
    """A WordNet noun synset as a foreground concept, by synset name (``red_panda.n.01``) or WordNet id.

    ImageNet classes found this way keep their ImageNet index.
    """
    text = key.strip()
    if re.fullmatch(r"n\d{8}", text) and text in {c.wnid for c in imagenet_classes()}:
        return imagenet_class(text)
    wn = _wordnet()
    try:
        if re.fullmatch(r"n\d{8}", text):
            synset = wn.synset_from_pos_and_offset("n", _wnid_to_offset(text))
        else:
            synset = wn.synset(text)
    except Exception as err:  # nltk raises WordNetError or ValueError for unknown synsets
        word = text.split(".")[0]
        options = [s.name() for s in wn.synsets(word, pos="n")][:8]
        hint = f" Noun synsets for {word!r}: {', '.join(options)}." if options else " Give a noun synset such as 'red_panda.n.01' or a WordNet id such as 'n02509815'."
        raise LabelError(f"Unknown WordNet concept {text!r}.{hint}") from err
    if synset.pos() != "n":
        raise LabelError(f"WordNet concept {text!r} is not a noun synset; foregrounds must be nouns.")
    wnid = f"n{synset.offset():08d}"
    for c in imagenet_classes():
        if c.wnid == wnid:
            return c
    lemmas = tuple(lemma.name().replace("_", " ") for lemma in synset.lemmas())
    return Concept(wnid=wnid, lemmas=lemmas, definition=synset.definition(), name=f"{lemmas[0]} ({wnid})")


def lookup(key: str | int) -> list[Concept]:
    """Every class a query can mean: one for an index, WordNet id or unique name, all of them for a name two
    classes share (``crane``: the bird 134 and the machine 517), so a lookup can show both senses.

    Unknown names are refused as by :func:`resolve_concept`, with the closest valid names.
    """
    text = str(key).strip()
    if not text.startswith(WORDNET_PREFIX) and not text.isdigit() and text.lower() not in _imagenet_lookup():
        shared = [c for c in imagenet_classes() if c.prompt_name.lower() == text.lower()]
        if len(shared) > 1:
            return shared
    return [resolve_concept(key)]


def resolve_concept(key: str | int) -> Concept:
    """An ImageNet class (index, WordNet id, name) or, with the ``wordnet:`` prefix, any noun synset."""
    if isinstance(key, str) and key.strip().startswith(WORDNET_PREFIX):
        return wordnet_concept(key.strip()[len(WORDNET_PREFIX) :])
    return imagenet_class(key)


def parse_foregrounds(spec: str | Sequence[str | int]) -> list[Concept]:
    """Parse a foreground list: ``all``, ``0-9,281,tabby,wordnet:red_panda.n.01``.

    Duplicates are dropped, order is kept.
    """
    items = _split_list(spec)
    out: list[Concept] = []
    for item in items:
        if isinstance(item, str) and item.lower() == "all":
            out.extend(imagenet_classes())
        elif isinstance(item, str) and re.fullmatch(r"\d+-\d+", item):
            lo, hi = (int(x) for x in item.split("-"))
            if lo > hi:
                raise LabelError(f"Class range {item!r} is empty: write it low-high, e.g. 0-9.")
            out.extend(imagenet_class(i) for i in range(lo, hi + 1))
        else:
            out.append(resolve_concept(item))
    seen: set[str] = set()
    unique = [c for c in out if not (c.wnid in seen or seen.add(c.wnid))]
    if not unique:
        raise LabelError("No foreground given: pass class indices, WordNet ids, names or 'all'.")
    return unique


def _split_list(spec: str | Sequence[str | int]) -> list[str | int]:
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    return list(spec)


def label_space(concepts: Sequence[Concept]) -> list[Concept]:
    """The fg label space of a run: the 1000 ImageNet classes, then any extra concepts in order.

    Keeping the ImageNet indices fixed means a D3S fg label is an ImageNet-1k label, so any
    ImageNet classifier can be scored on it directly.
    """
    extra = [c for c in concepts if c.imagenet_index is None]
    return list(imagenet_classes()) + extra


# --- IN-9 (Backgrounds Challenge) superclasses, from the challenge's class list --------------------------------

def _ranges(*parts: int | tuple[int, int]) -> tuple[int, ...]:
    out: list[int] = []
    for p in parts:
        out.extend(range(p[0], p[1] + 1) if isinstance(p, tuple) else [p])
    return tuple(out)


IN9_CLASSES: tuple[str, ...] = (
    "dog", "bird", "wheeled vehicle", "reptile", "carnivore", "insect", "musical instrument", "primate", "fish",
)

IN9_MEMBERS: dict[str, tuple[int, ...]] = {
    "dog": _ranges((151, 170), (173, 268)),
    "bird": _ranges((7, 24), (87, 100), (127, 146)),
    "wheeled vehicle": (
        407, 408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 586, 603, 609, 612, 627, 656, 661,
        665, 670, 671, 675, 690, 705, 717, 734, 751, 757, 791, 802, 803, 817, 820, 829, 847, 864, 866, 867,
        870, 880,
    ),
    "reptile": _ranges((33, 68)),
    "carnivore": _ranges((269, 280), (286, 299), (356, 362), 387, 388),
    "insect": _ranges((300, 326)),
    "musical instrument": (
        401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684, 687,
        699, 776, 822, 875, 881, 889,
    ),
    "primate": _ranges((365, 384)),
    "fish": _ranges((0, 6), (389, 397)),
}


@functools.lru_cache(maxsize=1)
def imagenet_to_in9() -> dict[int, int]:
    """Map an ImageNet index to its IN-9 class index (0..8); the other 630 classes are absent."""
    return {i: k for k, name in enumerate(IN9_CLASSES) for i in IN9_MEMBERS[name]}
