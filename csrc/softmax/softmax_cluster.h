// The cluster plan (softmax v3, sm_90) shared by the forward and backward launchers: whether to take the
// cluster kernels and how to cut a row over the CTAs of a cluster. Host-only, torch-free.
#pragma once

#include <cstdint>
#include <cstdlib>

#include <cuda_runtime_api.h>

namespace fastattn {
namespace softmax_cluster {

constexpr int kThreads = 512;            // per CTA
constexpr int kSlots = 16;               // DSMEM slots per reduction (>= the largest cluster)
constexpr int64_t kTargetPiece = 16384;  // elements per CTA the plan aims at
constexpr int kMaxSize = 8;              // portable cluster size
constexpr int64_t kMaxPieceBytes = 192 * 1024;  // shared memory per CTA for the piece (+ a small header)

struct Plan {
  int csize;      // 0: the row does not fit a cluster
  int64_t piece;  // elements per CTA, a multiple of 8 (every piece starts at the row's 16-byte phase)
};

// The smallest cluster of 2, 4 or 8 CTAs whose pieces stay within kTargetPiece elements, else 8 CTAs with
// larger pieces, up to kMaxPieceBytes / bytes_per_element (the piece's shared-memory footprint).
inline Plan plan(int64_t n, int64_t bytes_per_element) {
  int csize = 2;
  while (csize < kMaxSize && csize * kTargetPiece < n) csize *= 2;
  int64_t piece = (n + csize - 1) / csize;
  piece = (piece + 7) / 8 * 8;
  if (piece * bytes_per_element > kMaxPieceBytes) return {0, 0};
  return {csize, piece};
}

// Whether to take the cluster kernels: on a GPU of compute capability 9.x or newer unless
// FASTATTN_CUDA_CLUSTER=0 (a cached device-attribute query: no synchronisation); in the emulated build only
// when FASTATTN_CUDA_CLUSTER=1, so the tests choose which path they exercise.
inline bool enabled() {
  const char* env = std::getenv("FASTATTN_CUDA_CLUSTER");
#if defined(FASTATTN_EMULATE) && !defined(__CUDACC__)
  return env != nullptr && env[0] == '1';
#else
  if (env != nullptr && env[0] == '0') return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  static int major_of[64] = {};  // 0: not asked yet
  if (major_of[device] == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) major = -1;
    major_of[device] = major;
  }
  return major_of[device] >= 9;
#endif
}

}  // namespace softmax_cluster
}  // namespace fastattn
