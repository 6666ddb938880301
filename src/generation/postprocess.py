"""Optional clean-up of generated text: whitespace, sentence capitals, terminal punctuation.

This only formats; evaluators score the raw model output and the post-processed text
separately, so the clean-up can never hide what the model produced.
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"[ \t]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.!?;:])")
# A sentence starts at the beginning, after . ! ?, or after a full stop closed by a quote or
# bracket. Not after a quoted ! or ?: the next word usually goes on with the same sentence
# ("Look, mom!" said Mom.), and a capital there would be wrong.
_SENTENCE_START = re.compile(r"(^|(?:[.!?]|\.[\"')\]]|[!?][)\]])\s+)([\"'(\[]?)([a-z])")
_TERMINAL = (".", "!", "?", '."', '!"', '?"', ".'", "!'", "?'", ".)")


def normalize_whitespace(text: str) -> str:
    lines = [_SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", line)).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def capitalize_sentences(text: str) -> str:
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2) + m.group(3).upper(), text)


def ensure_terminal_punctuation(text: str) -> str:
    if not text or text.endswith(_TERMINAL):
        return text
    if text[-1] in ",;:-":
        text = text[:-1].rstrip()
    return text + "."


def postprocess(text: str) -> str:
    """Whitespace, then sentence-initial capitals, then a closing full stop if one is missing."""
    return ensure_terminal_punctuation(capitalize_sentences(normalize_whitespace(text)))
