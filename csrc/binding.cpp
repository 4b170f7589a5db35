// The one translation unit that includes torch: op schemas, input validation, CUDA-stream plumbing, and the
// Python module stub. Kernels live in torch-free .cu files behind plain params structs (see csrc/README.md).
//
// Ops are defined with TORCH_LIBRARY_FRAGMENT because fastattn/ops/*.py also defines ops in the `fastattn`
// namespace (torch.library.custom_op); their fake (meta) kernels are registered in Python, in fastattn/_cuda.py.
//
// Header choice: torch/library.h + per-operator ATen headers + c10/cuda compile several times faster than
// torch/extension.h (which pulls in pybind11 and all of ATen); see csrc/README.md for the measured times.
//
// The emulated build (csrc/emu, fastattn/_emu.py) compiles this same file with -DFASTATTN_EMULATE: the ops then
// take CPU tensors and are registered for the CPU dispatch key; the kernels run through the emulator.
#if !defined(FASTATTN_EMULATE)
#include <Python.h>  // PyInit__C only; compiled against the limited API (py_limited_api=True in setup.py)
#endif

#include <cmath>
#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#if !defined(FASTATTN_EMULATE)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cuda_runtime_api.h>

#include "attention/attn_bwd.h"
#include "attention/attn_decode.h"
#include "attention/attn_fwd.h"
#include "common/dtype.h"
#include "softmax/softmax_fwd.h"
// ---- cudasmp: softmax backward, sampling ----
#include "sampling/sampling.h"
#include "softmax/softmax_bwd.h"
// ---- end cudasmp ----
#include "testing/primitives_test.h"
#include "testing/cluster_test.h"  // cuda-cluster

namespace fastattn {
namespace {

// Where the kernels run: CUDA tensors on the GPU build, CPU tensors on the emulated one.
#if defined(FASTATTN_EMULATE)
constexpr const char* kDeviceWord = "CPU (emulated CUDA build)";
bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
cudaStream_t current_stream(const at::Tensor&) { return nullptr; }
#else
constexpr const char* kDeviceWord = "CUDA";
bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.get_device()).stream();
}
#endif

// ---- cudasmp ----
// The emulated build fills every output with NaN (or -2 for integers) before the kernel runs, so an element a
// kernel forgets to write shows up in the tests; the GPU build leaves at::empty's memory as it is (no extra pass).
void poison_output(at::Tensor& t) {
#if defined(FASTATTN_EMULATE)
  if (t.is_floating_point()) {
    t.fill_(NAN);
  } else {
    t.fill_(-2);
  }
#else
  (void)t;
#endif
}
// ---- end cudasmp ----

// Turns a launcher's cudaError_t into a Python RuntimeError naming the op.
void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastattn::", op, ": CUDA error ", static_cast<int>(err), " (",
              cudaGetErrorName(err), "): ", cudaGetErrorString(err));
}

DType to_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, "fastattn::", op, ": ", name, " must be float32, float16 or bfloat16, got ",
                  t.scalar_type());
  }
}

// softmax_fwd_cuda(Tensor x, Tensor? inv_temperature, float inv_temp) -> Tensor
//   x: (rows, n) CUDA fp32/fp16/bf16 with stride 1 along n (any row stride);
//   inv_temperature: None, or a contiguous fp32 CUDA tensor of `rows` elements (1 / T per row);
//   inv_temp: 1 / T for every row when inv_temperature is None.
// Returns softmax(x * inv_t, dim=-1) as a new contiguous (rows, n) tensor of x's dtype.
at::Tensor softmax_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& inv_temperature,
                            double inv_temp) {
  constexpr const char* op = "softmax_fwd_cuda";
  TORCH_CHECK(on_kernel_device(x), "fastattn::", op, ": x must be a ", kDeviceWord, " tensor, got device ",
              x.device());
  TORCH_CHECK(x.dim() == 2, "fastattn::", op, ": x must be 2-D (rows, n), got shape ", x.sizes());
  const DType dtype = to_dtype(x, op, "x");
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(n <= 1 || x.stride(1) == 1, "fastattn::", op,
              ": x must have stride 1 along its last dim, got strides ", x.strides(), "; call .contiguous() first");
  if (inv_temperature.has_value()) {
    const at::Tensor& it = *inv_temperature;
    TORCH_CHECK(it.device() == x.device(), "fastattn::", op, ": inv_temperature must be on ", x.device(),
                " like x, got ", it.device());
    TORCH_CHECK(it.scalar_type() == at::kFloat, "fastattn::", op, ": inv_temperature must be float32, got ",
                it.scalar_type());
    TORCH_CHECK(it.numel() == rows && it.is_contiguous(), "fastattn::", op,
                ": inv_temperature must be a contiguous tensor of rows = ", rows, " elements, got shape ",
                it.sizes(), " and strides ", it.strides());
  }

  at::Tensor y = at::empty({rows, n}, x.options());
  if (rows == 0 || n == 0) return y;
  poison_output(y);  // cudasmp

  const DeviceGuard guard(x.device());
  SoftmaxFwdParams params;
  params.x = x.const_data_ptr();
  params.y = y.mutable_data_ptr();
  params.inv_temperature = inv_temperature.has_value() ? inv_temperature->const_data_ptr<float>() : nullptr;
  params.inv_temp = static_cast<float>(inv_temp);
  // Scratch for the row split of few wide rows (softmax_split.h); none for other shapes.
  const int64_t ws_floats = softmax_fwd_workspace_floats(rows, n, dtype);
  at::Tensor ws;
  if (ws_floats > 0) ws = at::empty({ws_floats}, x.options().dtype(at::kFloat));
  params.workspace = ws_floats > 0 ? ws.mutable_data_ptr<float>() : nullptr;
  params.rows = rows;
  params.n = n;
  params.x_row_stride = x.stride(0);
  params.y_row_stride = y.stride(0);
  check_cuda(softmax_fwd(params, dtype, current_stream(x)), op);
  return y;
}

// ---------------------------------------------------------------------------------------------------------
// ---- cudasmp: softmax backward and sampling (csrc/softmax/softmax_bwd.h, csrc/sampling/sampling.h) ----
// ---------------------------------------------------------------------------------------------------------

// A (rows,) float32 per-row parameter on x's device, contiguous (None allowed).
void check_row_param(const std::optional<at::Tensor>& t, const at::Tensor& x, int64_t rows, at::ScalarType type,
                     const char* op, const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device() == x.device(), "fastattn::", op, ": ", name, " must be on ", x.device(), " like its input, got ",
              t->device());
  TORCH_CHECK(t->scalar_type() == type, "fastattn::", op, ": ", name, " must be ", type, ", got ", t->scalar_type());
  TORCH_CHECK(t->numel() == rows && t->is_contiguous(), "fastattn::", op, ": ", name,
              " must be a contiguous tensor of rows = ", rows, " elements, got shape ", t->sizes(), " and strides ",
              t->strides());
}

// softmax_bwd_cuda(Tensor dy, Tensor y, Tensor? inv_temperature, float inv_temp) -> Tensor
//   dy, y: (rows, n), same dtype (fp32/fp16/bf16) and device, stride 1 along n; inv_temperature as in the forward.
// Returns dx = y * (dy - sum(dy * y)) * inv_t as a new contiguous (rows, n) tensor of y's dtype.
at::Tensor softmax_bwd_cuda(const at::Tensor& dy, const at::Tensor& y, const std::optional<at::Tensor>& inv_temperature,
                            double inv_temp) {
  constexpr const char* op = "softmax_bwd_cuda";
  TORCH_CHECK(on_kernel_device(y), "fastattn::", op, ": y must be a ", kDeviceWord, " tensor, got device ", y.device());
  TORCH_CHECK(y.dim() == 2, "fastattn::", op, ": y must be 2-D (rows, n), got shape ", y.sizes());
  const DType dtype = to_dtype(y, op, "y");
  TORCH_CHECK(dy.device() == y.device() && dy.scalar_type() == y.scalar_type() && dy.sizes() == y.sizes(),
              "fastattn::", op, ": dy must match y (", y.scalar_type(), ", ", y.device(), ", shape ", y.sizes(),
              "), got ", dy.scalar_type(), ", ", dy.device(), ", shape ", dy.sizes());
  const int64_t rows = y.size(0), n = y.size(1);
  TORCH_CHECK(n <= 1 || (y.stride(1) == 1 && dy.stride(1) == 1), "fastattn::", op,
              ": dy and y must have stride 1 along their last dim, got strides ", dy.strides(), " and ", y.strides());
  check_row_param(inv_temperature, y, rows, at::kFloat, op, "inv_temperature");

  at::Tensor dx = at::empty({rows, n}, y.options());
  if (rows == 0 || n == 0) return dx;
  poison_output(dx);
  const DeviceGuard guard(y.device());
  SoftmaxBwdParams params;
  params.dy = dy.const_data_ptr();
  params.y = y.const_data_ptr();
  params.dx = dx.mutable_data_ptr();
  params.inv_temperature = inv_temperature.has_value() ? inv_temperature->const_data_ptr<float>() : nullptr;
  params.inv_temp = static_cast<float>(inv_temp);
  const int64_t ws_floats = softmax_bwd_workspace_floats(rows, n, dtype);
  at::Tensor ws;
  if (ws_floats > 0) ws = at::empty({ws_floats}, y.options().dtype(at::kFloat));
  params.workspace = ws_floats > 0 ? ws.mutable_data_ptr<float>() : nullptr;
  params.rows = rows;
  params.n = n;
  params.dy_row_stride = dy.stride(0);
  params.y_row_stride = y.stride(0);
  params.dx_row_stride = dx.stride(0);
  check_cuda(softmax_bwd(params, dtype, current_stream(y)), op);
  return dx;
}

// A per-row sampling parameter as the kernel reads it (csrc/sampling/sampling.h RowParam): a (rows,) tensor of
// any stride or a 0-dim one (stride 0), float32/float64/float16/bfloat16 (int32/int64 for top_k), on x's device.
// Not range-checked: the kernel clamps what it reads.
RowParam sampling_row_param(const std::optional<at::Tensor>& t, const at::Tensor& x, bool integer, const char* op,
                            const char* name) {
  if (!t.has_value()) return RowParam{nullptr, 0, ParamType::kFloat32};
  TORCH_CHECK(t->device() == x.device(), "fastattn::", op, ": ", name, " must be on ", x.device(), " like its input, got ",
              t->device());
  TORCH_CHECK(t->dim() == 0 || (t->dim() == 1 && t->size(0) == x.size(0)), "fastattn::", op, ": ", name,
              " must be a 0-dim tensor or have shape (rows,) = (", x.size(0), "), got shape ", t->sizes());
  const at::ScalarType st = t->scalar_type();
  const bool ok = integer ? (st == at::kInt || st == at::kLong)
                          : (st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16);
  TORCH_CHECK(ok, "fastattn::", op, ": ", name, " must be ",
              integer ? "int32 or int64" : "float32, float64, float16 or bfloat16", ", got ", st);
  const ParamType type = st == at::kDouble     ? ParamType::kFloat64
                         : st == at::kHalf     ? ParamType::kFloat16
                         : st == at::kBFloat16 ? ParamType::kBFloat16
                         : st == at::kInt      ? ParamType::kInt32
                         : st == at::kLong     ? ParamType::kInt64
                                               : ParamType::kFloat32;
  return RowParam{t->const_data_ptr(), t->dim() == 0 ? 0 : t->stride(0), type};
}

// Checks shared by the sampling ops; returns the logits' DType. Per-row parameters: see sampling_row_param.
DType check_sampling_args(const at::Tensor& logits, const std::optional<at::Tensor>& temperature_t,
                          const std::optional<at::Tensor>& top_k_t, const std::optional<at::Tensor>& top_p_t,
                          const std::optional<at::Tensor>& min_p_t, const char* op) {
  TORCH_CHECK(on_kernel_device(logits), "fastattn::", op, ": logits must be a ", kDeviceWord, " tensor, got device ",
              logits.device());
  TORCH_CHECK(logits.dim() == 2, "fastattn::", op, ": logits must be 2-D (B, V), got shape ", logits.sizes());
  const DType dtype = to_dtype(logits, op, "logits");
  TORCH_CHECK(logits.size(1) <= 1 || logits.stride(1) == 1, "fastattn::", op,
              ": logits must have stride 1 along V, got strides ", logits.strides(), "; call .contiguous() first");
  sampling_row_param(temperature_t, logits, false, op, "temperature_t");
  sampling_row_param(top_k_t, logits, true, op, "top_k_t");
  sampling_row_param(top_p_t, logits, false, op, "top_p_t");
  sampling_row_param(min_p_t, logits, false, op, "min_p_t");
  return dtype;
}

SamplingParams sampling_params(const at::Tensor& logits, const std::optional<at::Tensor>& temperature_t,
                               double temperature, const std::optional<at::Tensor>& top_k_t, int64_t top_k,
                               const std::optional<at::Tensor>& top_p_t, double top_p,
                               const std::optional<at::Tensor>& min_p_t, double min_p) {
  SamplingParams p{};
  p.logits = logits.const_data_ptr();
  p.rows = logits.size(0);
  p.vocab = logits.size(1);
  p.row_stride = logits.stride(0);
  constexpr const char* op = "sampling";  // checked before (check_sampling_args)
  p.temperature = sampling_row_param(temperature_t, logits, false, op, "temperature_t");
  p.temperature_val = static_cast<float>(temperature);
  p.top_k = sampling_row_param(top_k_t, logits, true, op, "top_k_t");
  p.top_k_val = top_k;
  p.top_p = sampling_row_param(top_p_t, logits, false, op, "top_p_t");
  p.top_p_val = static_cast<float>(top_p);
  p.min_p = sampling_row_param(min_p_t, logits, false, op, "min_p_t");
  p.min_p_val = static_cast<float>(min_p);
  return p;
}

// sample_cuda(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p, seeds, seed)
//   -> int64 (B,) token ids (-1 for a NaN / non-finite row). seeds: int64 (B,) or None (then `seed` for all rows).
at::Tensor sample_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& temperature_t, double temperature,
                       const std::optional<at::Tensor>& top_k_t, int64_t top_k,
                       const std::optional<at::Tensor>& top_p_t, double top_p,
                       const std::optional<at::Tensor>& min_p_t, double min_p, const std::optional<at::Tensor>& seeds,
                       int64_t seed) {
  constexpr const char* op = "sample_cuda";
  const DType dtype = check_sampling_args(logits, temperature_t, top_k_t, top_p_t, min_p_t, op);
  check_row_param(seeds, logits, logits.size(0), at::kLong, op, "seeds");
  TORCH_CHECK(logits.size(1) > 0 || logits.size(0) == 0, "fastattn::", op, ": logits must have V > 0, got shape ",
              logits.sizes());
  at::Tensor tokens = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  if (logits.size(0) == 0) return tokens;
  poison_output(tokens);
  const DeviceGuard guard(logits.device());
  SamplingParams p = sampling_params(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p);
  p.seeds = seeds.has_value() ? seeds->const_data_ptr<int64_t>() : nullptr;
  p.seed_val = seed;
  p.tokens = tokens.mutable_data_ptr<int64_t>();
  p.filtered = nullptr;
  check_cuda(sampling(p, dtype, current_stream(logits)), op);
  return tokens;
}

// top_k_top_p_filter_cuda(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p)
//   -> float32 (B, V): logits / T with the removed tokens at -inf (see csrc/sampling/sampling.h).
at::Tensor top_k_top_p_filter_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& temperature_t,
                                   double temperature, const std::optional<at::Tensor>& top_k_t, int64_t top_k,
                                   const std::optional<at::Tensor>& top_p_t, double top_p,
                                   const std::optional<at::Tensor>& min_p_t, double min_p) {
  constexpr const char* op = "top_k_top_p_filter_cuda";
  const DType dtype = check_sampling_args(logits, temperature_t, top_k_t, top_p_t, min_p_t, op);
  at::Tensor out = at::empty({logits.size(0), logits.size(1)}, logits.options().dtype(at::kFloat));
  if (logits.numel() == 0) return out;
  poison_output(out);
  const DeviceGuard guard(logits.device());
  SamplingParams p = sampling_params(logits, temperature_t, temperature, top_k_t, top_k, top_p_t, top_p, min_p_t, min_p);
  p.seeds = nullptr;
  p.seed_val = 0;
  p.tokens = nullptr;
  p.filtered = out.mutable_data_ptr<float>();
  check_cuda(sampling(p, dtype, current_stream(logits)), op);
  return out;
}

// ---- end cudasmp ----

// Attention (csrc/attention/). Inputs are checked here; fastattn/_cuda.py prepares them (alignment copies,
// bias dtype) so that these checks hold, and its probes turn every other unsupported call into a reason.
// ---------------------------------------------------------------------------------------------------------
// A (B, H, S, D) operand as the kernels read it: unit stride along D, other strides multiples of 8 elements
// and a 16-byte aligned base (cp.async copies 16-byte chunks of rows).
void check_attn_operand(const at::Tensor& t, const at::Tensor& q, const char* op, const char* name) {
  TORCH_CHECK(on_kernel_device(t) && t.device() == q.device(), "fastattn::", op, ": ", name, " must be a ",
              kDeviceWord, " tensor on ", q.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), "fastattn::", op, ": ", name, " must have q's dtype ",
              q.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, "fastattn::", op, ": ", name, " must be 4-D (B, H, S, D), got shape ", t.sizes());
  bool ok = t.stride(3) == 1 || t.size(3) <= 1;
  for (int i = 0; i < 3; ++i) ok = ok && (t.stride(i) % 8 == 0 || t.size(i) <= 1);
  ok = ok && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  TORCH_CHECK(ok, "fastattn::", op, ": ", name, " must have stride 1 along D, strides that are multiples of 8 "
              "elements and a 16-byte aligned address, got strides ", t.strides(), "; call .contiguous() first");
}

// Attention dropout p in [0, 1) (0: none); seed and offset key its stream (common/dropout.h).
void check_dropout_p(double dropout_p, const char* op) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fastattn::", op, ": dropout_p must be in [0, 1), got ",
              dropout_p);
}

// attn_fwd_cuda(q (B, Hq, Sq, D), k, v (B, Hkv, Sk, D), bias?, key_padding_mask? (B, Sk) bool, causal, scale,
//               dropout_p, seed, offset)
//   -> (out (B, Hq, Sq, D) contiguous in q's dtype, lse (B, Hq, Sq) float32)
// bias: fp32/fp16/bf16, 4-D, broadcastable to (B, Hq, Sq, Sk) (read through expanded strides, 0 where broadcast).
at::Tensor check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& q, const char* op,
                      at::IntArrayRef full) {
  const at::Tensor& bt = *bias;
  TORCH_CHECK(on_kernel_device(bt) && bt.device() == q.device(), "fastattn::", op, ": bias must be on ", q.device(),
              ", got ", bt.device());
  TORCH_CHECK(bt.scalar_type() == at::kFloat || bt.scalar_type() == at::kHalf || bt.scalar_type() == at::kBFloat16,
              "fastattn::", op, ": bias must be float32, float16 or bfloat16, got ", bt.scalar_type());
  TORCH_CHECK(bt.dim() == 4, "fastattn::", op, ": bias must be 4-D, broadcastable to ", full, ", got shape ",
              bt.sizes());
  for (int i = 0; i < 4; ++i)
    TORCH_CHECK(bt.size(i) == full[i] || bt.size(i) == 1, "fastattn::", op, ": bias of shape ", bt.sizes(),
                " does not broadcast to ", full);
  return bt.expand(full);
}

std::tuple<at::Tensor, at::Tensor> attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& bias,
                                                 const std::optional<at::Tensor>& key_padding_mask, bool causal,
                                                 double scale, double dropout_p, int64_t seed, int64_t offset) {
  constexpr const char* op = "attn_fwd_cuda";
  check_dropout_p(dropout_p, op);
  TORCH_CHECK(on_kernel_device(q), "fastattn::", op, ": q must be a ", kDeviceWord, " tensor, got device ",
              q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "fastattn::", op,
              ": q must be float16 or bfloat16, got ", q.scalar_type());
  check_attn_operand(q, q, op, "q");
  check_attn_operand(k, q, op, "k");
  check_attn_operand(v, q, op, "v");
  const int64_t b = q.size(0), hq = q.size(1), sq = q.size(2), d = q.size(3);
  const int64_t hkv = k.size(1), sk = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == b && k.size(3) == d, "fastattn::", op,
              ": k and v must both be (B=", b, ", Hkv, Sk, D=", d, "), got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "fastattn::", op, ": Hq=", hq, " must be a multiple of Hkv=", hkv);
  TORCH_CHECK(attn_fwd_supported_head_dim(static_cast<int>(d)), "fastattn::", op, ": head dim ", d,
              " has no kernel (32, 64, 96, 128, 256)");
  TORCH_CHECK(b <= 65535 && hq <= 65535, "fastattn::", op, ": batch and heads must be <= 65535, got ", b, " and ", hq);
  const int64_t full_arr[4] = {b, hq, sq, sk};
  const at::IntArrayRef full(full_arr, 4);
  at::Tensor bias_e;
  if (bias.has_value()) bias_e = check_bias(bias, q, op, full);
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK(on_kernel_device(m) && m.device() == q.device() && m.scalar_type() == at::kBool, "fastattn::", op,
                ": key_padding_mask must be a bool tensor on ", q.device(), ", got ", m.scalar_type(), " on ",
                m.device());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == b && m.size(1) == sk && (m.stride(1) == 1 || sk <= 1), "fastattn::",
                op, ": key_padding_mask must be (B, Sk) = (", b, ", ", sk, ") with stride 1 along Sk, got shape ",
                m.sizes(), " and strides ", m.strides());
  }

  at::Tensor out = at::empty({b, hq, sq, d}, q.options());
  at::Tensor lse = at::empty({b, hq, sq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  if (sk == 0) {  // nothing to attend to
    out.zero_();
    lse.fill_(-INFINITY);
    return {out, lse};
  }

#if defined(FASTATTN_EMULATE)
  out.fill_(NAN);  // poisoned: an element the kernel fails to write shows up in the emulated tests
  lse.fill_(NAN);
#endif
  const DeviceGuard guard(q.device());
  AttnFwdParams p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.bias = bias.has_value() ? bias_e.const_data_ptr() : nullptr;
  p.bias_dtype = bias.has_value() ? static_cast<int>(to_dtype(bias_e, op, "bias")) : 0;
  p.key_padding = key_padding_mask.has_value()
                      ? reinterpret_cast<const uint8_t*>(key_padding_mask->const_data_ptr<bool>()) : nullptr;
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  p.batch = b;
  p.heads_q = hq;
  p.heads_kv = hkv;
  p.seqlen_q = sq;
  p.seqlen_k = sk;
  for (int i = 0; i < 4; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
    p.out_stride[i] = out.stride(i);
    p.bias_stride[i] = bias.has_value() ? bias_e.stride(i) : 0;
  }
  p.kpm_stride_b = key_padding_mask.has_value() ? key_padding_mask->stride(0) : 0;
  for (int i = 0; i < 3; ++i) p.lse_stride[i] = lse.stride(i);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = causal;
  p.dropout = make_attn_dropout(dropout_p, seed, offset);
  check_cuda(attn_fwd(p, to_dtype(q, op, "q"), static_cast<int>(d), current_stream(q)), op);
  return {out, lse};
}

// attn_bwd_cuda(dout, q, k, v, out, lse, bias?, key_padding_mask?, causal, scale, bias_requires_grad, dropout_p,
//               seed, offset): the forward's dropout, its mask regenerated
//   -> (dq (B, Hq, Sq, D), dk, dv (B, Hkv, Sk, D) contiguous in the inputs' dtype,
//       dbias: fp32 (B, Hq, Sq, Sk) holding dS when bias_requires_grad (the caller sums broadcast dims), else (0,))
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_padding_mask,
    bool causal, double scale, bool bias_requires_grad, double dropout_p, int64_t seed, int64_t offset) {
  constexpr const char* op = "attn_bwd_cuda";
  check_dropout_p(dropout_p, op);
  TORCH_CHECK(on_kernel_device(q), "fastattn::", op, ": q must be a ", kDeviceWord, " tensor, got device ",
              q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "fastattn::", op,
              ": q must be float16 or bfloat16, got ", q.scalar_type());
  check_attn_operand(q, q, op, "q");
  check_attn_operand(k, q, op, "k");
  check_attn_operand(v, q, op, "v");
  check_attn_operand(out, q, op, "out");
  check_attn_operand(dout, q, op, "dout");
  const int64_t b = q.size(0), hq = q.size(1), sq = q.size(2), d = q.size(3);
  const int64_t hkv = k.size(1), sk = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == b && k.size(3) == d, "fastattn::", op,
              ": k and v must both be (B=", b, ", Hkv, Sk, D=", d, "), got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(out.sizes() == q.sizes() && dout.sizes() == q.sizes(), "fastattn::", op,
              ": out and dout must have q's shape ", q.sizes(), ", got ", out.sizes(), " and ", dout.sizes());
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "fastattn::", op, ": Hq=", hq, " must be a multiple of Hkv=", hkv);
  TORCH_CHECK(attn_bwd_supported_head_dim(static_cast<int>(d)), "fastattn::", op, ": head dim ", d,
              " has no backward kernel (32, 64, 96, 128)");
  TORCH_CHECK(b <= 65535 && hq <= 65535, "fastattn::", op, ": batch and heads must be <= 65535, got ", b, " and ", hq);
  TORCH_CHECK(on_kernel_device(lse) && lse.device() == q.device() && lse.scalar_type() == at::kFloat &&
                  lse.dim() == 3 && lse.size(0) == b && lse.size(1) == hq && lse.size(2) == sq,
              "fastattn::", op, ": lse must be float32 (B, Hq, Sq) on ", q.device(), ", got ", lse.scalar_type(),
              " ", lse.sizes());
  const int64_t full_arr[4] = {b, hq, sq, sk};
  const at::IntArrayRef full(full_arr, 4);
  at::Tensor bias_e;
  if (bias.has_value()) bias_e = check_bias(bias, q, op, full);
  TORCH_CHECK(!bias_requires_grad || bias.has_value(), "fastattn::", op, ": bias_requires_grad without a bias");
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK(on_kernel_device(m) && m.device() == q.device() && m.scalar_type() == at::kBool && m.dim() == 2 &&
                    m.size(0) == b && m.size(1) == sk && (m.stride(1) == 1 || sk <= 1),
                "fastattn::", op, ": key_padding_mask must be a bool (B, Sk) tensor with stride 1 along Sk");
  }

  at::Tensor dq = at::empty({b, hq, sq, d}, q.options());
  at::Tensor dk = at::empty({b, hkv, sk, d}, q.options());
  at::Tensor dv = at::empty({b, hkv, sk, d}, q.options());
  at::Tensor dbias = bias_requires_grad ? at::empty({b, hq, sq, sk}, q.options().dtype(at::kFloat))
                                        : at::empty({0}, q.options().dtype(at::kFloat));
  if (q.numel() == 0 || k.numel() == 0) {  // no score at all: every gradient is 0
    dq.zero_();
    dk.zero_();
    dv.zero_();
    dbias.zero_();
    return {dq, dk, dv, dbias};
  }
  at::Tensor delta = at::empty({b, hq, sq}, q.options().dtype(at::kFloat));
#if defined(FASTATTN_EMULATE)
  for (at::Tensor* t : {&dq, &dk, &dv, &dbias, &delta}) t->fill_(NAN);  // poisoned (see attn_fwd_cuda)
#endif
  const DeviceGuard guard(q.device());
  AttnBwdParams p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.out = out.const_data_ptr();
  p.dout = dout.const_data_ptr();
  p.lse = lse.const_data_ptr<float>();
  p.bias = bias.has_value() ? bias_e.const_data_ptr() : nullptr;
  p.bias_dtype = bias.has_value() ? static_cast<int>(to_dtype(bias_e, op, "bias")) : 0;
  p.key_padding = key_padding_mask.has_value()
                      ? reinterpret_cast<const uint8_t*>(key_padding_mask->const_data_ptr<bool>()) : nullptr;
  p.delta = delta.mutable_data_ptr<float>();
  p.dq = dq.mutable_data_ptr();
  p.dk = dk.mutable_data_ptr();
  p.dv = dv.mutable_data_ptr();
  p.dbias = bias_requires_grad ? dbias.mutable_data_ptr<float>() : nullptr;
  p.batch = b;
  p.heads_q = hq;
  p.heads_kv = hkv;
  p.seqlen_q = sq;
  p.seqlen_k = sk;
  for (int i = 0; i < 4; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
    p.out_stride[i] = out.stride(i);
    p.dout_stride[i] = dout.stride(i);
    p.bias_stride[i] = bias.has_value() ? bias_e.stride(i) : 0;
  }
  p.kpm_stride_b = key_padding_mask.has_value() ? key_padding_mask->stride(0) : 0;
  for (int i = 0; i < 3; ++i) p.lse_stride[i] = lse.stride(i);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = causal;
  p.dropout = make_attn_dropout(dropout_p, seed, offset);
  check_cuda(attn_bwd(p, to_dtype(q, op, "q"), static_cast<int>(d), current_stream(q)), op);
  return {dq, dk, dv, dbias};
}

// attn_decode_cuda(q (B, Hq, D), k_cache, v_cache (B, Hkv, Smax, D), cache_seqlens int32 (B,), scale, num_splits)
//   -> out (B, Hq, D) contiguous in q's dtype. Lengths are clamped to [0, Smax] in the kernel; num_splits (>= 1)
//   is the caller's heuristic, rounded here to whole key blocks per split (attn_decode_key_block: 64 keys, 32 at D = 256).
at::Tensor attn_decode_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& cache_seqlens, double scale, int64_t num_splits) {
  constexpr const char* op = "attn_decode_cuda";
  TORCH_CHECK(on_kernel_device(q), "fastattn::", op, ": q must be a ", kDeviceWord, " tensor, got device ",
              q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "fastattn::", op,
              ": q must be float16 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(q.dim() == 3, "fastattn::", op, ": q must be (B, Hq, D), got shape ", q.sizes());
  const int64_t b = q.size(0), hq = q.size(1), d = q.size(2);
  bool q_ok = q.stride(2) == 1 || d <= 1;
  for (int i = 0; i < 2; ++i) q_ok = q_ok && (q.stride(i) % 8 == 0 || q.size(i) <= 1);
  q_ok = q_ok && reinterpret_cast<uintptr_t>(q.const_data_ptr()) % 16 == 0;
  TORCH_CHECK(q_ok, "fastattn::", op, ": q must have stride 1 along D, strides that are multiples of 8 elements and "
              "a 16-byte aligned address, got strides ", q.strides());
  check_attn_operand(k_cache, q, op, "k_cache");
  check_attn_operand(v_cache, q, op, "v_cache");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.size(0) == b && k_cache.size(3) == d, "fastattn::", op,
              ": k_cache and v_cache must both be (B=", b, ", Hkv, Smax, D=", d, "), got ", k_cache.sizes(), " and ",
              v_cache.sizes());
  const int64_t hkv = k_cache.size(1), smax = k_cache.size(2);
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "fastattn::", op, ": Hq=", hq, " must be a multiple of Hkv=", hkv);
  TORCH_CHECK(attn_fwd_supported_head_dim(static_cast<int>(d)), "fastattn::", op, ": head dim ", d,
              " has no kernel (32, 64, 96, 128, 256)");
  TORCH_CHECK(on_kernel_device(cache_seqlens) && cache_seqlens.device() == q.device() &&
                  cache_seqlens.scalar_type() == at::kInt && cache_seqlens.dim() == 1 &&
                  cache_seqlens.size(0) == b && cache_seqlens.is_contiguous(),
              "fastattn::", op, ": cache_seqlens must be a contiguous int32 (B,) tensor on ", q.device());
  TORCH_CHECK(num_splits >= 1, "fastattn::", op, ": num_splits must be >= 1, got ", num_splits);
  TORCH_CHECK(b <= 65535, "fastattn::", op, ": batch must be <= 65535, got ", b);

  at::Tensor out = at::empty({b, hq, d}, q.options());
  if (out.numel() == 0) return out;
  if (smax == 0) return out.zero_();
  const int64_t blk = attn_decode_key_block(static_cast<int>(d));
  int64_t splits = num_splits < smax ? num_splits : smax;
  int64_t split_len = ((smax + splits - 1) / splits + blk - 1) / blk * blk;
  splits = (smax + split_len - 1) / split_len;
  at::Tensor o_part, lse_part;
  if (splits > 1) {
    o_part = at::empty({b, hq, splits, d}, q.options().dtype(at::kFloat));
    lse_part = at::empty({b, hq, splits}, q.options().dtype(at::kFloat));
  }
#if defined(FASTATTN_EMULATE)
  out.fill_(NAN);  // poisoned (see attn_fwd_cuda)
  if (splits > 1) {
    o_part.fill_(NAN);
    lse_part.fill_(NAN);
  }
#endif
  const DeviceGuard guard(q.device());
  AttnDecodeParams p{};
  p.q = q.const_data_ptr();
  p.k = k_cache.const_data_ptr();
  p.v = v_cache.const_data_ptr();
  p.seqlens = cache_seqlens.const_data_ptr<int32_t>();
  p.out = out.mutable_data_ptr();
  p.o_part = splits > 1 ? o_part.mutable_data_ptr<float>() : nullptr;
  p.lse_part = splits > 1 ? lse_part.mutable_data_ptr<float>() : nullptr;
  p.batch = b;
  p.heads_q = hq;
  p.heads_kv = hkv;
  p.max_seqlen = smax;
  for (int i = 0; i < 3; ++i) p.q_stride[i] = q.stride(i);
  for (int i = 0; i < 4; ++i) {
    p.k_stride[i] = k_cache.stride(i);
    p.v_stride[i] = v_cache.stride(i);
  }
  p.split_len = split_len;
  p.num_splits = static_cast<int>(splits);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  check_cuda(attn_decode(p, to_dtype(q, op, "q"), static_cast<int>(d), current_stream(q)), op);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Test kernels of the tensor-core and async-copy primitives (csrc/testing/primitives_test.h), called by
// tests/test_cuda_primitives.py only. Outputs are filled with NaN before the kernel writes them.
// ---------------------------------------------------------------------------------------------------------
void check_test_tensor(const at::Tensor& t, const char* op, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(on_kernel_device(t), "fastattn::", op, ": ", name, " must be a ", kDeviceWord, " tensor, got device ",
              t.device());
  TORCH_CHECK(t.sizes() == shape && t.is_contiguous(), "fastattn::", op, ": ", name, " must be contiguous with shape ",
              shape, ", got shape ", t.sizes(), " and strides ", t.strides());
}

DType mma_dtype(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16, "fastattn::", op,
              ": a must be float16 or bfloat16, got ", a.scalar_type());
  TORCH_CHECK(b.scalar_type() == a.scalar_type() && b.device() == a.device(), "fastattn::", op,
              ": b must have a's dtype and device (", a.scalar_type(), ", ", a.device(), "), got ", b.scalar_type(),
              ", ", b.device());
  return to_dtype(a, op, "a");
}

void check_accumulator(const at::Tensor& c, const at::Tensor& a, const char* op, at::IntArrayRef shape) {
  check_test_tensor(c, op, "c", shape);
  TORCH_CHECK(c.scalar_type() == at::kFloat && c.device() == a.device(), "fastattn::", op,
              ": c must be float32 on ", a.device(), ", got ", c.scalar_type(), " on ", c.device());
}

// _test_mma_cuda(a (16, 16), b (16, 8), c (16, 8) f32) -> a @ b + c (16, 8) f32, one mma.m16n8k16.
at::Tensor test_mma_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  constexpr const char* op = "_test_mma_cuda";
  check_test_tensor(a, op, "a", {16, 16});
  check_test_tensor(b, op, "b", {16, 8});
  const DType dtype = mma_dtype(a, b, op);
  check_accumulator(c, a, op, {16, 8});
  const DeviceGuard guard(a.device());
  at::Tensor d = at::empty({16, 8}, c.options()).fill_(NAN);
  check_cuda(testing::mma_test(a.const_data_ptr(), b.const_data_ptr(), c.const_data_ptr<float>(),
                               d.mutable_data_ptr<float>(), dtype, current_stream(a)),
             op);
  return d;
}

// _test_ldmatrix_cuda(a (16, 16), b (16, 16), c (16, 16) f32, a_mode, b_mode) -> a @ b + c (16, 16) f32,
// the fragments loaded by ldmatrix in the given modes (csrc/testing/primitives_test.h).
at::Tensor test_ldmatrix_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, int64_t a_mode,
                              int64_t b_mode) {
  constexpr const char* op = "_test_ldmatrix_cuda";
  check_test_tensor(a, op, "a", {16, 16});
  check_test_tensor(b, op, "b", {16, 16});
  const DType dtype = mma_dtype(a, b, op);
  check_accumulator(c, a, op, {16, 16});
  TORCH_CHECK(0 <= a_mode && a_mode < testing::kLdmatrixModes && 0 <= b_mode && b_mode < testing::kLdmatrixModes,
              "fastattn::", op, ": a_mode and b_mode must be in [0, ", testing::kLdmatrixModes, "), got ", a_mode,
              " and ", b_mode);
  const DeviceGuard guard(a.device());
  at::Tensor d = at::empty({16, 16}, c.options()).fill_(NAN);
  check_cuda(testing::ldmatrix_test(a.const_data_ptr(), b.const_data_ptr(), c.const_data_ptr<float>(),
                                    d.mutable_data_ptr<float>(), dtype, static_cast<int>(a_mode),
                                    static_cast<int>(b_mode), current_stream(a)),
             op);
  return d;
}

// _test_cp_async_cuda(src (4, 64 * bytes / 4) f32, bytes, planted_missing_wait) -> (6, 64 * bytes / 4) f32.
at::Tensor test_cp_async_cuda(const at::Tensor& src, int64_t bytes, bool planted_missing_wait) {
  constexpr const char* op = "_test_cp_async_cuda";
  TORCH_CHECK(bytes == 4 || bytes == 8 || bytes == 16, "fastattn::", op, ": bytes must be 4, 8 or 16, got ", bytes);
  check_test_tensor(src, op, "src", {4, 64 * bytes / 4});
  TORCH_CHECK(src.scalar_type() == at::kFloat, "fastattn::", op, ": src must be float32, got ", src.scalar_type());
  const DeviceGuard guard(src.device());
  at::Tensor out = at::empty({6, 64 * bytes / 4}, src.options()).fill_(NAN);
  check_cuda(testing::cp_async_test(src.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                    static_cast<int>(bytes), planted_missing_wait, current_stream(src)),
             op);
  return out;
}

// _test_gemm_cuda(a (m, k), b (k, n), planted) -> a @ b (m, n) f32; m, n multiples of 64, k of 32; planted: 0 none,
// 1 a missing cp.async wait, 2 a missing barrier (testing::GemmPlanted).
at::Tensor test_gemm_cuda(const at::Tensor& a, const at::Tensor& b, int64_t planted) {
  constexpr const char* op = "_test_gemm_cuda";
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "fastattn::", op,
              ": a and b must be (m, k) and (k, n), got shapes ", a.sizes(), " and ", b.sizes());
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(m % 64 == 0 && n % 64 == 0 && k % 32 == 0 && k > 0, "fastattn::", op,
              ": m and n must be multiples of 64 and k a positive multiple of 32, got m=", m, " n=", n, " k=", k);
  check_test_tensor(a, op, "a", {m, k});
  check_test_tensor(b, op, "b", {k, n});
  const DType dtype = mma_dtype(a, b, op);
  TORCH_CHECK(planted >= 0 && planted <= 2, "fastattn::", op, ": planted must be 0, 1 or 2, got ", planted);
  const DeviceGuard guard(a.device());
  at::Tensor c = at::empty({m, n}, a.options().dtype(at::kFloat)).fill_(NAN);
  check_cuda(testing::gemm_test(a.const_data_ptr(), b.const_data_ptr(), c.mutable_data_ptr<float>(), m, n, k, dtype,
                                static_cast<int>(planted), current_stream(a)),
             op);
  return c;
}

// ---- cuda-cluster ----
// _test_cluster_reduce_cuda(x (rows, n) f32, cluster, mode) -> (rows, 1 + cluster) f32: [r, 0] the row sums
// reduced through a cluster's distributed shared memory, [r, 1 + rank] 1000 * rank + nctarank
// (csrc/testing/cluster_test.h; mode: 0 pull, 1 push, 2 planted missing barrier, 3 planted early exit).
at::Tensor test_cluster_reduce_cuda(const at::Tensor& x, int64_t cluster, int64_t mode) {
  constexpr const char* op = "_test_cluster_reduce_cuda";
  TORCH_CHECK(x.dim() == 2, "fastattn::", op, ": x must be (rows, n), got shape ", x.sizes());
  check_test_tensor(x, op, "x", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "fastattn::", op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK(cluster >= 1 && cluster <= 16, "fastattn::", op, ": cluster must be in [1, 16], got ", cluster);
  TORCH_CHECK(mode >= 0 && mode <= 3, "fastattn::", op, ": mode must be 0, 1, 2 or 3, got ", mode);
  TORCH_CHECK(x.size(0) * cluster <= 65535 * 16, "fastattn::", op, ": too many rows (", x.size(0), ")");
  const DeviceGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), 1 + cluster}, x.options()).fill_(NAN);
  check_cuda(testing::cluster_reduce_test(x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x.size(0),
                                          x.size(1), static_cast<int>(cluster), static_cast<int>(mode),
                                          current_stream(x)),
             op);
  return out;
}
// ---- end cuda-cluster ----

}  // namespace
}  // namespace fastattn

TORCH_LIBRARY_FRAGMENT(fastattn, m) {
  m.set_python_module("fastattn._cuda");  // where the fake kernels live (torch checks register_fake's caller)
  m.def("softmax_fwd_cuda(Tensor x, Tensor? inv_temperature, float inv_temp) -> Tensor");
  // ---- cudasmp ----
  m.def("softmax_bwd_cuda(Tensor dy, Tensor y, Tensor? inv_temperature, float inv_temp) -> Tensor");
  m.def("sample_cuda(Tensor logits, Tensor? temperature_t, float temperature, Tensor? top_k_t, int top_k, "
        "Tensor? top_p_t, float top_p, Tensor? min_p_t, float min_p, Tensor? seeds, int seed) -> Tensor");
  m.def("top_k_top_p_filter_cuda(Tensor logits, Tensor? temperature_t, float temperature, Tensor? top_k_t, "
        "int top_k, Tensor? top_p_t, float top_p, Tensor? min_p_t, float min_p) -> Tensor");
  // ---- end cudasmp ----
  m.def("attn_fwd_cuda(Tensor q, Tensor k, Tensor v, Tensor? bias, Tensor? key_padding_mask, bool causal, "
        "float scale, float dropout_p=0.0, int seed=0, int offset=0) -> (Tensor, Tensor)");
  m.def("attn_bwd_cuda(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? bias, "
        "Tensor? key_padding_mask, bool causal, float scale, bool bias_requires_grad, float dropout_p=0.0, "
        "int seed=0, int offset=0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("attn_decode_cuda(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, float scale, "
        "int num_splits) -> Tensor");
  // Test kernels of the primitives (tests/test_cuda_primitives.py); no fake kernels, not for tracing.
  m.def("_test_mma_cuda(Tensor a, Tensor b, Tensor c) -> Tensor");
  m.def("_test_ldmatrix_cuda(Tensor a, Tensor b, Tensor c, int a_mode, int b_mode) -> Tensor");
  m.def("_test_cp_async_cuda(Tensor src, int bytes, bool planted_missing_wait) -> Tensor");
  m.def("_test_gemm_cuda(Tensor a, Tensor b, int planted) -> Tensor");
  m.def("_test_cluster_reduce_cuda(Tensor x, int cluster, int mode) -> Tensor");  // cuda-cluster
}

#if defined(FASTATTN_EMULATE)
#define FASTATTN_KERNEL_KEY CPU
#else
#define FASTATTN_KERNEL_KEY CUDA
#endif
TORCH_LIBRARY_IMPL(fastattn, FASTATTN_KERNEL_KEY, m) {
  m.impl("softmax_fwd_cuda", &fastattn::softmax_fwd_cuda);
  // ---- cudasmp ----
  m.impl("softmax_bwd_cuda", &fastattn::softmax_bwd_cuda);
  m.impl("sample_cuda", &fastattn::sample_cuda);
  m.impl("top_k_top_p_filter_cuda", &fastattn::top_k_top_p_filter_cuda);
  // ---- end cudasmp ----
  m.impl("attn_fwd_cuda", &fastattn::attn_fwd_cuda);
  m.impl("attn_bwd_cuda", &fastattn::attn_bwd_cuda);
  m.impl("attn_decode_cuda", &fastattn::attn_decode_cuda);
  m.impl("_test_mma_cuda", &fastattn::test_mma_cuda);
  m.impl("_test_ldmatrix_cuda", &fastattn::test_ldmatrix_cuda);
  m.impl("_test_cp_async_cuda", &fastattn::test_cp_async_cuda);
  m.impl("_test_gemm_cuda", &fastattn::test_gemm_cuda);
  m.impl("_test_cluster_reduce_cuda", &fastattn::test_cluster_reduce_cuda);  // cuda-cluster
}

#if !defined(FASTATTN_EMULATE)
// `import fastattn._C` loads this shared object, which runs the static registrations above. The module itself
// is empty; the ops are reached through torch.ops.fastattn.*.
PyMODINIT_FUNC PyInit__C(void) {  // PyMODINIT_FUNC is extern "C", visibility default
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // m_name
      nullptr,  // m_doc
      -1,       // m_size
      nullptr,  // m_methods
  };
  return PyModule_Create(&module_def);
}
#endif  // !FASTATTN_EMULATE
