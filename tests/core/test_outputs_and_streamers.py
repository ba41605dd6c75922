"""Output containers (transformers' field names, tuple indexing) and the streamer protocol."""

import threading

import pytest

from gpt2_core.outputs import CausalLMOutputWithCrossAttentions, GPT2DoubleHeadsModelOutput
from gpt2_core.streamers import CallbackStreamer, TextIteratorStreamer, TextStreamer


def test_output_indexing_skips_none_and_keeps_order():
    out = CausalLMOutputWithCrossAttentions(logits="L", loss="l", hidden_states=None)
    assert out.to_tuple() == ("l", "L") and out[0] == "l" and out["logits"] == "L"
    assert out.hidden_states is None and "hidden_states" not in out
    out.past_key_values = "P"
    assert list(out) == ["loss", "logits", "past_key_values"]
    assert out[1:] == ("L", "P")
    with pytest.raises(TypeError, match="no field"):
        CausalLMOutputWithCrossAttentions(mc_logits=1)
    with pytest.raises(AttributeError):
        out.start_logits
    assert GPT2DoubleHeadsModelOutput(logits=1, mc_logits=2).to_tuple() == (1, 2)


class _Tok:
    """Decodes ids as characters: 1 -> 'a', 2 -> ' ', 3 -> '\\n'."""

    def decode(self, ids, **_):
        return "".join({1: "a", 2: " ", 3: "\n"}[i] for i in ids)


def test_callback_streamer_skips_prompt():
    got = []
    s = CallbackStreamer(got.append)
    s.put([[1, 1]])
    s.put([2])
    s.put([[1]])
    s.end()
    assert got == [[2], [1]]


def test_text_streamer_emits_whole_words_then_rest():
    pieces = []
    s = TextStreamer(_Tok(), skip_prompt=True, on_text=lambda t, end: pieces.append((t, end)))
    for ids in ([[1]], [1], [1], [2], [1], [3], [1]):
        s.put(ids)
    s.end()
    text = "".join(p for p, _ in pieces)
    assert text == "aa a\na"
    assert pieces[-1][1] is True


def test_text_iterator_streamer_in_a_thread():
    s = TextIteratorStreamer(_Tok(), timeout=5)

    def produce():
        for ids in ([[1]], [2], [1], [2]):
            s.put(ids)
        s.end()

    threading.Thread(target=produce).start()
    assert "".join(s) == "a a "


def test_output_rebuilds_from_pairs_like_a_dict():
    out = CausalLMOutputWithCrossAttentions(loss=1, logits=2)
    again = type(out)(list(out.items()))
    assert again == out and again.to_tuple() == (1, 2)
    assert type(out)(dict(out)) == out
    assert CausalLMOutputWithCrossAttentions(3).loss == 3  # positional still means fields
