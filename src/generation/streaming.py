"""Turn a growing list of token ids into text deltas that never split a character.

Byte-level tokens can end in the middle of a multi-byte UTF-8 character. Decoding the tokens
not yet emitted and holding back text that ends in U+FFFD (an incomplete character) means the
deltas concatenate to exactly `tokenizer.decode(all_ids)`. Only the pending tail is decoded each
step (emitted text always ends on a character boundary), so a long story costs O(n), not O(n^2).
"""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class StreamDecoder:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.pending_from = 0  # ids before this index are emitted
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly empty)."""
        self.ids.append(token_id)
        delta = self.tokenizer.decode(self.ids[self.pending_from:])
        if delta.endswith(REPLACEMENT_CHAR):
            return ""
        self.pending_from = len(self.ids)
        self.emitted += delta
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        delta = self.tokenizer.decode(self.ids[self.pending_from:])
        self.pending_from = len(self.ids)
        self.emitted += delta
        return delta

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)
