//! Outputs appear under their final name only when complete: everything is written to a hidden
//! temporary file beside the target and renamed over it on success. A failed or interrupted run
//! leaves no file that could be mistaken for a whole one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Side};

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
        let file = File::create(&tmp).map_err(|e| Error::io(Side::Output, &tmp, "cannot create", e))?;
        Ok(AtomicFile { target: target.to_path_buf(), tmp, writer: Some(BufWriter::new(file)) })
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        Error::io(Side::Output, &self.target, "write failed", e)
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.writer.as_mut().expect("writer present until commit");
        w.write_all(bytes).map_err(|e| Error::io(Side::Output, &self.target, "write failed", e))
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

/// Whether two paths name the same file: the same device and inode when both exist, else the same
/// absolute path once the parent folder is resolved (links and `..` included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `p` made absolute with its parent folder canonicalised (the file itself may not exist yet).
fn resolved(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

/// What may be done with an output path that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: the user did not ask for it (the default).
    Refuse,
    /// Replace it (`--overwrite`), but only with an output of the same kind: a file by a file, a
    /// Zarr store by a Zarr store. A directory that is not a Zarr store is never deleted.
    Replace,
}

/// Whether `dir` is the root of a Zarr store (v3 `zarr.json`, or v2 `.zgroup`/`.zarray`).
pub fn is_zarr_store(dir: &Path) -> bool {
    ["zarr.json", ".zgroup", ".zarray"].iter().any(|f| dir.join(f).is_file())
}

/// Check, before anything is written, that `out` may be written: it is none of `inputs` (named
/// for the message, e.g. ("--input", path)), and if it exists `existing` allows replacing it with
/// an output of this kind (`dir`: a Zarr store). Errors are `Error::Usage` for a clash with an
/// input (exit 2) and `Error::Output` for an existing output (exit 5).
pub fn check_destination(out: &Path, dir: bool, existing: Existing, inputs: &[(&str, &Path)]) -> Result<()> {
    for (what, p) in inputs {
        if same_file(out, p) {
            return Err(Error::Usage(format!(
                "{} is also {what}: seamless never writes over its own inputs; choose another output",
                out.display()
            )));
        }
    }
    let err = |msg: &str| Err(Error::Output { path: out.to_path_buf(), msg: msg.into() });
    match out.parent() {
        Some(d) if !d.as_os_str().is_empty() && !d.is_dir() => {
            return err(&format!("directory {} does not exist", d.display()));
        }
        _ => {}
    }
    let Ok(meta) = std::fs::symlink_metadata(out) else { return Ok(()) };
    // What could never be replaced is said first, so --overwrite is not suggested in vain.
    match (meta.is_dir(), dir) {
        (true, false) => err("is a directory (a directory where a file goes?): seamless never replaces it"),
        (true, true) if !is_zarr_store(out) => {
            err("is a directory that is not a Zarr store: seamless never replaces it, even with --overwrite")
        }
        (false, true) => err("is a file, and a Zarr output is a directory: seamless never replaces it"),
        _ if existing == Existing::Refuse => err("exists; pass --overwrite to replace it"),
        _ => Ok(()),
    }
}

/// Move the finished output `partial` to `out`, replacing what `check_destination` allowed: a file
/// in one rename; a Zarr store by renaming the old one aside first, so that `out` is always either
/// the old store or the new one, never half of either.
pub fn move_into_place(partial: &Path, out: &Path) -> std::io::Result<()> {
    let is_dir = std::fs::symlink_metadata(out).map(|m| m.is_dir()).unwrap_or(false);
    if !is_dir {
        return std::fs::rename(partial, out);
    }
    let mut old = out.as_os_str().to_owned();
    old.push(format!(".replaced-{}", std::process::id()));
    let old = PathBuf::from(old);
    std::fs::rename(out, &old)?;
    if let Err(e) = std::fs::rename(partial, out) {
        let _ = std::fs::rename(&old, out); // put the old store back
        return Err(e);
    }
    std::fs::remove_dir_all(&old)
}

/// An exclusive lock on `path` (a lock file seamless creates and removes), held until dropped: two
/// runs writing the same output cannot both hold it.
pub struct Lock {
    path: PathBuf,
    file: File,
}

impl Lock {
    /// Take the lock, or fail at once (`Error::Output`, naming `what`) when another process holds it.
    pub fn acquire(path: &Path, what: &Path) -> Result<Lock> {
        use std::os::unix::fs::MetadataExt;
        let err = |msg: String| Error::Output { path: what.to_path_buf(), msg };
        // A lock file may be removed by the run that held it between our open and our lock: then
        // the file we locked is no longer the one at `path`, and we try again.
        for _ in 0..8 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|e| Error::io(Side::Output, path, "cannot create the lock file", e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(err(format!(
                        "another seamless run is writing this output (it holds {}); wait for it, or stop it",
                        path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(Side::Output, path, "cannot lock", e));
                }
            }
            let same = match (file.metadata(), std::fs::metadata(path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if same {
                return Ok(Lock { path: path.to_path_buf(), file });
            }
        }
        Err(err(format!("cannot take the lock {}: it keeps being replaced", path.display())))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so no other run can have locked this file meanwhile.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}
