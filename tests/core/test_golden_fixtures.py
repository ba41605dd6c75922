"""The transformers 4.57.6 golden fixture set is complete and self-consistent.

These tests need no transformers: numpy, safetensors, h5py and msgpack only. They check that every
expected file exists, that array shapes follow each case's config, that the recorded runs resolve
to arrays, and that the checkpoint files in formats/ hold the `default` case weights in the
layouts the README documents (so a reader test can trust them).

Shape legend: B, C, T, S, E, H, D, V = batch, choices, time, encoder time, channels, heads,
head dim, vocab.
"""

from __future__ import annotations

import json

import golden  # tests/ is on sys.path (tests/conftest.py)
import numpy as np
import pytest
from safetensors.numpy import load_file

CASES = ("cross", "default", "flags", "noscale", "summary")
PAD = 256
TF_LEAF = {"embeddings": "weight", "gamma": "weight", "beta": "bias", "kernel": "weight"}
FLAX_LEAF = {"embedding": "weight", "scale": "weight", "kernel": "weight"}


def test_fixture_tree_is_complete():
    root = golden.FIXTURES
    for rel in (
        "README.md",
        "make_fixtures.py",
        "check_loads_in_transformers.py",
        "configs/expected.json",
        "versions.json",
    ):
        assert (root / rel).is_file(), rel
    for name in ("default", "hub_gpt2", "custom"):
        assert (golden.config_dir(name) / "config.json").is_file()
    assert tuple(golden.list_cases()) == CASES
    for case in CASES:
        for f in ("config.json", "weights.safetensors", "golden.safetensors", "golden.json"):
            assert (root / "cases" / case / f).is_file(), (case, f)
    assert sorted(golden.list_formats()) == sorted(golden.FORMATS)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 7_000_000, f"fixtures grew to {size} bytes"


def test_config_expectations_cover_the_three_configs():
    exp = golden.load_config_expectations()
    assert exp["transformers_version"] == "4.57.6"
    for name in ("default", "hub_gpt2", "custom"):
        written = json.loads((golden.config_dir(name) / "config.json").read_text())
        assert written["model_type"] == "gpt2"
        assert exp[name]["reloaded_to_dict"]["n_embd"] == exp[name]["to_dict"]["n_embd"]
    assert exp["hub_gpt2"]["to_dict"]["n_ctx"] == 1024
    custom = exp["custom"]["to_dict"]
    assert custom["my_custom_key"] == [1, 2]
    assert custom["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    assert custom["activation_function"] == "relu"


@pytest.mark.parametrize("name", CASES)
def test_case_weights_follow_config(name):
    case = golden.load_case(name)
    cfg = case.config_dict
    E, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
    F = cfg["n_inner"] or 4 * E
    w = case.weights
    assert (E, V, P, L) == (36, 257, 32, 2)
    assert w["transformer.wte.weight"].shape == (V, E)
    assert w["transformer.wpe.weight"].shape == (P, E)
    for i in range(L):
        h = f"transformer.h.{i}."
        assert w[h + "attn.c_attn.weight"].shape == (E, 3 * E)  # Conv1D: (in, out)
        assert w[h + "attn.c_attn.bias"].shape == (3 * E,)
        assert w[h + "mlp.c_fc.weight"].shape == (E, F)
        assert w[h + "mlp.c_proj.weight"].shape == (F, E)
        assert not any(k.endswith((".attn.bias", ".masked_bias")) for k in w)  # buffers
        if cfg.get("add_cross_attention"):
            assert w[h + "crossattention.c_attn.weight"].shape == (E, 2 * E)
            assert w[h + "crossattention.q_attn.weight"].shape == (E, E)
            assert w[h + "ln_cross_attn.weight"].shape == (E,)
    assert ("lm_head.weight" in w) == (not case.tied)
    if not case.tied:
        assert w["lm_head.weight"].shape == (V, E)
    if "GPT2ForSequenceClassification" in case.heads:
        assert w["score.weight"].shape == (3, E)
        assert w["classifier.weight"].shape == (3, E)
        assert w["qa_outputs.weight"].shape == (2, E)
        n_mc = E if cfg["summary_proj_to_labels"] is False else 1
        assert w["multiple_choice_head.summary.weight"].shape == (n_mc, E)
    assert all(a.dtype == np.float32 for a in w.values())
    assert sorted(w) == case.meta["weights_keys"]
    assert case.base_weights()["wte.weight"] is w["transformer.wte.weight"]


@pytest.mark.parametrize("name", CASES)
def test_every_recorded_run_resolves(name):
    case = golden.load_case(name)
    for run_key, run in case.meta["runs"].items():
        head, scenario = run_key.split("/")
        for arg, array_name in run["kwargs"].items():
            assert array_name in case.golden, (run_key, arg)
        for f in run["fields"]:
            assert case.has(head, scenario, f), (run_key, f)
        if "loss" in run:
            assert case.get(head, scenario, "loss").shape == ()
            assert np.isclose(float(case.get(head, scenario, "loss")), run["loss"])
            assert np.isfinite(run["loss"])


@pytest.mark.parametrize("name", CASES)
def test_output_shapes_follow_config(name):
    case = golden.load_case(name)
    cfg = case.config_dict
    B, T, C = case.dims["B"], case.dims["T"], case.dims["num_choices"]
    E, V, H, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_head"], cfg["n_layer"]
    D = E // H
    for scenario in case.scenarios:
        get = case.get
        assert get("GPT2LMHeadModel", scenario, "logits").shape == (B, T, V)
        assert get("GPT2Model", scenario, "last_hidden_state").shape == (B, T, E)
        for i in range(L + 1):
            assert get("GPT2LMHeadModel", scenario, f"hidden_states/{i}").shape == (B, T, E)
        np.testing.assert_array_equal(
            get("GPT2Model", scenario, f"hidden_states/{L}"),
            get("GPT2Model", scenario, "last_hidden_state"),
        )
        if case.has("GPT2Model", scenario, "attentions/0"):
            for i in range(L):
                att = get("GPT2Model", scenario, f"attentions/{i}")
                assert att.shape == (B, H, T, T)
                np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)  # softmax rows
        if case.has("GPT2Model", scenario, "past_key_values/0/key"):
            for i in range(L):
                value = get("GPT2Model", scenario, f"past_key_values/{i}/value")
                assert value.shape == (B, H, T, D)
        if case.has("GPT2Model", scenario, "cross_attentions/0"):
            S = case.dims["S"]
            assert get("GPT2Model", scenario, "cross_attentions/0").shape == (B, H, T, S)
        if case.has("GPT2Model", scenario, "past_key_values/0/cross_key"):
            S = case.dims["S"]
            assert get("GPT2Model", scenario, "past_key_values/0/cross_key").shape == (B, H, S, D)
        if "GPT2DoubleHeadsModel" not in case.heads:
            continue
        assert get("GPT2ForSequenceClassification", scenario, "logits").shape == (B, 3)
        assert get("GPT2ForTokenClassification", scenario, "logits").shape == (B, T, 3)
        assert get("GPT2ForQuestionAnswering", scenario, "start_logits").shape == (B, T)
        assert get("GPT2ForQuestionAnswering", scenario, "end_logits").shape == (B, T)
        mc = get("GPT2DoubleHeadsModel", scenario, "mc_logits")
        # summary_type="mean" averages HF's (B, C, T, E) over the choices axis (see README).
        assert mc.shape == ((B, T, E) if cfg["summary_type"] == "mean" else (B, C))
    if "GPT2DoubleHeadsModel" in case.heads:
        assert case.get("GPT2DoubleHeadsModel", "nomask", "logits").shape == (B, C, T, V)
        assert case.get("GPT2DoubleHeadsModel", "nomask", "hidden_states/0").shape == (B * C, T, E)


@pytest.mark.parametrize("name", CASES)
def test_gradients_recorded_for_lm_and_seqcls(name):
    case = golden.load_case(name)
    heads = ["GPT2LMHeadModel"] + (["GPT2ForSequenceClassification"] if name != "cross" else [])
    for head in heads:
        grads = case.run_meta(head, "left_pad")["grads"]
        assert "transformer.h.0.attn.c_attn.weight" in grads
        for p in grads:
            g = case.get(head, "left_pad", f"grads/{p}")
            assert g.shape == case.weights[p].shape
            assert np.isfinite(g).all() and np.abs(g).max() > 0


@pytest.mark.parametrize("name", CASES)
def test_padded_inputs_use_pad_only_where_masked(name):
    case = golden.load_case(name)
    for scenario in ("left_pad", "right_pad"):
        kw = case.inputs("GPT2LMHeadModel", scenario)
        ids, mask = kw["input_ids"], kw["attention_mask"]
        assert ((ids == PAD) == (mask == 0)).all()
        assert case.valid_mask("GPT2LMHeadModel", scenario).sum() == mask.sum()
    left = case.inputs("GPT2LMHeadModel", "left_pad")
    expect = np.maximum(np.cumsum(left["attention_mask"], -1) - 1, 0)
    np.testing.assert_array_equal(left["position_ids"], expect)
    assert (left["labels"][left["attention_mask"] == 0] == -100).all()


@pytest.mark.parametrize("name", CASES)
def test_cache_steps_match_full_pass(name):
    case = golden.load_case(name)
    for scenario in ("nomask", "left_pad"):
        steps, recipe = case.cache(scenario)
        full = case.get("GPT2LMHeadModel", scenario, "logits")[:, -recipe["steps"] :]
        assert steps.shape == full.shape
        np.testing.assert_allclose(steps, full, atol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_generation_sequences_start_with_prompts(name):
    case = golden.load_case(name)
    B, T = case.dims["B"], case.dims["T"]
    for gen_name in ("greedy", "greedy_penalties", "beam", "greedy_eos_list"):
        rec = case.generation(gen_name)
        seqs, prompt = rec["sequences"], rec["input_ids"]
        n_ret = rec["kwargs"].get("num_return_sequences", 1)
        assert seqs.shape[0] == B * n_ret
        assert seqs.shape[1] <= T + rec["kwargs"]["max_new_tokens"]
        np.testing.assert_array_equal(seqs[:, :T], np.repeat(prompt, n_ret, axis=0))
        assert rec["kwargs"]["pad_token_id"] == PAD
    assert case.generation("greedy")["sequences"].shape == (B, T + 12)
    beam = case.generation("beam")
    assert beam["sequences_scores"].shape == (B * 2,)
    # min_new_tokens=5 keeps eos (256) out of the first 5 new tokens.
    pen = case.generation("greedy_penalties")["sequences"][:, T : T + 5]
    assert (pen != PAD).all()
    # A row that emitted one of the eos ids is filled with pad afterwards.
    eos = case.generation("greedy_eos_list")
    ids = eos["kwargs"]["eos_token_id"]
    for row in eos["sequences"][:, T:]:
        hits = np.flatnonzero(np.isin(row, ids))
        if hits.size:
            assert (row[hits[0] + 1 :] == PAD).all()


def _default_weights() -> dict[str, np.ndarray]:
    return golden.load_case("default").weights


@pytest.mark.parametrize("name", ["pt_safetensors", "pt_sharded", "base_only"])
def test_safetensors_formats_hold_default_weights(name):
    d = golden.format_dir(name)
    stored: dict[str, np.ndarray] = {}
    if name == "pt_sharded":
        index = json.loads((d / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) >= 3
        for shard in shards:
            part = load_file(str(d / shard))
            assert all(index["weight_map"][k] == shard for k in part)
            stored.update(part)
    else:
        stored = load_file(str(d / "model.safetensors"))
    prefix = "" if name == "base_only" else "transformer."
    want = {k: v for k, v in _default_weights().items() if k.startswith("transformer.")}
    assert sorted(stored) == sorted(k[len("transformer.") :] if not prefix else k for k in want)
    for k, v in want.items():
        np.testing.assert_array_equal(stored[k if prefix else k[len("transformer.") :]], v)


def test_bin_manifests_list_only_safe_globals():
    allowed = {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch", "FloatStorage"),
    }
    zipped = golden.load_format("pt_bin").files["files"]["pytorch_model.bin"]
    assert {tuple(g[1:]) for g in zipped["pickle_globals"]} == allowed
    # the tied head shares wte's storage in the zip pickle
    t = zipped["tensors"]
    assert t["lm_head.weight"]["storage_key"] == t["transformer.wte.weight"]["storage_key"]
    legacy = golden.load_format("pt_bin_legacy").files["files"]["pytorch_model.bin"]
    obj = legacy["pickles"][3]
    assert {tuple(g[1:]) for g in obj["globals"]} == allowed
    assert obj["tensors"]["h.0.attn.bias"]["shape"] == [1, 1, 32, 32]
    assert "wte.weight" in obj["tensors"] and "transformer.wte.weight" not in obj["tensors"]


@pytest.mark.parametrize("name", ["tf_lm", "tf_base", "tf_seqcls", "tf_double"])
def test_tf_h5_holds_default_weights(name):
    h5py = pytest.importorskip("h5py")
    path = golden.format_dir(name) / "tf_model.h5"
    manifest = golden.load_format(name).files["files"]["tf_model.h5"]
    w = _default_weights()
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == sorted(d["path"] for d in manifest["datasets"])
        layer_names = [x.decode() if isinstance(x, bytes) else x for x in f.attrs["layer_names"]]
        assert "transformer" in layer_names
        for ds in names:
            # "<layer>/<keras model name>/<scope...>/<var>:0" -> HF PyTorch name
            parts = ds.split("/")[2:]
            leaf = parts[-1].removesuffix(":0")
            scope = ".".join(p.replace("h_._", "h.") for p in parts[:-1])
            leaf = TF_LEAF.get(leaf, leaf)
            pt = f"{scope}.{leaf}"
            arr = f[ds][()]
            ref = w[pt]
            if parts[-1] == "kernel:0":  # Keras Dense (score, summary): (in, out)
                ref = ref.T
            np.testing.assert_array_equal(arr.reshape(ref.shape), ref)
            if pt.endswith(("c_attn.bias", "c_proj.bias", "c_fc.bias")):
                assert arr.shape == (1, ref.shape[0])  # TFConv1D bias is (1, nf)


@pytest.mark.parametrize("name", ["flax_lm", "flax_base", "flax_untied"])
def test_flax_msgpack_holds_case_weights(name):
    msgpack = pytest.importorskip("msgpack")
    fmt = golden.load_format(name)
    w = golden.load_case(fmt.source_case).weights

    def ext_hook(code, data):
        assert code == 1  # flax.serialization ndarray
        shape, dtype, buf = msgpack.unpackb(data)
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    tree = msgpack.unpackb((fmt.path / "flax_model.msgpack").read_bytes(), ext_hook=ext_hook)
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, [*prefix, k])
            else:
                flat["/".join([*prefix, k])] = v

    walk(tree, [])
    manifest = fmt.files["files"]["flax_model.msgpack"]
    assert sorted(flat) == sorted(leaf["path"] for leaf in manifest["leaves"])
    for path, arr in flat.items():
        parts = path.split("/")
        leaf = FLAX_LEAF.get(parts[-1], parts[-1])
        pt = ".".join(([] if name != "flax_base" else ["transformer"]) + parts[:-1] + [leaf])
        ref = w[pt]
        # FlaxConv1D kernel is (out, in); the Dense lm_head kernel is (in, out) = (E, V).
        if parts[-1] == "kernel":
            ref = ref.T
        np.testing.assert_array_equal(arr, ref)


@pytest.mark.parametrize("name", golden.FORMATS)
def test_format_expected_outputs_shapes(name):
    fmt = golden.load_format(name)
    cfg = fmt.config_dict
    V, E = cfg["vocab_size"], cfg["n_embd"]
    exp = fmt.expected
    outs = {k for k in exp if k.startswith("outputs/")}
    assert outs
    for k in outs:
        a = exp[k]
        assert np.isfinite(a).all()
        if name == "tf_double":
            assert a.shape == ((2, 2, 5, V) if k.endswith("/logits") else (2, 2))
        elif name == "tf_seqcls":
            assert a.shape == (2, len(cfg["id2label"]))
        elif k.endswith("last_hidden_state"):
            assert a.shape == (2, 5, E)
        else:
            assert a.shape == (2, 5, V)
    # Only flax_untied (scale_attn_weights=False, ignored by HF Flax) departs from PyTorch eager.
    has_ref = any(k.startswith("pt_eager/") for k in exp)
    assert has_ref == (name == "flax_untied")
