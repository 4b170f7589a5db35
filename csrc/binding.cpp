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

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#if !defined(FASTATTN_EMULATE)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "softmax/softmax_fwd.h"

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

  const DeviceGuard guard(x.device());
  SoftmaxFwdParams params;
  params.x = x.const_data_ptr();
  params.y = y.mutable_data_ptr();
  params.inv_temperature = inv_temperature.has_value() ? inv_temperature->const_data_ptr<float>() : nullptr;
  params.inv_temp = static_cast<float>(inv_temp);
  params.rows = rows;
  params.n = n;
  params.x_row_stride = x.stride(0);
  params.y_row_stride = y.stride(0);
  check_cuda(softmax_fwd(params, dtype, current_stream(x)), op);
  return y;
}

}  // namespace
}  // namespace fastattn

TORCH_LIBRARY_FRAGMENT(fastattn, m) {
  m.set_python_module("fastattn._cuda");  // where the fake kernels live (torch checks register_fake's caller)
  m.def("softmax_fwd_cuda(Tensor x, Tensor? inv_temperature, float inv_temp) -> Tensor");
}

#if defined(FASTATTN_EMULATE)
#define FASTATTN_KERNEL_KEY CPU
#else
#define FASTATTN_KERNEL_KEY CUDA
#endif
TORCH_LIBRARY_IMPL(fastattn, FASTATTN_KERNEL_KEY, m) {
  m.impl("softmax_fwd_cuda", &fastattn::softmax_fwd_cuda);
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
