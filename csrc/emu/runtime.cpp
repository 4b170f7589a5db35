// fastattn_emu runtime: fibers, the block scheduler, barriers, warp collectives, strict checks (see emu.h).
//
// One launch at a time in the process (a mutex): the blocks of the grid run one after another on the calling
// OS thread, and the threads of a block are fibers switched only at synchronisation points: on x86-64 by the
// six-register switch below (swapcontext makes two sigprocmask system calls per switch, 7x slower on a
// shuffle + barrier benchmark), elsewhere or with -DFASTATTN_EMU_UCONTEXT by ucontext. Why not blocks on
// several OS threads: static __shared__ variables are plain statics (one copy), the state the
// builtins read is then a plain global, and a run is reproducible; the emulated suite is small enough that
// one core suffices (CI has two, shared).
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FASTATTN_EMU_HAS_ASAN 1
#endif

// Start and end of the section holding every static __shared__ variable of this shared object (GNU ld
// defines them when the section exists; weak: null when there is none, and in the ASan build).
extern "C" char __start_fastattn_emu_smem[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_fastattn_emu_smem[] __attribute__((weak, visibility("hidden")));

#if defined(__x86_64__) && !defined(FASTATTN_EMU_UCONTEXT)
#define FASTATTN_EMU_FAST_SWITCH 1
// fastattn_emu_switch(&save_sp, next_sp): pushes the callee-saved registers, MXCSR and the x87 control word on
// the current stack, stores the stack pointer in *save_sp, switches to next_sp and pops the same from there.
extern "C" void fastattn_emu_switch(void** save_sp, void* next_sp) __attribute__((visibility("hidden")));
asm(R"(
  .text
  .globl fastattn_emu_switch
  .hidden fastattn_emu_switch
  .type fastattn_emu_switch, @function
fastattn_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size fastattn_emu_switch, .-fastattn_emu_switch
)");
#endif

namespace fastattn_emu {
namespace detail {

ThreadPublic* g_cur = nullptr;
uint3 g_block_idx = {0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

enum class State { kReady, kAtBarrier, kAtWarp, kAtGroup, kDone };
enum class Schedule { kForward = 0, kReversed, kRandom, kWarpGreedy, kRotate };
const char* const kScheduleNames[] = {"forward", "reversed", "random", "warp_greedy", "rotate"};

struct Thread : ThreadPublic {
#if FASTATTN_EMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;
  State state = State::kReady;
  int result = 0;  // of the barrier just passed (__syncthreads_count/and/or)
  std::vector<std::pair<void (*)(void*), void*>> exits;
#if FASTATTN_EMU_HAS_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Group {  // one warp collective in progress: the lanes of `mask` that have arrived
  unsigned mask = 0, arrived = 0;
  int kind = 0, width = 32;
  const char* what = "";
  const char* file = "";
  int line = 0;
};

struct Warp {
  unsigned exists = 0;  // lanes that are threads of the block
  unsigned done = 0;    // lanes that have exited
  std::vector<Group> groups;  // in progress, pairwise disjoint masks
  uint64_t value[32];
  int arg[32];
  uint64_t result[32];
  const char* lane_file[32];
  int lane_line[32];
  unsigned char* scratch = nullptr;
};

struct ThreadGroupWait {  // one group_sync_point in progress: threads [first, first + count) of the block
  int first = 0, count = 0, arrived = 0;
  const char* what = "";
  const char* file = "";
  int line = 0;
};

struct Run {  // the launch in progress
  const char* kernel = "";
  std::string kernel_storage;
  const char* launch_file = "";
  int launch_line = 0;
  dim3 grid, block;
  int nthreads = 0;
  Schedule schedule = Schedule::kForward;
  Body body = nullptr;
  void* args = nullptr;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::vector<ThreadGroupWait> group_waits;  // group_sync_point rendezvous in progress (disjoint ranges)
  int exited = 0;
  // the block barrier
  int bar_arrived = 0, bar_kind = 0, bar_acc = 0;
  const char* bar_file = "";
  int bar_line = 0;
  // dynamic shared memory of the block
  size_t smem_bytes = 0;
  unsigned char* smem = nullptr;
  std::mt19937_64 rng;
};

std::mutex g_launch_mutex;
Run* g_run = nullptr;
Thread* g_thread = nullptr;  // == g_cur, with the runtime's type
#if FASTATTN_EMU_FAST_SWITCH
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched_ctx;
#endif
#if FASTATTN_EMU_HAS_ASAN
void* g_sched_fake_stack = nullptr;
const void* g_sched_stack_bottom = nullptr;
size_t g_sched_stack_size = 0;
#endif

cudaError_t g_last_error = cudaSuccess;
unsigned long long g_launch_count = 0;
Schedule g_schedule = Schedule::kRotate;
bool g_schedule_read = false;
uint64_t g_seed = 0;

size_t stack_bytes() {
  static const size_t bytes = [] {
    const char* env = std::getenv("FASTATTN_EMU_STACK_KB");
    size_t kb = env ? std::strtoul(env, nullptr, 10) : 0;
#if FASTATTN_EMU_HAS_ASAN
    if (kb == 0) kb = 512;
#else
    if (kb == 0) kb = 128;
#endif
    return kb * 1024;
  }();
  return bytes;
}

// Stacks are mmap'd once and reused; each has a PROT_NONE guard page below it (an overflow faults).
std::vector<char*> g_stack_pool;
char* stack_for(int i) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (static_cast<int>(g_stack_pool.size()) <= i) {
    void* p = mmap(nullptr, stack_bytes() + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "fastattn_emu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, page, PROT_NONE);
    g_stack_pool.push_back(static_cast<char*>(p) + page);
  }
  return g_stack_pool[i];
}

// "0-31, 64, 96-127"
std::string ranges(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out += std::to_string(ids[i]);
    if (j > i) out += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return out.empty() ? "none" : out;
}
std::string lanes_of(unsigned mask) {
  std::vector<int> v;
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) v.push_back(l);
  return ranges(v);
}

[[noreturn]] void vfail(const char* fmt, va_list ap) {
  char msg[4096];
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  std::fflush(stdout);
  Run* r = g_run;
  if (r != nullptr) {
    std::fprintf(stderr,
                 "fastattn_emu: error in kernel %s\n  block (%u, %u, %u) of grid (%u, %u, %u), block size "
                 "(%u, %u, %u), launched at %s:%d, schedule %s\n",
                 r->kernel, g_block_idx.x, g_block_idx.y, g_block_idx.z, r->grid.x, r->grid.y, r->grid.z,
                 r->block.x, r->block.y, r->block.z, r->launch_file, r->launch_line,
                 kScheduleNames[static_cast<int>(r->schedule)]);
    if (g_thread != nullptr)
      std::fprintf(stderr, "  thread (%u, %u, %u) = warp %d lane %d\n", g_thread->tid.x, g_thread->tid.y,
                   g_thread->tid.z, g_thread->warp, g_thread->lane);
  } else {
    std::fprintf(stderr, "fastattn_emu: error outside a kernel\n");
  }
  std::fprintf(stderr, "  %s\n", msg);
  std::fflush(stderr);
  std::abort();
}

[[noreturn]] void failf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void failf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(fmt, ap);
}

Thread& cur() {
  if (g_thread == nullptr) failf("a device builtin was called outside an emulated kernel launch");
  return *g_thread;
}

// ---- fiber switches (annotated for ASan, which must know which stack is live) --------------------------------
void to_scheduler(Thread& t, bool dying) {
#if FASTATTN_EMU_HAS_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &t.fake_stack, g_sched_stack_bottom, g_sched_stack_size);
#else
  (void)dying;
#endif
#if FASTATTN_EMU_FAST_SWITCH
  fastattn_emu_switch(&t.sp, g_sched_sp);
#else
  swapcontext(&t.ctx, &g_sched_ctx);
#endif
#if FASTATTN_EMU_HAS_ASAN
  __sanitizer_finish_switch_fiber(t.fake_stack, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
}

void to_fiber(Thread& t) {
  g_thread = &t;
  g_cur = &t;
#if FASTATTN_EMU_HAS_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake_stack, t.stack, stack_bytes());
#endif
#if FASTATTN_EMU_FAST_SWITCH
  fastattn_emu_switch(&g_sched_sp, t.sp);
#else
  swapcontext(&g_sched_ctx, &t.ctx);
#endif
#if FASTATTN_EMU_HAS_ASAN
  __sanitizer_finish_switch_fiber(g_sched_fake_stack, nullptr, nullptr);
#endif
  g_thread = nullptr;
  g_cur = nullptr;
}

void thread_exit(Thread& t);

void fiber_main() {
#if FASTATTN_EMU_HAS_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
  Thread& t = *g_thread;
  g_run->body(g_run->args);
  thread_exit(t);
  to_scheduler(t, /*dying=*/true);
  std::abort();  // never resumed
}

// ---- the block barrier ----------------------------------------------------------------------------------------
std::string threads_in(State s) {
  std::vector<int> v;
  for (const Thread& t : g_run->threads)
    if (t.state == s) v.push_back(t.linear);
  return ranges(v);
}

const char* barrier_name(int kind) {
  static const char* const names[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                      "__syncthreads_or"};
  return names[kind];
}

void thread_exit(Thread& t) {
  for (auto it = t.exits.rbegin(); it != t.exits.rend(); ++it) it->first(it->second);
  t.exits.clear();
  Run& r = *g_run;
  if (r.bar_arrived > 0)
    failf("divergent barrier: this thread exits while threads %s wait at %s (%s:%d); every thread of the "
          "block must reach every barrier",
          threads_in(State::kAtBarrier).c_str(), barrier_name(r.bar_kind), r.bar_file, r.bar_line);
  Warp& w = r.warps[t.warp];
  for (const Group& g : w.groups)
    if (g.mask >> t.lane & 1u)
      failf("lane %d of warp %d exits while lanes %s wait for it at %s (%s:%d) with mask 0x%08x", t.lane, t.warp,
            lanes_of(g.arrived).c_str(), g.what, g.file, g.line, g.mask);
  for (const ThreadGroupWait& gw : r.group_waits)
    if (t.linear >= gw.first && t.linear < gw.first + gw.count)
      failf("thread %d exits while %d of threads %d-%d wait for it at %s (%s:%d)", t.linear, gw.arrived, gw.first,
            gw.first + gw.count - 1, gw.what, gw.file, gw.line);
  w.done |= 1u << t.lane;
  t.state = State::kDone;
  ++r.exited;
}

// ---- deadlock report --------------------------------------------------------------------------------------------
[[noreturn]] void deadlock() {
  Run& r = *g_run;
  std::string msg = "deadlock: no thread of the block can proceed.";
  if (r.bar_arrived > 0)
    msg += "\n  threads " + threads_in(State::kAtBarrier) + " wait at " + barrier_name(r.bar_kind) + " (" +
           r.bar_file + ":" + std::to_string(r.bar_line) + ")";
  for (size_t wi = 0; wi < r.warps.size(); ++wi)
    for (const Group& g : r.warps[wi].groups) {
      char buf[512];
      std::snprintf(buf, sizeof buf, "\n  warp %zu: lanes %s wait at %s (%s:%d) with mask 0x%08x for lanes %s",
                    wi, lanes_of(g.arrived).c_str(), g.what, g.file, g.line, g.mask,
                    lanes_of(g.mask & ~g.arrived).c_str());
      msg += buf;
    }
  for (const ThreadGroupWait& gw : r.group_waits) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "\n  threads %d-%d: %d of %d wait at %s (%s:%d)", gw.first, gw.first + gw.count - 1,
                  gw.arrived, gw.count, gw.what, gw.file, gw.line);
    msg += buf;
  }
  g_thread = nullptr;
  failf("%s", msg.c_str());
}

// ---- scheduling ------------------------------------------------------------------------------------------------
// The next thread to run, or -1 when none is ready. `last` is the thread that ran last (-1 at block start).
int pick(Run& r, int last) {
  const int n = r.nthreads;
  switch (r.schedule) {
    case Schedule::kForward:
      for (int k = 1; k <= n; ++k) {
        const int i = (last + k) % n;
        if (r.threads[i].state == State::kReady) return i;
      }
      return -1;
    case Schedule::kReversed: {
      const int start = last < 0 ? n : last;
      for (int k = 1; k <= n; ++k) {
        const int i = ((start - k) % n + n) % n;
        if (r.threads[i].state == State::kReady) return i;
      }
      return -1;
    }
    case Schedule::kRandom: {  // a random start, then the first ready thread from there
      const int start = static_cast<int>(r.rng() % static_cast<unsigned>(n));
      for (int k = 0; k < n; ++k) {
        const int i = (start + k) % n;
        if (r.threads[i].state == State::kReady) return i;
      }
      return -1;
    }
    case Schedule::kWarpGreedy:  // the lowest ready thread: each warp runs as far as it can before the next
    default:
      for (int i = 0; i < n; ++i)
        if (r.threads[i].state == State::kReady) return i;
      return -1;
  }
}

void run_block(Run& r, uint3 bidx) {
  g_block_idx = bidx;
  const int n = r.nthreads;
  // Poison everything shared: reads of data nobody wrote in this block come out NaN (or -1).
  if (+__start_fastattn_emu_smem != nullptr && +__stop_fastattn_emu_smem > +__start_fastattn_emu_smem)
    std::memset(__start_fastattn_emu_smem, 0xff, __stop_fastattn_emu_smem - __start_fastattn_emu_smem);
  if (r.smem_bytes > 0) std::memset(r.smem, 0xff, r.smem_bytes);
  for (Warp& w : r.warps) {
    w.done = 0;
    w.groups.clear();
    std::memset(w.scratch, 0xff, kWarpScratchBytes);
  }
  r.exited = 0;
  r.bar_arrived = 0;
  r.group_waits.clear();
  for (int i = 0; i < n; ++i) {
    Thread& t = r.threads[i];
    t.state = State::kReady;
    t.exits.clear();
    std::fill(std::begin(t.slots), std::end(t.slots), nullptr);
    t.stack = stack_for(i);
#if FASTATTN_EMU_HAS_ASAN
    // A fiber that finished never returned from its frames: clear their redzones before the stack is reused.
    __asan_unpoison_memory_region(t.stack, stack_bytes());
#endif
#if FASTATTN_EMU_FAST_SWITCH
    // The first switch to the fiber pops this frame: MXCSR/x87 control word (the scheduler's), six zeroed
    // registers, then "returns" into fiber_main.
    uint64_t* top = reinterpret_cast<uint64_t*>(t.stack + stack_bytes());
    *--top = 0;  // fiber_main's return address (it never returns): at its entry rsp % 16 == 8, as after a call
    *--top = reinterpret_cast<uint64_t>(&fiber_main);
    for (int k = 0; k < 6; ++k) *--top = 0;
    uint32_t ctl[2];
    asm volatile("stmxcsr %0" : "=m"(ctl[0]));
    asm volatile("fnstcw %0" : "=m"(ctl[1]));
    --top;
    std::memcpy(top, ctl, 8);
    t.sp = top;
#else
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = t.stack;
    t.ctx.uc_stack.ss_size = stack_bytes();
    t.ctx.uc_link = nullptr;
    makecontext(&t.ctx, fiber_main, 0);
#endif
  }
  int live = n, last = -1;
  while (live > 0) {
    const int i = pick(r, last);
    if (i < 0) deadlock();
    Thread& t = r.threads[i];
    to_fiber(t);
    if (t.state == State::kDone) --live;
    last = i;
  }
}

Schedule schedule_from(const char* name, bool* ok) {
  *ok = true;
  for (int s = 0; s < 5; ++s)
    if (std::strcmp(name, kScheduleNames[s]) == 0) return static_cast<Schedule>(s);
  *ok = false;
  return Schedule::kRotate;
}

void read_env() {
  if (g_schedule_read) return;
  g_schedule_read = true;
  if (const char* env = std::getenv("FASTATTN_EMU_SCHEDULE"); env != nullptr && *env) {
    bool ok;
    g_schedule = schedule_from(env, &ok);
    if (!ok) {
      std::fprintf(stderr,
                   "fastattn_emu: FASTATTN_EMU_SCHEDULE must be forward, reversed, random, warp_greedy or "
                   "rotate, got '%s'\n",
                   env);
      std::abort();
    }
  }
  if (const char* env = std::getenv("FASTATTN_EMU_SEED"); env != nullptr && *env)
    g_seed = std::strtoull(env, nullptr, 10);
}

// "const char* ...pretty_name() [with auto Kernel = k<float, 32, 1>]" -> "k<float, 32, 1>"
std::string kernel_from_pretty(const char* pretty) {
  std::string s(pretty);
  const size_t eq = s.find("Kernel = ");
  if (eq == std::string::npos) return s;
  std::string name = s.substr(eq + 9);
  if (!name.empty() && name.back() == ']') name.pop_back();
  if (name.size() > 1 && name[0] == '&') name = name.substr(1);
  if (name.size() > 1 && name.front() == '(' && name.back() == ')') name = name.substr(1, name.size() - 2);
  return name;
}

}  // namespace

// ---- warp collectives -------------------------------------------------------------------------------------------
namespace {

void complete(Run& r, Warp& w, const Group& g) {
  (void)r;
  const unsigned mask = g.mask;
  switch (g.kind) {
    case kShflIdx:
    case kShflUp:
    case kShflDown:
    case kShflXor: {
      // PTX ISA shfl.sync: c = ((32 - width) << 8) | clamp, clamp 0 for .up and 0x1f otherwise.
      const int seg = (32 - g.width) & 31;
      const int clamp = g.kind == kShflUp ? 0 : 31;
      for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const int b = w.arg[lane] & 31;
        const int min_lane = lane & seg;
        const int max_lane = min_lane | (clamp & ~seg);
        int j;
        bool in_range;
        switch (g.kind) {
          case kShflUp:
            j = lane - b;
            in_range = j >= max_lane;
            break;
          case kShflDown:
            j = lane + b;
            in_range = j <= max_lane;
            break;
          case kShflXor:
            j = lane ^ b;
            in_range = j <= max_lane;
            break;
          default:
            j = min_lane | (b & ~seg);
            in_range = j <= max_lane;
            break;
        }
        if (!in_range) j = lane;
        if (!(mask >> j & 1u))
          failf("%s (%s:%d): lane %d reads lane %d, which is not in the mask 0x%08x (undefined on a GPU)", g.what,
                w.lane_file[lane], w.lane_line[lane], lane, j, mask);
        w.result[lane] = w.value[j];
      }
      break;
    }
    case kBallot:
    case kAny:
    case kAll: {
      unsigned ballot = 0;
      for (int lane = 0; lane < 32; ++lane)
        if ((mask >> lane & 1u) && w.arg[lane]) ballot |= 1u << lane;
      const uint64_t res = g.kind == kBallot ? ballot : g.kind == kAny ? (ballot != 0) : (ballot == mask);
      for (int lane = 0; lane < 32; ++lane)
        if (mask >> lane & 1u) w.result[lane] = res;
      break;
    }
    case kMatchAny:
      for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        unsigned same = 0;
        for (int other = 0; other < 32; ++other)
          if ((mask >> other & 1u) && w.value[other] == w.value[lane]) same |= 1u << other;
        w.result[lane] = same;
      }
      break;
    case kReduceAdd:
    case kReduceMin:
    case kReduceMax: {
      const bool is_signed = w.arg[__builtin_ctz(mask)] != 0;
      uint32_t acc = 0;
      bool first = true;
      for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const uint32_t v = static_cast<uint32_t>(w.value[lane]);
        if (first) {
          acc = v;
          first = false;
        } else if (g.kind == kReduceAdd) {
          acc += v;
        } else {
          const bool less = is_signed ? static_cast<int32_t>(v) < static_cast<int32_t>(acc) : v < acc;
          if ((g.kind == kReduceMin) == less) acc = v;
        }
      }
      for (int lane = 0; lane < 32; ++lane)
        if (mask >> lane & 1u) w.result[lane] = is_signed ? static_cast<uint64_t>(static_cast<int64_t>(
                                                                static_cast<int32_t>(acc)))
                                                          : acc;
      break;
    }
    default:  // __syncwarp, warp_sync_point: a rendezvous only
      break;
  }
}

}  // namespace

uint64_t warp_collective(int kind, unsigned mask, uint64_t value, int arg, int width, const char* what,
                         const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  Warp& w = r.warps[t.warp];
  const unsigned me = 1u << t.lane;
  if (!(mask & me))
    failf("%s (%s:%d) called with mask 0x%08x, which leaves out the calling lane %d", what, file, line, mask,
          t.lane);
  if (mask & ~w.exists)
    failf("%s (%s:%d): mask 0x%08x names lanes %s, which are not threads of this block (warp %d has lanes %s)",
          what, file, line, mask, lanes_of(mask & ~w.exists).c_str(), t.warp, lanes_of(w.exists).c_str());
  if (mask & w.done)
    failf("%s (%s:%d): mask 0x%08x names lanes %s, which have exited", what, file, line, mask,
          lanes_of(mask & w.done).c_str());
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    failf("%s (%s:%d): width must be a power of 2 in [1, 32], got %d", what, file, line, width);
  Group* g = nullptr;
  for (Group& h : w.groups)
    if (h.mask & mask) {
      g = &h;
      break;
    }
  if (g == nullptr) {
    w.groups.push_back(Group{mask, 0, kind, width, what, file, line});
    g = &w.groups.back();
  } else if (g->mask != mask || g->kind != kind || g->width != width ||
             (kind == kSyncPoint && std::strcmp(g->what, what) != 0)) {
    failf("lanes of warp %d reached different warp collectives: lanes %s wait at %s (%s:%d) with mask 0x%08x "
          "width %d, lane %d reached %s (%s:%d) with mask 0x%08x width %d",
          t.warp, lanes_of(g->arrived).c_str(), g->what, g->file, g->line, g->mask, g->width, t.lane, what, file,
          line, mask, width);
  }
  g->arrived |= me;
  w.value[t.lane] = value;
  w.arg[t.lane] = arg;
  w.lane_file[t.lane] = file;
  w.lane_line[t.lane] = line;
  t.state = State::kAtWarp;
  if (g->arrived == g->mask) {
    complete(r, w, *g);
    for (int lane = 0; lane < 32; ++lane)
      if (g->mask >> lane & 1u) r.threads[t.warp * 32 + lane].state = State::kReady;
    w.groups.erase(w.groups.begin() + (g - w.groups.data()));
  }
  to_scheduler(t, false);
  return w.result[t.lane];
}

int block_barrier(int kind, int pred, const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  if (r.exited > 0) {
    std::vector<int> gone;
    for (const Thread& u : r.threads)
      if (u.state == State::kDone) gone.push_back(u.linear);
    failf("divergent barrier: %s (%s:%d) is reached after threads %s exited without it; every thread of the "
          "block must reach every barrier",
          barrier_name(kind), file, line, ranges(gone).c_str());
  }
  if (r.bar_arrived == 0) {
    r.bar_kind = kind;
    r.bar_file = file;
    r.bar_line = line;
    r.bar_acc = kind == 2 ? 1 : 0;
  } else if (r.bar_line != line || std::strcmp(r.bar_file, file) != 0 || r.bar_kind != kind) {
    failf("divergent barrier: threads %s wait at %s (%s:%d) but this thread reached %s (%s:%d)",
          threads_in(State::kAtBarrier).c_str(), barrier_name(r.bar_kind), r.bar_file, r.bar_line,
          barrier_name(kind), file, line);
  }
  const int p = pred != 0;
  r.bar_acc = kind == 1 ? r.bar_acc + p : kind == 2 ? (r.bar_acc & p) : (r.bar_acc | p);
  t.state = State::kAtBarrier;
  if (++r.bar_arrived == r.nthreads) {
    for (Thread& u : r.threads) {
      u.state = State::kReady;
      u.result = r.bar_acc;
    }
    r.bar_arrived = 0;
  }
  to_scheduler(t, false);
  return t.result;
}

void* dynamic_shared() {
  cur();
  return g_run->smem;
}

// A rendezvous of the threads [first, first + count) of the block (a warpgroup, a named barrier's threads):
// strict like __syncthreads within the range (every thread of it must arrive at the same `what`).
void group_sync_impl(int first, int count, const char* what, const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  if (first < 0 || count <= 0 || first + count > r.nthreads || first % 32 != 0 || count % 32 != 0)
    failf("%s (%s:%d): threads %d-%d are not whole warps of this block of %d threads", what, file, line, first,
          first + count - 1, r.nthreads);
  if (t.linear < first || t.linear >= first + count)
    failf("%s (%s:%d): the calling thread %d is not one of threads %d-%d", what, file, line, t.linear, first,
          first + count - 1);
  for (int i = first; i < first + count; ++i)
    if (r.threads[i].state == State::kDone)
      failf("%s (%s:%d): thread %d of threads %d-%d has exited; every one of them must arrive", what, file, line,
            i, first, first + count - 1);
  ThreadGroupWait* gw = nullptr;
  for (ThreadGroupWait& h : r.group_waits) {
    const bool overlap = first < h.first + h.count && h.first < first + count;
    if (!overlap) continue;
    if (h.first != first || h.count != count || std::strcmp(h.what, what) != 0 ||
        (h.line != line || std::strcmp(h.file, file) != 0))
      failf("threads %d-%d reached different rendezvous: %d of threads %d-%d wait at %s (%s:%d), thread %d "
            "reached %s (%s:%d) for threads %d-%d",
            first, first + count - 1, h.arrived, h.first, h.first + h.count - 1, h.what, h.file, h.line, t.linear,
            what, file, line, first, first + count - 1);
    gw = &h;
    break;
  }
  if (gw == nullptr) {
    r.group_waits.push_back(ThreadGroupWait{first, count, 0, what, file, line});
    gw = &r.group_waits.back();
  }
  t.state = State::kAtGroup;
  if (++gw->arrived == count) {
    for (int i = first; i < first + count; ++i) r.threads[i].state = State::kReady;
    r.group_waits.erase(r.group_waits.begin() + (gw - r.group_waits.data()));
  }
  to_scheduler(t, false);
}

void launch(const char* pretty_kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem,
            Body body, void* args) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  read_env();
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64 || nblocks == 0 || grid.y > 65535 ||
      grid.z > 65535 || smem > kMaxDynamicSharedBytes) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (g_run != nullptr) failf("a kernel launch from inside an emulated kernel is not supported");
  Run r;
  r.kernel_storage = kernel_from_pretty(pretty_kernel);
  r.kernel = r.kernel_storage.c_str();
  r.launch_file = file;
  r.launch_line = line;
  r.grid = grid;
  r.block = block;
  r.nthreads = static_cast<int>(nthreads);
  const unsigned long long count = g_launch_count++;
  r.schedule = g_schedule == Schedule::kRotate ? static_cast<Schedule>(count % 4) : g_schedule;
  r.rng.seed(g_seed * 0x9e3779b97f4a7c15ull + count);
  r.body = body;
  r.args = args;
  r.threads.resize(r.nthreads);
  for (int i = 0; i < r.nthreads; ++i) {
    Thread& t = r.threads[i];
    t.linear = i;
    t.tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
    t.lane = i % 32;
    t.warp = i / 32;
  }
  const int nwarps = (r.nthreads + 31) / 32;
  r.warps.resize(nwarps);
  std::vector<unsigned char*> owned;
  for (int wi = 0; wi < nwarps; ++wi) {
    Warp& w = r.warps[wi];
    const int lanes = std::min(32, r.nthreads - wi * 32);
    w.exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
    w.scratch = static_cast<unsigned char*>(std::aligned_alloc(16, kWarpScratchBytes));
    owned.push_back(w.scratch);
  }
  r.smem_bytes = smem;
  if (smem > 0) {
    // Exactly `smem` bytes (rounded up to 16 for aligned_alloc): under ASan, reads past the end are reported.
    r.smem = static_cast<unsigned char*>(std::aligned_alloc(16, (smem + 15) / 16 * 16));
    owned.push_back(r.smem);
  }
  g_grid_dim = grid;
  g_block_dim = block;
  g_run = &r;
  // Block order: x fastest; reversed for the reversed schedule, shuffled for the random one.
  std::vector<unsigned long long> order(nblocks);
  for (unsigned long long b = 0; b < nblocks; ++b) order[b] = b;
  if (r.schedule == Schedule::kReversed) std::reverse(order.begin(), order.end());
  if (r.schedule == Schedule::kRandom) std::shuffle(order.begin(), order.end(), r.rng);
  for (unsigned long long b : order)
    run_block(r, make_uint3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                            static_cast<unsigned>(b / (1ull * grid.x * grid.y))));
  g_run = nullptr;
  for (unsigned char* p : owned) std::free(p);
}

}  // namespace detail

// ---- API for emulated primitives ------------------------------------------------------------------------------
int lane_id() { return detail::cur().lane; }
int warp_id_in_block() { return detail::cur().warp; }
void* warp_scratch() {
  const int warp = detail::cur().warp;  // checks first that a kernel is running
  return detail::g_run->warps[warp].scratch;
}
void warp_sync_point(unsigned mask, const char* what, const char* file, int line) {
  detail::warp_collective(detail::kSyncPoint, mask, 0, 0, 32, what, file, line);
}
void*& thread_slot(int i) {
  detail::Thread& t = detail::cur();
  if (i < 0 || i >= kThreadSlots) detail::failf("thread_slot(%d): the index must be in [0, %d)", i, kThreadSlots);
  return t.slots[i];
}
void on_thread_exit(void (*fn)(void*), void* arg) { detail::cur().exits.emplace_back(fn, arg); }
void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  detail::vfail(fmt, ap);
}
const char* kernel_name() { return detail::g_run != nullptr ? detail::g_run->kernel : ""; }
void group_sync_point(int first, int count, const char* what, const char* file, int line) {
  detail::group_sync_impl(first, count, what, file, line);
}
int thread_linear_id() { return detail::cur().linear; }
int block_thread_count() {
  detail::cur();
  return detail::g_run->nthreads;
}
size_t dynamic_shared_bytes() {
  detail::cur();
  return detail::g_run->smem_bytes;
}

}  // namespace fastattn_emu

#if FASTATTN_EMU_HAS_ASAN
// After ASan's report of an error: say which emulated thread made the access. (A callback registered at load:
// the __asan_on_error hook would lose to libasan's own weak definition, which is preloaded first.)
namespace {
void on_asan_report(const char*) {
  using namespace fastattn_emu::detail;
  if (g_run == nullptr || g_thread == nullptr) return;
  std::fprintf(stderr, "fastattn_emu: AddressSanitizer error in kernel %s, block (%u, %u, %u), thread (%u, %u, %u)\n",
               g_run->kernel, g_block_idx.x, g_block_idx.y, g_block_idx.z, g_thread->tid.x, g_thread->tid.y,
               g_thread->tid.z);
}
__attribute__((constructor)) void register_asan_callback() { __asan_set_error_report_callback(on_asan_report); }
}  // namespace
#endif

// ---- the CUDA runtime calls our host code makes (csrc/emu/include/cuda_runtime_api.h), and settings ------------
extern "C" {

cudaError_t fastattn_emu_cudaGetLastError(void) {
  const cudaError_t e = fastattn_emu::detail::g_last_error;
  fastattn_emu::detail::g_last_error = cudaSuccess;
  return e;
}
cudaError_t fastattn_emu_cudaPeekAtLastError(void) { return fastattn_emu::detail::g_last_error; }
const char* fastattn_emu_cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    default:
      return "cudaErrorUnknown";
  }
}
const char* fastattn_emu_cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument (emulated launch)";
    default:
      return "unknown error (emulated build)";
  }
}

// Settings for tests (exported: called through ctypes). Returns 0, or -1 for an unknown name.
__attribute__((visibility("default"))) int fastattn_emu_set_schedule(const char* name) {
  std::lock_guard<std::mutex> lock(fastattn_emu::detail::g_launch_mutex);
  fastattn_emu::detail::read_env();
  bool ok;
  const auto s = fastattn_emu::detail::schedule_from(name, &ok);
  if (!ok) return -1;
  fastattn_emu::detail::g_schedule = s;
  return 0;
}
__attribute__((visibility("default"))) const char* fastattn_emu_schedule(void) {
  fastattn_emu::detail::read_env();
  return fastattn_emu::detail::kScheduleNames[static_cast<int>(fastattn_emu::detail::g_schedule)];
}
__attribute__((visibility("default"))) unsigned long long fastattn_emu_launch_count(void) {
  return fastattn_emu::detail::g_launch_count;
}

}  // extern "C"
