"""GenerationConfig: the generation settings shared by every backend's ``generate``.

Field names and defaults follow transformers 4.x's ``GenerationConfig`` (max_length=20,
top_k=50, ...), restricted to the features every gpt2-zoo backend implements identically.
Validation happens once here, with errors that name the setting, so that the three backends
cannot drift in what they accept.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from gpt2_core.io_utils import atomic_write_text, load_json_file

logger = logging.getLogger(__name__)

# (eos id, vocab size) pairs already warned about: one warning per model, not per call
_WARNED_UNREACHABLE: set[tuple[int, int]] = set()

GENERATION_CONFIG_NAME = "generation_config.json"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class GenerationConfig:
    """Settings for ``model.generate`` in every backend.

    Args:
        max_length: prompt + new tokens (transformers' default 20); ignored if
            ``max_new_tokens`` is set.
        max_new_tokens: number of tokens to generate, prompt excluded.
        min_length / min_new_tokens: EOS is suppressed until this length is reached.
        do_sample: sample instead of greedy / beam search.
        temperature, top_k, top_p: sampling warpers (applied in that order, as transformers).
        num_beams: beam search width (1 = no beam search).
        length_penalty: beam score = sum logprobs / length ** length_penalty.
        early_stopping: beam search stops when ``num_beams`` hypotheses are done (True), uses
            the heuristic (False) or never stops early ("never"), as transformers.
        num_return_sequences: sequences returned per prompt (<= num_beams with beam search).
        repetition_penalty: CTRL-style penalty (> 1 discourages repeats).
        no_repeat_ngram_size: forbid repeating any n-gram of this size.
        eos_token_id: an id or a list of ids that end a sequence.
        pad_token_id: id written after a sequence ended (defaults to the first EOS id).
        bos_token_id: start id used when no prompt is given.
        seed: seed for sampling (each backend turns it into its own RNG).
        use_cache: decode with the KV cache (always True for the compiled paths).

    Example:
        >>> from gpt2_core.generation_config import GenerationConfig
        >>> g = GenerationConfig(max_new_tokens=8, num_beams=3, num_return_sequences=2)
        >>> g.eos_token_ids
        []
        >>> g.max_new_tokens_for(prompt_length=5, n_positions=1024)
        8
    """

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, tuple):
            self.eos_token_id = list(self.eos_token_id)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""

        def fail(msg: str) -> None:
            raise ValueError(f"GenerationConfig: {msg}")

        if not _is_int(self.max_length) or self.max_length < 1:
            fail(f"max_length must be an int >= 1, got {self.max_length!r}")
        if self.max_new_tokens is not None and (
            not _is_int(self.max_new_tokens) or self.max_new_tokens < 0
        ):
            fail(f"max_new_tokens must be None or an int >= 0, got {self.max_new_tokens!r}")
        if not _is_int(self.min_length) or self.min_length < 0:
            fail(f"min_length must be an int >= 0, got {self.min_length!r}")
        if self.min_new_tokens is not None and (
            not _is_int(self.min_new_tokens) or self.min_new_tokens < 0
        ):
            fail(f"min_new_tokens must be None or an int >= 0, got {self.min_new_tokens!r}")
        for name in ("do_sample", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be a bool, got {getattr(self, name)!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            fail(f"temperature must be a number > 0, got {t!r} (use do_sample=False for greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            fail(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            fail(f"top_p must be in (0, 1], got {p!r}")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            fail(f"num_beams must be an int >= 1, got {self.num_beams!r}")
        if self.do_sample and self.num_beams > 1:
            fail(
                "beam sampling (do_sample=True with num_beams > 1) is not supported; "
                "use num_beams=1 to sample or do_sample=False for beam search"
            )
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, int | float):
            fail(f"length_penalty must be a number, got {lp!r}")
        if self.early_stopping not in (True, False, "never"):
            fail(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        n = self.num_return_sequences
        if not _is_int(n) or n < 1:
            fail(f"num_return_sequences must be an int >= 1, got {n!r}")
        if self.num_beams > 1 and n > self.num_beams:
            fail(
                f"num_return_sequences ({n}) must be <= num_beams ({self.num_beams}) in beam search"
            )
        if not self.do_sample and self.num_beams == 1 and n > 1:
            fail(
                f"greedy search returns one sequence per prompt; num_return_sequences={n} "
                "needs do_sample=True or num_beams > 1"
            )
        rp = self.repetition_penalty
        if isinstance(rp, bool) or not isinstance(rp, int | float) or not rp > 0:
            fail(f"repetition_penalty must be a number > 0, got {rp!r}")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            fail(f"no_repeat_ngram_size must be an int >= 0, got {self.no_repeat_ngram_size!r}")
        eos = self.eos_token_id
        if eos is not None:
            ids = eos if isinstance(eos, list) else [eos]
            if not ids or not all(_is_int(e) and e >= 0 for e in ids):
                fail(f"eos_token_id must be an int >= 0 or a non-empty list of them, got {eos!r}")
        for name in ("pad_token_id", "bos_token_id", "seed"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 0):
                fail(f"{name} must be None or an int >= 0, got {v!r}")

    def validate_for_model(self, vocab_size: int, *, has_prompt: bool = True) -> None:
        """Check the token ids this config would use against the model's vocabulary (see
        :meth:`for_model`)."""
        self.for_model(vocab_size, has_prompt=has_prompt)

    def for_model(self, vocab_size: int, *, has_prompt: bool = True) -> GenerationConfig:
        """The config a model of ``vocab_size`` generates with: a copy, checked.

        Only ids that generation actually uses must be in the vocabulary:

        - an EOS id the model can never emit (``>= vocab_size``, e.g. 50256 kept by a model
          trained with a 300-token vocabulary, which transformers accepts) is harmless: it is
          dropped from the copy's EOS list, with a warning once per id and vocabulary size;
        - the pad id is written after a reachable EOS (and fills beams): it must fit then;
        - the BOS id starts generation when there is no prompt: it must fit then.

        The pad id is fixed before the EOS list is trimmed (an implicit pad becomes the first
        reachable EOS), so mask inference and padding see a stable pad.

        Raises:
            ValueError: naming the id that is used but outside ``[0, vocab_size)``.
        """
        out = copy.deepcopy(self)
        eos = self.eos_token_ids
        reachable = [e for e in eos if e < vocab_size]
        unreachable = [e for e in eos if e >= vocab_size]
        for e in unreachable:
            if (e, vocab_size) not in _WARNED_UNREACHABLE:
                _WARNED_UNREACHABLE.add((e, vocab_size))
                logger.warning(
                    "eos_token_id %d is outside the vocabulary (size %d): the model "
                    "can never emit it, so it never ends a sequence",
                    e,
                    vocab_size,
                )
        if unreachable:
            # an implicit pad is the first EOS (transformers): the first one the model can emit
            out.pad_token_id = (
                self.pad_token_id
                if self.pad_token_id is not None
                else reachable[0]
                if reachable
                else self.effective_pad_token_id
            )
            out.eos_token_id = (
                reachable
                if isinstance(self.eos_token_id, list) and reachable
                else reachable[0]
                if reachable
                else None
            )
        if reachable and out.effective_pad_token_id >= vocab_size:
            raise ValueError(
                f"GenerationConfig: pad_token_id {out.effective_pad_token_id} is "
                f"outside the vocabulary (size {vocab_size}); it is written after "
                f"EOS {reachable[0]}: set pad_token_id to an id below {vocab_size}"
            )
        if not has_prompt and self.bos_token_id is not None and self.bos_token_id >= vocab_size:
            raise ValueError(
                f"GenerationConfig: bos_token_id {self.bos_token_id} is outside the "
                f"vocabulary (size {vocab_size}) and there is no prompt to start "
                "from: pass input_ids or a bos_token_id below the vocabulary size"
            )
        return out

    # ------------------------------------------------------------------ derived values
    @property
    def eos_token_ids(self) -> list[int]:
        """EOS ids as a list (empty when there is none)."""
        if self.eos_token_id is None:
            return []
        return (
            list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]
        )

    @property
    def effective_pad_token_id(self) -> int:
        """pad_token_id, else the first EOS id (transformers does the same, with a warning), else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    @property
    def is_beam_search(self) -> bool:
        return self.num_beams > 1

    def max_new_tokens_for(self, prompt_length: int, n_positions: int | None = None) -> int:
        """New tokens to generate for a prompt; raise if the result cannot fit the positions."""
        if self.max_new_tokens is not None:
            new = self.max_new_tokens
        else:
            new = self.max_length - prompt_length
            if new <= 0:
                raise ValueError(
                    f"GenerationConfig: the prompt has {prompt_length} tokens but max_length is "
                    f"{self.max_length}; set max_new_tokens (or a larger max_length)"
                )
        if n_positions is not None and prompt_length + new > n_positions:
            raise ValueError(
                f"GenerationConfig: prompt length {prompt_length} + {new} new tokens exceeds the "
                f"model's n_positions ({n_positions})"
            )
        return new

    def min_new_tokens_for(self, prompt_length: int) -> int:
        """New tokens during which EOS is suppressed (from min_new_tokens or min_length)."""
        if self.min_new_tokens is not None:
            return self.min_new_tokens
        return max(0, self.min_length - prompt_length)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any) -> GenerationConfig:
        """Defaults from a GPT2Config (bos/eos/pad ids), overridden by ``kwargs``."""
        base = {
            "eos_token_id": getattr(config, "eos_token_id", None),
            "bos_token_id": getattr(config, "bos_token_id", None),
            "pad_token_id": getattr(config, "pad_token_id", None),
        }
        base.update(kwargs)
        return cls.from_dict(base)

    def update(self, **kwargs: Any) -> GenerationConfig:
        """A validated copy with ``kwargs`` applied; unknown names raise ``TypeError``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown generation argument(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        d = asdict(self)
        d.update(kwargs)
        return GenerationConfig(**d)

    @classmethod
    def resolve(
        cls, generation_config: GenerationConfig | None, model_config: Any, **kwargs: Any
    ) -> GenerationConfig:
        """What ``generate(**kwargs)`` uses: the given config (or the model's defaults) + kwargs."""
        base = (
            generation_config
            if generation_config is not None
            else cls.from_model_config(model_config)
        )
        return base.update(**kwargs) if kwargs else base

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenerationConfig:
        """From a dict such as transformers' generation_config.json; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / GENERATION_CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GenerationConfig:
        path = Path(directory)
        if path.is_dir():
            path = path / GENERATION_CONFIG_NAME
        try:
            d = load_json_file(path, "generation config")
        except OSError as e:
            raise ValueError(f"cannot read generation config {path}: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)


def normalize_eos(eos: int | Sequence[int] | None) -> list[int]:
    """An EOS argument (int, list or None) as a list of ids."""
    if eos is None:
        return []
    if _is_int(eos):
        return [int(eos)]
    return [int(e) for e in eos]


def sampling_seed(seed: int | None) -> int:
    """The seed a sampling ``generate`` call uses: ``seed`` when given (reproducible), else a
    fresh one from the OS's entropy, so that two unseeded calls draw different samples.

    This is the one unseeded-sampling rule of the TF and Flax backends; torch draws from
    torch's global generator instead (so ``torch.manual_seed`` applies, as in transformers).

    Example:
        >>> sampling_seed(7)
        7
        >>> 0 <= sampling_seed(None) < 2**31
        True
    """
    if seed is not None:
        return int(seed)
    return int(np.random.SeedSequence().entropy % 2**31)
