//! Deterministic record and replay of a run's input (`-icount
//! shift=N,rr=record|replay,rrfile=F`, as QEMU spells it).
//!
//! Under `-icount` everything the guest sees derives from its own execution
//! (time is instruction counting, the TSC and RTC follow it, and the engine
//! looks at the devices at points that depend only on what the guest has
//! executed: `Chipset::rr_point` counts them). The one input from outside
//! is COM1's: each byte is recorded with the point at which it entered the
//! UART, and a replay feeds it at that same point, so the run, its output
//! included, repeats exactly.
//!
//! The file is text: a header `btvisor-rr 1 shift=N`, then one line
//! `input POINT BYTE` per byte (decimal). Each line is written as the byte
//! arrives, so a recording ended by Ctrl-A x or a signal keeps what came
//! before.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use thiserror::Error;

/// First word of a recording's header.
const MAGIC: &str = "btvisor-rr";
/// The format version this build writes and reads.
const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("cannot write the recording {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("cannot read the recording {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a btvisor recording (no `{MAGIC} {VERSION}` header)")]
    Header { path: String },
    #[error("{path} was recorded with -icount shift={recorded}, not shift={wanted}")]
    Shift { path: String, recorded: u32, wanted: u32 },
    #[error("{path}, line {line}: expected `input POINT BYTE` with increasing points")]
    Line { path: String, line: usize },
}

/// A recording being written or replayed.
pub enum RecordReplay {
    Record(File),
    Replay(VecDeque<(u64, u8)>),
}

impl RecordReplay {
    /// Start recording to `path` a run with `-icount shift=shift`.
    pub fn record(path: &Path, shift: u32) -> Result<Self, ReplayError> {
        let err = |source| ReplayError::Create { path: path.display().to_string(), source };
        let mut f = File::create(path).map_err(err)?;
        writeln!(f, "{MAGIC} {VERSION} shift={shift}").map_err(err)?;
        Ok(RecordReplay::Record(f))
    }

    /// Load the recording at `path` for a run with `-icount shift=shift`.
    pub fn replay(path: &Path, shift: u32) -> Result<Self, ReplayError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read { path: name.clone(), source })?;
        Self::parse(&text, shift, &name)
    }

    fn parse(text: &str, shift: u32, name: &str) -> Result<Self, ReplayError> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        if header.len() != 3 || header[0] != MAGIC || header[1] != VERSION.to_string() {
            return Err(ReplayError::Header { path: name.to_string() });
        }
        let recorded = header[2].strip_prefix("shift=").and_then(|s| s.parse().ok());
        match recorded {
            Some(r) if r == shift => {}
            Some(r) => return Err(ReplayError::Shift { path: name.to_string(), recorded: r, wanted: shift }),
            None => return Err(ReplayError::Header { path: name.to_string() }),
        }
        let mut events = VecDeque::new();
        let mut last = 0;
        for (k, l) in lines.enumerate() {
            let w: Vec<&str> = l.split_whitespace().collect();
            let bad = || ReplayError::Line { path: name.to_string(), line: k + 2 };
            if w.is_empty() {
                continue;
            }
            let (point, byte) = match w.as_slice() {
                ["input", p, b] => (p.parse::<u64>().map_err(|_| bad())?, b.parse::<u8>().map_err(|_| bad())?),
                _ => return Err(bad()),
            };
            if point < last {
                return Err(bad());
            }
            last = point;
            events.push_back((point, byte));
        }
        Ok(RecordReplay::Replay(events))
    }

    pub fn replaying(&self) -> bool {
        matches!(self, RecordReplay::Replay(_))
    }

    /// Record that `byte` entered the UART at `point`.
    pub fn note_input(&mut self, point: u64, byte: u8) {
        if let RecordReplay::Record(f) = self
            && let Err(e) = writeln!(f, "input {point} {byte}")
        {
            crate::guest_warn!("writing the recording: {e}");
        }
    }

    /// Replay: the next byte due at `point` (recorded at or before it).
    pub fn peek_due(&self, point: u64) -> Option<u8> {
        match self {
            RecordReplay::Replay(q) => q.front().filter(|&&(p, _)| p <= point).map(|&(_, b)| b),
            RecordReplay::Record(_) => None,
        }
    }

    /// Replay: take the byte `peek_due` showed.
    pub fn take_due(&mut self, point: u64) -> Option<u8> {
        let b = self.peek_due(point)?;
        if let RecordReplay::Replay(q) = self {
            q.pop_front();
        }
        Some(b)
    }

    /// Replay: are bytes left to feed?
    pub fn has_more(&self) -> bool {
        matches!(self, RecordReplay::Replay(q) if !q.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_writes() {
        let r = RecordReplay::parse("btvisor-rr 1 shift=3\ninput 10 104\ninput 10 105\n\ninput 42 10\n", 3, "f");
        let mut r = r.expect("parses");
        assert!(r.replaying() && r.has_more());
        assert_eq!(r.peek_due(9), None);
        assert_eq!(r.take_due(10), Some(104));
        assert_eq!(r.take_due(10), Some(105));
        assert_eq!(r.take_due(10), None);
        assert_eq!(r.take_due(50), Some(10));
        assert!(!r.has_more());
    }

    #[test]
    fn rejects_bad_files() {
        assert!(matches!(RecordReplay::parse("hello\n", 3, "f"), Err(ReplayError::Header { .. })));
        assert!(matches!(RecordReplay::parse("btvisor-rr 1 shift=2\n", 3, "f"), Err(ReplayError::Shift { .. })));
        let e = RecordReplay::parse("btvisor-rr 1 shift=3\ninput 5 1\ninput 4 2\n", 3, "f");
        assert!(matches!(e, Err(ReplayError::Line { line: 3, .. })));
        let e = RecordReplay::parse("btvisor-rr 1 shift=3\ninput 5 300\n", 3, "f");
        assert!(matches!(e, Err(ReplayError::Line { line: 2, .. })));
    }

    #[test]
    fn records_lines() {
        let path = std::env::temp_dir().join(format!("btvisor-rr-test-{}", std::process::id()));
        {
            let mut r = RecordReplay::record(&path, 2).expect("create");
            r.note_input(7, b'a');
            r.note_input(9, b'\n');
        }
        let mut r = RecordReplay::replay(&path, 2).expect("read back");
        assert_eq!(r.take_due(7), Some(b'a'));
        assert_eq!(r.take_due(100), Some(b'\n'));
        let _ = std::fs::remove_file(&path);
    }
}
