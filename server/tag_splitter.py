"""Splits streamed text at `<open>...</close>` tags, chunk by chunk.

Shared by the reasoning (`<think>`) and tool-call (`<tool_call>`) parsers. A tag may arrive split across
chunks (`"<th"` + `"ink>"`), so a chunk's tail that could still become the awaited tag is held back until
the next chunk (or the end) decides it. Feeding the whole text at once and flushing gives the same result as
feeding it piece by piece, which keeps streamed and non-streamed responses identical."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Segment:
    inside: bool  # between the tags
    text: str = ""
    closed: bool = False  # this inside segment ends at a close tag (its block is complete)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class TagSplitter:
    def __init__(self, open_tag: str, close_tag: str, inside: bool = False,
                 strip_after_close: bool = True) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.inside = inside
        # Models put blank lines after `</think>` or between tool calls; they are layout, not content.
        self._strip_after_close = strip_after_close
        self._stripping = False
        self._pending = ""

    def _emit(self, out: list[Segment], inside: bool, text: str, closed: bool = False) -> None:
        if not inside and self._stripping:
            text = text.lstrip()
            if text:
                self._stripping = False
        if not text and not closed:
            return
        if out and out[-1].inside == inside and not out[-1].closed:
            out[-1].text += text
            out[-1].closed = closed
        else:
            out.append(Segment(inside, text, closed))

    def feed(self, text: str) -> list[Segment]:
        out: list[Segment] = []
        buf = self._pending + text
        self._pending = ""
        while buf:
            tag = self.close_tag if self.inside else self.open_tag
            i = buf.find(tag)
            if i < 0:
                keep = _partial_suffix(buf, tag)
                self._emit(out, self.inside, buf[:len(buf) - keep])
                self._pending = buf[len(buf) - keep:]
                break
            if self.inside:
                self._emit(out, True, buf[:i], closed=True)
                self._stripping = self._strip_after_close
            else:
                self._emit(out, False, buf[:i])
                # An opening tag starts a new (possibly empty) block.
                out.append(Segment(True, ""))
            self.inside = not self.inside
            buf = buf[i + len(tag):]
        return [s for s in out if s.text or s.closed or s.inside]

    def flush(self) -> list[Segment]:
        """End of text: whatever was held back belongs to the current side."""
        out: list[Segment] = []
        if self._pending:
            self._emit(out, self.inside, self._pending)
            self._pending = ""
        return out
