// The emulated CUDA device: the part of the CUDA driver API that seamless reaches through cudarc,
// implemented on the host, built as a shared library whose soname is libcuda.so (so that cudarc's
// first dlopen by name finds it once seamless has loaded it by path: SEAMLESS_CUDA_DRIVER).
//
// - One device, compute capability 9.0 (SEAMLESS_EMU_CC=8.0 for 8.0), SEAMLESS_EMU_MEMORY bytes of
//   memory (default 8 GiB); allocations beyond it fail with CUDA_ERROR_OUT_OF_MEMORY.
// - Device memory is host memory; new device and page-locked allocations are filled with 0xff
//   bytes (NaN in f32 and f16), so reading what was never written shows.
// - Each stream is a host thread that runs its queue in order; an event completes when its stream
//   reaches it, and a wait blocks the waiting stream until then. Copies from or to pageable host
//   memory behave as on a GPU: an upload reads its source before the call returns, a download
//   returns only when done. Copies to or from page-locked memory are truly asynchronous.
// - SEAMLESS_EMU_DELAYS=<seed> (or seamless_emu_set_delays): every stream sleeps a seeded random
//   0-300 us before half of its operations, and each block runs its threads in a seeded random
//   order, so a missing wait shows up as wrong data rather than passing by luck.
// - cuModuleLoadData takes the real cubin (an ELF file from NVRTC); cuModuleGetFunction finds a
//   name only if the cubin defines it and the host build has it (registry.hpp).
// - A kernel that deadlocks (a barrier in divergent code) or a launch outside the device limits is
//   an error, reported as CUDA_ERROR_LAUNCH_FAILED (sticky, as on a GPU) with a message on stderr.
// - SEAMLESS_EMU_FAULT=mma makes every mma.sync result wrong, to test that wrong output is caught.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "internal.hpp"

#define API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
};

namespace {

using Clock = std::chrono::steady_clock;

struct Event {
    unsigned flags = 0;
    uint64_t recorded = 0;       // records issued
    std::set<uint64_t> pending;  // issued records not yet reached by their stream
    Clock::time_point when;      // when the latest record was reached
    bool when_valid = false;

    bool complete(uint64_t gen) const { return pending.count(gen) == 0; }
};

struct Op {
    enum Kind { Work, Wait, Record } kind = Work;
    std::function<void()> fn;
    Event* event = nullptr;
    uint64_t gen = 0;
};

struct Stream {
    uint64_t id = 0;
    std::deque<Op> queue;
    uint64_t enqueued = 0, done = 0;
    bool stopping = false;
    std::mt19937_64 rng;
};

struct Module {
    std::set<std::string> functions;  // STT_FUNC symbols of the cubin
};

struct Function {
    const emu::KernelEntry* entry;
};

// All driver state, under one lock; `changed` is notified whenever an operation completes. Never
// destroyed: stream and pool threads may still use it while the process exits.
struct Globals {
    std::mutex lock;
    std::condition_variable changed;
    bool initialised = false;
    CUresult sticky = SUCCESS;  // a failed launch poisons the context, as on a GPU
    std::set<Stream*> streams;
    Stream* null_stream = nullptr;
    uint64_t next_stream_id = 1;
    uint64_t delay_seed = 0;
    uint64_t launches = 0;
    std::map<uintptr_t, size_t> device;  // allocation base -> bytes
    std::map<uintptr_t, size_t> pinned;
    size_t used = 0, total = 8ull << 30;
    int cc_major = 9, cc_minor = 0;
    std::mutex registry_lock;
    const emu::KernelEntry* kernels = nullptr;
};
Globals& G = *new Globals;
int g_context_tag;  // the primary context's handle points here
thread_local void* tl_current = nullptr;


void fail(const std::string& msg) {
    fprintf(stderr, "cuda emulator: %s\n", msg.c_str());
    G.sticky = LAUNCH_FAILED;
}

void worker(Stream* s) {
    std::unique_lock<std::mutex> g(G.lock);
    for (;;) {
        G.changed.wait(g, [s] { return !s->queue.empty() || s->stopping; });
        if (s->queue.empty()) break;  // stopping and drained
        Op op = std::move(s->queue.front());
        s->queue.pop_front();
        unsigned delay_us = 0;
        if (G.delay_seed) {
            const uint64_t r = s->rng();
            if (r & 1) delay_us = (unsigned)((r >> 8) % 300);
        }
        g.unlock();
        if (delay_us) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
        g.lock();
        if (op.kind == Op::Wait) {
            Event* e = op.event;
            const uint64_t gen = op.gen;
            G.changed.wait(g, [e, gen] { return e->complete(gen); });
        } else if (op.kind == Op::Record) {
            op.event->pending.erase(op.gen);
            if (op.gen == op.event->recorded) {
                op.event->when = Clock::now();
                op.event->when_valid = true;
            }
        } else {
            g.unlock();
            op.fn();
            g.lock();
        }
        s->done++;
        G.changed.notify_all();
    }
    G.streams.erase(s);
    G.changed.notify_all();
    g.unlock();
    delete s;
}

Stream* new_stream() {
    Stream* s = new Stream;
    s->id = G.next_stream_id++;
    s->rng.seed(G.delay_seed ^ (s->id * 0x9e3779b97f4a7c15ull));
    G.streams.insert(s);
    std::thread(worker, s).detach();
    return s;
}

// The stream a handle names (0, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD: the null stream).
Stream* stream_of(void* h) {
    if ((uintptr_t)h <= 2) return G.null_stream;
    return static_cast<Stream*>(h);
}

// Queue `op` on `s` (lock held); returns its position, for waiting on it.
uint64_t enqueue(Stream* s, Op op) {
    s->queue.push_back(std::move(op));
    G.changed.notify_all();
    return ++s->enqueued;
}

void wait_for(std::unique_lock<std::mutex>& g, Stream* s, uint64_t position) {
    G.changed.wait(g, [s, position] { return s->done >= position; });
}

void wait_all(std::unique_lock<std::mutex>& g) {
    G.changed.wait(g, [] {
        for (Stream* s : G.streams)
            if (s->done < s->enqueued) return false;
        return true;
    });
}

bool in_table(const std::map<uintptr_t, size_t>& t, uintptr_t p, size_t n) {
    auto it = t.upper_bound(p);
    if (it == t.begin()) return false;
    --it;
    return p >= it->first && n <= it->second && p - it->first <= it->second - n;
}

CUresult bad_range(const char* what, uintptr_t p, size_t n) {
    fprintf(stderr, "cuda emulator: %s: [%#lx, +%zu) is not inside one live allocation\n", what, (unsigned long)p, n);
    return INVALID_VALUE;
}

// ELF64 symbol names of type STT_FUNC, or false when `image` is not a well-formed CUDA ELF file.
bool cubin_functions(const unsigned char* image, size_t size, std::set<std::string>& out) {
    auto u16 = [&](size_t o) { return (unsigned)image[o] | (unsigned)image[o + 1] << 8; };
    auto u32 = [&](size_t o) { return (uint32_t)u16(o) | (uint32_t)u16(o + 2) << 16; };
    auto u64 = [&](size_t o) { return (uint64_t)u32(o) | (uint64_t)u32(o + 4) << 32; };
    if (size < 64 || memcmp(image, "\x7f" "ELF", 4) != 0 || image[4] != 2 || image[5] != 1) return false;
    if (u16(0x12) != 190) return false;  // EM_CUDA
    const uint64_t shoff = u64(0x28);
    const unsigned shentsize = u16(0x3a), shnum = u16(0x3c);
    if (shentsize < 64 || shoff > size || (uint64_t)shnum * shentsize > size - shoff) return false;
    auto section = [&](unsigned i) { return shoff + (uint64_t)i * shentsize; };
    for (unsigned i = 0; i < shnum; i++) {
        const uint64_t sh = section(i);
        if (u32(sh + 4) != 2) continue;  // SHT_SYMTAB
        const uint64_t off = u64(sh + 0x18), len = u64(sh + 0x20), link = u32(sh + 0x28);
        if (off > size || len > size - off || link >= shnum) return false;
        const uint64_t str_sh = section((unsigned)link), str_off = u64(str_sh + 0x18), str_len = u64(str_sh + 0x20);
        if (str_off > size || str_len > size - str_off) return false;
        for (uint64_t s = off; s + 24 <= off + len; s += 24) {
            if ((image[s + 4] & 0xf) != 2) continue;  // STT_FUNC
            const uint64_t name = u32(s);
            if (name >= str_len) return false;
            const char* p = reinterpret_cast<const char*>(image + str_off + name);
            out.insert(std::string(p, strnlen(p, str_len - name)));
        }
    }
    return true;
}

void init_once() {
    if (G.initialised) return;
    G.initialised = true;
    if (const char* v = getenv("SEAMLESS_EMU_MEMORY")) G.total = strtoull(v, nullptr, 10);
    if (const char* v = getenv("SEAMLESS_EMU_CC")) {
        int ma = 0, mi = 0;
        if (sscanf(v, "%d.%d", &ma, &mi) == 2) {
            G.cc_major = ma;
            G.cc_minor = mi;
        }
    }
    if (const char* v = getenv("SEAMLESS_EMU_DELAYS")) G.delay_seed = strtoull(v, nullptr, 10);
    G.null_stream = new_stream();
}

}  // namespace

void emu::register_kernel(KernelEntry* e) {
    std::lock_guard<std::mutex> g(G.registry_lock);
    e->next = G.kernels;
    G.kernels = e;
}

static const emu::KernelEntry* find_kernel(const char* name) {
    std::lock_guard<std::mutex> g(G.registry_lock);
    for (const emu::KernelEntry* e = G.kernels; e; e = e->next)
        if (strcmp(e->name, name) == 0) return e;
    return nullptr;
}

#define LOCKED std::unique_lock<std::mutex> g(G.lock)
#define NEED_INIT \
    if (!G.initialised) return NOT_INITIALIZED

// ---- seamless's own entry points --------------------------------------------------------------

// Switch the random delays on (seed != 0) for streams created from now on: what
// SEAMLESS_EMU_DELAYS does, for a process that loads the emulator after it started.
API void seamless_emu_set_delays(uint64_t seed) {
    LOCKED;
    G.delay_seed = seed;
}

// ---- initialisation, device, context ----------------------------------------------------------

API CUresult cuInit(unsigned) {
    LOCKED;
    init_once();
    return SUCCESS;
}

API CUresult cuDriverGetVersion(int* v) {
    if (!v) return INVALID_VALUE;
    *v = 13000;
    return SUCCESS;
}

API CUresult cuDeviceGetCount(int* n) {
    LOCKED;
    NEED_INIT;
    *n = 1;
    return SUCCESS;
}

API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    LOCKED;
    NEED_INIT;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return SUCCESS;
}

API CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    snprintf(name, (size_t)len, "seamless CUDA emulator (host CPU)");
    return SUCCESS;
}

API CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    memcpy(uuid, "seamless-emulatr", 16);
    return SUCCESS;
}

API CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    LOCKED;
    if (d != 0) return INVALID_DEVICE;
    *bytes = G.total;
    return SUCCESS;
}

API CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    LOCKED;
    if (d != 0) return INVALID_DEVICE;
    switch (attr) {
        case 1: *v = 1024; break;        // max threads per block
        case 2: case 3: *v = 1024; break;  // max block dim x, y
        case 4: *v = 64; break;          // max block dim z
        case 5: *v = 2147483647; break;  // max grid dim x
        case 6: case 7: *v = 65535; break;
        case 8: *v = 48 * 1024; break;   // shared memory per block
        case 10: *v = 32; break;         // warp size
        case 13: *v = 1000000; break;    // clock rate (kHz)
        case 16: *v = 2; break;          // multiprocessors
        case 38: *v = 4 << 20; break;    // L2 bytes
        case 75: *v = G.cc_major; break;
        case 76: *v = G.cc_minor; break;
        case 81: *v = 228 * 1024; break;  // shared memory per multiprocessor
        case 97: *v = 227 * 1024; break;  // shared memory per block, opt-in
        case 115: *v = 1; break;          // memory pools (stream-ordered allocation)
        default: *v = 0;
    }
    return SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    LOCKED;
    NEED_INIT;
    if (d != 0) return INVALID_DEVICE;
    *ctx = &g_context_tag;
    return SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }
API CUresult cuDevicePrimaryCtxRelease(CUdevice) { return SUCCESS; }

API CUresult cuCtxSetCurrent(void* ctx) {
    tl_current = ctx;
    return SUCCESS;
}

API CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = tl_current;
    return SUCCESS;
}

API CUresult cuCtxPushCurrent_v2(void* ctx) {
    tl_current = ctx;
    return SUCCESS;
}

API CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = tl_current;
    return SUCCESS;
}

API CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return SUCCESS;
}

API CUresult cuCtxSynchronize() {
    LOCKED;
    NEED_INIT;
    wait_all(g);
    return G.sticky;
}

API CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = 0;
    return SUCCESS;
}

API CUresult cuCtxSetLimit(int, size_t) { return SUCCESS; }
API CUresult cuCtxGetLimit(size_t* v, int) {
    *v = 0;
    return SUCCESS;
}
API CUresult cuCtxSetCacheConfig(int) { return SUCCESS; }
API CUresult cuCtxGetCacheConfig(int* v) {
    *v = 0;
    return SUCCESS;
}
API CUresult cuCtxSetFlags(unsigned) { return SUCCESS; }

static const char* error_text(CUresult e, bool name) {
    switch (e) {
        case SUCCESS: return name ? "CUDA_SUCCESS" : "no error";
        case INVALID_VALUE: return name ? "CUDA_ERROR_INVALID_VALUE" : "invalid argument";
        case OUT_OF_MEMORY: return name ? "CUDA_ERROR_OUT_OF_MEMORY" : "out of memory";
        case NOT_INITIALIZED: return name ? "CUDA_ERROR_NOT_INITIALIZED" : "initialization error";
        case NO_DEVICE: return name ? "CUDA_ERROR_NO_DEVICE" : "no CUDA-capable device is detected";
        case INVALID_DEVICE: return name ? "CUDA_ERROR_INVALID_DEVICE" : "invalid device ordinal";
        case INVALID_IMAGE: return name ? "CUDA_ERROR_INVALID_IMAGE" : "device kernel image is invalid";
        case INVALID_CONTEXT: return name ? "CUDA_ERROR_INVALID_CONTEXT" : "invalid device context";
        case INVALID_HANDLE: return name ? "CUDA_ERROR_INVALID_HANDLE" : "invalid resource handle";
        case NOT_FOUND: return name ? "CUDA_ERROR_NOT_FOUND" : "named symbol not found";
        case NOT_READY: return name ? "CUDA_ERROR_NOT_READY" : "device not ready";
        case LAUNCH_FAILED: return name ? "CUDA_ERROR_LAUNCH_FAILED" : "unspecified launch failure";
        case NOT_SUPPORTED: return name ? "CUDA_ERROR_NOT_SUPPORTED" : "operation not supported";
        default: return nullptr;
    }
}

API CUresult cuGetErrorString(CUresult e, const char** s) {
    *s = error_text(e, false);
    return *s ? SUCCESS : INVALID_VALUE;
}

API CUresult cuGetErrorName(CUresult e, const char** s) {
    *s = error_text(e, true);
    return *s ? SUCCESS : INVALID_VALUE;
}

// ---- streams and events ------------------------------------------------------------------------

API CUresult cuStreamCreate(void** stream, unsigned) {
    LOCKED;
    NEED_INIT;
    *stream = new_stream();
    return SUCCESS;
}

API CUresult cuStreamCreateWithPriority(void** stream, unsigned flags, int) { return cuStreamCreate(stream, flags); }

API CUresult cuStreamDestroy_v2(void* h) {
    LOCKED;
    Stream* s = stream_of(h);
    if (s == G.null_stream) return INVALID_HANDLE;
    s->stopping = true;  // its worker finishes the queue, then frees it
    G.changed.notify_all();
    return SUCCESS;
}

API CUresult cuStreamSynchronize(void* h) {
    LOCKED;
    NEED_INIT;
    Stream* s = stream_of(h);
    wait_for(g, s, s->enqueued);
    return G.sticky;
}

API CUresult cuStreamQuery(void* h) {
    LOCKED;
    Stream* s = stream_of(h);
    if (G.sticky) return G.sticky;
    return s->done == s->enqueued ? SUCCESS : NOT_READY;
}

API CUresult cuStreamWaitEvent(void* h, void* ev, unsigned) {
    LOCKED;
    NEED_INIT;
    Event* e = static_cast<Event*>(ev);
    if (e->recorded == 0) return SUCCESS;  // never recorded: nothing to wait for
    Op op;
    op.kind = Op::Wait;
    op.event = e;
    op.gen = e->recorded;  // the latest record at the time of the call, as CUDA specifies
    enqueue(stream_of(h), std::move(op));
    return SUCCESS;
}

API CUresult cuEventCreate(void** ev, unsigned flags) {
    Event* e = new Event;
    e->flags = flags;
    *ev = e;
    return SUCCESS;
}

API CUresult cuEventDestroy_v2(void* ev) {
    LOCKED;
    Event* e = static_cast<Event*>(ev);
    // Operations still queued may refer to it: wait for them, as the driver defers the release.
    G.changed.wait(g, [e] { return e->pending.empty(); });
    delete e;
    return SUCCESS;
}

API CUresult cuEventRecord(void* ev, void* h) {
    LOCKED;
    NEED_INIT;
    Event* e = static_cast<Event*>(ev);
    Op op;
    op.kind = Op::Record;
    op.event = e;
    op.gen = ++e->recorded;
    e->pending.insert(op.gen);
    e->when_valid = false;
    enqueue(stream_of(h), std::move(op));
    return SUCCESS;
}

API CUresult cuEventSynchronize(void* ev) {
    LOCKED;
    Event* e = static_cast<Event*>(ev);
    const uint64_t gen = e->recorded;
    G.changed.wait(g, [e, gen] { return e->complete(gen); });
    return G.sticky;
}

API CUresult cuEventQuery(void* ev) {
    LOCKED;
    Event* e = static_cast<Event*>(ev);
    return e->complete(e->recorded) ? SUCCESS : NOT_READY;
}

API CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    LOCKED;
    Event *a = static_cast<Event*>(start), *b = static_cast<Event*>(end);
    if ((a->flags | b->flags) & 2) return INVALID_HANDLE;  // CU_EVENT_DISABLE_TIMING
    if (a->recorded == 0 || b->recorded == 0) return INVALID_HANDLE;
    if (!a->complete(a->recorded) || !b->complete(b->recorded)) return NOT_READY;
    if (!a->when_valid || !b->when_valid) return INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
    return SUCCESS;
}

API CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) { return cuEventElapsedTime(ms, start, end); }

API CUresult cuLaunchHostFunc(void* h, void (*fn)(void*), void* data) {
    LOCKED;
    NEED_INIT;
    Op op;
    op.fn = [fn, data] { fn(data); };
    enqueue(stream_of(h), std::move(op));
    return SUCCESS;
}

// ---- memory -----------------------------------------------------------------------------------

static CUresult device_alloc(CUdeviceptr* p, size_t bytes) {
    if (G.used > G.total || bytes > G.total - G.used) return OUT_OF_MEMORY;
    const size_t rounded = (bytes + 255) / 256 * 256;
    void* m = aligned_alloc(256, rounded ? rounded : 256);
    if (!m) return OUT_OF_MEMORY;
    memset(m, 0xff, rounded);
    G.device[(uintptr_t)m] = bytes;
    G.used += bytes;
    *p = (CUdeviceptr)(uintptr_t)m;
    return SUCCESS;
}

static CUresult device_free(CUdeviceptr p) {
    auto it = G.device.find((uintptr_t)p);
    if (it == G.device.end()) return INVALID_VALUE;
    G.used -= it->second;
    G.device.erase(it);
    free((void*)(uintptr_t)p);
    return SUCCESS;
}

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCKED;
    NEED_INIT;
    return device_alloc(p, bytes);
}

API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) {
    LOCKED;
    NEED_INIT;
    return device_alloc(p, bytes);
}

API CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCKED;
    wait_all(g);  // cuMemFree waits for the work that may still use the memory
    return device_free(p);
}

API CUresult cuMemFreeAsync(CUdeviceptr p, void* h) {
    LOCKED;
    if (!G.device.count((uintptr_t)p)) return INVALID_VALUE;
    Op op;
    op.fn = [p] {
        std::lock_guard<std::mutex> lg(G.lock);
        device_free(p);
    };
    enqueue(stream_of(h), std::move(op));
    return SUCCESS;
}

API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCKED;
    *free_bytes = G.total > G.used ? G.total - G.used : 0;
    *total = G.total;
    return SUCCESS;
}

API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    LOCKED;
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* m = aligned_alloc(64, rounded ? rounded : 64);
    if (!m) return OUT_OF_MEMORY;
    memset(m, 0xff, rounded);
    G.pinned[(uintptr_t)m] = bytes;
    *p = m;
    return SUCCESS;
}

API CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }

API CUresult cuMemFreeHost(void* p) {
    LOCKED;
    wait_all(g);
    if (!G.pinned.erase((uintptr_t)p)) return INVALID_VALUE;
    free(p);
    return SUCCESS;
}

// Queue a copy on `s`; `sync` makes the call return only once the copy is done.
static CUresult copy(std::unique_lock<std::mutex>& g, Stream* s, void* dst, const void* src, size_t n, bool sync) {
    if (G.sticky) return G.sticky;
    Op op;
    op.fn = [dst, src, n] { memcpy(dst, src, n); };
    const uint64_t pos = enqueue(s, std::move(op));
    if (sync) wait_for(g, s, pos);
    return sync ? G.sticky : SUCCESS;
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* h) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, dst, n)) return bad_range("upload destination", dst, n);
    if (in_table(G.pinned, (uintptr_t)src, n)) return copy(g, stream_of(h), (void*)(uintptr_t)dst, src, n, false);
    // Pageable source: the driver stages it before returning, so the caller may reuse it at once.
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)src, (const unsigned char*)src + n);
    if (G.sticky) return G.sticky;
    Op op;
    op.fn = [dst, staged] { memcpy((void*)(uintptr_t)dst, staged->data(), staged->size()); };
    enqueue(stream_of(h), std::move(op));
    return SUCCESS;
}

API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* h) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, src, n)) return bad_range("download source", src, n);
    // Pageable destination: the call returns when the copy is done.
    const bool pinned = in_table(G.pinned, (uintptr_t)dst, n);
    return copy(g, stream_of(h), dst, (const void*)(uintptr_t)src, n, !pinned);
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* h) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, src, n)) return bad_range("copy source", src, n);
    if (!in_table(G.device, dst, n)) return bad_range("copy destination", dst, n);
    if (n && dst < src + n && src < dst + n) {
        fprintf(stderr, "cuda emulator: device copy between overlapping ranges\n");
        return INVALID_VALUE;
    }
    return copy(g, stream_of(h), (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n, false);
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, dst, n)) return bad_range("upload destination", dst, n);
    return copy(g, G.null_stream, (void*)(uintptr_t)dst, src, n, true);
}

API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, src, n)) return bad_range("download source", src, n);
    return copy(g, G.null_stream, dst, (const void*)(uintptr_t)src, n, true);
}

API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, src, n)) return bad_range("copy source", src, n);
    if (!in_table(G.device, dst, n)) return bad_range("copy destination", dst, n);
    return copy(g, G.null_stream, (void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n, true);
}

static CUresult memset_n(CUdeviceptr dst, unsigned value, size_t count, unsigned width, void* h, bool sync) {
    LOCKED;
    NEED_INIT;
    if (!in_table(G.device, dst, count * width)) return bad_range("memset", dst, count * width);
    if (G.sticky) return G.sticky;
    Op op;
    op.fn = [dst, value, count, width] {
        unsigned char* p = (unsigned char*)(uintptr_t)dst;
        for (size_t i = 0; i < count; i++) memcpy(p + i * width, &value, width);  // little-endian
    };
    Stream* s = stream_of(h);
    const uint64_t pos = enqueue(s, std::move(op));
    if (sync) wait_for(g, s, pos);
    return SUCCESS;
}

API CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* h) { return memset_n(d, v, n, 1, h, false); }
API CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, void* h) { return memset_n(d, v, n, 2, h, false); }
API CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void* h) { return memset_n(d, v, n, 4, h, false); }
API CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_n(d, v, n, 1, nullptr, true); }
API CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) { return memset_n(d, v, n, 4, nullptr, true); }

// ---- modules and launches ---------------------------------------------------------------------

API CUresult cuModuleLoadData(void** module, const void* image) {
    LOCKED;
    NEED_INIT;
    const unsigned char* p = static_cast<const unsigned char*>(image);
    if (memcmp(p, "\x7f" "ELF", 4) != 0 || p[4] != 2) {
        fprintf(stderr, "cuda emulator: cuModuleLoadData takes a cubin (ELF); PTX is not emulated\n");
        return INVALID_IMAGE;
    }
    // The image's size is not passed: it is the furthest extent of the section header table and of
    // the sections it lists (a cubin is far below 4 GiB; anything claiming more is refused).
    uint64_t shoff;
    uint16_t shentsize, shnum;
    memcpy(&shoff, p + 0x28, 8);
    memcpy(&shentsize, p + 0x3a, 2);
    memcpy(&shnum, p + 0x3c, 2);
    const uint64_t limit = 1ull << 32;
    if (shoff > limit || shentsize < 64) return INVALID_IMAGE;
    uint64_t size = shoff + (uint64_t)shentsize * shnum;
    for (unsigned i = 0; i < shnum; i++) {
        const unsigned char* sh = p + shoff + (uint64_t)i * shentsize;
        uint32_t type;
        uint64_t off, len;
        memcpy(&type, sh + 4, 4);
        memcpy(&off, sh + 0x18, 8);
        memcpy(&len, sh + 0x20, 8);
        if (type == 8) continue;  // SHT_NOBITS: no bytes in the file
        if (off > limit || len > limit) return INVALID_IMAGE;
        if (off + len > size) size = off + len;
    }
    Module* m = new Module;
    if (!cubin_functions(p, (size_t)size, m->functions)) {
        delete m;
        return INVALID_IMAGE;
    }
    *module = m;
    return SUCCESS;
}

API CUresult cuModuleLoadDataEx(void** module, const void* image, unsigned, void*, void**) {
    return cuModuleLoadData(module, image);
}

API CUresult cuModuleUnload(void* module) {
    delete static_cast<Module*>(module);
    return SUCCESS;
}

API CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    Module* m = static_cast<Module*>(module);
    if (!m->functions.count(name)) {
        fprintf(stderr, "cuda emulator: the cubin has no kernel named %s\n", name);
        return NOT_FOUND;
    }
    const emu::KernelEntry* e = find_kernel(name);
    if (!e) {
        fprintf(stderr, "cuda emulator: %s is in the cubin but not in the emulator's host build\n", name);
        return NOT_FOUND;
    }
    *f = new Function{e};
    return SUCCESS;
}

API CUresult cuFuncGetAttribute(int* v, int attr, void*) {
    *v = attr == 0 ? 1024 : 0;  // CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
    return SUCCESS;
}

API CUresult cuFuncSetAttribute(void*, int, int) { return SUCCESS; }
API CUresult cuFuncSetCacheConfig(void*, int) { return SUCCESS; }

API CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                            unsigned shared, void* h, void** params, void** extra) {
    LOCKED;
    NEED_INIT;
    if (G.sticky) return G.sticky;
    const emu::KernelEntry* e = static_cast<Function*>(f)->entry;
    const uint64_t threads = (uint64_t)bx * by * bz;
    // The limits of the device (cuDeviceGetAttribute above), as the driver checks them.
    if (!gx || !gy || !gz || !threads || threads > 1024 || bx > 1024 || by > 1024 || bz > 64 || gy > 65535 ||
        gz > 65535 || gx > 2147483647u) {
        fprintf(stderr, "cuda emulator: %s: launch of grid (%u,%u,%u) x block (%u,%u,%u) exceeds the device limits\n",
                e->name, gx, gy, gz, bx, by, bz);
        return INVALID_VALUE;
    }
    if (shared || extra || (!params && e->params)) {
        fprintf(stderr, "cuda emulator: %s: dynamic shared memory and `extra` launch parameters are not emulated\n",
                e->name);
        return NOT_SUPPORTED;
    }
    emu::Launch l;
    l.kernel = e;
    l.args = e->pack(params);
    l.grid = emu::Dim3{gx, gy, gz};
    l.block = emu::Dim3{bx, by, bz};
    l.shuffle_seed = G.delay_seed ? (G.delay_seed ^ (++G.launches * 0xbf58476d1ce4e5b9ull)) | 1 : 0;
    Op op;
    op.fn = [l] {
        std::string err = emu::run_launch(l);
        l.kernel->drop(l.args);
        if (!err.empty()) {
            std::lock_guard<std::mutex> lg(G.lock);
            fail(err);
        }
    };
    enqueue(stream_of(h), std::move(op));
    return SUCCESS;
}
