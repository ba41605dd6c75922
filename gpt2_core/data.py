"""Training data for causal-LM fine-tuning, identical in every framework.

Text files are tokenised with the GPT-2 tokenizer, joined with ``<|endoftext|>`` between
documents, split into a training and a held-out part, and packed into blocks of
``block_size`` tokens. The order of blocks depends only on the seed and the step, never on
the framework or on how many processes read it, so the three backends see the same batches
and a resumed run continues with exactly the batches it would have seen.

Example:
    >>> import numpy as np
    >>> from gpt2_core.data import PackedDataset
    >>> ds = PackedDataset(np.arange(100, dtype=np.int32), block_size=8)
    >>> len(ds), ds.batch(step=0, batch_size=2, seed=0).shape
    (12, (2, 8))
"""

from __future__ import annotations

import glob
import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """Bad training data (missing or empty files, too little text for one block)."""


def resolve_files(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files / globs / directories (``*.txt`` inside) into a sorted list of files."""
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    files: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            matches = sorted(p.rglob("*.txt")) + sorted(p.rglob("*.md"))
            if not matches:
                raise DataError(f"directory {p} holds no .txt or .md files")
        elif any(ch in str(pat) for ch in "*?["):
            matches = [
                Path(m) for m in sorted(glob.glob(str(pat), recursive=True)) if Path(m).is_file()
            ]
            if not matches:
                raise DataError(f"no file matches {pat!r}")
        else:
            if not p.is_file():
                raise DataError(f"data file {p} does not exist")
            matches = [p]
        files.extend(matches)
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    for f in unique:
        if f.stat().st_size == 0:
            raise DataError(f"data file {f} is empty")
    return unique


def _encode_document(tokenizer: Any, text: str) -> list[int]:
    """A whole document's ids. Documents longer than the model's context are expected here
    (they are packed into blocks), so the tokenizer's "sequence length is longer than the
    specified maximum" warning is turned off where the tokenizer has the switch."""
    if "verbose" in inspect.signature(tokenizer.encode).parameters or hasattr(
        tokenizer, "model_max_length"
    ):
        return tokenizer.encode(text, verbose=False)
    return tokenizer.encode(text)


def tokenize_files(
    files: Iterable[Path], tokenizer: Any, eos_token_id: int | None = None
) -> np.ndarray:
    """Token ids of every file, in order, each document followed by EOS (int32)."""
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    chunks: list[np.ndarray] = []
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"data file {f} is not UTF-8 text: {e}") from e
        if not text.strip():
            raise DataError(f"data file {f} holds no text")
        ids = _encode_document(tokenizer, text)
        chunks.append(np.asarray([*ids, eos], dtype=np.int32))
    if not chunks:
        raise DataError("no data files")
    return np.concatenate(chunks)


def train_eval_split(
    tokens: np.ndarray, eval_fraction: float, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The last ``eval_fraction`` of the tokens (at least one block) is held out."""
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction == 0:
        return tokens, tokens[:0]
    n_eval = max(block_size, int(len(tokens) * eval_fraction))
    if len(tokens) - n_eval < block_size:
        raise DataError(
            f"{len(tokens)} tokens are too few for a training block and a held-out block of "
            f"{block_size} tokens; add text or lower --block-size"
        )
    return tokens[:-n_eval], tokens[-n_eval:]


@dataclass
class PackedDataset:
    """Non-overlapping blocks of ``block_size`` tokens cut from one token stream."""

    tokens: np.ndarray
    block_size: int

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise DataError(f"block size must be >= 2, got {self.block_size}")
        if len(self.tokens) < self.block_size:
            raise DataError(
                f"{len(self.tokens)} tokens are fewer than one block of {self.block_size}"
            )

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def block(self, i: int) -> np.ndarray:
        return self.tokens[i * self.block_size : (i + 1) * self.block_size]

    def order(self, epoch: int, seed: int) -> np.ndarray:
        """Block permutation of ``epoch``: a function of (seed, epoch) only."""
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Blocks of global batch ``step`` as (batch_size, block_size) int32.

        Batches run through shuffled epochs back to back; a batch that crosses an epoch end
        takes the rest from the next epoch's order, so every step has a full batch.
        """
        n = len(self)
        start = step * batch_size
        orders: dict[int, np.ndarray] = {}
        idx = []
        for j in range(start, start + batch_size):
            epoch, pos = divmod(j, n)
            if epoch not in orders:
                orders[epoch] = self.order(epoch, seed)
            idx.append(orders[epoch][pos])
        return np.stack([self.block(i) for i in idx])

    def eval_batches(self, batch_size: int) -> Iterable[np.ndarray]:
        """Every block once, in order (for held-out loss)."""
        for s in range(0, len(self), batch_size):
            yield np.stack([self.block(i) for i in range(s, min(s + batch_size, len(self)))])


def load_training_data(
    patterns: Any,
    tokenizer: Any,
    block_size: int,
    eval_fraction: float = 0.1,
    n_positions: int | None = None,
) -> tuple[PackedDataset, PackedDataset | None]:
    """Files -> (train, eval) datasets, with every input problem raised before training."""
    if n_positions is not None and block_size > n_positions:
        raise DataError(
            f"--block-size {block_size} exceeds the model's n_positions ({n_positions})"
        )
    files = resolve_files(patterns)
    tokens = tokenize_files(files, tokenizer)
    train, held = train_eval_split(tokens, eval_fraction, block_size)
    return PackedDataset(train, block_size), (
        PackedDataset(held, block_size) if len(held) else None
    )
