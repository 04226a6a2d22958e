//! The C ABI of [`crate::embed`], for C, C++ and Python (ctypes) programs: `include/seamless.h`
//! (generated from this file by cbindgen; `tests/c_abi.rs` checks it is current and runs a C
//! program against the shared library). Functions return 0 on success or seamless's exit code
//! for the kind of failure (2 usage, 3 model, 4 input, 5 output, 6 backend or memory, 130
//! cancelled, 101 an internal error), with a message in `*error` (free it with
//! `seamless_string_free`) when `error` is not NULL. No Rust panic crosses this boundary.

#![deny(missing_docs)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;
use std::ptr;

use crate::embed::{Device, Engine, Options, OutputKind, Precision, Progress};
use crate::error::{Error, Result};
use crate::slide::Cancel;
use crate::tensor::Tensor;

/// A model on a backend (`seamless_engine_open`); usable from one thread at a time.
pub struct SeamlessEngine(Engine);

/// Called after each tile with the tiles done and their total; return nonzero to cancel the run.
pub type SeamlessProgress = Option<extern "C" fn(done: u64, total: u64, user: *mut c_void) -> i32>;

/// Run `f`, turning its error or a panic into a return code and a message in `*error`.
fn guard(error: *mut *mut c_char, f: impl FnOnce() -> Result<()>) -> i32 {
    let (code, msg) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => (e.exit_code(), e.to_string()),
        Err(_) => (101, "internal error (a panic in seamless)".to_string()),
    };
    if !error.is_null() {
        let text = CString::new(msg.replace('\0', " ")).expect("no NUL left");
        // SAFETY: the caller passes either NULL (checked) or a pointer it owns to store into.
        unsafe { *error = text.into_raw() };
    }
    code
}

/// A UTF-8 string argument, or a usage error naming it.
fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str> {
    if s.is_null() {
        return Err(Error::Usage(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string that lives for the call.
    unsafe { CStr::from_ptr(s) }.to_str().map_err(|_| Error::Usage(format!("{what} is not UTF-8")))
}

/// The engine behind a pointer the caller passes.
fn live<'a>(engine: *const SeamlessEngine) -> Result<&'a SeamlessEngine> {
    // SAFETY: the caller passes NULL (an error here) or a live engine from `seamless_engine_open`.
    unsafe { engine.as_ref() }.ok_or_else(|| Error::Usage("engine is NULL".into()))
}

/// Progress for the C callback; a nonzero return cancels the run.
fn reporter(progress: SeamlessProgress, user: *mut c_void, cancel: &Cancel) -> impl FnMut(&Progress) + '_ {
    move |p| {
        if let (Some(f), Progress::Tiles { done, total, .. }) = (progress, p)
            && f(*done as u64, *total as u64, user) != 0
        {
            cancel.cancel();
        }
    }
}

/// Load a model file (or a preset name such as "unet-64", with random weights) onto a backend.
/// `device`: -2 automatic (CUDA device 0 if usable, else the CPU), -1 the CPU, n >= 0 CUDA device
/// n. `precision`: 0 f32, 1 f16 (CUDA only), 2 bf16 (CPU only). `memory_budget`: bytes, 0 for the default. `threads`:
/// CPU worker threads, 0 for all cores. Returns NULL on failure, with the message in `*error`.
///
/// # Safety
/// `model` is a NUL-terminated string; `error` is NULL or points to a `char *` to store a message in.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_engine_open(
    model: *const c_char,
    device: i32,
    precision: i32,
    memory_budget: u64,
    threads: u32,
    error: *mut *mut c_char,
) -> *mut SeamlessEngine {
    let mut engine = None;
    guard(error, || {
        let options = Options {
            device: match device {
                -2 => Device::Auto,
                -1 => Device::Cpu,
                n if n >= 0 => Device::Cuda(n as usize),
                n => return Err(Error::Usage(format!("device {n}: give -2 (auto), -1 (CPU) or a CUDA device number"))),
            },
            precision: match precision {
                0 => Precision::F32,
                1 => Precision::F16,
                2 => Precision::Bf16,
                n => return Err(Error::Usage(format!("precision {n}: give 0 (f32), 1 (f16) or 2 (bf16)"))),
            },
            memory_budget: (memory_budget > 0).then_some(memory_budget as usize),
            threads: (threads > 0).then_some(threads as usize),
        };
        engine = Some(Engine::open(text(model, "model")?, &options)?);
        Ok(())
    });
    engine.map_or(ptr::null_mut(), |e| Box::into_raw(Box::new(SeamlessEngine(e))))
}

/// Release an engine (NULL is ignored).
///
/// # Safety
/// `engine` is NULL or an engine from `seamless_engine_open` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_engine_free(engine: *mut SeamlessEngine) {
    if !engine.is_null() {
        // SAFETY: `engine` came from `seamless_engine_open` and is freed once, by the caller's contract.
        drop(unsafe { Box::from_raw(engine) });
    }
}

/// Input channels the model expects.
///
/// # Safety
/// `engine` is NULL or a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_engine_in_channels(engine: *const SeamlessEngine) -> u32 {
    // SAFETY: a live engine from `seamless_engine_open`, or NULL (checked).
    unsafe { engine.as_ref() }.map_or(0, |e| e.0.model().in_channels() as u32)
}

/// Classes the model outputs.
///
/// # Safety
/// `engine` is NULL or a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_engine_classes(engine: *const SeamlessEngine) -> u32 {
    // SAFETY: a live engine from `seamless_engine_open`, or NULL (checked).
    unsafe { engine.as_ref() }.map_or(0, |e| e.0.model().classes() as u32)
}

/// Softmax probabilities of an image in memory: `image` holds `channels x height x width` floats
/// (channel-major, raw values; z-scored over the whole image here), `probs` receives
/// `classes x height x width` floats. Exact tiling in the tiles `seamless infer --tile auto` picks for the budget.
///
/// # Safety
/// `engine` is a live engine; `image` holds `channels * height * width` floats and `probs` room for `classes * height * width`; `error` as for `seamless_engine_open`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn seamless_segment(
    engine: *const SeamlessEngine,
    image: *const f32,
    channels: u32,
    height: u32,
    width: u32,
    probs: *mut f32,
    progress: SeamlessProgress,
    user: *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    guard(error, || {
        let engine = live(engine)?;
        if image.is_null() || probs.is_null() {
            return Err(Error::Usage("image or probs is NULL".into()));
        }
        let (c, h, w) = (channels as usize, height as usize, width as usize);
        crate::slide::check_image_size("image", h, w)?;
        let classes = engine.0.model().classes();
        // SAFETY: the caller provides `channels * height * width` readable floats at `image` and
        // `classes * height * width` writable ones at `probs`, as documented.
        let input = unsafe { std::slice::from_raw_parts(image, c * h * w) };
        let output = unsafe { std::slice::from_raw_parts_mut(probs, classes * h * w) };
        let cancel = Cancel::new();
        let y = engine.0.segment(
            &Tensor::from_vec(c, h, w, input.to_vec()),
            &mut reporter(progress, user, &cancel),
            Some(&cancel),
        )?;
        output.copy_from_slice(&y.data);
        Ok(())
    })
}

/// Segment the image file `input` (TIFF, OME-Zarr, .npy, PNG, or "synth:WxH") into the file
/// `output` (its format from its extension): labels, or probabilities when `probabilities` is
/// nonzero. An existing output is replaced only when `overwrite` is nonzero.
///
/// # Safety
/// `engine` is a live engine; `input` and `output` are NUL-terminated strings; `error` as for `seamless_engine_open`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn seamless_run_file(
    engine: *const SeamlessEngine,
    input: *const c_char,
    output: *const c_char,
    probabilities: i32,
    overwrite: i32,
    progress: SeamlessProgress,
    user: *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    guard(error, || {
        let engine = live(engine)?;
        let kind = if probabilities != 0 { OutputKind::Probs } else { OutputKind::Labels };
        let cancel = Cancel::new();
        engine.0.run_file(
            text(input, "input")?,
            Path::new(text(output, "output")?),
            kind,
            overwrite != 0,
            &mut reporter(progress, user, &cancel),
            Some(&cancel),
        )?;
        Ok(())
    })
}

/// Free a message returned in `*error` (NULL is ignored).
///
/// # Safety
/// `s` is NULL or a message from this library not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seamless_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from `CString::into_raw` in this library and is freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}
