// Torch-free element-type tag shared by the binding (host C++) and the CUDA translation units.
//
// The binding maps at::ScalarType to DType; each op's dispatcher (.cu) maps DType to the C++ element type
// (float, __half, __nv_bfloat16) and calls the matching explicit instantiation.
#pragma once

namespace fastattn {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

}  // namespace fastattn
