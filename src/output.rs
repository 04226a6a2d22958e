//! Outputs appear under their final name only when complete: everything is written to a hidden
//! temporary file beside the target and renamed over it on success. A failed or interrupted run
//! leaves no file that could be mistaken for a whole one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let err = |msg: String| Error::Output { path: target.to_path_buf(), msg };
        let name = target.file_name().ok_or_else(|| err("not a file name".into()))?;
        if target.is_dir() {
            return Err(err("is a directory".into()));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(err(format!("directory {} does not exist", dir.display())));
        }
        let tmp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
        Ok(AtomicFile { target: target.to_path_buf(), tmp, writer: Some(BufWriter::new(file)) })
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        Error::Output { path: self.target.clone(), msg: format!("write failed: {e}") }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.writer.as_mut().expect("writer present until commit");
        w.write_all(bytes).map_err(|e| Error::Output { path: self.target.clone(), msg: format!("write failed: {e}") })
    }

    /// The underlying writer, for encoders that want `io::Write`.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until commit")
    }

    /// Flush, sync and rename onto the final name.
    pub fn commit(mut self) -> Result<()> {
        let w = self.writer.take().expect("commit once");
        let file = w.into_inner().map_err(|e| self.io_err(e.into_error()))?;
        file.sync_all().map_err(|e| self.io_err(e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|e| self.io_err(e))?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
