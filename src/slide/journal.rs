//! The journal of a run to a file: a first line saying what the run is ([`JournalHeader`]), then
//! one line per finished tile with what the sink recorded for it, each carrying a hash of the run
//! and its content. `--resume` continues only the run the journal describes, and takes a tile as
//! finished only from an intact line.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OutSpec;
use crate::error::{Error, Result, Side};

/// What must match for a partial output to be resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct JournalHeader {
    pub version: u32,
    /// Configuration and `Graph::fingerprint` (every parameter bit).
    pub model: String,
    /// `slide::input_identity`.
    pub input: String,
    /// The backend and its precision (`Backend::name`): a run never mixes tiles of two.
    pub compute: String,
    /// [`crate::numerics::REVISION`] of the build that started the run: a run never mixes tiles of
    /// two builds that compute other bits. 0 in journals of builds that did not record it.
    #[serde(default)]
    pub numerics: u32,
    pub image: (usize, usize, usize),
    pub tile: (usize, usize),
    pub halo: usize,
    pub pad: String,
    pub stats: Vec<(u64, u64)>,
    pub spec: OutSpec,
    pub shard: Option<(usize, usize)>,
}

#[derive(Serialize, Deserialize)]
struct JournalEntry {
    tile: usize,
    sink: serde_json::Value,
    /// [`JournalEntry::check`]: a line damaged on disk or edited is not taken for a finished tile.
    check: String,
}

impl JournalEntry {
    fn new(header: &JournalHeader, tile: usize, sink: serde_json::Value) -> JournalEntry {
        let check = Self::check(header, tile, &sink);
        JournalEntry { tile, sink, check }
    }

    /// A BLAKE3 hash of the run's header, the tile and what the sink recorded for it.
    fn check(header: &JournalHeader, tile: usize, sink: &serde_json::Value) -> String {
        let text = format!("{}\n{tile}\n{sink}", serde_json::to_string(header).expect("serialisable"));
        blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
    }
}

/// An open journal, appended to as tiles finish.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    header: JournalHeader,
}

impl Journal {
    /// Open the journal at `path` for this run: continued when `continuing` (it holds this run's
    /// finished tiles, see [`read`]), else started afresh with the run's header.
    pub fn open(path: &Path, header: JournalHeader, continuing: bool) -> Result<Journal> {
        let err = |e| Error::io(Side::Output, path, "cannot write the journal", e);
        let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        if !continuing {
            file.set_len(0).map_err(err)?;
            writeln!(file, "{}", serde_json::to_string(&header).expect("serialisable")).map_err(err)?;
        }
        Ok(Journal { file, path: path.to_path_buf(), header })
    }

    /// Record tile `tile` as finished, with what the sink recorded for it; durable on return.
    pub fn append(&mut self, tile: usize, sink: serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(&JournalEntry::new(&self.header, tile, sink)).expect("serialisable");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(Side::Output, &self.path, "journal", e))
    }
}

/// The tiles an earlier run's journal at `path` lists as finished, and what the sink recorded for
/// each, if it is this run's journal (`want`); else an error saying to start over.
pub(crate) fn read(
    path: &Path,
    want: &JournalHeader,
    tiles: usize,
) -> Result<(HashSet<usize>, Vec<serde_json::Value>)> {
    let bad = |m: String| Error::Output { path: path.to_path_buf(), msg: m };
    let file = File::open(path).map_err(|e| Error::io(Side::Output, path, "cannot read the journal", e))?;
    let mut lines = BufReader::new(file).lines();
    let first = lines
        .next()
        .and_then(|l| l.ok())
        .ok_or_else(|| bad("the journal is unreadable; rerun without --resume".into()))?;
    let head: JournalHeader = serde_json::from_str(&first)
        .map_err(|e| Error::codec(Side::Output, path, "the journal is unreadable (rerun without --resume)", e))?;
    if head.numerics != want.numerics {
        return Err(bad(other_numerics("the unfinished output was started by", head.numerics, want.numerics)
            + ": rerun without --resume to start over"));
    }
    if &head != want {
        return Err(bad(
            "the unfinished output was made with other settings (model, image, backend, tile, halo, normalisation \
             or output type differ); rerun without --resume to start over"
                .into(),
        ));
    }
    let (mut done, mut sink) = (HashSet::new(), Vec::new());
    for line in lines.map_while(|l| l.ok()) {
        // A torn last line (killed mid-write), or one damaged or edited, is ignored: that tile is
        // simply redone.
        if let Ok(e) = serde_json::from_str::<JournalEntry>(&line)
            && e.check == JournalEntry::check(want, e.tile, &e.sink)
        {
            if e.tile >= tiles {
                return Err(bad(format!(
                    "the journal lists tile {}, but this run has {tiles} tiles; rerun without --resume",
                    e.tile
                )));
            }
            done.insert(e.tile);
            sink.push(e.sink);
        }
    }
    Ok((done, sink))
}

/// `what` a build of numerics revision `theirs`, said to one of revision `ours` that refuses to
/// continue its run.
fn other_numerics(what: &str, theirs: u32, ours: u32) -> String {
    let build = if theirs == 0 {
        "an earlier seamless, which did not record the bits its kernels compute".to_string()
    } else {
        format!("a seamless of numerics revision {theirs}")
    };
    format!(
        "{what} {build}; this one (numerics revision {ours}, see `seamless --version`) may compute other \
         bits, and one output never mixes them"
    )
}

/// Shards of one output must be one run: the first to start records the run's settings in the
/// store (`seamless-run.json`, everything of the journal header but the shard number), and every
/// other shard must match them before it writes anything, metadata included.
pub(crate) fn same_run_as_other_shards(partial: &Path, header: &JournalHeader) -> Result<()> {
    let bad = |m: String| Error::Output { path: partial.to_path_buf(), msg: m };
    std::fs::create_dir_all(partial).map_err(|e| Error::io(Side::Output, partial, "cannot create", e))?;
    let mut run = serde_json::to_value(header).expect("serialisable");
    run["shard"] = serde_json::Value::Null;
    let text = serde_json::to_string(&run).expect("serialisable");
    let path = partial.join("seamless-run.json");
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => f
            .write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(Side::Output, &path, "write failed", e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another shard is writing it at this moment: wait until it holds a whole line.
            let mut theirs = String::new();
            for _ in 0..50 {
                theirs = std::fs::read_to_string(&path).unwrap_or_default();
                if serde_json::from_str::<serde_json::Value>(&theirs).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let theirs = serde_json::from_str::<serde_json::Value>(&theirs).ok();
            let their_numerics = theirs.as_ref().map(|t| t["numerics"].as_u64().unwrap_or(0));
            if theirs == Some(run) {
                Ok(())
            } else if let Some(n) = their_numerics.filter(|&n| n != u64::from(header.numerics)) {
                Err(bad(other_numerics(
                    "the other shards of this output run on",
                    u32::try_from(n).unwrap_or(u32::MAX),
                    header.numerics,
                ) + ": every shard must run on builds of the same numerics revision"))
            } else {
                Err(bad("the other shards of this output run with other settings (model, image, backend, tile, halo, \
                         normalisation or output type differ): every shard must be given the same ones"
                    .into()))
            }
        }
        Err(e) => Err(Error::io(Side::Output, &path, "cannot create", e)),
    }
}
