//! Transparent huge pages for large buffers, where Linux has THP in `madvise` mode.

/// Ask Linux to back `buf` (its whole 2 MiB pages) with huge pages, before it is first written.
/// The convolutions walk many channel planes at once, and 4 KiB pages then cost a TLB miss per
/// plane; and a buffer's first touch faults once per 2 MiB instead of once per 4 KiB (124 MB of
/// U-Net-64 weights: 60 faults, not 30,000). Only a hint; nothing changes where it is refused.
pub fn advise(buf: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let ptr = buf.as_mut_ptr() as usize;
        let start = ptr.next_multiple_of(HUGE);
        let end = (ptr + std::mem::size_of_val(buf)) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside `buf`; MADV_HUGEPAGE changes only how the kernel
            // backs those pages, never their contents or validity.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}
