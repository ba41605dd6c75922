"""Golden fixtures produced by Hugging Face transformers 4.57.6, read without transformers.

The numbers under tests/fixtures/hf4576/ were written once by
tests/fixtures/hf4576/make_fixtures.py (in a separate venv that has transformers); tests only need
numpy, json and the `safetensors` package's numpy API. See tests/fixtures/hf4576/README.md for
what each case holds and the array naming scheme `<HeadClass>/<scenario>/<field>`.

Tests import it as a top-level module (tests/conftest.py puts tests/ on sys.path).

Example:
    >>> from golden import load_case
    >>> case = load_case("default")
    >>> case.get("GPT2LMHeadModel", "left_pad", "logits").shape      # (B, T, V)
    (3, 7, 257)
    >>> kwargs = case.inputs("GPT2LMHeadModel", "left_pad")          # forward() kwargs -> arrays
    >>> sorted(kwargs)
    ['attention_mask', 'input_ids', 'labels', 'position_ids']
    >>> case.valid_mask("GPT2LMHeadModel", "left_pad").shape         # compare only here
    (3, 7)

API:
    FIXTURES                       root folder of the fixture set
    HEADS, SCENARIOS, FORMATS      the names used in the fixtures
    list_cases() -> list[str]      tiny model cases ("default", "flags", "noscale", "cross", "summary")
    load_case(name) -> Case        cached; arrays are read-only
    list_formats() -> list[str]    checkpoint folders written by transformers (formats/<name>)
    format_dir(name) -> Path       the folder itself, to hand to a checkpoint reader
    load_format(name) -> FormatFixture   its files.json manifest and expected outputs
    config_dir(name) -> Path       configs/<name>/config.json was written by GPT2Config.save_pretrained
    load_config_expectations() -> dict   configs/expected.json (to_dict() etc. per config)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf4576"

HEADS = (
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2DoubleHeadsModel",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2ForQuestionAnswering",
)
SCENARIOS = ("nomask", "left_pad", "right_pad", "token_type")  # + enc_nomask, no_encoder (cross)
FORMATS = (
    "pt_safetensors",
    "pt_sharded",
    "pt_bin",
    "pt_bin_legacy",
    "base_only",
    "tf_lm",
    "tf_base",
    "tf_seqcls",
    "tf_double",
    "flax_lm",
    "flax_base",
    "flax_untied",
)


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


@dataclass(frozen=True)
class Case:
    """One tiny model case: its config, canonical weights and transformers' outputs.

    Attributes:
        name: case name, e.g. "default".
        path: the case folder.
        config_dict: config.json as written by transformers' GPT2Config.save_pretrained.
        weights: canonical state dict in HF PyTorch names and layouts: base weights with the
            `transformer.` prefix plus every head's parameters (lm_head.weight only if untied).
        golden: every array of golden.safetensors (inputs and outputs), flat names.
        meta: golden.json (runs, kwargs per run, generation records, notes, aliases).
    """

    name: str
    path: Path
    config_dict: dict
    weights: dict[str, np.ndarray] = field(repr=False)
    golden: dict[str, np.ndarray] = field(repr=False)
    meta: dict = field(repr=False)

    # -- what was run
    @property
    def heads(self) -> list[str]:
        return list(self.meta["heads"])

    @property
    def scenarios(self) -> list[str]:
        return list(self.meta["scenarios"])

    @property
    def tied(self) -> bool:
        return bool(self.meta["tied_word_embeddings"])

    @property
    def dims(self) -> dict[str, int]:
        """{"B": 3, "T": 7, "num_choices": 2} (+ "S" for the cross case)."""
        return dict(self.meta["dims"])

    def run_meta(self, head: str, scenario: str) -> dict:
        """golden.json's record of one forward: kwargs (arg -> array name), flags, fields, loss."""
        return self.meta["runs"][f"{head}/{scenario}"]

    def fields(self, head: str, scenario: str) -> list[str]:
        """Output fields recorded for one run, e.g. ["logits", "hidden_states/0", ...]."""
        return list(self.run_meta(head, scenario)["fields"])

    # -- arrays
    def key(self, head: str, scenario: str, field: str) -> str:
        """The golden.safetensors name of one output, following aliases."""
        name = f"{head}/{scenario}/{field}"
        return self.meta.get("aliases", {}).get(name, name)

    def has(self, head: str, scenario: str, field: str) -> bool:
        return self.key(head, scenario, field) in self.golden

    def get(self, head: str, scenario: str, field: str) -> np.ndarray:
        """One output array, e.g. get("GPT2LMHeadModel", "left_pad", "hidden_states/2").

        Fields: loss, mc_loss, logits, mc_logits, start_logits, end_logits, last_hidden_state,
        hidden_states/<i>, attentions/<i>, cross_attentions/<i>, past_key_values/<i>/key|value|
        cross_key|cross_value, grads/<param name>. Transformer-only outputs of the (B, T) heads
        are stored once under GPT2Model and resolved through meta["aliases"].
        """
        k = self.key(head, scenario, field)
        try:
            return self.golden[k]
        except KeyError:
            raise KeyError(f"{self.name}: no golden array {k!r}") from None

    def inputs(self, head: str, scenario: str) -> dict[str, np.ndarray]:
        """forward() keyword arguments exactly as transformers received them (labels included).

        Double heads take (B, C, T) inputs, except position_ids which HF 4.57.6 needs as (B*C, T).
        """
        kwargs = self.run_meta(head, scenario)["kwargs"]
        return {arg: self.golden[name] for arg, name in kwargs.items()}

    def valid_mask(self, head: str, scenario: str) -> np.ndarray:
        """Boolean (B, T) (or (B, C, T)) mask of the positions worth comparing: outputs at padded
        query positions are implementation-defined (fully masked softmax rows)."""
        kw = self.inputs(head, scenario)
        if "attention_mask" in kw:
            return kw["attention_mask"].astype(bool)
        return np.ones(kw["input_ids"].shape, bool)

    # -- cache and generation
    def cache(self, scenario: str = "left_pad") -> tuple[np.ndarray, dict]:
        """(logits (B, 2, V) of 2 single-token steps after a prefix pass, recipe dict)."""
        recipe = self.meta["cache"][f"GPT2LMHeadModel/cache_{scenario}"]
        return self.golden[recipe["logits"]], recipe

    def generation(self, name: str) -> dict:
        """One generate() record: kwargs, prompt arrays, sequences (np.int64) and, for beam search,
        sequences_scores. Names: greedy, greedy_penalties, beam, greedy_eos_list."""
        rec = dict(self.meta["generation"][name])
        rec["input_ids"] = self.golden[rec["input_ids"]]
        rec["attention_mask"] = self.golden[rec["attention_mask"]]
        rec["sequences"] = self.golden[f"generate/{name}/sequences"]
        if f"generate/{name}/sequences_scores" in self.golden:
            rec["sequences_scores"] = self.golden[f"generate/{name}/sequences_scores"]
        return rec

    # -- weights
    def base_weights(self) -> dict[str, np.ndarray]:
        """The GPT2Model state dict: `transformer.` keys with the prefix removed."""
        p = "transformer."
        return {k[len(p) :]: v for k, v in self.weights.items() if k.startswith(p)}


@dataclass(frozen=True)
class FormatFixture:
    """A checkpoint folder written by transformers, with its manifest and expected outputs.

    Attributes:
        name: e.g. "tf_lm".
        path: the folder (checkpoint files + config.json).
        files: files.json: per file the stored names/shapes (h5 datasets and attrs, msgpack paths,
            safetensors header, pickle globals and tensor table).
        expected: expected_logits.safetensors: inputs/..., outputs/<scenario>/<field> and, where
            the framework departs from PyTorch eager, pt_eager/<scenario>/<field>.
    """

    name: str
    path: Path
    files: dict = field(repr=False)
    expected: dict[str, np.ndarray] = field(repr=False)

    @property
    def config_dict(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @property
    def source_case(self) -> str:
        """The case whose weights were saved ("default", or "noscale" for flax_untied)."""
        return self.files.get("source_case", "default")


def _listed(folder: str, marker: str) -> list[str]:
    """Sub-folders of FIXTURES/folder holding ``marker``; none is an error, not zero tests."""
    names = sorted(p.name for p in (FIXTURES / folder).iterdir() if (p / marker).exists())
    if not names:
        raise FileNotFoundError(
            f"no {marker} under {FIXTURES / folder}: the committed "
            "fixtures are missing (git checkout tests/fixtures)"
        )
    return names


def list_cases() -> list[str]:
    return _listed("cases", "golden.json")


@functools.cache
def load_case(name: str) -> Case:
    d = FIXTURES / "cases" / name
    if not d.is_dir():
        raise FileNotFoundError(f"no golden case {name!r} under {FIXTURES / 'cases'}")
    return Case(
        name=name,
        path=d,
        config_dict=json.loads((d / "config.json").read_text()),
        weights=_read_only(load_file(str(d / "weights.safetensors"))),
        golden=_read_only(load_file(str(d / "golden.safetensors"))),
        meta=json.loads((d / "golden.json").read_text()),
    )


def list_formats() -> list[str]:
    return _listed("formats", "files.json")


def format_dir(name: str) -> Path:
    d = FIXTURES / "formats" / name
    if not d.is_dir():
        raise FileNotFoundError(f"no format fixture {name!r} under {FIXTURES / 'formats'}")
    return d


@functools.cache
def load_format(name: str) -> FormatFixture:
    d = format_dir(name)
    return FormatFixture(
        name=name,
        path=d,
        files=json.loads((d / "files.json").read_text()),
        expected=_read_only(load_file(str(d / "expected_logits.safetensors"))),
    )


def config_dir(name: str) -> Path:
    """configs/<name>/ ("default", "hub_gpt2", "custom"), holding a transformers config.json."""
    return FIXTURES / "configs" / name


def load_config_expectations() -> dict:
    """configs/expected.json: per config its init kwargs, to_dict(), to_diff_dict() and the
    to_dict() after GPT2Config.from_pretrained (round trip)."""
    return json.loads((FIXTURES / "configs" / "expected.json").read_text())
