// Running one launch: its blocks spread over host threads, each block's threads as fibers on one
// host thread, switched only at __syncthreads and at mma.sync (the points where CUDA threads
// exchange data), so the code between two such points runs as one thread's straight-line code.
//
// A block barrier completes when every thread that has not exited has arrived (as on sm_70 and
// later). mma.sync.aligned needs all 32 lanes of the warp: the last lane to arrive computes the
// warp's 16x8 result from everyone's fragments and releases the others. A block whose threads all
// wait and none can go on (a barrier in divergent code, an mma in a partial warp) fails the launch
// with an error instead of hanging.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "internal.hpp"

namespace emu {

thread_local Fiber* tl_fiber = nullptr;
thread_local BlockInfo tl_block;

enum class State { Ready, AtBarrier, AtMma, Exited };

struct Warp {
    // Per lane: A (4 registers), B (2), C in / D out (4).
    unsigned a[32][4];
    unsigned b[32][2];
    float c[32][4];
    unsigned arrived = 0;
};

struct BlockRun;

struct Fiber {
    void* sp = nullptr;     // saved stack pointer while switched out
    char* stack = nullptr;  // lowest usable address
    Dim3 tid;
    unsigned linear = 0;
    State state = State::Ready;
    BlockRun* block = nullptr;
    void* fallback = nullptr;  // the ucontext of the portable switch
};

Dim3 fiber_thread_idx(const Fiber* f) { return f->tid; }

struct BlockRun {
    const KernelEntry* kernel;
    void* args;
    unsigned threads;
    unsigned live;     // threads that have not exited
    unsigned arrived;  // at the block barrier
    std::vector<Warp> warps;
    void* sched_sp = nullptr;
};

static const size_t STACK_BYTES = 64 * 1024;

// ---- context switch -------------------------------------------------------------------------

#if defined(__x86_64__)
// Saves the callee-saved registers and the FP control words on the current stack, stores the stack
// pointer in *from, and resumes the stack `to` (saved the same way, or made by new_context).
extern "C" void emu_switch(void** from, void* to);
asm(R"(
    .text
    .p2align 4
    .hidden emu_switch
    .globl emu_switch
    .type emu_switch,@function
emu_switch:
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
    .size emu_switch, .-emu_switch

    .p2align 4
    .hidden emu_fiber_start
    .globl emu_fiber_start
    .type emu_fiber_start,@function
emu_fiber_start:
    movq %rbx, %rdi
    call emu_fiber_main
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");
extern "C" void emu_fiber_start();

extern "C" [[noreturn]] void emu_fiber_main(Fiber* f);

// A stack that emu_switch resumes into emu_fiber_main(f).
static void* new_context(Fiber* f) {
    // 16-byte aligned; after the `ret` below rsp is back at the top, so emu_fiber_start's call
    // enters emu_fiber_main with the ABI's alignment.
    uint64_t* top = reinterpret_cast<uint64_t*>(f->stack + STACK_BYTES);
    *--top = reinterpret_cast<uint64_t>(&emu_fiber_start);               // return address
    *--top = 0;                                                          // rbp
    *--top = reinterpret_cast<uint64_t>(f);                              // rbx: the argument
    for (int i = 0; i < 4; i++) *--top = 0;                              // r12..r15
    uint32_t mxcsr;
    uint16_t fcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fcw));
    *--top = (uint64_t)mxcsr | ((uint64_t)fcw << 32);
    return top;
}
static inline void switch_to(void** from, void* to) { emu_switch(from, to); }
#else
#include <ucontext.h>
// Portable fallback: ucontext (slower: each switch is a system call).
struct UContext {
    ucontext_t uc;
};
extern "C" [[noreturn]] void emu_fiber_main(Fiber* f);
static void trampoline(unsigned lo, unsigned hi) {
    emu_fiber_main(reinterpret_cast<Fiber*>(((uintptr_t)hi << 32) | lo));
}
static void* new_context(Fiber* f) {
    if (!f->fallback) f->fallback = new UContext;  // one per fiber, reused by every block
    auto* c = static_cast<UContext*>(f->fallback);
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = f->stack;
    c->uc.uc_stack.ss_size = STACK_BYTES;
    c->uc.uc_link = nullptr;
    uintptr_t p = reinterpret_cast<uintptr_t>(f);
    makecontext(&c->uc, (void (*)())trampoline, 2, (unsigned)(p & 0xffffffff), (unsigned)(p >> 32));
    return c;
}
static inline void switch_to(void** from, void* to) {
    thread_local UContext self;
    UContext* mine = *from ? static_cast<UContext*>(*from) : &self;
    *from = mine;
    swapcontext(&mine->uc, &static_cast<UContext*>(to)->uc);
}
#endif

// The fibers of one host thread, reused by every block it runs.
struct FiberSet {
    std::vector<Fiber> fibers;

    void ensure(unsigned n) {
        while (fibers.size() < n) {
            Fiber f;
            // A guard page below each stack turns an overflow into a crash, not silent corruption.
            const size_t page = (size_t)sysconf(_SC_PAGESIZE);
            void* m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) {
                std::fprintf(stderr, "cuda emulator: cannot map a fiber stack\n");
                std::abort();
            }
            mprotect(m, page, PROT_NONE);
            f.stack = static_cast<char*>(m) + page;
            fibers.push_back(f);
        }
    }
};

static thread_local FiberSet tl_fibers;

// Switch from the running fiber back to its block's scheduler.
static void yield_to_scheduler(Fiber* f) { switch_to(&f->sp, f->block->sched_sp); }

// Every thread waiting at the block barrier may go on.
static void release_barrier(BlockRun* b) {
    b->arrived = 0;
    for (unsigned i = 0; i < b->threads; i++) {
        Fiber& o = tl_fibers.fibers[i];
        if (o.state == State::AtBarrier) o.state = State::Ready;
    }
}

extern "C" void emu_fiber_main(Fiber* f) {
    BlockRun* b = f->block;
    b->kernel->call(b->kernel->fn, b->args);
    f->state = State::Exited;
    b->live--;
    // The exited thread may have been the last one the barrier waited for.
    if (b->arrived > 0 && b->arrived == b->live) release_barrier(b);
    yield_to_scheduler(f);
    __builtin_unreachable();
}

void sync_block() {
    Fiber* f = tl_fiber;
    BlockRun* b = f->block;
    if (++b->arrived == b->live) {
        release_barrier(b);
        return;
    }
    f->state = State::AtBarrier;
    yield_to_scheduler(f);
}

// The PTX ISA's m16n8k16 fragments (.f16 A row-major, B column-major, f32 C/D), with
// g = lane / 4 and t = lane % 4:
//   A: register r holds elements 2r, 2r+1; element i is at row g + 8 * ((i / 2) % 2),
//      column 2t + (i % 2) + 8 * (i / 4);
//   B: element i (register i / 2) is at row (k) 2t + (i % 2) + 8 * (i / 2), column (n) g;
//   C, D: element i is at row g + 8 * (i / 2), column 2t + (i % 2).
// The lower 16 bits of a register hold the lower-numbered element.
// Every binary16 bit pattern as a double (exact), so decoding a fragment is one load per half.
static const double* half_table() {
    static const double* table = [] {
        double* t = new double[65536];
        for (unsigned i = 0; i < 65536; i++) t[i] = h2f_bits(i);
        return t;
    }();
    return table;
}

static void warp_mma(Warp& w) {
    const double* h = half_table();
    double A[16][16], B[16][8];
    float C[16][8];
    bool b_finite = true;
    for (unsigned lane = 0; lane < 32; lane++) {
        const unsigned g = lane / 4, t = lane % 4;
        for (unsigned i = 0; i < 8; i++) {
            const unsigned bits = w.a[lane][i / 2] >> (16 * (i % 2)) & 0xffff;
            A[g + 8 * ((i / 2) % 2)][2 * t + (i % 2) + 8 * (i / 4)] = h[bits];
        }
        for (unsigned i = 0; i < 4; i++) {
            const unsigned bits = w.b[lane][i / 2] >> (16 * (i % 2)) & 0xffff;
            b_finite &= (bits & 0x7c00) != 0x7c00;
            B[2 * t + (i % 2) + 8 * (i / 2)][g] = h[bits];
            C[g + 8 * (i / 2)][2 * t + (i % 2)] = w.c[lane][i];
        }
    }
    // A product of two f16 values is exact in f64 (and in f32); the 16 products are summed in f64
    // in k order and C added, then rounded once to f32: deterministic for given fragments, as the
    // tensor core is, but not its internal rounding (which the PTX ISA leaves unspecified).
    float D[16][8];
    for (unsigned m = 0; m < 16; m++) {
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        bool zero_row = b_finite;
        for (unsigned k = 0; k < 16 && zero_row; k++) zero_row = A[m][k] == 0.0;
        // A row of zeros times finite B sums to +0 whatever the order: the loop would change nothing.
        if (!zero_row) {
            for (unsigned k = 0; k < 16; k++) {
                const double a = A[m][k];
                for (unsigned n = 0; n < 8; n++) s[n] += a * B[k][n];
            }
        }
        for (unsigned n = 0; n < 8; n++) D[m][n] = (float)(s[n] + (double)C[m][n]);
    }
    // SEAMLESS_EMU_FAULT=mma: a deliberately wrong tensor core (every result off by 0.25), so tests
    // can check that a device giving wrong answers is caught (seamless doctor's smoke test).
    static const bool faulty = [] {
        const char* v = getenv("SEAMLESS_EMU_FAULT");
        return v && strcmp(v, "mma") == 0;
    }();
    for (unsigned lane = 0; lane < 32; lane++) {
        const unsigned g = lane / 4, t = lane % 4;
        for (unsigned i = 0; i < 4; i++) w.c[lane][i] = D[g + 8 * (i / 2)][2 * t + (i % 2)] + (faulty ? 0.25f : 0.0f);
    }
}

void mma_m16n8k16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    Fiber* f = tl_fiber;
    BlockRun* b = f->block;
    const unsigned warp = f->linear / 32, lane = f->linear % 32;
    Warp& w = b->warps[warp];
    for (int i = 0; i < 4; i++) {
        w.a[lane][i] = a[i];
        w.c[lane][i] = c[i];
    }
    w.b[lane][0] = b0;
    w.b[lane][1] = b1;
    if (++w.arrived == 32) {
        warp_mma(w);
        w.arrived = 0;
        for (unsigned l = 0; l < 32; l++) {
            Fiber& o = tl_fibers.fibers[warp * 32 + l];
            if (o.state == State::AtMma) o.state = State::Ready;
        }
    } else {
        f->state = State::AtMma;
        yield_to_scheduler(f);
    }
    for (int i = 0; i < 4; i++) c[i] = w.c[lane][i];
}

// Run one block to completion on this host thread. Returns an error message, or "" when fine.
// splitmix64: a cheap, well-mixed generator for the seeded thread order.
static uint64_t next_random(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static std::string run_block(const Launch& l, Dim3 idx, uint64_t* shuffle) {
    const unsigned threads = l.block.x * l.block.y * l.block.z;
    tl_fibers.ensure(threads);
    thread_local BlockRun b;  // reused: its vectors keep their capacity from block to block
    b.kernel = l.kernel;
    b.args = l.args;
    b.threads = threads;
    b.live = threads;
    b.arrived = 0;
    b.warps.resize((threads + 31) / 32);
    for (Warp& w : b.warps) w.arrived = 0;
    tl_block = BlockInfo{idx, l.block, l.grid};
    thread_local std::vector<unsigned> order;
    order.resize(threads);
    for (unsigned i = 0; i < threads; i++) {
        Fiber& f = tl_fibers.fibers[i];
        f.linear = i;
        f.tid = Dim3{i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y)};
        f.state = State::Ready;
        f.block = &b;
        f.sp = new_context(&f);
        order[i] = i;
    }
    unsigned exited = 0;
    while (exited < threads) {
        if (shuffle) {
            for (unsigned i = threads; i > 1; i--) std::swap(order[i - 1], order[next_random(*shuffle) % i]);
        }
        bool progress = false;
        for (unsigned i : order) {
            Fiber& f = tl_fibers.fibers[i];
            if (f.state != State::Ready) continue;
            progress = true;
            tl_fiber = &f;
            switch_to(&b.sched_sp, f.sp);
            tl_fiber = nullptr;
            if (f.state == State::Exited) exited++;
        }
        if (!progress) {
            unsigned at_barrier = 0, at_mma = 0;
            for (unsigned i = 0; i < threads; i++) {
                at_barrier += tl_fibers.fibers[i].state == State::AtBarrier;
                at_mma += tl_fibers.fibers[i].state == State::AtMma;
            }
            char msg[256];
            std::snprintf(msg, sizeof msg,
                          "%s block (%u,%u,%u): deadlock: %u thread(s) wait at __syncthreads, %u at mma.sync, %u "
                          "exited (a barrier in divergent code, or mma.sync in a partial warp)",
                          l.kernel->name, idx.x, idx.y, idx.z, at_barrier, at_mma, exited);
            return msg;  // the fibers are abandoned; their stacks are reinitialised by the next block
        }
    }
    return "";
}

// ---- blocks over host threads ---------------------------------------------------------------

struct GridJob {
    const Launch* launch;
    uint64_t total;
    std::atomic<uint64_t> next{0};
    unsigned active = 1;  // host threads working on it, the launching one included (under m)
    std::mutex m;
    std::condition_variable cv;
    std::string error;
};

// Take blocks until none is left (or one failed).
static void work_on(GridJob& job) {
    const Launch& l = *job.launch;
    uint64_t rng = 0;
    for (;;) {
        const uint64_t k = job.next.fetch_add(1);
        if (k >= job.total) return;
        rng = l.shuffle_seed ^ (k * 0xd1b54a32d192ed03ull);
        const Dim3 idx{(unsigned)(k % l.grid.x), (unsigned)(k / l.grid.x % l.grid.y),
                       (unsigned)(k / ((uint64_t)l.grid.x * l.grid.y))};
        std::string err = run_block(l, idx, l.shuffle_seed ? &rng : nullptr);
        if (!err.empty()) {
            std::lock_guard<std::mutex> g(job.m);
            if (job.error.empty()) job.error = err;
            job.next.store(job.total);  // hand out no more blocks
        }
    }
}

static void leave(GridJob& job) {
    std::lock_guard<std::mutex> g(job.m);
    if (--job.active == 0) job.cv.notify_all();
}

// Host threads that help run the blocks of whatever launches are in progress.
struct Pool {
    std::mutex m;
    std::condition_variable cv;
    std::deque<GridJob*> jobs;
    unsigned threads = 0;

    Pool() {
        unsigned n = std::thread::hardware_concurrency();
        if (const char* v = getenv("SEAMLESS_EMU_THREADS")) n = (unsigned)atoi(v);
        for (unsigned i = 1; i < n; i++) {
            std::thread([this] { loop(); }).detach();
            threads++;
        }
    }

    void loop() {
        for (;;) {
            GridJob* job;
            {
                std::unique_lock<std::mutex> g(m);
                cv.wait(g, [this] { return !jobs.empty(); });
                job = jobs.front();
                if (job->next.load() >= job->total) {
                    jobs.pop_front();
                    continue;
                }
                // Counted while the queue still holds the job, so the launching thread, which
                // removes it from the queue before it waits for `active` to reach 0, never frees
                // a job a pool thread is about to use.
                std::lock_guard<std::mutex> jg(job->m);
                job->active++;
            }
            work_on(*job);
            leave(*job);
        }
    }
};

static Pool& pool() {
    static Pool* p = new Pool;  // never destroyed: its threads run until the process ends
    return *p;
}

std::string run_launch(const Launch& l) {
    GridJob job;
    job.launch = &l;
    job.total = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
    Pool& p = pool();
    const bool shared = p.threads > 0 && job.total > 1;
    if (shared) {
        std::lock_guard<std::mutex> g(p.m);
        p.jobs.push_back(&job);
        p.cv.notify_all();
    }
    work_on(job);
    if (shared) {
        std::lock_guard<std::mutex> g(p.m);
        for (auto it = p.jobs.begin(); it != p.jobs.end(); ++it) {
            if (*it == &job) {
                p.jobs.erase(it);
                break;
            }
        }
    }
    leave(job);
    std::unique_lock<std::mutex> g(job.m);
    job.cv.wait(g, [&] { return job.active == 0; });
    return job.error;
}

}  // namespace emu
