/*
 * gpt2_zoo: the fused single-token decode step of gpt2_kernels.c as an XLA FFI custom call
 * (Gpt2DecodeStep), and its prompt prefill (Gpt2Prefill: ids and positions (R, T), no slot
 * operand, the prompt's T tokens go to cache slots [0, T); the other operands as below).
 *
 * gpt2_flax's `generate` is one jitted lax.while_loop. On a CPU each iteration's forward pass
 * can call this handler (jax.ffi.ffi_call, registered for platform "cpu") instead of XLA's own
 * ops: one call runs embeddings, every block and the LM head through gpt2_decode_step, reading
 * the model's weight buffers in place and writing the new key/value into the cache buffers,
 * which are aliased input -> output so XLA updates them in place. No host callback: the call is
 * an ordinary instruction of the compiled loop.
 *
 * Built at first use by gpt2_flax/_cpu_kernels.py: gpt2_kernels.c compiled as C with the flags
 * of gpt2_core/cpu_kernels.py, then this file with the C++ compiler against jax's FFI headers
 * (jax.ffi.include_dir()), linked into one shared library.
 *
 * Operands (all row-major, checked in Python when the program is traced; the counts and the
 * runtime values that index memory are checked here again):
 *   ids (R,) s32, positions (R,) s32, bias (R, L) f32 additive mask over cache slots,
 *   slot () s32 the cache slot of the new token, scales (n_layer,) f32,
 *   then 5 global weights (wte (V, C), wpe (P, C), ln_f scale, ln_f bias, LM head (V, C) or
 *   with head_kn (C, V)), 12 per layer (gpt2_decode_step's order), then 2 * n_layer caches
 *   (keys 0, values 0, keys 1, ...) each (R, H, L, D) f32.
 *   With wq = 2 (int8 matrices), then 2 + 4 * n_layer f32 scale vectors in gpt2_decode_step's
 *   qscale order: wte's per-row (V), the LM head's per-vocab-entry (V), then per layer c_attn
 *   (3C), attn c_proj (C), c_fc (F), mlp c_proj (C).
 * Results: logits (R, V) f32, then the 2 * n_layer caches (aliased to their operands).
 * The matrices are f32 (wq 0), bf16 (wq 1, widened in registers, as in the ctypes path) or
 * int8 with per-output-channel scales (wq 2).
 */
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" {
void gpt2_decode_step(const int64_t *ids, const int64_t *positions, void *const *glob,
                      void *const *layers, const float *scales, const float *bias, int64_t pos,
                      int64_t M, int64_t C, int64_t H, int64_t L, int64_t F, int64_t V,
                      int64_t n_layer, float eps, int act, int head_kn, float *logits,
                      float *work, int nt, int wq, const void *const *qscale);
int64_t gpt2_decode_work_floats(int64_t M, int64_t C, int64_t H, int64_t L, int64_t F, int64_t V,
                                int nt);
void gpt2_prefill(const int64_t *ids, const int64_t *positions, void *const *glob,
                  void *const *layers, const float *scales, const float *bias, int64_t P,
                  int64_t M, int64_t C, int64_t H, int64_t L, int64_t F, int64_t V,
                  int64_t n_layer, float eps, int act, int head_kn, float *logits, float *work,
                  int nt, int wq, const void *const *qscale);
int64_t gpt2_prefill_work_floats(int64_t M, int64_t P, int64_t C, int64_t L, int64_t F, int nt);
int gpt2_kernels_abi(void);
}

/* The kernel's OpenMP team runs from one persistent thread. XLA's thunk runtime calls a handler
 * from whichever of its pool threads is free, and an OpenMP region started from a varying
 * thread among XLA's busy workers ran the 2-thread step ~40% slower (measured, int8 GPT-2 small
 * decoding steps: 89 tok/s so, 124 from one kernel thread, 129 under XLA's older runtime, which
 * calls from one thread; with 1 thread all equal). Handing the call over costs two wake-ups per
 * step (microseconds). A forked child starts its own thread (the parent's is not copied). */
class KernelThread {
  public:
    void Run(const std::function<void()> &fn) {
        std::lock_guard<std::mutex> one_caller(call_mu_);  // concurrent programs take turns
        std::unique_lock<std::mutex> lock(mu_);
        if (owner_ != getpid()) {  // first call, or the first in a forked child
            std::thread([this] { Loop(); }).detach();  // lives as long as the process
            owner_ = getpid();
        }
        job_ = &fn;
        done_ = false;
        cv_.notify_all();
        cv_.wait(lock, [this] { return done_; });
    }

  private:
    void Loop() {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            cv_.wait(lock, [this] { return job_ != nullptr; });
            const std::function<void()> *fn = job_;
            job_ = nullptr;
            lock.unlock();
            (*fn)();
            lock.lock();
            done_ = true;
            cv_.notify_all();
        }
    }
    std::mutex call_mu_, mu_;
    std::condition_variable cv_;
    const std::function<void()> *job_ = nullptr;
    bool done_ = true;
    pid_t owner_ = 0;  // the process whose kernel thread runs
};

static KernelThread &kernel_thread() {
    static KernelThread *t = new KernelThread();  // never destroyed: its thread never exits
    return *t;
}

static constexpr int64_t kGlobal = 5, kPerLayer = 12;
// aliases: a template's commas would split the registration macro's arguments
using I32Vector = ffi::Buffer<ffi::S32, 1>;
using I32Scalar = ffi::Buffer<ffi::S32, 0>;
using F32Vector = ffi::Buffer<ffi::F32, 1>;
using F32Matrix = ffi::Buffer<ffi::F32, 2>;
using I32Matrix = ffi::Buffer<ffi::S32, 2>;

/* The weight, cache and int8 scale operands of both handlers, checked and gathered in
   gpt2_decode_step's pointer order. */
struct Operands {
    std::vector<void *> glob, layers;
    std::vector<const void *> qscale;
    int64_t n_scales = 0, V = 0, C = 0, P = 0, F = 0;
};

static ffi::Error Gather(const std::string &name, int64_t R, int64_t L, int64_t n_layer,
                         int64_t wq, ffi::RemainingArgs &rest, ffi::RemainingRets &caches,
                         Operands &o) {
    if (wq < 0 || wq > 2)
        return ffi::Error::InvalidArgument(name + ": weight kind wq must be 0, 1 or 2");
    const int64_t n_weights = kGlobal + kPerLayer * n_layer;
    o.n_scales = wq == 2 ? 2 + 4 * n_layer : 0;
    if (static_cast<int64_t>(rest.size()) != n_weights + 2 * n_layer + o.n_scales ||
        static_cast<int64_t>(caches.size()) != 2 * n_layer)
        return ffi::Error::InvalidArgument(name + ": wrong number of weights/caches");
    o.glob.assign(kGlobal, nullptr);
    o.layers.assign((kPerLayer + 2) * n_layer, nullptr);
    for (int64_t i = 0; i < kGlobal; ++i) {
        auto b = rest.get<ffi::AnyBuffer>(i);
        if (b.has_error()) return b.error();
        o.glob[i] = b.value().untyped_data();
    }
    auto wte = rest.get<ffi::AnyBuffer>(0), wpe = rest.get<ffi::AnyBuffer>(1);
    auto fc = rest.get<ffi::AnyBuffer>(kGlobal + 8);  // layer 0 c_fc (C, F)
    if (wte.has_error() || wpe.has_error() || fc.has_error())
        return ffi::Error::InvalidArgument(name + ": bad weight operands");
    o.V = wte.value().dimensions()[0], o.C = wte.value().dimensions()[1];
    o.P = wpe.value().dimensions()[0], o.F = fc.value().dimensions()[1];
    o.qscale.assign(o.n_scales > 0 ? o.n_scales : 1, nullptr);
    // the scales follow the weights and the 2 * n_layer cache operands
    const int64_t first_scale = n_weights + 2 * n_layer;
    for (int64_t i = 0; i < o.n_scales; ++i) {  // lengths: V, V, then 3C, C, F, C per layer
        const int64_t j = i < 2 ? -1 : (i - 2) % 4;
        const int64_t want = j < 0 ? o.V : j == 0 ? 3 * o.C : j == 2 ? o.F : o.C;
        auto b = rest.get<ffi::AnyBuffer>(first_scale + i);
        if (b.has_error()) return b.error();
        if (b.value().element_type() != ffi::DataType::F32 ||
            b.value().dimensions().size() != 1 || b.value().dimensions()[0] != want)
            return ffi::Error::InvalidArgument(name + ": int8 scale vector " + std::to_string(i) +
                                               " is not f32 of length " + std::to_string(want));
        o.qscale[i] = b.value().untyped_data();
    }
    for (int64_t l = 0; l < n_layer; ++l) {
        for (int64_t j = 0; j < kPerLayer; ++j) {
            auto b = rest.get<ffi::AnyBuffer>(kGlobal + l * kPerLayer + j);
            if (b.has_error()) return b.error();
            o.layers[l * (kPerLayer + 2) + j] = b.value().untyped_data();
        }
        for (int64_t j = 0; j < 2; ++j) {  // the aliased results: updated in place
            auto c = caches.get<ffi::AnyBuffer>(2 * l + j);
            if (c.has_error()) return c.error();
            auto dims = c.value()->dimensions();
            if (dims.size() != 4 || dims[0] != R || dims[2] != L)
                return ffi::Error::InvalidArgument(name + ": cache shape mismatch");
            o.layers[l * (kPerLayer + 2) + kPerLayer + j] = c.value()->untyped_data();
        }
    }
    return ffi::Error::Success();
}

/* ids and positions widened to int64, each checked against V and P */
static ffi::Error Tokens(const std::string &name, const int32_t *ids, const int32_t *positions,
                         int64_t n, const Operands &o, std::vector<int64_t> &id64,
                         std::vector<int64_t> &pos64) {
    id64.resize(n);
    pos64.resize(n);
    for (int64_t m = 0; m < n; ++m) {
        id64[m] = ids[m];
        pos64[m] = positions[m];
        if (id64[m] < 0 || id64[m] >= o.V || pos64[m] < 0 || pos64[m] >= o.P)
            return ffi::Error::InvalidArgument(name + ": token id " + std::to_string(id64[m]) +
                                               " or position " + std::to_string(pos64[m]) +
                                               " out of range");
    }
    return ffi::Error::Success();
}

static ffi::Error DecodeStepImpl(I32Vector ids, I32Vector positions, F32Matrix bias,
                                 I32Scalar slot, F32Vector scales, ffi::RemainingArgs rest,
                                 ffi::Result<F32Matrix> logits,
                                 ffi::RemainingRets caches, float eps, int64_t act,
                                 int64_t head_kn, int64_t n_head, int64_t threads,
                                 int64_t wq) {
    const std::string name = "gpt2_decode_step";
    const int64_t R = ids.dimensions()[0], L = bias.dimensions()[1];
    const int64_t n_layer = scales.dimensions()[0];
    if (positions.dimensions()[0] != R || bias.dimensions()[0] != R)
        return ffi::Error::InvalidArgument(name + ": ids, positions, bias rows differ");
    if (R > 64) return ffi::Error::InvalidArgument(name + ": more than 64 rows");
    Operands o;
    ffi::Error err = Gather(name, R, L, n_layer, wq, rest, caches, o);
    if (err.failure()) return err;
    const int64_t pos = *slot.typed_data();
    if (pos < 0 || pos >= L)
        return ffi::Error::InvalidArgument(name + ": cache slot " + std::to_string(pos) +
                                           " outside [0, " + std::to_string(L) + ")");
    std::vector<int64_t> id64, pos64;
    err = Tokens(name, ids.typed_data(), positions.typed_data(), R, o, id64, pos64);
    if (err.failure()) return err;
    const int nt = threads < 1 ? 1 : static_cast<int>(threads);
    const size_t need =
        static_cast<size_t>(gpt2_decode_work_floats(R, o.C, n_head, L, o.F, o.V, nt));
    float *out = logits->typed_data();
    const float *sc = scales.typed_data(), *bi = bias.typed_data();
    const std::function<void()> step = [&] {
        static std::vector<float> work;  // scratch of the kernel thread, reused across steps
        if (work.size() < need) work.resize(need);
        gpt2_decode_step(id64.data(), pos64.data(), o.glob.data(), o.layers.data(), sc, bi, pos,
                         R, o.C, n_head, L, o.F, o.V, n_layer, eps, static_cast<int>(act),
                         static_cast<int>(head_kn), out, work.data(), nt, static_cast<int>(wq),
                         o.n_scales > 0 ? o.qscale.data() : nullptr); /* 0 f32, 1 bf16, 2 int8 */
    };
    kernel_thread().Run(step);
    return ffi::Error::Success();
}

/* The prompt: ids and positions (R, T) into cache slots [0, T) through gpt2_prefill; logits
   (R, V) of each row's last token. bias (R, L) must be finite (a fully padded query row
   stays uniform, as the model's own mask). */
static ffi::Error PrefillImpl(I32Matrix ids, I32Matrix positions, F32Matrix bias,
                              F32Vector scales, ffi::RemainingArgs rest,
                              ffi::Result<F32Matrix> logits, ffi::RemainingRets caches, float eps,
                              int64_t act, int64_t head_kn, int64_t n_head, int64_t threads,
                              int64_t wq) {
    const std::string name = "gpt2_prefill";
    const int64_t R = ids.dimensions()[0], T = ids.dimensions()[1], L = bias.dimensions()[1];
    const int64_t n_layer = scales.dimensions()[0];
    if (positions.dimensions()[0] != R || positions.dimensions()[1] != T ||
        bias.dimensions()[0] != R)
        return ffi::Error::InvalidArgument(name + ": ids, positions, bias shapes differ");
    if (T < 1 || T > L)
        return ffi::Error::InvalidArgument(name + ": prompt of " + std::to_string(T) +
                                           " tokens does not fit " + std::to_string(L) +
                                           " cache slots");
    Operands o;
    ffi::Error err = Gather(name, R, L, n_layer, wq, rest, caches, o);
    if (err.failure()) return err;
    std::vector<int64_t> id64, pos64;
    err = Tokens(name, ids.typed_data(), positions.typed_data(), R * T, o, id64, pos64);
    if (err.failure()) return err;
    const int nt = threads < 1 ? 1 : static_cast<int>(threads);
    std::vector<float> work(static_cast<size_t>(gpt2_prefill_work_floats(R, T, o.C, L, o.F, nt)));
    float *out = logits->typed_data();
    const float *sc = scales.typed_data(), *bi = bias.typed_data();
    const std::function<void()> run = [&] {
        gpt2_prefill(id64.data(), pos64.data(), o.glob.data(), o.layers.data(), sc, bi, T, R,
                     o.C, n_head, L, o.F, o.V, n_layer, eps, static_cast<int>(act),
                     static_cast<int>(head_kn), out, work.data(), nt, static_cast<int>(wq),
                     o.n_scales > 0 ? o.qscale.data() : nullptr);
    };
    kernel_thread().Run(run);
    return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(Gpt2DecodeStep, DecodeStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<I32Vector>()  // ids
                                  .Arg<I32Vector>()  // positions
                                  .Arg<F32Matrix>()  // bias
                                  .Arg<I32Scalar>()  // slot
                                  .Arg<F32Vector>()  // scales
                                  .RemainingArgs()   // weights, caches
                                  .Ret<F32Matrix>()  // logits
                                  .RemainingRets()   // caches (aliased)
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act")
                                  .Attr<int64_t>("head_kn")
                                  .Attr<int64_t>("n_head")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("wq"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Gpt2Prefill, PrefillImpl,
                              ffi::Ffi::Bind()
                                  .Arg<I32Matrix>()  // ids (R, T)
                                  .Arg<I32Matrix>()  // positions (R, T)
                                  .Arg<F32Matrix>()  // bias (R, L)
                                  .Arg<F32Vector>()  // scales
                                  .RemainingArgs()   // weights, caches, int8 scales
                                  .Ret<F32Matrix>()  // logits
                                  .RemainingRets()   // caches (aliased)
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act")
                                  .Attr<int64_t>("head_kn")
                                  .Attr<int64_t>("n_head")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("wq"));

extern "C" int gpt2_xla_ffi_abi(void) { return 4; }
