//! Reads `cargo test` output as it passes through: counts the results over every test
//! binary, and keeps each failure's message so that the run can end with them. A CI log is
//! read from its end; a failure's own message sits above its backtrace and every later
//! suite's output, and would otherwise be cut off.

/// Lines kept of one failure's message (the lines from its panic on, backtrace left out).
const MESSAGE_LINES: usize = 60;

#[derive(Debug, Default)]
pub struct TestLog {
    pub passed: u64,
    pub failed: u64,
    failures: Vec<Failure>,
    /// The failure whose captured output is being read.
    open: Option<Failure>,
}

#[derive(Debug)]
struct Failure {
    test: String,
    /// The captured output: what the test printed, then its panic.
    lines: Vec<String>,
}

impl TestLog {
    pub fn line(&mut self, line: &str) {
        if let Some(test) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.close();
            self.open = Some(Failure {
                test: test.to_owned(),
                lines: Vec::new(),
            });
            return;
        }
        // libtest ends the captured sections with the list of failed tests.
        if line == "failures:" || line.starts_with("test result:") {
            self.close();
        }
        if let Some(f) = &mut self.open {
            f.lines.push(line.to_owned());
        }
        if line.starts_with("test result:") {
            self.passed += count(line, "passed");
            self.failed += count(line, "failed");
        }
    }

    fn close(&mut self) {
        if let Some(f) = self.open.take() {
            self.failures.push(f);
        }
    }

    /// Each failure: its name, then its message from the panic on (without the
    /// backtrace), at most [`MESSAGE_LINES`] lines. Empty when nothing failed.
    pub fn digest(&mut self) -> String {
        self.close();
        let mut out = String::new();
        for f in &self.failures {
            out.push_str(&format!("==> failed: {}\n", f.test));
            // From the panic on; a section without one (a test that timed out, a process
            // that aborted) is shown from its end.
            let start = f
                .lines
                .iter()
                .position(|l| l.starts_with("thread '") && l.contains(" panicked at "))
                .unwrap_or_else(|| f.lines.len().saturating_sub(MESSAGE_LINES));
            let message = f.lines[start..]
                .iter()
                .take_while(|l| !l.trim().eq_ignore_ascii_case("stack backtrace:"))
                .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"));
            let mut shown = 0;
            let mut more = 0;
            for l in message {
                if shown < MESSAGE_LINES {
                    out.push_str(l);
                    out.push('\n');
                    shown += 1;
                } else {
                    more += 1;
                }
            }
            if more > 0 {
                out.push_str(&format!("… {more} more lines in the output above\n"));
            }
        }
        out
    }
}

/// `N word` out of a `test result:` line.
fn count(line: &str, word: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("test result: ok.")
                .trim_start_matches("test result: FAILED.")
                .trim()
                .strip_suffix(word)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> TestLog {
        let mut log = TestLog::default();
        for l in text.lines() {
            log.line(l);
        }
        log
    }

    #[test]
    fn counts_every_binary_and_keeps_nothing_when_all_pass() {
        let mut log = read(
            "running 2 tests\ntest a ... ok\ntest b ... ok\n\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s\n",
        );
        assert_eq!((log.passed, log.failed), (5, 0));
        assert_eq!(log.digest(), "");
    }

    #[test]
    fn keeps_each_failures_message_without_its_backtrace() {
        let mut log = read(
            "test a ... FAILED\ntest b ... FAILED\ntest c ... ok\n\nfailures:\n\n\
             ---- a stdout ----\nprinted by a\n\
             thread 'a' (12) panicked at tests/x.rs:5:6:\n\
             called `Result::unwrap()` on an `Err` value: expected 4 spans, got 3\nnon-zero metrics:\nm 1\n\n\
             Stack backtrace:\n   0: anyhow::error\nstack backtrace:\n   0: rust_begin_unwind\n\
             ---- b stdout ----\n\
             thread 'b' (13) panicked at tests/x.rs:9:1:\nassertion failed: x\n\
             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\n\n\
             failures:\n    a\n    b\n\n\
             test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2s\n\
             test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2s\n",
        );
        assert_eq!((log.passed, log.failed), (8, 2));
        assert_eq!(
            log.digest(),
            "==> failed: a\n\
             thread 'a' (12) panicked at tests/x.rs:5:6:\n\
             called `Result::unwrap()` on an `Err` value: expected 4 spans, got 3\nnon-zero metrics:\nm 1\n\n\
             ==> failed: b\n\
             thread 'b' (13) panicked at tests/x.rs:9:1:\nassertion failed: x\n\n\n"
        );
    }

    #[test]
    fn a_long_message_is_cut_and_says_so() {
        let mut text = String::from("---- t stdout ----\nthread 't' (1) panicked at x.rs:1:1:\n");
        for i in 0..100 {
            text.push_str(&format!("span {i}\n"));
        }
        text.push_str("\nfailures:\n    t\n");
        let digest = read(&text).digest();
        assert_eq!(digest.lines().count(), 1 + MESSAGE_LINES + 1, "{digest}");
        assert!(
            digest.ends_with("… 42 more lines in the output above\n"),
            "{digest}"
        );
    }

    #[test]
    fn a_failure_without_a_panic_shows_its_last_lines() {
        let mut text = String::from("---- t stdout ----\n");
        for i in 0..80 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("failures:\n");
        let digest = read(&text).digest();
        assert!(digest.starts_with("==> failed: t\nline 20\n"), "{digest}");
        assert!(digest.ends_with("line 79\n"), "{digest}");
    }
}
