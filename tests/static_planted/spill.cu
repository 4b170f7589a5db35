// Planted for tests/test_static_report.py: a kernel that must spill registers.
// __launch_bounds__(1024, 2) caps it at 32 registers a thread, while 96 values stay live across a loop whose
// trip count is unknown at compile time, so ptxas has to spill. The static report must flag it.
#include <cstdint>

__global__ void __launch_bounds__(1024, 2) planted_spill_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                                int n, int reps) {
  constexpr int K = 96;
  float v[K];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = x[(i + k * 977) % n];
  for (int r = 0; r < reps; ++r) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = v[k] * v[(k + 1) % K] + v[(k + 7) % K];
  }
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) s += v[k] * static_cast<float>(k + 1);
  y[i] = s;
}
