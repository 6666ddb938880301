"""Words and sentences of a story, the units every text metric counts."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A word is a run of letters, with inner apostrophes ("don't", "Lily's"); digits count too.
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
# A sentence ends at . ! ? (runs like "?!" or "..." included), plus any closing quotes/brackets.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*")


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int  # character offsets in the text it came from
    end: int


def words(text: str) -> list[str]:
    """Lower-cased words, in order."""
    return [match.group(0).lower() for match in _WORD.finditer(text)]


def word_spans(text: str) -> list[tuple[str, int]]:
    """(lower-cased word, start offset) pairs, in order."""
    return [(match.group(0).lower(), match.start()) for match in _WORD.finditer(text)]


def _is_dialogue_tag_ahead(text: str, end: re.Match) -> bool:
    """'"Why?" he asked.' is one sentence: a closing quote followed by a lower-case word."""
    closes_quote = end.group(0)[-1:] in "\"'”’"
    return closes_quote and text[end.end() :].lstrip()[:1].islower()


def sentences(text: str) -> list[Sentence]:
    """Sentences with their offsets; a trailing unfinished sentence is included."""
    found = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if _is_dialogue_tag_ahead(text, match):
            continue
        found.append((start, match.end()))
        start = match.end()
    found.append((start, len(text)))
    result = []
    for begin, end in found:
        chunk = text[begin:end]
        stripped = chunk.lstrip()
        if not stripped.strip() or not _WORD.search(stripped):
            continue
        begin += len(chunk) - len(stripped)
        result.append(Sentence(text=text[begin:end].rstrip(), start=begin, end=end))
    return result
