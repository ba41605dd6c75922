"""Under ``torch.compile`` the id range check is an in-graph assertion, not a data-dependent
Python branch: no Dynamo graph break (issue #12), and a bad id still raises."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gpt2_core.init import tiny_config  # noqa: E402
from gpt2_torch import GPT2LMHeadModel  # noqa: E402


def test_forward_has_no_graph_break():
    model = GPT2LMHeadModel(tiny_config()).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(input_ids=ids, use_cache=False)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_forward_still_refuses_bad_ids():
    model = GPT2LMHeadModel(tiny_config()).eval()
    fwd = torch.compile(lambda ids: model(input_ids=ids, use_cache=False).logits, backend="eager")
    assert fwd(torch.tensor([[1, 2]])).shape == (1, 2, 257)
    with pytest.raises(RuntimeError, match="input_ids contains ids outside"):
        fwd(torch.tensor([[1, 999]]))
