// Planted for tests/test_static_report.py: a "matmul" kernel (its path and name say attention) that computes
// its dot products on the CUDA cores, without mma.sync or wgmma. The static report must flag it.
__global__ void planted_attn_fwd_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                        float* __restrict__ s, int n, int d) {
  const int i = blockIdx.x;
  const int j = threadIdx.x;
  if (i >= n || j >= n) return;
  float acc = 0.f;
  for (int t = 0; t < d; ++t) acc += q[i * d + t] * k[j * d + t];
  s[i * n + j] = acc;
}
