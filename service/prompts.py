"""Prompt templates: every prompt the models see lives in prompts/*.j2.

A template is addressed by name; its version is the first 12 hex digits of the sha256 of
the file, stored with every generated text. Product text enters a template only through
the `data` filter, which fences it as quoted data so it cannot pose as instructions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"

# Fence markers; any copy of them inside untrusted text is neutralised.
DATA_OPEN, DATA_CLOSE = "<<<", ">>>"


def as_data(value: Any, max_chars: int = 2000) -> str:
    """Untrusted text as an inert, fenced, length-bounded literal."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace(DATA_OPEN, "‹‹‹").replace(DATA_CLOSE, "›››")
    text = " ".join(text.split())  # no line structure an attacker could use for fake turns
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return f"{DATA_OPEN}{text}{DATA_CLOSE}"


# Where a sentence stops: . ! ? before a space or the end ("1.4 kg" is no stop), or a
# Chinese full stop. clip, the chat prompt's description budget and the chat's completion
# from the data all cut there.
SENTENCE_STOP = re.compile(r"[.!?](?=\s|$)|[。！？]")
_ITEM_SEP = (", ", "; ", "，", "、", "；")
_DANGLING = ",;:、，；： "


def clip(value: Any, max_chars: int) -> str:
    """A long value cut where a reader would stop: after its last whole sentence that
    fits, else after its last whole list item, else at a word boundary; never a dangling
    comma. A small model copies a value cut mid-item ("Receipt Capture,", "Role-based")
    and runs on past it into the fence ("…, and>>")."""
    text = " ".join(str(value).split())
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    floor = max_chars * 0.4  # a cut that keeps less than this is worse than a word cut
    ends = [m.end() for m in SENTENCE_STOP.finditer(head + " ")]
    if ends and ends[-1] >= floor:
        return head[: ends[-1]].strip()
    item = max(head.rfind(sep) for sep in _ITEM_SEP)
    if item >= floor:
        return head[:item].rstrip(_DANGLING)
    space = head.rfind(" ")
    return (head[:space] if space >= floor else head).rstrip(_DANGLING)


@dataclass(frozen=True)
class Rendered:
    text: str
    template: str
    version: str


class PromptLibrary:
    def __init__(self, directory: Path = PROMPTS_DIR) -> None:
        self.directory = directory
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.env.filters["data"] = as_data
        self.env.filters["clip"] = clip

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.j2"))

    def version(self, name: str) -> str:
        path = self.directory / f"{name}.j2"
        if not path.exists():
            raise KeyError(f"no prompt template named {name!r} in {self.directory}")
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    def render(self, name: str, **variables: Any) -> Rendered:
        version = self.version(name)
        text = self.env.get_template(f"{name}.j2").render(**variables).strip()
        return Rendered(text=text, template=name, version=version)


@lru_cache(maxsize=1)
def library() -> PromptLibrary:
    return PromptLibrary()


def render(name: str, **variables: Any) -> Rendered:
    return library().render(name, **variables)
