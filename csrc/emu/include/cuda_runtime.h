// Emulated build only: <cuda_runtime.h> for kernel sources is the runtime API's types plus the emulator's
// built-in variables, barriers, warp collectives and atomics (csrc/emu/emu.h).
#pragma once

#include <cuda_runtime_api.h>

#include "../emu.h"
