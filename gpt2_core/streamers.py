"""Streamers: receive tokens while ``generate`` runs, in every backend.

The protocol is transformers': ``generate`` calls ``streamer.put(ids)`` first with the prompt
(batch size 1) and then with each new token, and ``streamer.end()`` once at the end. ``ids`` is
anything ``np.asarray`` accepts. Compiled decode loops (XLA, jit) call it from a host callback.

Example:
    >>> from gpt2_core.streamers import CallbackStreamer
    >>> pieces = []
    >>> s = CallbackStreamer(pieces.append)
    >>> s.put([[1, 2]]); s.put([3]); s.end()
    >>> pieces
    [[3]]
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import numpy as np


class BaseStreamer:
    """Base class: ``put(ids)`` for every new token (after the prompt) and ``end()``."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _as_ids(value: Any) -> list[int]:
    arr = np.asarray(value)
    if arr.ndim > 1:
        if arr.shape[0] != 1:
            raise ValueError("streaming supports batch size 1 only")
        arr = arr[0]
    return [int(x) for x in arr.reshape(-1)]


class CallbackStreamer(BaseStreamer):
    """Calls ``callback(new_ids: list[int])`` for each new token batch (prompt skipped)."""

    def __init__(self, callback: Callable[[list[int]], None], skip_prompt: bool = True) -> None:
        self.callback = callback
        self.skip_prompt = skip_prompt
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        ids = _as_ids(value)
        if self.skip_prompt and not self._seen_prompt:
            self._seen_prompt = True
            return
        self._seen_prompt = True
        self.callback(ids)

    def end(self) -> None:
        pass


class TextStreamer(BaseStreamer):
    """Decodes tokens to text as they come and passes whole pieces to ``on_text`` (default print).

    Text is emitted only up to the last complete character, so multi-byte characters split
    across tokens are never printed half-way (the same rule as transformers' TextStreamer).
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        on_text: Callable[[str, bool], None] | None = None,
        **decode_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self._on_text = on_text
        self._ids: list[int] = []
        self._printed = 0
        self._next_is_prompt = True

    def put(self, value: Any) -> None:
        ids = _as_ids(value)
        if self.skip_prompt and self._next_is_prompt:
            self._next_is_prompt = False
            return
        self._next_is_prompt = False
        self._ids.extend(ids)
        text = self.tokenizer.decode(self._ids, **self.decode_kwargs)
        if text.endswith("\n"):
            piece = text[self._printed :]
            self._ids, self._printed = [], 0
        elif text.endswith("\ufffd"):
            return  # an incomplete UTF-8 sequence: wait for the next token
        else:
            # emit up to the last space so words are not cut
            cut = text.rfind(" ") + 1
            piece = text[self._printed : cut] if cut > self._printed else ""
            self._printed += len(piece)
        if piece:
            self.on_finalized_text(piece, stream_end=False)

    def end(self) -> None:
        text = self.tokenizer.decode(self._ids, **self.decode_kwargs) if self._ids else ""
        piece = text[self._printed :]
        self._ids, self._printed = [], 0
        self._next_is_prompt = True
        self.on_finalized_text(piece, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self._on_text is not None:
            self._on_text(text, stream_end)
        else:
            print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """A TextStreamer whose pieces are read by iterating it (run ``generate`` in a thread).

    Example:
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        threading.Thread(target=model.generate, kwargs=dict(input_ids=ids, streamer=streamer)).start()
        for piece in streamer:
            print(piece, end="")
    """

    _STOP = object()

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        timeout: float | None = None,
        **decode_kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, skip_prompt=skip_prompt, **decode_kwargs)
        self._queue: queue.Queue = queue.Queue()
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._queue.put(text)
        if stream_end:
            self._queue.put(self._STOP)

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        item = self._queue.get(timeout=self.timeout)
        if item is self._STOP:
            raise StopIteration
        return item
