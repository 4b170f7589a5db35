// Planted for tests/test_static_report.py: a small kernel that neither spills nor claims to be a matmul.
__global__ void __launch_bounds__(256) planted_clean_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                            int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2.f * x[i] + 1.f;
}
