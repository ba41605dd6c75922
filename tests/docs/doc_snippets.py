"""Extract the runnable code blocks of README.md and docs/*.md, and the workspace they run in.

The convention (documented in docs/testing.md, "Doc snippets"): every fenced ``python``,
``bash``, ``sh`` or ``console`` block is a test. HTML comments right before a block control it::

    <!-- doctest: setup=keras-lm; replace "max_new_tokens=40=>max_new_tokens=3" -->
    <!-- doctest: continue -->
    <!-- doctest: skip needs a GPU -->
    <!-- doctest: xfail issue 12: --data swallows OUT -->
    <!-- doctest: slow -->

One comment may hold several directives separated by ``;``, and several comments may be
stacked (blank lines between them and the fence are allowed, nothing else).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: info string -> how the block runs
LANGS = {
    "python": "python",
    "py": "python",
    "pycon": "python",
    "bash": "bash",
    "sh": "bash",
    "shell": "bash",
    "console": "console",
}

FENCE = re.compile(r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*doctest:(?P<body>.*?)-->\s*$")

#: the tiny model every block finds under these names (relative to the block's directory)
MODEL_DIRS = ("ckpt", "gpt2", "path/to/checkpoint", "path/to/gpt2")

#: appended to every ``gpt2 train`` / ``torchrun ... -m conversion train`` by the shims:
#: argparse keeps the last value, so these shrink the documented runs to a few seconds.
SMALL_TRAIN_ARGS = (
    "--steps 2 --batch-size 8 --block-size 16 --eval-every 2 --eval-batches 1 "
    "--save-every 2 --no-progress"
)


class DirectiveError(ValueError):
    """A ``<!-- doctest: ... -->`` comment that the runner does not understand."""


@dataclasses.dataclass
class Block:
    path: str  # relative to the repo root, e.g. "docs/keras.md"
    line: int  # 1-based line of the opening fence
    lang: str  # "python", "bash" or "console"
    code: str  # the block's text, replacements applied
    skip: str | None = None
    xfail: str | None = None
    slow: bool = False
    parallel: bool = False  # shell: each command at once, in its own process ("each host")
    cont: bool = False  # runs after (in the namespace / directory of) the previous block
    setup: tuple[str, ...] = ()
    timeout: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None  # a malformed directive: the test fails with this message

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/, found anew on each run."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def _apply_directives(block: Block, texts: list[str]) -> None:
    for text in texts:
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            word, _, rest = part.partition(" ")
            key, eq, value = word.partition("=")
            rest = rest.strip()
            if key in ("skip", "xfail"):
                reason = (value + " " + rest).strip()
                if not reason:
                    raise DirectiveError(f"`{key}` needs a reason")
                setattr(block, key, reason)
            elif key in ("slow", "continue", "parallel") and not (eq or rest):
                setattr(block, {"continue": "cont"}.get(key, key), True)
            elif key == "setup":
                names = (value + " " + rest).replace(",", " ").split()
                if not names:
                    raise DirectiveError("`setup` needs a name")
                block.setup += tuple(names)
            elif key == "timeout" and eq and not rest:
                block.timeout = float(value)
            elif key == "replace":
                for pair in shlex.split(rest):
                    old, sep, new = pair.partition("=>")
                    if not sep or not old:
                        raise DirectiveError(f"replace wants OLD=>NEW, got {pair!r}")
                    if old not in block.code:
                        raise DirectiveError(f"replace: {old!r} does not occur in the block")
                    block.code = block.code.replace(old, new)
            elif key == "env":
                for pair in shlex.split(rest):
                    k, sep, v = pair.partition("=")
                    if not sep:
                        raise DirectiveError(f"env wants NAME=VALUE, got {pair!r}")
                    block.env[k] = v
            else:
                raise DirectiveError(f"unknown doctest directive {part!r}")


def parse_markdown(path: Path, root: Path = ROOT) -> list[Block]:
    """The runnable blocks of one page, in order, with their directives applied."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: list[tuple[int, str]] = []  # (line, directive text) waiting for their fence
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        d = DIRECTIVE.match(lines[i])
        if d:
            pending.append((i + 1, d.group("body")))
            i += 1
            continue
        if not m:
            if lines[i].strip() and pending:
                blocks.append(
                    Block(
                        rel,
                        pending[0][0],
                        "python",
                        "",
                        error=("a doctest comment must come right before a fenced code block"),
                    )
                )
                pending = []
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(
            rf"^[ \t]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]
        ):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        lang = LANGS.get(info)
        if lang is None:
            if pending:
                blocks.append(
                    Block(
                        rel,
                        start + 1,
                        "python",
                        "",
                        error=(f"doctest directives on a ```{info} block, which is never run"),
                    )
                )
            pending = []
            continue
        indent = len(m.group("indent"))
        code = "\n".join(ln[indent:] if ln[:indent].isspace() else ln for ln in body) + "\n"
        block = Block(rel, start + 1, lang, code)
        try:
            _apply_directives(block, [t for _, t in pending])
        except DirectiveError as e:
            block.error = f"{rel}:{pending[0][0]}: {e}"
        pending = []
        blocks.append(block)
    if pending:
        blocks.append(
            Block(
                rel,
                pending[0][0],
                "python",
                "",
                error=("a doctest comment at the end of the page, with no block after it"),
            )
        )
    return blocks


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for f in doc_files(root) for b in parse_markdown(f, root)]


def console_commands(code: str) -> str:
    """The commands of a ``console`` block: lines starting with ``$ `` (and their ``\\``
    continuations); everything else is output and is not checked."""
    out: list[str] = []
    cont = False
    for ln in code.splitlines():
        if ln.startswith("$ ") or cont:
            out.append(ln[2:] if ln.startswith("$ ") and not cont else ln)
            cont = ln.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block, ``\\`` continuations joined, comments and blanks dropped."""
    cmds: list[str] = []
    cur = ""
    for ln in code.splitlines():
        if not cur and (not ln.strip() or ln.lstrip().startswith("#")):
            continue
        cur += ln + "\n"
        if not ln.rstrip().endswith("\\"):
            cmds.append(cur)
            cur = ""
    if cur:
        cmds.append(cur)
    return cmds


def shell_scripts(block: Block) -> list[str]:
    """What runs for a shell block: one ``bash -euo pipefail`` script, or with ``parallel`` one
    script per command (each with the set-up preludes), run at the same time."""
    code = console_commands(block.code) if block.lang == "console" else block.code
    setup = []
    for name in block.setup:
        if name not in SHELL_PRELUDES:
            raise DirectiveError(f"unknown shell setup {name!r}; known: {sorted(SHELL_PRELUDES)}")
        setup.append(SHELL_PRELUDES[name])
    head = "set -euo pipefail\n" + "".join(setup)
    if block.parallel:
        return [head + cmd for cmd in shell_commands(code)]
    return [head + code]


def shell_script(block: Block) -> str:
    return shell_scripts(block)[0]


#: shell run before a bash / console block, named by ``setup=``.
SHELL_PRELUDES: dict[str, str] = {
    # `gpt2 serve` blocks: background servers die with the block; wait_for_server PORT polls
    # /health (the README starts its server with `&` through a replace directive)
    "serve-helpers": (
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
        'wait_for_server() { for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:${1:-8000}'
        "/health\" >/dev/null && return 0; sleep 1; done; echo 'gpt2 serve did not start' >&2; "
        "return 1; }\n"
    ),
    # a server on the tiny checkpoint, for blocks that only talk to one
    "serve-ckpt": (
        "gpt2 serve --model ckpt --name gpt2 >serve.log 2>&1 &\n"
        "wait_for_server 8000 || { cat serve.log >&2; exit 1; }\n"
    ),
    # the prompt files docs/generation.md reads
    "prompt-files": "printf 'The meaning of life is' > prompt.txt && cp prompt.txt p.txt\n",
    # OpenAI's TF1 release layout (hparams.json, model.ckpt.*, encoder.json, vocab.bpe)
    "openai-release": "test -d openai-release || gpt2 convert ckpt openai-release --to openai "
    ">/dev/null\n",
}


# --------------------------------------------------------------------------- preludes
#: Python run before a block (after its page's namespace was reset), named by ``setup=``.
#: They define what the prose around a snippet assumes: ``tok``, ``model``, ``ids``, ...
PRELUDES: dict[str, str] = {
    # README: "Snippets below assume a checkpoint directory ckpt"
    "ckpt": """
ckpt = "ckpt"
""",
    # docs/generation.md's pipelines: one checkpoint per head, built from ckpt
    "head-ckpts": """
import shutil as _shutil
from gpt2_core import checkpoint as _ckpt
from gpt2_core.init import random_state_dict as _rsd
for _name, _head, _extra in (
        ("clf-ckpt", "sequence_classification",
         dict(num_labels=2, id2label={0: "negative", 1: "positive"}, pad_token_id=50256)),
        ("ner-ckpt", "token_classification",
         dict(num_labels=3, id2label={0: "O", 1: "B-ORG", 2: "I-ORG"})),
        ("qa-ckpt", "question_answering", dict(num_labels=2))):
    if not __import__("os").path.isdir(_name):
        if "id2label" in _extra:
            _extra["label2id"] = {v: k for k, v in _extra["id2label"].items()}
        _cfg = _ckpt.GPT2Config.from_pretrained("ckpt", **_extra)
        _ckpt.save_pretrained(_rsd(_cfg, _head, seed=0, std=0.3), _cfg, _name, _head)
        for _f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
            if __import__("os").path.exists(f"ckpt/{_f}"):
                _shutil.copy(f"ckpt/{_f}", f"{_name}/{_f}")
""",
    "torch-lm": """
from gpt2_core.tokenizer_fast import GPT2TokenizerFast
from gpt2_torch import GPT2LMHeadModel
tok = GPT2TokenizerFast.from_pretrained("ckpt")
model = GPT2LMHeadModel.from_pretrained("ckpt")
ids = tok("The meaning of life is", return_tensors="pt")["input_ids"]
""",
    "tok": """
from gpt2_core.tokenizer_fast import GPT2TokenizerFast
tok = GPT2TokenizerFast.from_pretrained("gpt2")
tok.pad_token, tok.padding_side = tok.eos_token, "left"
""",
    "torch-batch": """
import torch
ids = torch.tensor([[464, 3139, 286, 4881, 318], [15496, 11, 616, 3290, 13]])
mask = torch.ones_like(ids)
""",
    "tf-batch": """
import numpy as np
import tensorflow as tf
ids = tf.constant([[464, 3139, 286, 4881, 318, 257], [50256, 50256, 15496, 11, 616, 3290]],
                  dtype=tf.int32)
mask = tf.constant([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=tf.int32)
labels = tf.where(mask == 1, ids, -100)
batch_ids, batch_mask = ids, mask
y = np.array([0, 2])
""",
    "jax-batch": """
import jax, jax.numpy as jnp
ids = input_ids = jnp.array([[464, 3139, 286, 4881, 318, 257],
                             [50256, 50256, 15496, 11, 616, 3290]], dtype=jnp.int32)
mask = jnp.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=jnp.int32)
batch = jnp.array([[464, 3139, 286, 4881, 318, 257, 1, 2]] * 4, dtype=jnp.int32)
batches = [batch, batch]
""",
    "tokenizer": """
from gpt2_core.tokenizer import GPT2Tokenizer
tokenizer = GPT2Tokenizer.from_pretrained("gpt2")
""",
    # docs/jax.md's optax train step (the sharding section reuses it)
    "flax-train-step": """
import optax
from flax import nnx

def loss_fn(model, batch):
    return model(input_ids=batch, labels=batch, use_cache=False).loss

@nnx.jit
def train_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    return loss

model.train()
optimizer = nnx.Optimizer(model, optax.adamw(3e-4), wrt=nnx.Param)
""",
    "keras-lm": """
import keras, tensorflow as tf
from gpt2_tf import GPT2LMHeadModel, GPT2ForSequenceClassification
model = GPT2LMHeadModel.from_pretrained("ckpt")
clf = GPT2ForSequenceClassification.from_pretrained("ckpt", num_labels=3, pad_token_id=50256)
""",
    "flax-lm": """
import jax, jax.numpy as jnp
import gpt2_flax
from gpt2_flax import GPT2LMHeadModel
from gpt2_core.streamers import TextStreamer
model = GPT2LMHeadModel.from_pretrained("ckpt")
""",
}
