"""Zero-shot labels and prompt templates, checked and resolved (``EdgeClip.classify``, serve)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from string import Formatter
from typing import Union

from .errors import InputError
from .text import is_blank

Labels = Sequence[str]
Templates = Union[str, Sequence[str], None]


@lru_cache(maxsize=1)
def template_sets() -> dict[str, list[str]]:
    """The shipped prompt-template sets (``none``, ``photo``, ``imagenet7``, ``imagenet80``)."""
    # A plain path, like the tokenizer's vocab: importlib.resources cost 6 ms of every start.
    text = (Path(__file__).resolve().parent / "data" / "templates.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def check_labels(labels: Labels) -> list[str]:
    """``labels`` as a list of unique, visible strings; else ``InputError`` naming the label."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise InputError(
            f"labels must be a list of strings, got {type(labels).__name__}; e.g. ['cat', 'dog'].",
            param="labels",
        )
    labels = list(labels)
    if len(labels) < 1:
        raise InputError("labels is empty; give at least one class name, e.g. ['cat', 'dog'].",
                         param="labels")  # fmt: skip
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise InputError(f"label {i} is a {type(label).__name__} ({label!r}), not a string.",
                             param=f"labels[{i}]")  # fmt: skip
        if is_blank(label):
            raise InputError(
                f"labels[{i}] ({label!r}) is empty or only whitespace / invisible characters; "
                "every label needs a name.",
                param=f"labels[{i}]",
            )
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise InputError(
                f"label {label!r} appears twice (positions {seen[label]} and {i}); labels must be unique.",
                param=f"labels[{i}]",
            )
        seen[label] = i
    return labels


def resolve_templates(templates: Templates) -> tuple[str, ...]:
    """The prompt templates ``templates`` stands for (None: the label alone; a set name; one
    template; a list of them), each with exactly one '{}'."""
    if templates is None:
        return ("{}",)
    if isinstance(templates, str):
        sets = template_sets()
        if templates in sets:
            return tuple(sets[templates])
        if _one_slot(templates):
            return (templates,)
        raise InputError(
            f"templates {templates!r} is neither a template set ({', '.join(sets)}) nor a template "
            "with exactly one '{}' (write a literal brace as '{{' or '}}').", param="templates"
        )
    if isinstance(templates, (bytes, bytearray)) or not hasattr(templates, "__iter__"):
        raise InputError(f"templates must be None, a template set name ({', '.join(template_sets())}) "
                         f"or a list of strings with one '{{}}', got {type(templates).__name__} "
                         f"{templates!r:.60}.", param="templates")  # fmt: skip
    out = tuple(templates)
    bad = [t for t in out if not isinstance(t, str) or not _one_slot(t)]
    if not out or bad:
        raise InputError(
            "every template must be a string with exactly one '{}' (a literal brace is '{{' or "
            f"'}}}}'); bad: {bad or 'empty list'}.", param="templates"
        )
    return out


def _one_slot(template: str) -> bool:
    """Whether ``template.format(label)`` puts the label in exactly once and cannot raise."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template)
                  if name is not None]  # fmt: skip
    except ValueError:  # a lone '{' or '}'
        return False
    return fields == [("", "", None)]
