"""Regenerate tests/parity/pipeline_golden.json with transformers 4.57.6's pipelines.

    .venv/bin/python tests/parity/make_pipeline_golden.py --export /tmp/pipe_ckpts
    PYTHONPATH=/tmp/hfpkgs2:/tmp/hfpkgs .venv/bin/python tests/parity/make_pipeline_golden.py \
        --hf /tmp/pipe_ckpts

The first step (project venv) writes one tiny seeded checkpoint per head (GPT-2's real
vocabulary on a 2-layer, 24-wide, 3-head body, std-0.3 weights) with GPT-2's tokenizer files;
``test_pipelines.py`` rebuilds the same directories with :func:`build_checkpoints`. The second
step runs transformers' own ``pipeline(...)`` (PyTorch, eager attention) on them and writes the
JSON. It was run with transformers 4.57.6 installed with ``pip install --target /tmp/hfpkgs
--no-deps transformers==4.57.6`` plus ``tokenizers==0.22.2 huggingface_hub==0.36.2`` in
/tmp/hfpkgs2, on the project venv's torch 2.13.0+cpu.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
GOLDEN = HERE / "pipeline_golden.json"
BODY = dict(
    n_layer=2,
    n_embd=24,
    n_head=3,
    n_positions=64,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    pad_token_id=50256,
)
HEADS = {
    "lm": {},
    "sequence_classification": {"id2label": {0: "negative", 1: "neutral", 2: "positive"}},
    "token_classification": {"id2label": {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER"}},
    "question_answering": {},
}
PROMPTS = [
    "Hello, I'm a language model,",
    "The capital of France",
    "Once upon a time, in a land far away, there lived",
]
TEXTS = ["What a lovely day in Zürich!", "  spaces, tabs\tand\nnewlines ", "Bad."]
CONTEXT = (
    "GPT-2 was released by OpenAI in 2019. It has 1.5 billion parameters and was trained "
    "on WebText, eight million web pages."
)
QUESTIONS = ["Who released GPT-2?", "How many parameters does it have?"]
# (name, call kwargs); the text-generation runs are greedy (the pipeline's default samples)
GEN_RUNS = [
    ("single", dict(text_inputs=PROMPTS[0], do_sample=False, max_new_tokens=10)),
    (
        "new_text_only",
        dict(text_inputs=PROMPTS[1], do_sample=False, max_new_tokens=8, return_full_text=False),
    ),
    (
        "batched_left_padded",
        dict(text_inputs=PROMPTS, do_sample=False, max_new_tokens=7, batch_size=2),
    ),
    (
        "beams",
        dict(
            text_inputs=PROMPTS[2],
            do_sample=False,
            max_new_tokens=6,
            num_beams=3,
            num_return_sequences=2,
        ),
    ),
    (
        "penalties",
        dict(
            text_inputs=PROMPTS[0],
            do_sample=False,
            max_new_tokens=10,
            repetition_penalty=1.5,
            no_repeat_ngram_size=2,
        ),
    ),
]
CLS_RUNS = [
    ("single", dict(inputs=TEXTS[0])),
    ("list", dict(inputs=TEXTS)),
    ("all_labels", dict(inputs=TEXTS[0], top_k=None)),
    ("top2_list", dict(inputs=TEXTS[1:], top_k=2)),
    ("sigmoid", dict(inputs=TEXTS[2], function_to_apply="sigmoid")),
]
TOK_RUNS = [
    ("single", dict(inputs=TEXTS[0])),
    ("list_keep_O", dict(inputs=TEXTS[:2], ignore_labels=[])),
]
QA_RUNS = [
    ("single", dict(question=QUESTIONS[0], context=CONTEXT)),
    ("top3", dict(question=QUESTIONS[1], context=CONTEXT, top_k=3)),
]


def build_checkpoints(out: Path) -> dict[str, Path]:
    """One seeded checkpoint per head under ``out`` (deterministic: numpy's seeded generator)."""
    from gpt2_core import checkpoint
    from gpt2_core.config import GPT2Config
    from gpt2_core.init import random_state_dict
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    dirs = {}
    for i, (head, extra) in enumerate(HEADS.items()):
        cfg = GPT2Config(**BODY, **extra)
        d = out / head
        if not (d / "config.json").is_file():
            checkpoint.save_pretrained(
                random_state_dict(cfg, head, seed=10 + i, std=0.3), cfg, d, head
            )
            tok.save_pretrained(d)
        dirs[head] = d
    return dirs


def _plain(x):
    """numpy scalars (transformers' token-classification scores) -> Python numbers."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        return x.item()
    return x


def run_hf(src: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)

    def pipe(task, head):
        tok = transformers.AutoTokenizer.from_pretrained(src / head)
        tok.pad_token = tok.eos_token  # batching and QA padding need one (GPT-2 has none)
        if task == "text-generation":
            tok.padding_side = "left"  # decoder-only batches: left padding (gpt2-zoo always)
        return transformers.pipeline(
            task,
            model=str(src / head),
            tokenizer=tok,
            framework="pt",
            model_kwargs={"attn_implementation": "eager"},
        )

    result = {
        "transformers_version": transformers.__version__,
        "body": BODY,
        "text-generation": {},
        "text-classification": {},
        "token-classification": {},
        "question-answering": {},
    }
    gen = pipe("text-generation", "lm")
    for name, kw in GEN_RUNS:
        kw = dict(kw)
        result["text-generation"][name] = {
            "kwargs": dict(kw),
            "output": gen(kw.pop("text_inputs"), **kw),
        }
    clf = pipe("text-classification", "sequence_classification")
    for name, kw in CLS_RUNS:
        kw = dict(kw)
        result["text-classification"][name] = {
            "kwargs": dict(kw),
            "output": _plain(clf(kw.pop("inputs"), **kw)),
        }
    ner = pipe("token-classification", "token_classification")
    for name, kw in TOK_RUNS:
        kw = dict(kw)
        result["token-classification"][name] = {
            "kwargs": dict(kw),
            "output": _plain(ner(kw.pop("inputs"), **kw)),
        }
    qa = pipe("question-answering", "question_answering")
    for name, kw in QA_RUNS:
        result["question-answering"][name] = {"kwargs": dict(kw), "output": _plain(qa(**kw))}
    GOLDEN.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path)
    ap.add_argument("--hf", type=Path)
    a = ap.parse_args()
    if a.export:
        sys.path.insert(0, str(HERE.parents[1]))
        build_checkpoints(a.export)
    if a.hf:
        run_hf(a.hf)
