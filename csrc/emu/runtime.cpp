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

enum class State { kReady, kAtBarrier, kAtWarp, kDone, kAtCluster, kAtGroup };
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
  int cta = 0;          // rank of its CTA in the cluster (0 outside cluster launches)
  int cl_arrivals = 0;  // barrier.cluster.arrive calls so far
  int cl_waits = 0;     // barrier.cluster.wait calls completed so far
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

struct ThreadGroupWait {  // one group_sync_point in progress: threads [first, first + count) of a CTA
  int first = 0, count = 0, arrived = 0;
  const char* what = "";
  const char* file = "";
  int line = 0;
};

// One CTA of the cluster in progress (a launch without a cluster shape is a cluster of one CTA).
struct Cta {
  uint3 bidx = {0, 0, 0};
  int first = 0;  // index of its thread 0 in Run::threads
  std::vector<Warp> warps;
  std::vector<ThreadGroupWait> group_waits;  // group_sync_point rendezvous in progress (disjoint ranges)
  int exited = 0;
  // the block barrier
  int bar_arrived = 0, bar_kind = 0, bar_acc = 0;
  const char* bar_file = "";
  int bar_line = 0;
  // dynamic shared memory of the block
  unsigned char* smem = nullptr;
  // static __shared__ section while another CTA of the cluster is resident in it
  std::vector<unsigned char> statics;
  bool done = false;
  int waits_at_exit = 0;  // barrier.cluster.wait calls its threads completed (max over them)
  // per target rank: this CTA's last map_shared_rank of the target's memory: the mapping thread's completed
  // cluster waits then (-1: never), and where
  std::vector<int> map_phase;
  std::vector<const char*> map_file;
  std::vector<int> map_line;
};

struct Run {  // the launch in progress
  const char* kernel = "";
  std::string kernel_storage;
  const char* launch_file = "";
  int launch_line = 0;
  dim3 grid, block;
  dim3 cluster = dim3(1, 1, 1);
  int nthreads = 0;  // per CTA
  int ncta = 1;      // CTAs per cluster
  Schedule schedule = Schedule::kForward;
  Body body = nullptr;
  void* args = nullptr;
  std::vector<Thread> threads;  // every thread of the cluster, CTA by CTA
  std::vector<Cta> ctas;        // by rank
  int resident = 0;             // the CTA whose static __shared__ are in the section now
  // the cluster barrier (barrier.cluster.arrive / wait)
  int cl_arrived = 0, cl_completed = 0;
  const char* cl_file = "";
  int cl_line = 0;
  size_t smem_bytes = 0;  // dynamic shared memory per CTA
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
std::string g_last_kernel;  // fastattn_emu_last_kernel
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
    if (r->ncta > 1)
      std::fprintf(stderr, "  cluster (%u, %u, %u) of %d CTAs, CTA rank %d\n", r->cluster.x, r->cluster.y,
                   r->cluster.z, r->ncta, g_thread != nullptr ? g_thread->cta : -1);
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
std::string threads_in(int cta, State s) {  // of one CTA
  std::vector<int> v;
  const Cta& c = g_run->ctas[cta];
  for (int i = 0; i < g_run->nthreads; ++i)
    if (g_run->threads[c.first + i].state == s) v.push_back(i);
  return ranges(v);
}
std::string cluster_threads_in(State s) {  // "rank 0: 0-127; rank 1: 0-127"
  std::string out;
  for (int k = 0; k < g_run->ncta; ++k) {
    const std::string v = threads_in(k, s);
    if (v == "none") continue;
    if (!out.empty()) out += "; ";
    out += "rank " + std::to_string(k) + ": " + v;
  }
  return out.empty() ? "none" : out;
}

const char* barrier_name(int kind) {
  static const char* const names[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                      "__syncthreads_or"};
  return names[kind];
}

void cta_exit(Cta& c);

void thread_exit(Thread& t) {
  for (auto it = t.exits.rbegin(); it != t.exits.rend(); ++it) it->first(it->second);
  t.exits.clear();
  Run& r = *g_run;
  Cta& c = r.ctas[t.cta];
  if (c.bar_arrived > 0)
    failf("divergent barrier: this thread exits while threads %s wait at %s (%s:%d); every thread of the "
          "block must reach every barrier",
          threads_in(t.cta, State::kAtBarrier).c_str(), barrier_name(c.bar_kind), c.bar_file, c.bar_line);
  if (r.cl_arrived > 0 && t.cl_arrivals == r.cl_completed)
    failf("divergent cluster barrier: this thread exits while threads (%s) have arrived at barrier.cluster "
          "(%s:%d); every thread of every CTA of the cluster must arrive at every cluster barrier",
          cluster_threads_in(State::kAtCluster).c_str(), r.cl_file, r.cl_line);
  Warp& w = c.warps[t.warp];
  for (const Group& g : w.groups)
    if (g.mask >> t.lane & 1u)
      failf("lane %d of warp %d exits while lanes %s wait for it at %s (%s:%d) with mask 0x%08x", t.lane, t.warp,
            lanes_of(g.arrived).c_str(), g.what, g.file, g.line, g.mask);
  for (const ThreadGroupWait& gw : c.group_waits)
    if (t.linear >= gw.first && t.linear < gw.first + gw.count)
      failf("thread %d exits while %d of threads %d-%d wait for it at %s (%s:%d)", t.linear, gw.arrived, gw.first,
            gw.first + gw.count - 1, gw.what, gw.file, gw.line);
  w.done |= 1u << t.lane;
  t.state = State::kDone;
  if (t.cl_waits > c.waits_at_exit) c.waits_at_exit = t.cl_waits;
  if (++c.exited == r.nthreads) cta_exit(c);
}

// The last thread of CTA `c` has exited. Its shared memory is gone: a peer that mapped it after the last
// cluster barrier c's threads waited on may still access it (on a GPU: undefined), so that aborts whichever
// CTA runs first; then the memory is poisoned (0xff, and for ASan) against accesses through older pointers.
void cta_exit(Cta& c) {
  Run& r = *g_run;
  c.done = true;
  if (r.ncta == 1) return;
  const int x = static_cast<int>(&c - r.ctas.data());
  for (int y = 0; y < r.ncta; ++y) {
    const Cta& peer = r.ctas[y];
    if (y == x || peer.map_phase[x] < 0 || peer.map_phase[x] < c.waits_at_exit) continue;
    failf("CTA rank %d exits while CTA rank %d may still access its shared memory: rank %d mapped it "
          "(map_shared_rank at %s:%d) after the last cluster barrier rank %d waited on (its threads completed %d "
          "barrier.cluster.wait); a cluster barrier must separate a peer's last access from the exit",
          x, y, y, peer.map_file[x], peer.map_line[x], x, c.waits_at_exit);
  }
  if (r.smem_bytes > 0) {
    std::memset(c.smem, 0xff, r.smem_bytes);
#if FASTATTN_EMU_HAS_ASAN
    __asan_poison_memory_region(c.smem, r.smem_bytes);
#endif
  }
}

// ---- deadlock report --------------------------------------------------------------------------------------------
[[noreturn]] void deadlock() {
  Run& r = *g_run;
  std::string msg = r.ncta > 1 ? "deadlock: no thread of the cluster can proceed."
                                : "deadlock: no thread of the block can proceed.";
  for (int k = 0; k < r.ncta; ++k) {
    const Cta& c = r.ctas[k];
    const std::string who = r.ncta > 1 ? "\n  rank " + std::to_string(k) + ": " : "\n  ";
    if (c.bar_arrived > 0)
      msg += who + "threads " + threads_in(k, State::kAtBarrier) + " wait at " + barrier_name(c.bar_kind) + " (" +
             c.bar_file + ":" + std::to_string(c.bar_line) + ")";
    for (size_t wi = 0; wi < c.warps.size(); ++wi)
      for (const Group& g : c.warps[wi].groups) {
        char buf[512];
        std::snprintf(buf, sizeof buf, "warp %zu: lanes %s wait at %s (%s:%d) with mask 0x%08x for lanes %s", wi,
                      lanes_of(g.arrived).c_str(), g.what, g.file, g.line, g.mask,
                      lanes_of(g.mask & ~g.arrived).c_str());
        msg += who + buf;
      }
    for (const ThreadGroupWait& gw : c.group_waits) {
      char buf[512];
      std::snprintf(buf, sizeof buf, "threads %d-%d: %d of %d wait at %s (%s:%d)", gw.first, gw.first + gw.count - 1,
                    gw.arrived, gw.count, gw.what, gw.file, gw.line);
      msg += who + buf;
    }
  }
  if (r.cl_arrived > 0 || cluster_threads_in(State::kAtCluster) != "none")
    msg += "\n  threads (" + cluster_threads_in(State::kAtCluster) + ") wait at barrier.cluster (" + r.cl_file + ":" +
           std::to_string(r.cl_line) + "); " + std::to_string(r.cl_arrived) + " of " +
           std::to_string(r.threads.size()) + " threads of the cluster have arrived";
  g_thread = nullptr;
  failf("%s", msg.c_str());
}

// ---- scheduling ------------------------------------------------------------------------------------------------
// The next thread to run, or -1 when none is ready. `last` is the thread that ran last (-1 at block start).
int pick(Run& r, int last) {
  const int n = static_cast<int>(r.threads.size());  // the whole cluster
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

bool has_static_section() {
  return +__start_fastattn_emu_smem != nullptr && +__stop_fastattn_emu_smem > +__start_fastattn_emu_smem;
}
size_t static_section_bytes() {
  return has_static_section() ? static_cast<size_t>(__stop_fastattn_emu_smem - __start_fastattn_emu_smem) : 0;
}

// Before a thread of CTA `cta` runs: its block index for the builtins, and (clusters only) its copy of the
// static __shared__ variables in the section, the resident CTA's saved first.
void make_resident(Run& r, int cta) {
  g_block_idx = r.ctas[cta].bidx;
  if (cta == r.resident) return;
  const size_t bytes = static_section_bytes();
  if (bytes > 0) {
    std::memcpy(r.ctas[r.resident].statics.data(), __start_fastattn_emu_smem, bytes);
    std::memcpy(__start_fastattn_emu_smem, r.ctas[cta].statics.data(), bytes);
  }
  r.resident = cta;
}

// Runs one cluster (r.ncta CTAs with block indices bidx[rank]; one CTA outside cluster launches): all its
// threads are fibers of one scheduling pool, so a cluster barrier can wait across CTAs.
void run_cluster(Run& r, const std::vector<uint3>& bidx) {
  const int n = r.nthreads;
  const size_t sbytes = static_section_bytes();
  // Poison everything shared: reads of data nobody wrote in this block come out NaN (or -1).
  if (sbytes > 0) std::memset(__start_fastattn_emu_smem, 0xff, sbytes);
  r.resident = 0;
  r.cl_arrived = 0;
  r.cl_completed = 0;
  for (int k = 0; k < r.ncta; ++k) {
    Cta& c = r.ctas[k];
    c.bidx = bidx[k];
    c.first = k * n;
#if FASTATTN_EMU_HAS_ASAN
    if (r.ncta > 1 && r.smem_bytes > 0) __asan_unpoison_memory_region(c.smem, r.smem_bytes);
#endif
    if (r.smem_bytes > 0) std::memset(c.smem, 0xff, r.smem_bytes);
    if (r.ncta > 1 && sbytes > 0) c.statics.assign(sbytes, 0xff);
    for (Warp& w : c.warps) {
      w.done = 0;
      w.groups.clear();
      std::memset(w.scratch, 0xff, kWarpScratchBytes);
    }
    c.exited = 0;
    c.bar_arrived = 0;
    c.group_waits.clear();
    c.done = false;
    c.waits_at_exit = 0;
    c.map_phase.assign(r.ncta, -1);
    c.map_file.assign(r.ncta, "");
    c.map_line.assign(r.ncta, 0);
  }
  const int total = n * r.ncta;
  for (int i = 0; i < total; ++i) {
    Thread& t = r.threads[i];
    t.state = State::kReady;
    t.exits.clear();
    t.cl_arrivals = 0;
    t.cl_waits = 0;
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
  int live = total, last = -1;
  g_block_idx = r.ctas[0].bidx;
  while (live > 0) {
    const int i = pick(r, last);
    if (i < 0) deadlock();
    Thread& t = r.threads[i];
    make_resident(r, t.cta);
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
  Cta& c = r.ctas[t.cta];
  Warp& w = c.warps[t.warp];
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
      if (g->mask >> lane & 1u) r.threads[c.first + t.warp * 32 + lane].state = State::kReady;
    w.groups.erase(w.groups.begin() + (g - w.groups.data()));
  }
  to_scheduler(t, false);
  return w.result[t.lane];
}

int block_barrier(int kind, int pred, const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  Cta& c = r.ctas[t.cta];
  if (c.exited > 0) {
    std::vector<int> gone;
    for (int i = 0; i < r.nthreads; ++i)
      if (r.threads[c.first + i].state == State::kDone) gone.push_back(i);
    failf("divergent barrier: %s (%s:%d) is reached after threads %s exited without it; every thread of the "
          "block must reach every barrier",
          barrier_name(kind), file, line, ranges(gone).c_str());
  }
  if (c.bar_arrived == 0) {
    c.bar_kind = kind;
    c.bar_file = file;
    c.bar_line = line;
    c.bar_acc = kind == 2 ? 1 : 0;
  } else if (c.bar_line != line || std::strcmp(c.bar_file, file) != 0 || c.bar_kind != kind) {
    failf("divergent barrier: threads %s wait at %s (%s:%d) but this thread reached %s (%s:%d)",
          threads_in(t.cta, State::kAtBarrier).c_str(), barrier_name(c.bar_kind), c.bar_file, c.bar_line,
          barrier_name(kind), file, line);
  }
  const int p = pred != 0;
  c.bar_acc = kind == 1 ? c.bar_acc + p : kind == 2 ? (c.bar_acc & p) : (c.bar_acc | p);
  t.state = State::kAtBarrier;
  if (++c.bar_arrived == r.nthreads) {
    for (int i = 0; i < r.nthreads; ++i) {
      Thread& u = r.threads[c.first + i];
      u.state = State::kReady;
      u.result = c.bar_acc;
    }
    c.bar_arrived = 0;
  }
  to_scheduler(t, false);
  return t.result;
}

void* dynamic_shared() {
  const Thread& t = cur();
  return g_run->ctas[t.cta].smem;
}

// A rendezvous of the threads [first, first + count) of the caller's CTA (a warpgroup, a named barrier's
// threads): strict like __syncthreads within the range (every thread of it must arrive at the same `what`).
void group_sync_impl(int first, int count, const char* what, const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  Cta& c = r.ctas[t.cta];
  if (first < 0 || count <= 0 || first + count > r.nthreads || first % 32 != 0 || count % 32 != 0)
    failf("%s (%s:%d): threads %d-%d are not whole warps of this block of %d threads", what, file, line, first,
          first + count - 1, r.nthreads);
  if (t.linear < first || t.linear >= first + count)
    failf("%s (%s:%d): the calling thread %d is not one of threads %d-%d", what, file, line, t.linear, first,
          first + count - 1);
  for (int i = first; i < first + count; ++i)
    if (r.threads[c.first + i].state == State::kDone)
      failf("%s (%s:%d): thread %d of threads %d-%d has exited; every one of them must arrive", what, file, line,
            i, first, first + count - 1);
  ThreadGroupWait* gw = nullptr;
  for (ThreadGroupWait& h : c.group_waits) {
    const bool overlap = first < h.first + h.count && h.first < first + count;
    if (!overlap) continue;
    if (h.first != first || h.count != count || std::strcmp(h.what, what) != 0 || h.line != line ||
        std::strcmp(h.file, file) != 0)
      failf("threads %d-%d reached different rendezvous: %d of threads %d-%d wait at %s (%s:%d), thread %d "
            "reached %s (%s:%d) for threads %d-%d",
            first, first + count - 1, h.arrived, h.first, h.first + h.count - 1, h.what, h.file, h.line, t.linear,
            what, file, line, first, first + count - 1);
    gw = &h;
    break;
  }
  if (gw == nullptr) {
    c.group_waits.push_back(ThreadGroupWait{first, count, 0, what, file, line});
    gw = &c.group_waits.back();
  }
  t.state = State::kAtGroup;
  if (++gw->arrived == count) {
    for (int i = first; i < first + count; ++i) r.threads[c.first + i].state = State::kReady;
    c.group_waits.erase(c.group_waits.begin() + (gw - c.group_waits.data()));
  }
  to_scheduler(t, false);
}

// ---- clusters ---------------------------------------------------------------------------------------------------
int cluster_ctarank() { return cur().cta; }
int cluster_nctarank() {
  cur();
  return g_run->ncta;
}
dim3 cluster_dim() {
  cur();
  return g_run->cluster;
}

void cluster_arrive(const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  if (t.cl_arrivals != t.cl_waits)
    failf("barrier.cluster.arrive (%s:%d) twice without a barrier.cluster.wait in between", file, line);
  if (r.cl_arrived == 0) {
    // The first arrival of this phase: every thread of the cluster must take part; none may have exited.
    std::vector<std::string> gone;
    for (const Thread& u : r.threads)
      if (u.state == State::kDone && u.cl_arrivals <= r.cl_completed)
        gone.push_back(std::to_string(u.cta) + ":" + std::to_string(u.linear));
    if (!gone.empty()) {
      std::string list;
      for (size_t i = 0; i < gone.size() && i < 16; ++i) list += (i ? ", " : "") + gone[i];
      failf("divergent cluster barrier: barrier.cluster.arrive (%s:%d) is reached after %zu threads (rank:thread "
            "%s%s) exited without it; every thread of every CTA of the cluster must arrive",
            file, line, gone.size(), list.c_str(), gone.size() > 16 ? ", ..." : "");
    }
    r.cl_file = file;
    r.cl_line = line;
  } else if (r.cl_line != line || std::strcmp(r.cl_file, file) != 0) {
    failf("divergent cluster barrier: threads (%s) arrived at barrier.cluster (%s:%d) but this thread arrives at "
          "%s:%d",
          cluster_threads_in(State::kAtCluster).c_str(), r.cl_file, r.cl_line, file, line);
  }
  ++t.cl_arrivals;
  if (++r.cl_arrived == static_cast<int>(r.threads.size())) {
    r.cl_arrived = 0;
    ++r.cl_completed;
    for (Thread& u : r.threads)
      if (u.state == State::kAtCluster) u.state = State::kReady;
  }
}

void cluster_wait(const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  if (t.cl_waits == t.cl_arrivals)
    failf("barrier.cluster.wait (%s:%d) without a barrier.cluster.arrive before it", file, line);
  if (r.cl_completed < t.cl_arrivals) {  // this thread's phase is still open: wait for the rest of the cluster
    t.state = State::kAtCluster;
    to_scheduler(t, false);
  }
  ++t.cl_waits;
}

void* map_shared_rank(const void* ptr, unsigned rank, const char* file, int line) {
  Thread& t = cur();
  Run& r = *g_run;
  if (rank >= static_cast<unsigned>(r.ncta))
    failf("map_shared_rank (%s:%d): rank %u is not a CTA of the cluster (%d CTAs)", file, line, rank, r.ncta);
  Cta& me = r.ctas[t.cta];
  const unsigned char* p = static_cast<const unsigned char*>(ptr);
  if (me.smem == nullptr || p < me.smem || p >= me.smem + r.smem_bytes)
    failf("map_shared_rank (%s:%d): %p is not in this CTA's dynamic shared memory [%p, +%zu) (the emulation "
          "maps the dynamic buffer only; keep what peers read in FASTATTN_DYNAMIC_SHARED)",
          file, line, ptr, static_cast<void*>(me.smem), r.smem_bytes);
  Cta& target = r.ctas[rank];
  if (static_cast<int>(rank) != t.cta) {
    if (target.done)
      failf("map_shared_rank (%s:%d): CTA rank %u has exited; its shared memory is gone (a cluster barrier "
            "must keep it alive until its peers are done with it)",
            file, line, rank);
    if (t.cl_waits >= me.map_phase[rank]) {
      me.map_phase[rank] = t.cl_waits;
      me.map_file[rank] = file;
      me.map_line[rank] = line;
    }
  }
  return target.smem + (p - me.smem);
}

void launch_cluster(const char* pretty_kernel, const char* file, int line, dim3 grid, dim3 block, dim3 cluster,
                    size_t smem, Body body, void* args) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  read_env();
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  const unsigned long long ncta = 1ull * cluster.x * cluster.y * cluster.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64 || nblocks == 0 || grid.y > 65535 ||
      grid.z > 65535 || smem > kMaxDynamicSharedBytes) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // A cluster shape: at most kMaxClusterSize CTAs (16: sm_90's non-portable limit) dividing the grid.
  if (ncta == 0 || ncta > kMaxClusterSize || grid.x % cluster.x != 0 || grid.y % cluster.y != 0 ||
      grid.z % cluster.z != 0) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (g_run != nullptr) failf("a kernel launch from inside an emulated kernel is not supported");
  Run r;
  r.kernel_storage = kernel_from_pretty(pretty_kernel);
  r.kernel = r.kernel_storage.c_str();
  g_last_kernel = r.kernel_storage + " cluster " + std::to_string(ncta);
  r.launch_file = file;
  r.launch_line = line;
  r.grid = grid;
  r.block = block;
  r.cluster = cluster;
  r.nthreads = static_cast<int>(nthreads);
  r.ncta = static_cast<int>(ncta);
  const unsigned long long count = g_launch_count++;
  r.schedule = g_schedule == Schedule::kRotate ? static_cast<Schedule>(count % 4) : g_schedule;
  r.rng.seed(g_seed * 0x9e3779b97f4a7c15ull + count);
  r.body = body;
  r.args = args;
  r.threads.resize(static_cast<size_t>(r.nthreads) * r.ncta);
  for (int k = 0; k < r.ncta; ++k)
    for (int i = 0; i < r.nthreads; ++i) {
      Thread& t = r.threads[static_cast<size_t>(k) * r.nthreads + i];
      t.linear = i;
      t.tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
      t.lane = i % 32;
      t.warp = i / 32;
      t.cta = k;
    }
  const int nwarps = (r.nthreads + 31) / 32;
  std::vector<unsigned char*> owned;
  r.smem_bytes = smem;
  r.ctas.resize(r.ncta);
  for (Cta& c : r.ctas) {
    c.warps.resize(nwarps);
    for (int wi = 0; wi < nwarps; ++wi) {
      Warp& w = c.warps[wi];
      const int lanes = std::min(32, r.nthreads - wi * 32);
      w.exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
      w.scratch = static_cast<unsigned char*>(std::aligned_alloc(16, kWarpScratchBytes));
      owned.push_back(w.scratch);
    }
    if (smem > 0) {
      // Exactly `smem` bytes (rounded up to 16 for aligned_alloc): under ASan, reads past the end are reported.
      c.smem = static_cast<unsigned char*>(std::aligned_alloc(16, (smem + 15) / 16 * 16));
      owned.push_back(c.smem);
    }
  }
  g_grid_dim = grid;
  g_block_dim = block;
  g_run = &r;
  // Cluster order: x fastest; reversed for the reversed schedule, shuffled for the random one. The CTAs of a
  // cluster (rank = x + y * cluster.x + z * cluster.x * cluster.y within it) run together.
  const unsigned gx = grid.x / cluster.x, gy = grid.y / cluster.y;
  const unsigned long long nclusters = nblocks / ncta;
  std::vector<unsigned long long> order(nclusters);
  for (unsigned long long b = 0; b < nclusters; ++b) order[b] = b;
  if (r.schedule == Schedule::kReversed) std::reverse(order.begin(), order.end());
  if (r.schedule == Schedule::kRandom) std::shuffle(order.begin(), order.end(), r.rng);
  std::vector<uint3> bidx(r.ncta);
  for (unsigned long long b : order) {
    const unsigned cx = static_cast<unsigned>(b % gx), cy = static_cast<unsigned>(b / gx % gy),
                   cz = static_cast<unsigned>(b / (1ull * gx * gy));
    for (int k = 0; k < r.ncta; ++k) {
      const unsigned lx = k % cluster.x, ly = (k / cluster.x) % cluster.y, lz = k / (cluster.x * cluster.y);
      bidx[k] = make_uint3(cx * cluster.x + lx, cy * cluster.y + ly, cz * cluster.z + lz);
    }
    run_cluster(r, bidx);
  }
  g_run = nullptr;
#if FASTATTN_EMU_HAS_ASAN
  if (r.ncta > 1 && smem > 0)
    for (Cta& c : r.ctas) __asan_unpoison_memory_region(c.smem, smem);
#endif
  for (unsigned char* p : owned) std::free(p);
}

void launch(const char* pretty_kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem,
            Body body, void* args) {
  launch_cluster(pretty_kernel, file, line, grid, block, dim3(1, 1, 1), smem, body, args);
}

}  // namespace detail

// ---- API for emulated primitives ------------------------------------------------------------------------------
int lane_id() { return detail::cur().lane; }
int warp_id_in_block() { return detail::cur().warp; }
void* warp_scratch() {
  const int warp = detail::cur().warp;  // checks first that a kernel is running
  return detail::g_run->ctas[detail::g_thread->cta].warps[warp].scratch;
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
// The kernel (and its cluster size) of the latest launch, e.g. "softmax_fwd_cluster_kernel<float, 512> cluster 8"
// ("" before any): lets a test check which path a launcher took.
__attribute__((visibility("default"))) const char* fastattn_emu_last_kernel(void) {
  return fastattn_emu::detail::g_last_kernel.c_str();
}

}  // extern "C"
