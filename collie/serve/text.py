"""Token ids → the text a client receives, piece by piece: never half a UTF-8 character, never
the beginning of a stop sequence that may still complete, nothing from a stop sequence on."""

from __future__ import annotations

_INCOMPLETE = "\ufffd"  # what decoding shows for the leading bytes of a character not yet complete


class IncrementalText:
    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.text = ""

    def add(self, token: int) -> tuple[str, bool]:
        """Take one generated token; return (text that may be sent now, whether a stop sequence ended it)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # A stop sequence can only have completed in the text not yet sent (plus its own length back).
        search_from = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            end = min(hits)
            return self._take(end), True
        end = len(self.text.rstrip(_INCOMPLETE))
        return self._take(end - self._held_back(end)), False

    def flush(self) -> str:
        """The rest of the text (generation ended without a stop sequence)."""
        return self._take(len(self.text))

    def _held_back(self, end: int) -> int:
        """Characters at the end that could be the start of a stop sequence."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, end - self.emitted), longest, -1):
                if self.text[end - k:end] == s[:k]:
                    longest = k
                    break
        return longest

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:end], end
        return piece
