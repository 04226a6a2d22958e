//! `SEAMLESS_PROFILE=1`: where a process's time goes, on stderr. Each start-up step (loading the
//! model, its fingerprint, packing its weights) and each window is reported with its duration and
//! the time since the process started; the CPU backend adds every node's time.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Note the process start (the command-line tool's first step); library users may call it too.
pub fn mark_start() {
    START.get_or_init(Instant::now);
}

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SEAMLESS_PROFILE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Report that `what` took the time since `since`.
pub fn step(what: &str, since: Instant) {
    if enabled() {
        let at =
            START.get().map(|s| format!(" (ends {:.3} s after start)", s.elapsed().as_secs_f64())).unwrap_or_default();
        eprintln!("profile: {what} {:.3} s{at}", since.elapsed().as_secs_f64());
    }
}

/// Report an instant: `what` begins now.
pub fn begins(what: &str) {
    if enabled() {
        let at = START.get().map(|s| format!(" {:.3} s after start", s.elapsed().as_secs_f64())).unwrap_or_default();
        eprintln!("profile: {what} begins{at}");
    }
}
