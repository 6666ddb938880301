"""Optional clean-up of generated text: whitespace, sentence capitals, terminal punctuation.

A story cut by the length limit is not given a full stop it never wrote: it ends at its last
complete sentence instead (`sentence_end`), in the CLI's output and in the web UI alike.

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
_SENTENCE_END = re.compile(r"""[.!?]+["')\]]*(?=\s|$)""")


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


def sentence_end(text: str) -> int:
    """How many characters of `text` run to the end of its last complete sentence (0: none ends)."""
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    return ends[-1] if ends else 0


def without_cut_sentence(prompt: str, text: str) -> str:
    """The continuation `text` of a length-cut story, ending where its last complete sentence
    (counted from the prompt on) ends: what the web UI shows once the stream is done."""
    end = sentence_end(prompt + text)
    return text[:max(0, end - len(prompt))] if end else text


def postprocess(text: str, cut: bool = False) -> str:
    """Whitespace, then sentence-initial capitals, then a closing full stop if one is missing;
    a `cut` story (it hit the length limit) ends at its last complete sentence instead, or stays
    as it is where none has ended."""
    text = capitalize_sentences(normalize_whitespace(text))
    if cut:
        return text[:sentence_end(text)] or text
    return ensure_terminal_punctuation(text)
