"""Pipelines in every framework against transformers 4.57.6's own pipelines on the same
checkpoints (tests/parity/pipeline_golden.json, made by make_pipeline_golden.py)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import make_pipeline_golden as mpg

from conversion.generate import installed_frameworks
from gpt2_core import pipelines

GOLDEN = json.loads(mpg.GOLDEN.read_text("utf-8"))
FRAMEWORKS = installed_frameworks()
TASK_HEAD = {
    "text-generation": "lm",
    "text-classification": "sequence_classification",
    "token-classification": "token_classification",
    "question-answering": "question_answering",
}
RUNS = [(task, name) for task in TASK_HEAD for name in GOLDEN[task]]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return mpg.build_checkpoints(tmp_path_factory.mktemp("pipe"))


_PIPES: dict = {}


def _pipe(dirs, task, fw):
    if (task, fw) not in _PIPES:
        _PIPES[task, fw] = pipelines.pipeline(task, model=str(dirs[TASK_HEAD[task]]), framework=fw)
    return _PIPES[task, fw]


def _same(ours, theirs, where=""):
    """Equal structure and values; float scores to 1e-5 relative (numpy vs framework softmax)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), (where, ours, theirs)
        for k in theirs:
            _same(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (where, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-7), where
    else:
        assert ours == theirs, (where, ours, theirs)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("task,name", RUNS)
def test_pipeline_equals_transformers(dirs, task, name, fw):
    run = GOLDEN[task][name]
    kw = dict(run["kwargs"])
    pipe = _pipe(dirs, task, fw)
    if task == "question-answering":
        out = pipe(**kw)
    else:
        out = pipe(kw.pop("text_inputs" if task == "text-generation" else "inputs"), **kw)
    _same(out, run["output"], f"{task}/{name}/{fw}")


def test_backend_entry_points_and_model_objects(dirs):
    fw = FRAMEWORKS[0]
    backend = __import__(f"gpt2_{fw}.pipelines", fromlist=["pipeline"])
    gen = backend.pipeline("text-generation", model=str(dirs["lm"]))
    assert gen.framework == fw
    expected = GOLDEN["text-generation"]["single"]
    kw = dict(expected["kwargs"])
    assert gen(kw.pop("text_inputs"), **kw) == expected["output"]
    # a model object (any framework) instead of a path; the tokenizer falls back to GPT-2's
    again = pipelines.pipeline("text-generation", model=gen.model)
    assert again.framework == fw
    kw = dict(expected["kwargs"])
    assert again(kw.pop("text_inputs"), **kw) == expected["output"]


def test_pipeline_defaults_sample_like_transformers(dirs):
    gen = pipelines.pipeline("text-generation", model=str(dirs["lm"]), framework=FRAMEWORKS[0])
    g = gen.generation_config
    assert (g.max_new_tokens, g.do_sample, g.temperature) == (256, True, 0.7)
    a = gen(mpg.PROMPTS[0], max_new_tokens=5, seed=1)
    assert a == gen(mpg.PROMPTS[0], max_new_tokens=5, seed=1)  # seeded sampling repeats
    tokens = gen(mpg.PROMPTS[0], max_new_tokens=5, do_sample=False, return_tensors=True)
    assert len(tokens[0]["generated_token_ids"]) == len(gen.tokenizer.encode(mpg.PROMPTS[0])) + 5


def test_bad_requests_are_refused(dirs, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'summarization'"):
        pipelines.pipeline("summarization", model=str(dirs["lm"]))
    with pytest.raises(ValueError, match="needs model="):
        pipelines.pipeline("text-generation")
    with pytest.raises(ValueError, match="unknown framework 'mxnet'"):
        pipelines.pipeline("text-generation", model=str(dirs["lm"]), framework="mxnet")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ValueError, match="model_type is 'bert', not 'gpt2'"):
        pipelines.pipeline("text-classification", model=str(bert))
    clf = _pipe(dirs, "text-classification", FRAMEWORKS[0])
    with pytest.raises(ValueError, match="function_to_apply must be"):
        clf("hi", function_to_apply="relu")
    with pytest.raises(ValueError, match="needs a lm model"):
        pipelines.pipeline("text-generation", model=clf.model)
