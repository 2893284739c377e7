"""Prompts: recipes (a shift axis and its prompt template) are data files, not code.

A recipe is a JSON file with ``name``, ``description``, ``prompt`` (a template with ``{name}``,
``{definition}`` and ``{shift}``), ``template_prompt`` (used by ``d3s templates`` to dream a
background template from text, with ``{shift}``) and ``shifts`` (the labels of the ``bg`` column,
in label order). The paper's ten backgrounds are the default recipe, ``backgrounds``; the
authors' geography and time variants ship too. A new axis is a new JSON file::

    d3s generate --recipe my_axis.json ...
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from .labels import Concept, LabelError, close_matches

DEFAULT_RECIPE = "backgrounds"
_FIELDS = ("name", "description", "prompt", "template_prompt", "shifts")


@dataclass(frozen=True)
class Recipe:
    """A shift axis: its labels (``shifts``) and how prompts are written for them."""

    name: str
    description: str
    prompt: str
    template_prompt: str
    shifts: tuple[str, ...]

    def prompt_for(self, concept: Concept, shift: str) -> str:
        """The generation prompt, e.g. ``a photo of a tabby, a cat with ..., in snow``."""
        return self.prompt.format(name=concept.prompt_name, definition=concept.definition, shift=shift)

    def template_prompt_for(self, shift: str) -> str:
        return self.template_prompt.format(shift=shift)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shifts"] = list(self.shifts)
        return d

    def shift_index(self, key: str | int) -> int:
        """Index of a shift by index or name (``7``, ``in snow``, ``in_snow``); unknown names list the valid ones."""
        if isinstance(key, int) or str(key).strip().isdigit():
            index = int(key)
            if 0 <= index < len(self.shifts):
                return index
            raise LabelError(f"Background index {index} is out of range: valid are 0..{len(self.shifts) - 1} ({', '.join(self.shifts)}).")
        wanted = slug(str(key))
        for i, shift in enumerate(self.shifts):
            if slug(shift) == wanted:
                return i
        by_word = [i for i, shift in enumerate(self.shifts) if wanted and wanted in slug(shift).split("_")]
        if len(by_word) == 1:  # a unique word is enough: 'snow' -> 'in snow'
            return by_word[0]
        close = close_matches(str(key).strip(), self.shifts, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LabelError(
            f"Unknown background {str(key).strip()!r} in recipe {self.name!r}.{hint} Valid backgrounds: {', '.join(self.shifts)}."
        )

    def parse_shifts(self, spec: str | Sequence[str | int]) -> list[int]:
        """Parse ``all`` or a comma list of shift names or indices into sorted unique indices."""
        items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
        if any(isinstance(i, str) and i.lower() == "all" for i in items):
            return list(range(len(self.shifts)))
        if not items:
            raise LabelError(f"No background given: pass 'all' or some of {', '.join(self.shifts)}.")
        return sorted({self.shift_index(i) for i in items})


def slug(text: str) -> str:
    """Folder-safe form of a label: ``in a forest`` -> ``in_a_forest``."""
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def builtin_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("d3s.recipes").iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_path: str | Path = DEFAULT_RECIPE) -> Recipe:
    """Load a built-in recipe by name (``backgrounds``, ``geography``, ``time``) or a JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text = path.read_text()
    else:
        builtin = resources.files("d3s.recipes") / f"{name_or_path}.json"
        if not builtin.is_file():
            raise LabelError(f"Unknown recipe {str(name_or_path)!r}: give a JSON file or one of {', '.join(builtin_recipes())}.")
        text = builtin.read_text()
    data = json.loads(text)
    missing = [f for f in _FIELDS if f not in data]
    if missing:
        raise LabelError(f"Recipe {str(name_or_path)!r} lacks the field(s) {', '.join(missing)}; a recipe needs {', '.join(_FIELDS)}.")
    if "{shift}" not in data["prompt"] or "{name}" not in data["prompt"]:
        raise LabelError(f"Recipe {data['name']!r}: its prompt must contain {{name}} and {{shift}}, got {data['prompt']!r}.")
    shifts = tuple(data["shifts"])
    if len(set(map(slug, shifts))) != len(shifts):
        raise LabelError(f"Recipe {data['name']!r}: shift names must be distinct, got {list(shifts)}.")
    return Recipe(**{f: data[f] for f in _FIELDS[:-1]}, shifts=shifts)


BACKGROUNDS: tuple[str, ...] = load_recipe(DEFAULT_RECIPE).shifts
"""The paper's ten backgrounds, in label order 0..9."""
