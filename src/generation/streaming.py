"""Turn a growing list of token ids into text deltas that never split a character.

Byte-level tokens can end in the middle of a multi-byte UTF-8 character. Decoding the whole
output each step and holding back text that ends in U+FFFD (an incomplete character) means
the deltas concatenate to exactly `tokenizer.decode(all_ids)`.
"""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class StreamDecoder:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly empty)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT_CHAR) or not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.tokenizer.decode(self.ids)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)
