//! Progress of long runs: a bar on a terminal; where stderr is not one (batch jobs, Slurm logs),
//! one plain line every `--log-interval` seconds and a last line when a phase ends; nothing with
//! `--quiet`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// Seconds between two log lines when stderr is not a terminal, unless `--log-interval` or
/// `SEAMLESS_LOG_INTERVAL` says otherwise.
pub const DEFAULT_LOG_INTERVAL: f64 = 30.0;

static LOG_INTERVAL: OnceLock<Duration> = OnceLock::new();

/// Set once, from `--log-interval` (or `SEAMLESS_LOG_INTERVAL`), before any progress is shown.
pub fn set_log_interval(seconds: f64) {
    let _ = LOG_INTERVAL.set(Duration::from_secs_f64(seconds));
}

pub fn log_interval() -> Duration {
    *LOG_INTERVAL.get_or_init(|| Duration::from_secs_f64(DEFAULT_LOG_INTERVAL))
}

/// `--log-interval` / `SEAMLESS_LOG_INTERVAL`: seconds, 0 (a line at every step) or more.
pub fn parse_interval(what: &str, s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("{what} '{s}': expected a number of seconds, 0 or more")),
    }
}

/// A duration as h:mm:ss.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The rate and the time left, once they mean something: at least one step done and a second
/// gone (a first tile finished a moment after the start would otherwise claim an absurd rate).
fn rate_and_eta(done: f64, total: f64, elapsed: Duration) -> Option<(f64, Duration)> {
    let secs = elapsed.as_secs_f64();
    if done <= 0.0 || secs < 1.0 {
        return None;
    }
    let rate = done / secs;
    Some((rate, Duration::from_secs_f64(((total - done).max(0.0) / rate).min(1e9))))
}

/// What the rate counts: pixels (in Mpx/s) where the phase knows them, else its steps.
#[derive(Clone)]
struct Measure {
    scale: f64,
    unit: String,
}

impl Measure {
    fn rate(&self, done: f64, total: f64, elapsed: Duration) -> (String, String) {
        match rate_and_eta(done, total, elapsed) {
            Some((rate, eta)) => (format!("{:.2} {}/s", rate / self.scale, self.unit), clock(eta)),
            None => (format!("- {}/s", self.unit), "-".into()),
        }
    }
}

enum Out {
    Hidden,
    Bar(ProgressBar),
    Log { last: Instant, interval: Duration },
}

/// One phase of a run (the tiles, a statistics pass, a generated image): `done` of `total` steps
/// (tiles, rows) and the pixels they hold, of `px_total` for the phase (0: not counted; the rate
/// is then in steps per second).
pub struct Meter {
    label: String,
    unit: &'static str,
    total: usize,
    px_total: f64,
    start: Instant,
    done: usize,
    px: f64,
    measure: Measure,
    out: Out,
}

impl Meter {
    /// A phase that began at `start` (the rate counts from there).
    pub fn new(label: &str, unit: &'static str, total: usize, px_total: f64, start: Instant, quiet: bool) -> Meter {
        let measure = if px_total > 0.0 {
            Measure { scale: 1e6, unit: "Mpx".into() }
        } else {
            Measure { scale: 1.0, unit: unit.into() }
        };
        let out = if quiet {
            Out::Hidden
        } else if std::io::stderr().is_terminal() {
            Out::Bar(bar(
                steps(label, 0, total, unit),
                if px_total > 0.0 { px_total } else { total as f64 },
                start,
                measure.clone(),
            ))
        } else {
            Out::Log { last: start, interval: log_interval() }
        };
        Meter { label: label.to_string(), unit, total, px_total, start, done: 0, px: 0.0, measure, out }
    }

    /// What the rate counts, done and in all.
    fn counted(&self) -> (f64, f64) {
        if self.px_total > 0.0 { (self.px, self.px_total) } else { (self.done as f64, self.total as f64) }
    }

    /// `done` of the phase's steps are finished, holding `px` pixels (of this phase).
    pub fn update(&mut self, done: usize, px: f64) {
        (self.done, self.px) = (done, px);
        match &mut self.out {
            Out::Hidden => {}
            Out::Bar(b) => {
                b.set_message(steps(&self.label, done, self.total, self.unit));
                b.set_position(if self.px_total > 0.0 { px as u64 } else { done as u64 });
            }
            Out::Log { last, interval } => {
                let now = Instant::now();
                if now.duration_since(*last) >= *interval {
                    *last = now;
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// The log line: where the phase is, its rate and the time left.
    fn line(&self) -> String {
        let elapsed = self.start.elapsed();
        let mut s = format!("{}: {}/{} {}", self.label, self.done, self.total, self.unit);
        if self.px_total > 0.0 {
            let _ = write!(s, ", {:.2}/{:.2} Mpx", self.px / 1e6, self.px_total / 1e6);
        }
        let (done, total) = self.counted();
        let (rate, eta) = self.measure.rate(done, total, elapsed);
        let _ = write!(s, ", {rate}, elapsed {}, ETA {eta}", clock(elapsed));
        s
    }

    /// A message that must not be drawn over by the bar.
    pub fn println(&self, msg: &str) {
        match &self.out {
            Out::Bar(b) => b.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    /// The run stopped (an error follows): the bar is cleared, and no last line is logged.
    pub fn clear(self) {
        if let Out::Bar(b) = &self.out {
            b.finish_and_clear();
        }
    }

    /// The phase is over: the bar is cleared; a log gets its last line.
    pub fn finish(self) {
        match &self.out {
            Out::Hidden => {}
            Out::Bar(b) => b.finish_and_clear(),
            Out::Log { .. } => {
                let elapsed = self.start.elapsed();
                let mut s = format!("{}: {}/{} {} in {}", self.label, self.done, self.total, self.unit, clock(elapsed));
                let (done, _) = self.counted();
                if self.px_total > 0.0 {
                    let _ = write!(s, ", {:.2} Mpx", self.px / 1e6);
                }
                let rate = done / self.measure.scale / elapsed.as_secs_f64().max(1e-3);
                let _ = write!(s, ", {rate:.2} {}/s", self.measure.unit);
                eprintln!("{s}");
            }
        }
    }
}

/// "12/100 tiles", or "statistics, pass 1: 512/4096 rows".
fn steps(label: &str, done: usize, total: usize, unit: &str) -> String {
    if label == unit { format!("{done}/{total} {unit}") } else { format!("{label}: {done}/{total} {unit}") }
}

/// The terminal bar. Where the phase counts pixels its position is in pixels (`len` of them), so
/// the rate is in Mpx/s and the time left is the pixels left at that rate; the message says the
/// steps.
fn bar(message: String, len: f64, start: Instant, measure: Measure) -> ProgressBar {
    let m2 = measure.clone();
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {msg}  {rate}  ETA {left}")
        .expect("valid template")
        .progress_chars("=> ")
        .with_key("rate", move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&measure.rate(s.pos() as f64, s.len().unwrap_or(0) as f64, start.elapsed()).0);
        })
        .with_key("left", move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&m2.rate(s.pos() as f64, s.len().unwrap_or(0) as f64, start.elapsed()).1);
        });
    let b = ProgressBar::new((len as u64).max(1)).with_style(style).with_elapsed(start.elapsed());
    b.set_message(message);
    b.enable_steady_tick(Duration::from_secs(1));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_before_a_step_and_a_second() {
        assert_eq!(rate_and_eta(0.0, 1e6, Duration::from_secs(10)), None);
        assert_eq!(rate_and_eta(5e5, 1e6, Duration::from_millis(10)), None);
        let (rate, eta) = rate_and_eta(2e6, 6e6, Duration::from_secs(2)).unwrap();
        assert_eq!((rate, eta), (1e6, Duration::from_secs(4)));
        let mpx = Measure { scale: 1e6, unit: "Mpx".into() };
        assert_eq!(mpx.rate(2e6, 6e6, Duration::from_secs(2)), ("1.00 Mpx/s".into(), "0:00:04".into()));
        assert_eq!(mpx.rate(2e6, 6e6, Duration::from_millis(200)), ("- Mpx/s".into(), "-".into()));
        assert_eq!(clock(Duration::from_secs(3 * 3600 + 62)), "3:01:02");
    }

    #[test]
    fn intervals_are_seconds() {
        assert_eq!(parse_interval("--log-interval", "2.5"), Ok(2.5));
        assert_eq!(parse_interval("--log-interval", "0"), Ok(0.0));
        for bad in ["-1", "x", "inf", "NaN", ""] {
            assert!(parse_interval("--log-interval", bad).is_err(), "{bad}");
        }
    }
}
