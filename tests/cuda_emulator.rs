//! The emulated CUDA device itself (cuda_emulator/): streams really run asynchronously, so a copy
//! that does not wait for the one it depends on reads wrong data (the poison of never-written
//! memory), while the same copies ordered by an event are always right. This is what lets the
//! emulator catch synchronisation bugs such as the pinned-buffer one of the CUDA executor.

mod common;

use std::sync::Arc;

use common::emulator;
use cudarc::driver::CudaContext;

/// A context of its own with cudarc's automatic per-buffer waits off, as the backend runs.
fn context() -> Arc<CudaContext> {
    emulator::select_cuda_device();
    seamless::cuda::libs::require_cuda().expect("the emulated device loads");
    let ctx = CudaContext::new(0).expect("a context on the emulated device");
    // SAFETY: this test orders its streams itself (or, on purpose, does not).
    unsafe { ctx.disable_event_tracking() };
    ctx
}

/// Upload `n` values on one stream and download them on another, waiting (or not) for an event
/// recorded after the upload; true when the download got exactly what was uploaded.
fn round_trip(ctx: &Arc<CudaContext>, n: usize, wait: bool) -> bool {
    let (up, down) = (ctx.new_stream().unwrap(), ctx.new_stream().unwrap());
    // SAFETY: filled before the upload is queued; read after the download's stream is synchronised.
    let mut src = unsafe { ctx.alloc_pinned::<f32>(n) }.unwrap();
    for (i, v) in src.as_mut_slice().unwrap().iter_mut().enumerate() {
        *v = i as f32;
    }
    // SAFETY: written by the upload before any read that waits for it.
    let mut dev = unsafe { up.alloc::<f32>(n) }.unwrap();
    up.synchronize().unwrap(); // the allocation itself is ordered on `up`
    let uploaded = ctx.new_event(None).unwrap();
    up.memcpy_htod(&src, &mut dev).unwrap();
    uploaded.record(&up).unwrap();
    if wait {
        down.wait(&uploaded).unwrap();
    }
    // SAFETY: read only after `down` is synchronised.
    let mut dst = unsafe { ctx.alloc_pinned::<f32>(n) }.unwrap();
    down.memcpy_dtoh(&dev, &mut dst).unwrap();
    down.synchronize().unwrap();
    up.synchronize().unwrap();
    let ok = dst.as_slice().unwrap().iter().enumerate().all(|(i, &v)| v == i as f32);
    drop(dev);
    ok
}

#[test]
#[cfg_attr(any(no_cuda_device, real_gpu), ignore = "tests of the emulated device: no emulator here, or a real GPU")]
fn a_missing_wait_reads_wrong_data_and_an_event_wait_never_does() {
    let ctx = context();
    let trials = 40;
    let racy = (0..trials).filter(|_| !round_trip(&ctx, 1 << 16, false)).count();
    let ordered = (0..trials).filter(|_| !round_trip(&ctx, 1 << 16, true)).count();
    println!("without a wait: {racy} of {trials} downloads wrong; with one: {ordered} wrong");
    assert_eq!(ordered, 0, "copies ordered by an event must always be right");
    assert!(racy > 0, "the emulator's delays should expose a download that does not wait for its upload");
}
