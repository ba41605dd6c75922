"""One framework's GPU readiness check: parity, generation, attention kernels and speed on a GPU.

Run by ``benchmarks/gpu_check.sh`` once per framework (each in its own process, so TF, JAX and
torch do not fight over device memory). Prints one line per check (``PASS`` / ``FAIL`` / ``SKIP``
and the measured figure) and, last, one JSON summary line.

    python benchmarks/gpu_check.py --framework torch [--hf-python PY] [--device cpu] [--quick]

Checks, on the device:
1. parity: GPT2LMHeadModel logits of the transformers 4.57.6 golden case ``default``
   (tests/fixtures/hf4576) in fp32 and bf16, left-padded and unpadded batches. fp32 must agree
   to 2e-4 (TF32 matmuls are switched off: they alone move logits by ~1e-3); bf16 to 4% of the
   logits' range (8 mantissa bits through 2 layers: ~1% typical, measured on CPU).
2. generate: greedy, greedy with penalties and beam search equal the golden token ids; seeded
   sampling gives the same ids twice and only ids inside the vocabulary.
3. attention implementations the framework offers (torch: eager, sdpa, flash_attention_2;
   TF: eager; Flax: eager, sdpa, cudnn): each either matches the golden logits or is refused
   with its reason (e.g. flash-attn not installed), which is reported, not failed.
4. speed: GPT-2 small shapes, random weights, batch 1: greedy decode tok/s (16-token prompt +
   128 tokens) and a 512-token prefill (the forward with its logits left on the device, compiled
   in TF and Flax as transformers' side is), fp32 and bf16, against transformers on the same
   device when ``--hf-python`` names an interpreter that has it (rows skipped otherwise).

``--device cpu`` runs the same checks on the CPU (a dry run of the script itself; the speed rows
then mean nothing); ``--quick`` shrinks the speed model so a dry run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from timing import best_of

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FP32_ATOL = 2e-4
BF16_REL = 0.04
ATTN = {
    "torch": ("eager", "sdpa", "flash_attention_2"),
    "tf": ("eager",),
    "flax": ("eager", "sdpa", "cudnn"),
}
GEN_RUNS = ("greedy", "greedy_penalties", "beam")


class Report:
    """Collects check lines; ``failed`` is true once any check failed."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.rows: list[dict] = []

    def add(self, check: str, status: str, detail: str, **figures) -> None:
        self.rows.append(dict(check=check, status=status, detail=detail, **figures))
        print(f"[{self.framework}] {status:4s} {check}: {detail}", flush=True)

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)


# -- one small seam per framework: device set-up, loading, forward, generate ------------------


class Backend:
    def __init__(self, framework: str, device: str) -> None:
        self.framework, self.device = framework, device
        if framework == "torch":
            import torch

            import gpt2_torch

            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self.torch, self.pkg = torch, gpt2_torch
            self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        elif framework == "tf":
            import tensorflow as tf

            import gpt2_tf

            tf.config.experimental.enable_tensor_float_32_execution(False)
            self.tf, self.pkg = tf, gpt2_tf
            self.dev = "/GPU:0" if device == "gpu" else "/CPU:0"
        else:
            import jax

            import gpt2_flax

            jax.config.update("jax_default_matmul_precision", "highest")
            self.jax, self.pkg = jax, gpt2_flax
            self.dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]

    def describe(self) -> str:
        if self.framework == "torch":
            t = self.torch
            return (
                f"torch {t.__version__}, cuda {t.version.cuda}, "
                f"{t.cuda.get_device_name(0) if t.cuda.is_available() else 'no GPU'}"
            )
        if self.framework == "tf":
            return f"tensorflow {self.tf.__version__}, GPUs {self.tf.config.list_physical_devices('GPU')}"
        return f"jax {self.jax.__version__}, devices {self.jax.devices()}"

    def has_device(self) -> bool:
        if self.device == "cpu":
            return True
        if self.framework == "torch":
            return self.torch.cuda.is_available()
        if self.framework == "tf":
            return bool(self.tf.config.list_physical_devices("GPU"))
        try:
            return bool(self.jax.devices("gpu"))
        except RuntimeError:
            return False

    def load(self, directory, dtype: str, attn: str | None = None):
        kw = {} if attn is None else {"attn_implementation": attn}
        cls = self.pkg.GPT2LMHeadModel
        if self.framework == "torch":
            dt = {"fp32": self.torch.float32, "bf16": self.torch.bfloat16}[dtype]
            return cls.from_pretrained(directory, dtype=dt, device=self.dev, **kw).eval()
        if self.framework == "tf":
            with self.tf.device(self.dev):
                return cls.from_pretrained(directory, dtype=dtype, **kw)
        import jax.numpy as jnp

        dt = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype]
        with self.jax.default_device(self.dev):
            return cls.from_pretrained(directory, dtype=dt, param_dtype=dt, **kw)

    def logits(self, model, inputs: dict) -> np.ndarray:
        if self.framework == "torch":
            t = self.torch
            with t.no_grad():
                kw = {k: t.as_tensor(np.array(v), device=self.dev) for k, v in inputs.items()}
                return model(**kw).logits.float().cpu().numpy()
        if self.framework == "tf":
            with self.tf.device(self.dev):
                out = model(**{k: self.tf.constant(v) for k, v in inputs.items()}, training=False)
                return np.asarray(self.tf.cast(out.logits, self.tf.float32))
        with self.jax.default_device(self.dev):
            return np.asarray(model(**inputs).logits, dtype=np.float32)

    def generate(self, model, input_ids, attention_mask, **kw) -> np.ndarray:
        if self.framework == "torch":
            t = self.torch
            with t.no_grad():
                out = model.generate(
                    t.as_tensor(np.array(input_ids), device=self.dev),
                    attention_mask=t.as_tensor(np.array(attention_mask), device=self.dev),
                    **kw,
                )
            return out.cpu().numpy()
        ctx = (
            self.tf.device(self.dev)
            if self.framework == "tf"
            else self.jax.default_device(self.dev)
        )
        with ctx:
            return np.asarray(model.generate(input_ids, attention_mask=attention_mask, **kw))

    def sync(self) -> None:
        if self.framework == "torch" and self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def prefill_fn(self, model, input_ids: np.ndarray):
        """A call that runs the whole-sequence forward on the device and waits for it, the
        logits left there: what transformers' side times (``m(x)`` + synchronize, or its jitted
        forward). Copying the (1, 512, V) fp32 logits to the host (103 MB) is not prefill."""
        if self.framework == "torch":
            t = self.torch
            ids = t.as_tensor(np.array(input_ids), device=self.dev)

            def run():
                with t.no_grad():
                    model(input_ids=ids)
                self.sync()

            return run
        if self.framework == "tf":
            tf = self.tf
            with tf.device(self.dev):
                ids = tf.constant(input_ids)
            f = tf.function(lambda x: model(input_ids=x, training=False).logits, jit_compile=True)

            def run():
                with tf.device(self.dev):
                    f(ids)[0, 0, 0].numpy()  # waits for the program; copies one value

            return run
        from flax import nnx

        ids = self.jax.device_put(np.asarray(input_ids), self.dev)
        # functional, as transformers' jax.jit(params) (and bench_flax_generate.py): nnx.jit
        # would add its graph traversal of the model (~10-20 ms of Python) to every call
        graphdef, state = nnx.split(model)
        f = self.jax.jit(lambda s, x: nnx.merge(graphdef, s)(input_ids=x).logits)

        def run():
            f(state, ids).block_until_ready()

        return run


# -- the checks --------------------------------------------------------------------------------


def golden_dir(tmp: Path):
    """The golden ``default`` case as a checkpoint directory, and the case itself."""
    import golden

    from gpt2_core import checkpoint
    from gpt2_core.config import GPT2Config

    case = golden.load_case("default")
    cfg = GPT2Config.from_dict(case.config_dict)
    weights = {k: v for k, v in case.weights.items() if k.startswith(("transformer.", "lm_head."))}
    checkpoint.save_pretrained(weights, cfg, tmp / "default", "lm")
    return tmp / "default", case


def compare(
    rep: Report, name: str, got: np.ndarray, want: np.ndarray, valid: np.ndarray, dtype: str
) -> None:
    diff = float(np.max(np.abs(got - want)[valid]))
    if dtype == "fp32":
        ok, bound = diff <= FP32_ATOL, FP32_ATOL
    else:
        bound = BF16_REL * float(np.ptp(want[valid]))
        ok = diff <= bound
    rep.add(
        name,
        "PASS" if ok else "FAIL",
        f"max|diff| {diff:.2e} (bound {bound:.2e})",
        max_abs_diff=diff,
    )


def check_parity(rep: Report, be: Backend, ckpt: Path, case) -> None:
    for dtype in ("fp32", "bf16"):
        model = be.load(ckpt, dtype)
        for scenario in ("nomask", "left_pad"):
            inputs = {
                k: v
                for k, v in case.inputs("GPT2LMHeadModel", scenario).items()
                if k in ("input_ids", "attention_mask", "position_ids")
            }
            want = case.get("GPT2LMHeadModel", scenario, "logits")
            valid = case.valid_mask("GPT2LMHeadModel", scenario)
            compare(rep, f"parity {dtype} {scenario}", be.logits(model, inputs), want, valid, dtype)


def check_generate(rep: Report, be: Backend, ckpt: Path, case) -> None:
    model = be.load(ckpt, "fp32")
    for name in GEN_RUNS:
        rec = case.generation(name)
        kw = {
            k: v
            for k, v in rec["kwargs"].items()
            if k not in ("output_scores", "return_dict_in_generate")
        }
        got = be.generate(model, rec["input_ids"], rec["attention_mask"], **kw)
        want = rec["sequences"]
        ok = got.shape == want.shape and np.array_equal(got, want)
        rep.add(
            f"generate {name}",
            "PASS" if ok else "FAIL",
            "token ids equal transformers'" if ok else f"got {got.tolist()} want {want.tolist()}",
        )
    rec = case.generation("greedy")
    kw = dict(
        do_sample=True,
        top_k=20,
        temperature=0.9,
        max_new_tokens=12,
        seed=7,
        pad_token_id=rec["kwargs"]["pad_token_id"],
        eos_token_id=None,
    )
    if be.framework == "torch":  # torch draws from its generator, as transformers does
        kw.pop("seed")
        be.torch.manual_seed(7)
        a = be.generate(model, rec["input_ids"], rec["attention_mask"], **kw)
        be.torch.manual_seed(7)
        b = be.generate(model, rec["input_ids"], rec["attention_mask"], **kw)
    else:
        a = be.generate(model, rec["input_ids"], rec["attention_mask"], **kw)
        b = be.generate(model, rec["input_ids"], rec["attention_mask"], **kw)
    vocab = case.config_dict["vocab_size"]
    ok = np.array_equal(a, b) and int(a.max()) < vocab and int(a.min()) >= 0
    rep.add(
        "generate sample (seeded)",
        "PASS" if ok else "FAIL",
        "same ids twice, inside the vocabulary" if ok else f"{a.tolist()} vs {b.tolist()}",
    )


def check_attention(rep: Report, be: Backend, ckpt: Path, case) -> None:
    scenario = "left_pad"
    inputs = {
        k: v
        for k, v in case.inputs("GPT2LMHeadModel", scenario).items()
        if k in ("input_ids", "attention_mask", "position_ids")
    }
    want = case.get("GPT2LMHeadModel", scenario, "logits")
    valid = case.valid_mask("GPT2LMHeadModel", scenario)
    for impl in ATTN[be.framework]:
        half = impl in ("flash_attention_2", "cudnn")  # these kernels run in 16-bit only
        dtype = "bf16" if half else "fp32"
        try:
            model = be.load(ckpt, dtype, attn=impl)
            got = be.logits(model, inputs)
        except (ValueError, RuntimeError, ImportError, NotImplementedError) as e:
            rep.add(f"attn {impl}", "SKIP", f"refused: {str(e).splitlines()[0][:160]}")
            continue
        compare(rep, f"attn {impl} ({dtype})", got, want, valid, dtype)


def speed_config(quick: bool) -> dict:
    if quick:
        return dict(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=1024)
    return dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def check_speed(rep: Report, be: Backend, tmp: Path, quick: bool, hf_python: str | None) -> None:
    from gpt2_core import checkpoint, naming
    from gpt2_core.config import GPT2Config

    cfg_kw = speed_config(quick)
    cfg = GPT2Config(**cfg_kw)
    rng = np.random.default_rng(0)
    shapes = naming.expected_shapes(cfg, "lm")
    weights = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in shapes.items()}
    for k in weights:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            weights[k][...] = 1.0
    weights = naming.drop_tied(weights, cfg, "lm")
    ckpt = tmp / "speed"
    checkpoint.save_pretrained(weights, cfg, ckpt, "lm")
    prompt = ((np.arange(16)[None] * 7919) % cfg.vocab_size).astype(np.int32)
    long = ((np.arange(512)[None] * 31) % cfg.vocab_size).astype(np.int32)
    new, reps = (16, 2) if quick else (128, 3)
    hf = hf_speed(be.framework, be.device, ckpt, new, reps, cfg.vocab_size, hf_python)
    for dtype in ("fp32", "bf16"):
        model = be.load(ckpt, dtype)

        def gen(model=model):
            be.generate(
                model,
                prompt,
                np.ones_like(prompt),
                max_new_tokens=new,
                eos_token_id=None,
                pad_token_id=0,
            )
            be.sync()

        pre = be.prefill_fn(model, long)
        tok_s, pre_ms = new / best_of(gen, reps), 1e3 * best_of(pre, reps)
        ref = hf.get(dtype) if isinstance(hf, dict) else None
        if ref:
            detail = (
                f"decode {tok_s:.1f} tok/s ({tok_s / ref['tok_s']:.2f}x transformers "
                f"{ref['tok_s']:.1f}); prefill 512 {pre_ms:.1f} ms (transformers "
                f"{ref['prefill_ms']:.1f} ms, {ref['prefill_ms'] / pre_ms:.2f}x)"
            )
        else:
            detail = (
                f"decode {tok_s:.1f} tok/s; prefill 512 {pre_ms:.1f} ms "
                f"(transformers: {hf if isinstance(hf, str) else 'no ' + dtype + ' row'})"
            )
        rep.add(
            f"speed {dtype}",
            "INFO",
            detail,
            tok_s=tok_s,
            prefill_ms=pre_ms,
            hf_tok_s=ref and ref["tok_s"],
            hf_prefill_ms=ref and ref["prefill_ms"],
        )


HF_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    fw, device, ckpt = sys.argv[1:4]
    new, reps, vocab = map(int, sys.argv[4:7])
    prompt = (np.arange(16)[None] * 7919 % vocab)
    long = (np.arange(512)[None] * 31 % vocab)
    def timed(fn):
        fn(); best = float("inf")
        for _ in range(reps):
            t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
        return best
    out = {}
    for dtype in ("fp32", "bf16"):
        if fw == "torch":
            import torch
            from transformers import GPT2LMHeadModel
            dt = torch.float32 if dtype == "fp32" else torch.bfloat16
            dev = "cuda" if device == "gpu" else "cpu"
            m = GPT2LMHeadModel.from_pretrained(ckpt, torch_dtype=dt).to(dev).eval()
            ids, lg = torch.tensor(prompt, device=dev), torch.tensor(long, device=dev)
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
            def gen():
                with torch.no_grad():
                    m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False, pad_token_id=0)
                sync()
            def pre():
                with torch.no_grad():
                    m(lg)
                sync()
        elif fw == "tf":
            import tensorflow as tf
            from transformers import TFGPT2LMHeadModel
            if dtype == "bf16":
                continue  # transformers' TF GPT-2 has no bf16 loading path
            m = TFGPT2LMHeadModel.from_pretrained(ckpt, from_pt=True)
            ids, lg = tf.constant(prompt, tf.int32), tf.constant(long, tf.int32)
            g = tf.function(m.generate, jit_compile=True)
            f = tf.function(lambda x: m(x).logits, jit_compile=True)
            def gen():
                g(ids, attention_mask=tf.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                  do_sample=False, pad_token_id=0).numpy()
            def pre():
                f(lg).numpy()
        else:
            import jax, jax.numpy as jnp
            from transformers import FlaxGPT2LMHeadModel
            dt = jnp.float32 if dtype == "fp32" else jnp.bfloat16
            m = FlaxGPT2LMHeadModel.from_pretrained(ckpt, from_pt=True, dtype=dt)
            params = m.params if dtype == "fp32" else m.to_bf16(m.params)
            ids, lg = jnp.asarray(prompt), jnp.asarray(long)
            g = jax.jit(lambda p, x: m.generate(x, params=p, max_new_tokens=new, min_new_tokens=new,
                                                do_sample=False, pad_token_id=0).sequences)
            f = jax.jit(lambda p, x: m(x, params=p).logits)
            def gen():
                g(params, ids).block_until_ready()
            def pre():
                f(params, lg).block_until_ready()
        out[dtype] = dict(tok_s=new / timed(gen), prefill_ms=1e3 * timed(pre))
    print(json.dumps(out))
""")


def hf_speed(
    framework: str, device: str, ckpt: Path, new: int, reps: int, vocab: int, hf_python: str | None
) -> dict | str:
    if not hf_python:
        return "skipped: no --hf-python / GPT2_ZOO_HF_PYTHON"
    if not Path(hf_python).is_file():
        return f"skipped: {hf_python} is not an interpreter"
    proc = subprocess.run(
        [hf_python, "-c", HF_SCRIPT, framework, device, str(ckpt), str(new), str(reps), str(vocab)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()
        return "failed: " + (tail[-1] if tail else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", required=True, choices=("torch", "tf", "flax"))
    ap.add_argument(
        "--device",
        default="gpu",
        choices=("gpu", "cpu"),
        help="cpu: a dry run of the checks on the CPU",
    )
    ap.add_argument(
        "--hf-python",
        default=os.environ.get("GPT2_ZOO_HF_PYTHON"),
        help="python with transformers 4.57.6 (default $GPT2_ZOO_HF_PYTHON)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny speed model (dry runs)")
    ap.add_argument(
        "--skip", default="", help="comma-separated checks to skip: parity,generate,attention,speed"
    )
    args = ap.parse_args(argv)
    rep = Report(args.framework)
    be = Backend(args.framework, args.device)
    rep.add("environment", "INFO", be.describe())
    if not be.has_device():
        rep.add("device", "FAIL", f"no GPU visible to {args.framework}")
        print(json.dumps(dict(framework=args.framework, device=args.device, rows=rep.rows)))
        return 1
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        ckpt, case = golden_dir(tmp)
        steps = [
            ("parity", lambda: check_parity(rep, be, ckpt, case)),
            ("generate", lambda: check_generate(rep, be, ckpt, case)),
            ("attention", lambda: check_attention(rep, be, ckpt, case)),
            ("speed", lambda: check_speed(rep, be, tmp, args.quick, args.hf_python)),
        ]
        for name, step in steps:
            if name in skip:
                continue
            t = time.perf_counter()
            try:
                step()
            except Exception as e:  # one broken check must not hide the others' results
                rep.add(name, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            print(f"[{args.framework}] ({name}: {time.perf_counter() - t:.1f} s)", flush=True)
    print(json.dumps(dict(framework=args.framework, device=args.device, rows=rep.rows)))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
