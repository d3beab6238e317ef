//! Live progress of a VM run: while the guest runs its cases, the host
//! follows the KTAP file the guest runner writes in the shared results
//! directory (a line at a time, each written whole; the console could tear
//! them) and prints each result as it arrives, with the time since the
//! previous one. The verdict is still taken from the whole file at the end
//! (`test::judge`); this is only so that a several-minute run shows where it is.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Turns KTAP text, fed in arbitrary chunks, into progress lines.
#[derive(Default)]
pub struct KtapProgress {
    /// The end of the text fed so far that is not yet a whole line.
    partial: String,
    /// `# ` diagnostics since the last result: shown with a failure.
    diagnostics: Vec<String>,
    /// When the last result (or the plan) arrived.
    last: Option<Duration>,
}

impl KtapProgress {
    /// Feeds the text that arrived at `now` (any clock that only moves
    /// forward); returns the lines to print.
    pub fn feed(&mut self, chunk: &str, now: Duration) -> Vec<String> {
        self.partial.push_str(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(n) = line.strip_prefix("1..") {
                out.push(format!("guest: {n} results to come (module loads and unloads included)"));
                self.last = Some(now);
            } else if let Some(d) = line.strip_prefix("# ") {
                self.diagnostics.push(d.to_owned());
            } else if line.starts_with("ok ") || line.starts_with("not ok ") {
                let took = now.saturating_sub(self.last.unwrap_or(now));
                out.push(format!("{line} ({:.1} s)", took.as_secs_f64()));
                if line.starts_with("not ok ") {
                    out.extend(self.diagnostics.iter().map(|d| format!("    # {d}")));
                }
                self.diagnostics.clear();
                self.last = Some(now);
            }
        }
        out
    }
}

/// Follows a file that another party appends to (it may not exist yet).
pub struct Follower {
    path: PathBuf,
    offset: u64,
    progress: KtapProgress,
    start: Instant,
}

impl Follower {
    pub fn new(path: &Path) -> Self {
        Follower { path: path.to_owned(), offset: 0, progress: KtapProgress::default(), start: Instant::now() }
    }

    /// Reads what was appended since the last call and prints the progress lines.
    pub fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        let Ok(n) = f.read_to_end(&mut bytes) else { return };
        self.offset += n as u64;
        for line in self.progress.feed(&String::from_utf8_lossy(&bytes), self.start.elapsed()) {
            println!("    {line}");
        }
    }

    /// Polls `path` five times a second until `done` is set, then once more
    /// (a small file: reading what was appended costs next to nothing).
    pub fn follow(path: &Path, done: &AtomicBool) {
        let mut f = Follower::new(path);
        while !done.load(Ordering::Relaxed) {
            f.poll();
            std::thread::sleep(Duration::from_millis(200));
        }
        f.poll();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_printed_as_they_arrive_with_their_time() {
        let mut p = KtapProgress::default();
        let s = Duration::from_secs;
        assert_eq!(p.feed("KTAP version 1\n1..4\nok 1 modules.load [c", s(10)), ["guest: 4 results to come (module loads and unloads included)"]);
        // A line is printed only once it is whole.
        assert_eq!(p.feed("]\n", s(12)), ["ok 1 modules.load [c] (2.0 s)"]);
        assert_eq!(p.feed("ok 2 type1.a [c] # SKIP no edu\n", s(13)), ["ok 2 type1.a [c] # SKIP no edu (1.0 s)"]);
        // Diagnostics show with a failure, not with a pass.
        assert_eq!(p.feed("# noise\nok 3 type1.b [c]\n", s(14)), ["ok 3 type1.b [c] (1.0 s)"]);
        assert_eq!(
            p.feed("# type1.c [c]: got 22, wanted 17\nnot ok 4 type1.c [c]\n", s(16)),
            ["not ok 4 type1.c [c] (2.0 s)", "    # type1.c [c]: got 22, wanted 17"]
        );
        // Indented subtest lines are not top-level results.
        assert!(p.feed("    ok 1 sub\n", s(17)).is_empty());
    }

    #[test]
    fn the_follower_reads_only_what_was_appended() {
        let path = std::env::temp_dir().join(format!("xtask-follow-{}.ktap", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = Follower::new(&path);
        f.poll();
        std::fs::write(&path, "1..2\nok 1 a\n").unwrap();
        f.poll();
        assert_eq!(f.offset, 12);
        std::fs::write(&path, "1..2\nok 1 a\nok 2 b\n").unwrap();
        f.poll();
        assert_eq!(f.offset, 19);
        assert!(f.progress.partial.is_empty());
        std::fs::remove_file(&path).unwrap();
    }
}
