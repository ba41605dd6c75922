"""``gpt2 generate``: greedy text equal across frameworks and to model.generate + decode,
streaming order, stdin, stop strings, interactive mode driven by a pipe, bad input."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conversion import cli
from conversion import generate as gen_cli
from gpt2_core import checkpoint
from gpt2_core.config import GPT2Config
from gpt2_core.init import random_state_dict
from gpt2_core.tokenizer_fast import GPT2TokenizerFast

# GPT-2's real vocabulary (so any prompt tokenises) on a tiny odd-sized body
CFG = GPT2Config(
    n_layer=2, n_embd=24, n_head=3, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
)
PROMPT = "Hello world, my name is"
FRAMEWORKS = gen_cli.installed_frameworks()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen") / "model"
    checkpoint.save_pretrained(random_state_dict(CFG, "lm", seed=0, std=0.3), CFG, d, "lm")
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(d)
    return d


def _run(argv, stdin=""):
    parser = cli.build_parser()
    args = parser.parse_args(["generate", *argv])
    out, err = io.StringIO(), io.StringIO()
    rc = gen_cli.run(args, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def greedy_texts(ckpt):
    texts = {}
    for fw in FRAMEWORKS:
        rc, out, _ = _run(
            [PROMPT, "--model", str(ckpt), "--framework", fw, "--max-new-tokens", "12"]
        )
        assert rc == 0
        texts[fw] = out
    return texts


def test_every_generation_setting_is_a_flag():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "generate",
            "x",
            "--model",
            "m",
            "--do-sample",
            "--temperature",
            "0.7",
            "--top-k",
            "5",
            "--top-p",
            "0.9",
            "--num-beams",
            "1",
            "--repetition-penalty",
            "1.2",
            "--no-repeat-ngram-size",
            "2",
            "--num-return-sequences",
            "2",
            "--seed",
            "3",
            "--stop",
            "a",
            "--stop",
            "b",
            "--eos-token-id",
            "5",
            "7",
            "--min-new-tokens",
            "1",
            "--early-stopping",
            "never",
        ]
    )
    kw = gen_cli.generation_kwargs(args)
    assert kw == dict(
        max_new_tokens=50,
        min_new_tokens=1,
        do_sample=True,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        num_beams=1,
        early_stopping="never",
        num_return_sequences=2,
        repetition_penalty=1.2,
        no_repeat_ngram_size=2,
        eos_token_id=[5, 7],
        seed=3,
    )
    assert args.stop == ["a", "b"]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_greedy_equals_api_and_other_frameworks(ckpt, greedy_texts, fw):
    model, tok = gen_cli.load(str(ckpt), fw)
    ids = np.asarray([tok.encode(PROMPT)])
    out = np.asarray(model.generate(gen_cli._to_framework(fw, ids, model), max_new_tokens=12))
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert greedy_texts[fw] == expected + "\n"
    assert len(set(greedy_texts.values())) == 1, greedy_texts


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_streaming_order_and_stop_string(ckpt, greedy_texts, fw):
    model, tok = gen_cli.load(str(ckpt), fw)
    pieces = []
    res = gen_cli.generate(model, tok, fw, PROMPT, {"max_new_tokens": 12}, write=pieces.append)
    assert len([p for p in pieces if p]) > 1  # streamed, not written once at the end
    assert "".join(pieces) == res.texts[0] == greedy_texts[fw][:-1]
    assert res.new_tokens == 12 and res.first_token_s is not None
    # a stop string from the middle of the text: output ends right before it
    full = res.texts[0]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    pieces = []
    res = gen_cli.generate(
        model, tok, fw, PROMPT, {"max_new_tokens": 12}, stops=[stop], write=pieces.append
    )
    assert "".join(pieces) == res.texts[0] == full[: full.index(stop)]


def test_prompt_from_stdin_and_file(ckpt, greedy_texts, tmp_path):
    fw = FRAMEWORKS[0]
    rc, out, _ = _run(
        ["--model", str(ckpt), "--framework", fw, "--max-new-tokens", "12"], stdin=PROMPT
    )
    assert rc == 0 and out == greedy_texts[fw]
    f = tmp_path / "p.txt"
    f.write_text(PROMPT)
    rc, out, _ = _run(
        ["--model", str(ckpt), "--prompt-file", str(f), "--framework", fw, "--max-new-tokens", "12"]
    )
    assert rc == 0 and out == greedy_texts[fw]


def test_beams_and_several_sequences_print_each(ckpt):
    rc, out, err = _run(
        [
            PROMPT,
            "--model",
            str(ckpt),
            "--framework",
            FRAMEWORKS[0],
            "--max-new-tokens",
            "5",
            "--num-beams",
            "3",
            "--num-return-sequences",
            "2",
            "-v",
        ]
    )
    assert rc == 0 and out.count("\n---\n") == 1
    assert "prompt tokens 6" in err and "tok/s" in err


def test_verbose_prints_timings(ckpt):
    rc, _, err = _run(
        [PROMPT, "--model", str(ckpt), "--framework", FRAMEWORKS[0], "--max-new-tokens", "4", "-v"]
    )
    assert rc == 0
    assert "loaded" in err and "time to first token" in err and "new tokens 4" in err


def test_interactive_mode_driven_by_a_pipe(ckpt, greedy_texts):
    fw = FRAMEWORKS[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "conversion",
            "generate",
            "--model",
            str(ckpt),
            "--framework",
            fw,
            "--max-new-tokens",
            "12",
            "--interactive",
        ],
        input=f"{PROMPT}\n{PROMPT}\n\nnot read\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == greedy_texts[fw] * 2
    assert p.stderr.count("> ") == 3  # two prompts answered, the empty line ends the loop


def test_bad_input_is_refused_clearly(ckpt, tmp_path, capsys):
    assert cli.main(["generate", "x", "--model", str(ckpt), "--temperature", "0"]) == 1
    assert "temperature must be a number > 0" in capsys.readouterr().err
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    assert cli.main(["generate", "x", "--model", str(other)]) == 1
    err = capsys.readouterr().err
    assert "model_type is 'llama', not 'gpt2'" in err and "config.json" in err
    assert (
        cli.main(["generate", "--model", str(ckpt), "--prompt-file", str(tmp_path / "missing.txt")])
        == 1
    )
    assert "cannot read --prompt-file" in capsys.readouterr().err
