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
            Error::Model { .. } | Error::Config(_) | Error::NotTileable(_) | Error::Io { side: Side::Model, .. } => 3,
            Error::Input { .. } | Error::Shape(_) | Error::Io { side: Side::Input, .. } => 4,
            Error::Output { .. } | Error::Io { side: Side::Output, .. } => 5,
            Error::Backend(_) | Error::Cuda { .. } | Error::OutOfMemory { .. } => 6,
            // As a shell reports a process stopped by Ctrl-C.
            Error::Cancelled => 130,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which of a run's files an [`Error::Io`] is about, which decides its exit code.
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
}
