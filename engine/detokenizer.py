"""Incremental detokenization with stop strings. Text is decoded over a sliding window of token ids
so each step costs O(window), not O(output). A stop string can straddle token boundaries, so the last
(longest stop - 1) characters are held back from the stream until they cannot start a stop string."""

from __future__ import annotations

from engine.sampling_params import SamplingParams

_PROMPT_CONTEXT = 6  # prompt tokens kept in the window so the first output token decodes in context


class IncrementalDetokenizer:
    def __init__(self, tokenizer, params: SamplingParams, prompt_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.skip_special = params.skip_special_tokens
        self.stop = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self._ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""
        self._emitted = 0

    def add(self, token_ids: list[int]) -> str | None:
        """Appends tokens; returns the stop string that matched (text is then truncated) or None."""
        for tid in token_ids:
            self._ids.append(tid)
            prefix = self.tokenizer.decode(self._ids[self._prefix_offset:self._read_offset],
                                           skip_special_tokens=self.skip_special)
            full = self.tokenizer.decode(self._ids[self._prefix_offset:], skip_special_tokens=self.skip_special)
            if len(full) > len(prefix) and not full.endswith("\ufffd"):
                before = len(self.text)
                self.text += full[len(prefix):]
                self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
                if len(self._ids) > 4 * _PROMPT_CONTEXT + 64:  # keep the window short
                    drop = self._prefix_offset
                    self._ids = self._ids[drop:]
                    self._prefix_offset, self._read_offset = 0, self._read_offset - drop
                hit = self._find_stop(before)
                if hit is not None:
                    return hit
        return None

    def _find_stop(self, new_from: int) -> str | None:
        best = None
        for s in self.stop:
            idx = self.text.find(s, max(0, new_from - len(s) + 1))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return None
        idx, s = best
        self.text = self.text[: idx + len(s)] if self.include_stop else self.text[:idx]
        return s

    def delta(self, finished: bool) -> str:
        """Text not yet streamed; while running, the held-back tail stays back."""
        visible = len(self.text) if finished or not self.hold else max(self._emitted, len(self.text) - self.hold)
        out = self.text[self._emitted:visible]
        self._emitted = visible
        return out
