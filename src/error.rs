//! One error type for the library, with an exit code per kind so scripts can tell a bad model from
//! a bad image from an output that could not be written.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model {path}: {msg}")]
    Model { path: String, msg: String },
    #[error("model configuration: {0}")]
    Config(String),
    #[error("this model cannot be tiled exactly: {0}")]
    NotTileable(String),
    #[error("input image {path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("output {path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("tiling: {0}")]
    Tiling(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error("{0}")]
    Usage(String),
    #[error("backend: {0}")]
    Backend(String),
    /// A CUDA driver call failed while doing `context`; the driver's own error is kept as the source.
    #[error("CUDA: {context}: {source}")]
    Cuda {
        context: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory { what: String, bytes: usize },
    /// A file operation on one of the run's files failed; the system's error is kept as the source.
    #[error("{} {}: {what}: {source}", side.label(), path.display())]
    Io {
        side: Side,
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A file of the run could not be decoded or encoded (TIFF, PNG, Zarr, safetensors, JSON,
    /// Deflate): `what` says what was being done, and the codec library's error is kept as the
    /// source.
    #[error("{} {}: {what}: {source}", side.label(), path.display())]
    Codec {
        side: Side,
        path: PathBuf,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A model configuration given as JSON (a model file's metadata, or `--config`) is not valid
    /// for its architecture; serde_json's error is kept as the source.
    #[error("model configuration: {what}: {source}")]
    ConfigJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// NVRTC could not compile kernel family `family` for `arch`: `what` is the step that failed,
    /// `log` the compiler's log (empty when there is none); NVRTC's error is kept as the source.
    #[error("NVRTC could not compile kernels/{family}.cu for {arch} ({source}, {what}){}", log_part(log))]
    Nvrtc {
        family: &'static str,
        arch: String,
        what: String,
        log: String,
        #[source]
        source: cudarc::nvrtc::result::NvrtcError,
    },
    /// An NVRTC call outside compilation (`nvrtcVersion`) failed; NVRTC's error is kept as the source.
    #[error("{call}: {source}")]
    NvrtcCall {
        call: &'static str,
        #[source]
        source: cudarc::nvrtc::result::NvrtcError,
    },
    /// The caller cancelled the run (`slide::Cancel`); a run to a file keeps its partial
    /// output for `--resume`.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Process exit code for this error (documented in `seamless --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Tiling(_) => 2,
            Error::Model { .. }
            | Error::Config(_)
            | Error::ConfigJson { .. }
            | Error::NotTileable(_)
            | Error::Io { side: Side::Model, .. }
            | Error::Codec { side: Side::Model, .. } => 3,
            Error::Input { .. }
            | Error::Shape(_)
            | Error::Io { side: Side::Input, .. }
            | Error::Codec { side: Side::Input, .. } => 4,
            Error::Output { .. } | Error::Io { side: Side::Output, .. } | Error::Codec { side: Side::Output, .. } => 5,
            Error::Backend(_)
            | Error::Cuda { .. }
            | Error::Nvrtc { .. }
            | Error::NvrtcCall { .. }
            | Error::OutOfMemory { .. } => 6,
            // As a shell reports a process stopped by Ctrl-C.
            Error::Cancelled => 130,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The compile log after the message, on lines of its own; nothing when there is none.
fn log_part(log: &str) -> String {
    if log.is_empty() { String::new() } else { format!(":\n{log}") }
}

/// Which of a run's files an [`Error::Io`] or [`Error::Codec`] is about, which decides its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Model,
    Input,
    Output,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Model => "model",
            Side::Input => "input image",
            Side::Output => "output",
        }
    }
}

impl Error {
    /// `what` failed on `path`, one of the run's files on `side`, with the system's error `source`.
    pub fn io(side: Side, path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Error {
        Error::Io { side, path: path.into(), what, source }
    }

    /// The codec library's error `source` while doing `what` on `path`, one of the run's files on
    /// `side` (reading or writing a TIFF, PNG, Zarr store, safetensors or JSON file).
    pub fn codec(
        side: Side,
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Codec { side, path: path.into(), what: what.into(), source: Box::new(source) }
    }
}
