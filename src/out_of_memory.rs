//! Running out of memory ends the process with exit 6 and a message, like every other resource
//! failure, not with SIGABRT (exit 134) and a backtrace.
//!
//! Most large buffers are reserved fallibly and fail as `Error::OutOfMemory`; but under a hard
//! limit (`ulimit -v`) any small allocation can be the one that fails, and on stable Rust a failed
//! infallible allocation always aborts. So the allocator remembers that an allocation failed, and
//! a SIGABRT handler turns the abort that follows into exit 6. Any other abort keeps its default.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of the last allocation that failed and was not handled (see [`handled`]).
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Called where a fallible reservation's failure becomes `Error::OutOfMemory`: that failure is
/// handled, and an abort after it is not its. (Not cleared on the next successful allocation: the
/// abort after a failed infallible one prints a message and maybe a backtrace first, allocating.)
pub fn handled() {
    FAILED.store(0, Ordering::Relaxed);
}

/// The system allocator, noting failures for the abort handler.
pub struct NotingAllocator;

impl NotingAllocator {
    fn noted(p: *mut u8, size: usize) -> *mut u8 {
        if p.is_null() {
            FAILED.store(size.max(1), Ordering::Relaxed);
        }
        p
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for NotingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::noted(unsafe { System.alloc(layout) }, layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::noted(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::noted(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

const MESSAGE: &[u8] = b"error: out of memory: an allocation failed (its size is printed above). The memory \
budget is the buffers seamless plans; under `ulimit -v` the process's address space counts too (thread \
stacks, allocator arenas). Give a smaller --memory-budget or raise the limit; a partial output is kept \
for --resume.\n";

extern "C" fn on_abort(_: libc::c_int) {
    if FAILED.load(Ordering::Relaxed) != 0 {
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(6);
        }
    }
    // SAFETY: back to the default action, then the abort proceeds as it would have.
    unsafe {
        libc::signal(libc::SIGABRT, libc::SIG_DFL);
        libc::raise(libc::SIGABRT);
    }
}

/// Install the SIGABRT handler (the binary's `main` calls this once, with [`NotingAllocator`] as
/// its global allocator).
pub fn install_abort_handler() {
    // SAFETY: the handler only reads an atomic and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGABRT, on_abort as *const () as libc::sighandler_t);
    }
}
