// Emulated build only (csrc/emu/include is first on its include path): the toolkit's cuda_runtime_api.h for
// its types (cudaError_t, cudaStream_t, dim3), with the few runtime calls our host code makes redirected to
// the emulator (csrc/emu/runtime.cpp), so nothing links against libcudart.
#pragma once

#include_next <cuda_runtime_api.h>

extern "C" {
cudaError_t fastattn_emu_cudaGetLastError(void);
cudaError_t fastattn_emu_cudaPeekAtLastError(void);
const char* fastattn_emu_cudaGetErrorName(cudaError_t error);
const char* fastattn_emu_cudaGetErrorString(cudaError_t error);
}

#define cudaGetLastError fastattn_emu_cudaGetLastError
#define cudaPeekAtLastError fastattn_emu_cudaPeekAtLastError
#define cudaGetErrorName fastattn_emu_cudaGetErrorName
#define cudaGetErrorString fastattn_emu_cudaGetErrorString
