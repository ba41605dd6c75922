"""The three modeling files read as translations of each other (issue #14).

``test_modeling_files_stay_parallel`` parses ``gpt2_{torch,tf,flax}/modeling.py`` (no framework
is imported) and compares what each defines: the classes and their order, the methods of each
class (``forward`` / ``call`` / ``__call__`` are one name) and the ``self.x = ...`` attributes
each class assigns. Framework plumbing that is not the model (torch's init and tying, the Keras
hooks, NNX static data) lives in ``gpt2_{torch,tf,flax}/_framework.py``, in a ``FrameworkMixin``
that each ``GPT2PreTrainedModel`` inherits, and is not compared. Every class must be in all
three files; any other item defined in only one or two of them must be listed in
:data:`ALLOWLIST` with a reason; an entry that becomes shared must be removed. The failure
message prints the figures (shared / all).

The other tests check behaviours the three backends used to disagree on, each on all three.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "tf", "flax")
CALL = {"forward": "__call__", "call": "__call__"}

#: what may exist in fewer than all three files, and why. Keys: "class X", "method X.m",
#: "attribute X.a". Keep it short: each entry is a place where the texts are not translations.
ALLOWLIST: dict[str, str] = {
    # methods
    "method Conv1D.__call__": "flax: Conv1D is nnx.Linear (same (in, out) kernel), its __call__ "
    "is inherited",
    "method LayerNorm.__call__": "tf only: float32 statistics under mixed policies; torch and "
    "flax inherit their framework's LayerNorm",
    "method GPT2Attention._fused_attention": "tf: TensorFlow has no fused attention kernel "
    "(attn_implementation='eager' only)",
    # attributes
    "attribute Conv1D.weight": "flax: nnx.Linear's kernel (set by the parent constructor)",
    "attribute Conv1D.bias": "flax: nnx.Linear's bias (set by the parent constructor)",
    "attribute Conv1D.nf": "torch/tf: output width for the reshape; flax: nnx.Linear's",
    "attribute Conv1D.nx": "tf: input width for the reshape",
    "attribute LayerNorm.gamma": "tf: Keras-named variables; torch and flax: their "
    "framework's LayerNorm parameters",
    "attribute LayerNorm.beta": "as LayerNorm.gamma",
    "attribute LayerNorm.epsilon": "as LayerNorm.gamma",
    "attribute GPT2Model.dtype": "flax: the computation dtype (torch and Keras carry it on "
    "the parameters / the dtype policy)",
    "attribute GPT2PreTrainedModel.generation_config": "flax: a property of "
    "_framework.FrameworkMixin over _Unhashed",
    "attribute GPT2PreTrainedModel.gradient_checkpointing": "torch only",
}
# Keras layers set ``self.built = True`` after building their variables eagerly
IGNORED_ATTRIBUTES = {"built"}


def _self_targets(node: ast.AST):
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    for t in targets:
        for x in t.elts if isinstance(t, ast.Tuple) else [t]:
            if (
                isinstance(x, ast.Attribute)
                and isinstance(x.value, ast.Name)
                and x.value.id == "self"
            ):
                yield x.attr


def parse(backend: str) -> dict:
    """Classes (in order), methods per class, attributes per class and module functions."""
    tree = ast.parse((ROOT / f"gpt2_{backend}" / "modeling.py").read_text())
    out = {"classes": [], "methods": {}, "attributes": {}, "functions": []}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out["classes"].append(node.name)
            out["methods"][node.name] = {
                CALL.get(n.name, n.name)
                for n in node.body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            out["attributes"][node.name] = {
                a
                for n in ast.walk(node)
                if isinstance(n, ast.Assign | ast.AnnAssign)
                for a in _self_targets(n)
            } - IGNORED_ATTRIBUTES
        elif isinstance(node, ast.FunctionDef):
            out["functions"].append(node.name)
    return out


def compare() -> dict:
    """Per kind: every item, those shared by the three files, and the rest with their owners."""
    files = {b: parse(b) for b in BACKENDS}
    items: dict[str, dict[str, set[str]]] = {
        "class": {},
        "method": {},
        "attribute": {},
        "function": {},
    }
    for b, f in files.items():
        for c in f["classes"]:
            items["class"].setdefault(c, set()).add(b)
            for m in f["methods"][c]:
                items["method"].setdefault(f"{c}.{m}", set()).add(b)
            for a in f["attributes"][c]:
                items["attribute"].setdefault(f"{c}.{a}", set()).add(b)
        for fn in f["functions"]:
            items["function"].setdefault(fn, set()).add(b)
    result = {"files": files}
    for kind, owners in items.items():
        result[kind] = {
            "all": set(owners),
            "shared": {k for k, v in owners.items() if len(v) == len(BACKENDS)},
            "partial": {k: sorted(v) for k, v in owners.items() if len(v) < len(BACKENDS)},
        }
    return result


def figures(r: dict) -> str:
    return ", ".join(
        f"{kind}es {len(r[kind]['shared'])}/{len(r[kind]['all'])}"
        if kind == "class"
        else f"{kind}s {len(r[kind]['shared'])}/{len(r[kind]['all'])}"
        for kind in ("class", "method", "attribute", "function")
    )


def test_modeling_files_stay_parallel():
    r = compare()
    unlisted = [
        f"{kind} {name} (only in {', '.join(owners)})"
        for kind in ("class", "method", "attribute")
        for name, owners in sorted(r[kind]["partial"].items())
        if f"{kind} {name}" not in ALLOWLIST
    ]
    stale = [
        key for key in ALLOWLIST if key.split(" ", 1)[1] not in r[key.split(" ", 1)[0]]["partial"]
    ]
    shared_order = [
        [c for c in r["files"][b]["classes"] if c in r["class"]["shared"]] for b in BACKENDS
    ]
    msg = (
        f"shared by all three modeling files: {figures(r)}.\n"
        + "".join(f"  not shared and not in ALLOWLIST: {u}\n" for u in unlisted)
        + "".join(f"  ALLOWLIST entry now shared or gone (remove it): {s}\n" for s in stale)
    )
    assert not unlisted and not stale, msg
    assert shared_order[0] == shared_order[1] == shared_order[2], (
        f"class order differs: {dict(zip(BACKENDS, shared_order))}"
    )
    assert r["class"]["shared"] == r["class"]["all"], msg  # every class in all three files
    # issue #14's bar: framework plumbing lives in each backend's _framework.FrameworkMixin
    assert len(r["method"]["shared"]) / len(r["method"]["all"]) >= 0.9, msg


def test_guard_sees_a_divergence(monkeypatch):
    """The guard fails on a method only one file defines (so it can fail at all)."""
    real = parse

    def parse_with_extra(backend):
        out = real(backend)
        if backend == "tf":
            out["methods"]["GPT2MLP"] = out["methods"]["GPT2MLP"] | {"_only_here"}
        return out

    monkeypatch.setitem(globals(), "parse", parse_with_extra)
    with pytest.raises(AssertionError, match=r"method GPT2MLP._only_here \(only in tf\)"):
        test_modeling_files_stay_parallel()


# ------------------------------------------------------------------ generation.py and weights.py
#: the public API every backend's generation.py / weights.py defines: a module function, a class
#: or (``GenerationMixin.x``) a method. TF's logits processors and beam step are methods of its
#: GenerationMixin because they run inside its traced loop; a bare name is found either way.
SHARED_API = {
    "generation": {
        "GenerationMixin",
        "GenerationMixin.generate",
        "process_logits",
        "warp_logits",
        "beam_step",
    },
    "weights": {"is_transposed", "variable_map", "to_canonical", "load_canonical"},
}
#: public names defined by fewer than three of the files, and why
API_ALLOWLIST: dict[str, str] = {
    "generation torch generate": "the functional form behind GenerationMixin.generate",
    "generation torch GenerateOutput": "return_dict_in_generate=True (torch only, as transformers)",
    "generation torch init_beam_state": "torch's beam search is eager: its state helpers are "
    "module functions (tf/flax build the state in-graph)",
    "generation torch beam_search_finished": "as init_beam_state",
    "generation torch finalize_beams": "as init_beam_state",
    "generation flax trace_count": "the jit retrace counter (tf: GenerationMixin.generation_trace_count)",
    "generation flax decode_engine": "flax alone picks per weight dtype between its FFI kernel "
    "and XLA's loop (torch and tf use their kernel wherever it runs)",
    "generation flax bucket": "the shape bucket of the jitted program (tf buckets privately)",
    "generation tf GenerationMixin.generation_trace_count": "as flax trace_count",
    "weights torch skip_init": "torch builds modules on the meta device before loading",
    "weights torch tensor_to_numpy": "torch dtypes numpy lacks (bf16) go through these",
    "weights torch numpy_to_tensor": "as tensor_to_numpy",
    "weights torch torch_dtype_of": "as tensor_to_numpy",
    "weights flax canonical_key": "NNX paths are tuples: one key function (torch/tf names are "
    "already canonical strings)",
    "weights flax materialize": "NNX abstract (eval_shape) models are filled in place",
}


#: parameters one backend adds to a shared function, and why
SIGNATURE_EXTRAS: dict[tuple[str, str], dict[str, str]] = {
    ("torch", "load_canonical"): {
        "assign": "load into a model built on the meta device (torch's load at one copy)",
        "consume": "hand the state dict's buffers to the model without a copy (torch tensors "
        "can wrap numpy memory; Keras and NNX variables always own theirs)",
    },
    ("flax", "GenerationMixin.generate"): {"prng_key": "JAX's explicit sampling key"},
}


def public_api(backend: str, module: str) -> dict[str, ast.AST]:
    """Public module-level functions/classes and public GenerationMixin methods of a file."""
    tree = ast.parse((ROOT / f"gpt2_{backend}" / f"{module}.py").read_text())
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            out[node.name] = node
            if isinstance(node, ast.ClassDef) and node.name == "GenerationMixin":
                out.update(
                    {
                        f"GenerationMixin.{m.name}": m
                        for m in node.body
                        if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")
                    }
                )
    return out


def _found(api: dict, name: str) -> bool:
    return name in api or f"GenerationMixin.{name}" in api


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]


@pytest.mark.parametrize("module", sorted(SHARED_API))
def test_generation_and_weights_share_a_public_api(module):
    apis = {b: public_api(b, module) for b in BACKENDS}
    missing = [
        f"{name} (not in gpt2_{b}/{module}.py)"
        for b in BACKENDS
        for name in sorted(SHARED_API[module])
        if not _found(apis[b], name)
    ]
    shared = {n for n in SHARED_API[module]} | {f"GenerationMixin.{n}" for n in SHARED_API[module]}
    extra = {
        f"{module} {b} {n}"
        for b in BACKENDS
        for n in apis[b]
        if n not in shared and not all(n in apis[o] for o in BACKENDS)
    }
    listed = {k for k in API_ALLOWLIST if k.startswith(module + " ")}
    assert not missing, f"shared public API missing: {missing}"
    assert extra <= listed, (
        f"public names in fewer than three files, not in API_ALLOWLIST: {sorted(extra - listed)}"
    )
    assert listed <= extra, f"API_ALLOWLIST entries now shared or gone: {sorted(listed - extra)}"


def test_shared_functions_have_one_signature():
    """The same parameter names in all three, apart from SIGNATURE_EXTRAS."""
    for module, names in SHARED_API.items():
        apis = {b: public_api(b, module) for b in BACKENDS}
        for name in (
            "to_canonical",
            "load_canonical",
            "variable_map",
            "is_transposed",
            "GenerationMixin.generate",
        ):
            if name not in names:
                continue
            sigs = {
                b: [
                    p
                    for p in _params(apis[b][name])
                    if p not in SIGNATURE_EXTRAS.get((b, name), {})
                ]
                for b in BACKENDS
            }
            assert sigs["torch"] == sigs["tf"] == sigs["flax"], f"{module}.{name}: {sigs}"


# ----------------------------------------------------------------------------- behaviours
def _tiny(**overrides):
    from gpt2_core.init import tiny_config

    return tiny_config(**overrides)


def _build(backend: str, head: str, config):
    """A model of ``head`` for ``config`` with the backend's own random init, in eval mode."""
    if backend == "torch":
        pytest.importorskip("torch")
        from gpt2_torch.modeling import MODEL_CLASSES

        return MODEL_CLASSES[head](config).eval()
    if backend == "tf":
        pytest.importorskip("tensorflow")
        from gpt2_tf.modeling import MODEL_CLASSES

        return MODEL_CLASSES[head](config)
    pytest.importorskip("flax")
    from flax import nnx

    from gpt2_flax.modeling import MODEL_CLASSES

    return MODEL_CLASSES[head](config, rngs=nnx.Rngs(0))


def _array(backend: str, v):
    """A numpy array as the backend's array (anything else unchanged)."""
    if not isinstance(v, np.ndarray):
        return v
    if backend == "torch":
        import torch

        return torch.as_tensor(v)
    if backend == "tf":
        import tensorflow as tf

        return tf.constant(v)
    import jax.numpy as jnp

    return jnp.asarray(v)


def _run(backend: str, model, **inputs):
    """Call ``model`` with numpy inputs converted to the backend's arrays."""
    kw = {k: _array(backend, v) for k, v in inputs.items()}
    if backend == "torch":
        import torch

        with torch.no_grad():
            return model(**kw)
    return model(**kw)


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_heads_leaves_the_callers_config(backend):
    config = _tiny(num_labels=3)
    model = _build(backend, "double_heads", config)
    assert config.num_labels == 3
    assert model.config.num_labels == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_to_keep(backend):
    model = _build(backend, "lm", _tiny())
    ids = np.array([[5, 6, 7, 8]], np.int32 if backend != "torch" else np.int64)
    full = _np(_run(backend, model, input_ids=ids).logits)
    last2 = _np(_run(backend, model, input_ids=ids, logits_to_keep=2).logits)
    assert last2.shape == (1, 2, 257)
    np.testing.assert_allclose(last2, full[:, -2:], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_attention_cache_layout(backend):
    """Each layer's cache entry is (k, v, cross_k, cross_v) in every backend, and a cached
    step reuses the encoder's keys/values."""
    model = _build(backend, "lm", _tiny(add_cross_attention=True))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 257, (2, 5)).astype(np.int64 if backend == "torch" else np.int32)
    enc = rng.normal(size=(2, 3, 36)).astype(np.float32)
    full = _run(backend, model, input_ids=ids, encoder_hidden_states=enc, use_cache=True)
    assert len(full.past_key_values[0]) == 4
    assert tuple(full.past_key_values[0][2].shape) == (2, 3, 3, 12)  # (B, H, S_enc, D)
    a = _run(backend, model, input_ids=ids[:, :3], encoder_hidden_states=enc, use_cache=True)
    b = _run(
        backend,
        model,
        input_ids=ids[:, 3:],
        encoder_hidden_states=enc,
        past_key_values=a.past_key_values,
    )
    np.testing.assert_allclose(
        np.concatenate([_np(a.logits), _np(b.logits)], 1), _np(full.logits), atol=1e-4
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_cache_has_one_name_and_api(backend):
    if backend == "torch":
        pytest.importorskip("torch")
        from gpt2_torch.modeling import StaticCache
    elif backend == "tf":
        pytest.importorskip("tensorflow")
        from gpt2_tf.modeling import StaticCache
    else:
        pytest.importorskip("flax")
        from gpt2_flax.modeling import StaticCache
    cache = StaticCache.allocate(_tiny(), batch_size=2, max_length=8)
    assert (cache.batch_size, cache.max_length, len(cache.keys)) == (2, 8, 2)
    reordered = cache.reorder(_array(backend, np.array([1, 0])))
    assert isinstance(reordered, StaticCache) and reordered.max_length == 8


@pytest.mark.parametrize("backend", ["tf", "flax"])
def test_tied_head_has_no_variable_of_its_own(backend):
    """TF and Flax: ``lm_head`` is None when tied (logits = hidden @ wte^T), a layer when not."""
    tied = _build(backend, "lm", _tiny())
    untied = _build(backend, "lm", _tiny(tie_word_embeddings=False))
    assert tied.lm_head is None and untied.lm_head is not None
    assert "lm_head.weight" in tied.state_dict()  # the canonical dict still lists the tied key


def test_flax_from_pretrained_keeps_load_report_and_generation_config(tmp_path):
    pytest.importorskip("flax")
    import jax.numpy as jnp

    from gpt2_core.generation_config import GenerationConfig

    model = _build("flax", "lm", _tiny())
    model.save_pretrained(tmp_path)
    GenerationConfig(max_new_tokens=3, eos_token_id=None).save_pretrained(tmp_path)
    from gpt2_flax.modeling import GPT2LMHeadModel

    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert loaded.load_report is not None and loaded.load_report.ok
    assert loaded.generation_config.max_new_tokens == 3
    # generate reads it (3 new tokens) and the model still goes through jit
    assert loaded.generate(jnp.array([[1, 2]])).shape == (1, 5)
