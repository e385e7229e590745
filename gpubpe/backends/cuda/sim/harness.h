// The CUDA simulator: compiles the kernels in kernels/*.cu with the host C++
// compiler and runs them on the CPU (gpubpe/_sim/__init__.py builds and loads it).
//
// What it maps: threadIdx / blockIdx / blockDim / gridDim (x only, 1-D
// launches), __global__, __device__, __forceinline__ (__restrict__ is g++'s own),
// __shared__ (a function-local static: blocks run one at a time, so a static
// is exactly block-shared memory), the atomics the kernels use, __syncthreads,
// __threadfence.
//
// How it runs a launch: blocks in a shuffled order, one at a time. A kernel
// without __syncthreads runs its threads to completion one after the other, in
// a shuffled order. A kernel with __syncthreads runs each thread as a fiber
// (ucontext): every thread runs up to the barrier, in a shuffled order, then
// the next phase starts, reshuffled. A barrier reached by some threads of a
// block and not by others is reported (on a GPU it is undefined behaviour).
// Every order it runs is a legal GPU schedule, so a kernel whose result
// depends on the order fails under some seed.
//
// Atomics are plain read-modify-writes: one OS thread runs everything and a
// fiber only switches at __syncthreads, so nothing interleaves inside them.
//
// Memory: "device" arrays come from gpubpe_sim_alloc, with poisoned redzones
// on both sides, so with AddressSanitizer on, any out-of-bounds access of a
// kernel is reported at the faulting line.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>
#include <algorithm>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GPUBPE_ASAN 1
extern "C" const char* __asan_default_options() {
    // Loaded into Python with dlopen: the runtime cannot come first in the
    // library list, which is fine for the checks used here.
    return "verify_asan_link_order=0:detect_leaks=0:halt_on_error=1:abort_on_error=1";
}
#else
#define GPUBPE_ASAN 0
#endif

struct gpubpe_uint3 {
    unsigned x, y, z;
};
typedef gpubpe_uint3 dim3;

static gpubpe_uint3 threadIdx = {0, 0, 0};
static gpubpe_uint3 blockIdx = {0, 0, 0};
static gpubpe_uint3 blockDim = {1, 1, 1};
static gpubpe_uint3 gridDim = {1, 1, 1};

#define __global__
#define __device__ static inline
#define __host__
#define __forceinline__
#define __shared__ static

static inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p; *p = o + v; return o;
}
static inline int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }
static inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
    unsigned long long o = *p; if (o == cmp) *p = v; return o;
}
static inline int atomicMax(int* p, int v) { int o = *p; if (v > o) *p = v; return o; }
static inline long long atomicMax(long long* p, long long v) { long long o = *p; if (v > o) *p = v; return o; }
static inline int atomicMin(int* p, int v) { int o = *p; if (v < o) *p = v; return o; }
static inline long long atomicMin(long long* p, long long v) { long long o = *p; if (v < o) *p = v; return o; }
static inline int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
static inline void __threadfence() {}

namespace gpubpe_sim {

struct Fiber {
    ucontext_t ctx;
    char* stack;
    unsigned tid;
    bool done;
    bool at_barrier;
#if GPUBPE_ASAN
    void* fake_stack;
#endif
};

static const size_t kStack = 256 * 1024;
static ucontext_t g_sched;
static Fiber* g_cur = nullptr;
static const std::function<void()>* g_body = nullptr;
static bool g_barrier_mode = false;
static std::vector<Fiber> g_fibers;
static char g_error[512];
#if GPUBPE_ASAN
static const void* g_sched_bottom = nullptr;
static size_t g_sched_size = 0;
#endif

static void fail(const char* msg) {
    // fatal: a kernel broke a rule of the CUDA model; report and stop the process
    fprintf(stderr, "gpubpe simulator: %s\n", msg);
    fflush(stderr);
    abort();
}

static void to_sched(Fiber* f, bool final_switch) {
#if GPUBPE_ASAN
    __sanitizer_start_switch_fiber(final_switch ? nullptr : &f->fake_stack, g_sched_bottom, g_sched_size);
#endif
    swapcontext(&f->ctx, &g_sched);
#if GPUBPE_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &g_sched_bottom, &g_sched_size);
#endif
    (void)final_switch;
}

static void fiber_entry() {
#if GPUBPE_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
    (*g_body)();
    g_cur->done = true;
    to_sched(g_cur, true);
}

static void sync_threads() {
    if (!g_barrier_mode)
        fail("__syncthreads() in a kernel the launcher runs without fibers "
             "(the kernel body must contain the __syncthreads call itself)");
    g_cur->at_barrier = true;
    to_sched(g_cur, false);
}

static void run_fiber(Fiber* f) {
    g_cur = f;
    threadIdx.x = f->tid;
#if GPUBPE_ASAN
    void* save = nullptr;
    __sanitizer_start_switch_fiber(&save, f->stack, kStack);
#endif
    swapcontext(&g_sched, &f->ctx);
#if GPUBPE_ASAN
    __sanitizer_finish_switch_fiber(save, nullptr, nullptr);
#endif
}

// Run one launch: returns 0, or -1 with g_error set.
static int launch(unsigned grid, unsigned block, unsigned long long seed, bool barrier,
                  const std::function<void()>& body) {
    if (grid == 0 || block == 0 || block > 1024) {
        snprintf(g_error, sizeof g_error, "bad launch geometry grid=%u block=%u", grid, block);
        return -1;
    }
    std::mt19937_64 rng(seed);
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    std::vector<unsigned> blocks(grid), threads(block);
    for (unsigned i = 0; i < grid; ++i) blocks[i] = i;
    for (unsigned i = 0; i < block; ++i) threads[i] = i;
    std::shuffle(blocks.begin(), blocks.end(), rng);
    g_body = &body;
    g_barrier_mode = barrier;
    if (barrier && g_fibers.size() < block) {
        size_t old = g_fibers.size();
        g_fibers.resize(block);
        for (size_t i = old; i < block; ++i) g_fibers[i].stack = (char*)malloc(kStack);
    }
    for (unsigned b : blocks) {
        blockIdx = {b, 0, 0};
        if (!barrier) {
            std::shuffle(threads.begin(), threads.end(), rng);
            for (unsigned t : threads) {
                threadIdx = {t, 0, 0};
                body();
            }
            continue;
        }
        for (unsigned t = 0; t < block; ++t) {
            Fiber& f = g_fibers[t];
            f.tid = t;
            f.done = false;
            f.at_barrier = false;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = kStack;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_entry, 0);
        }
        while (true) {
            std::shuffle(threads.begin(), threads.end(), rng);
            for (unsigned t : threads) {
                Fiber& f = g_fibers[t];
                if (!f.done) run_fiber(&f);
            }
            unsigned ndone = 0, nbar = 0;
            for (unsigned t = 0; t < block; ++t) {
                ndone += g_fibers[t].done;
                nbar += g_fibers[t].at_barrier;
                g_fibers[t].at_barrier = false;
            }
            if (ndone == block) break;
            if (ndone + nbar == block && ndone > 0) {
                snprintf(g_error, sizeof g_error,
                         "block %u: %u threads returned while %u wait at __syncthreads (undefined on a GPU)",
                         b, ndone, nbar);
                fail(g_error);
            }
        }
    }
    threadIdx = {0, 0, 0};
    blockIdx = {0, 0, 0};
    return 0;
}

}  // namespace gpubpe_sim

#define __syncthreads() gpubpe_sim::sync_threads()

extern "C" const char* gpubpe_sim_error() { return gpubpe_sim::g_error; }

extern "C" int gpubpe_sim_asan() { return GPUBPE_ASAN; }

// "Device" memory: [redzone][n bytes][redzone], the redzones poisoned.
static const size_t kRedzone = 256;

extern "C" void* gpubpe_sim_alloc(size_t n) {
    size_t body = (n + 63) & ~(size_t)63;
    char* p = (char*)malloc(kRedzone + body + kRedzone);
    if (!p) return nullptr;
    memset(p + kRedzone, 0xA5, body);  // never zero: a kernel reading before writing sees garbage
#if GPUBPE_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, kRedzone + body + kRedzone);
    ASAN_POISON_MEMORY_REGION(p, kRedzone);
    ASAN_POISON_MEMORY_REGION(p + kRedzone + n, body - n + kRedzone);
#endif
    return p + kRedzone;
}

extern "C" void gpubpe_sim_free(void* q, size_t n) {
    if (!q) return;
    char* p = (char*)q - kRedzone;
    size_t body = (n + 63) & ~(size_t)63;
#if GPUBPE_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, kRedzone + body + kRedzone);
#else
    (void)body;
#endif
    free(p);
}
