//! Child processes of a test: waiting for one to become ready (failing as soon as it exits,
//! not at the deadline), and stopping one within a deadline.

use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How a [`wait_ready`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// Checks `ready` until it holds, `child` exits, or `timeout` has passed. Between checks
/// `pause(left)` waits at most `left`: a short sleep, or until the child's next log line.
/// It returns false once the child cannot become ready any more (its output closed: it is
/// exiting), which ends the wait with the child's exit status.
pub fn wait_ready(
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
    mut pause: impl FnMut(Duration) -> bool,
) -> std::io::Result<Wait> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Wait::Exited(status));
        }
        if ready() {
            return Ok(Wait::Ready);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wait::TimedOut);
        }
        if !pause(left) {
            return Ok(Wait::Exited(child.wait()?));
        }
    }
}

/// A `pause` for [`wait_ready`]: sleeps `every` (or what is left, if less).
pub fn sleeping(every: Duration) -> impl FnMut(Duration) -> bool {
    move |left| {
        std::thread::sleep(left.min(every));
        true
    }
}

/// A `pause` for [`wait_ready`] that starts at `first` and doubles up to `max`: a quick
/// answer from a quick starter, and few checks of a slow one. Each check costs the child
/// (a traced agent handles every probe); an agent under software emulation takes tens of
/// seconds to start, and probing it every 20 ms slowed it enough to fail timing cases.
pub fn backing_off(first: Duration, max: Duration) -> impl FnMut(Duration) -> bool {
    let mut delays = doubling(first, max);
    move |left| {
        let next = delays.next().unwrap_or(max);
        std::thread::sleep(left.min(next));
        true
    }
}

/// `first`, doubled each time, at most `max`.
fn doubling(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(first.min(max)), move |d| Some((*d * 2).min(max)))
}

/// SIGTERM `child` and wait for it, SIGKILL after `timeout`. The wait runs on its own
/// thread so the deadline needs no polling; the pid cannot be reused before that wait
/// returns.
pub fn terminate(mut child: Child, timeout: Duration) -> Result<ExitStatus> {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => Ok(status?),
        Err(_) => {
            // SAFETY: as above; the waiting thread reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            bail!("pid {pid} did not exit within {timeout:?} of SIGTERM (killed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const TICK: Duration = Duration::from_millis(5);

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().expect("sleep runs")
    }

    #[test]
    fn ready_once_the_check_holds() {
        let mut child = sleeper();
        let mut checks = 0;
        let wait = wait_ready(
            &mut child,
            Duration::from_secs(10),
            || {
                checks += 1;
                checks == 3
            },
            sleeping(TICK),
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(wait.unwrap(), Wait::Ready);
        assert_eq!(checks, 3);
    }

    #[test]
    fn backing_off_doubles_up_to_its_limit() {
        let ms = Duration::from_millis;
        let delays: Vec<Duration> = doubling(ms(20), ms(250)).take(6).collect();
        assert_eq!(delays, [20, 40, 80, 160, 250, 250].map(ms));
        assert_eq!(doubling(ms(300), ms(250)).next(), Some(ms(250)));
        // Never past what is left of the wait.
        let mut pause = backing_off(ms(500), ms(500));
        let t = Instant::now();
        assert!(pause(ms(1)));
        assert!(t.elapsed() < ms(400), "{:?}", t.elapsed());
    }

    #[test]
    fn an_exited_child_ends_the_wait_with_its_status() {
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let wait = wait_ready(
            &mut child,
            Duration::from_secs(10),
            || false,
            sleeping(TICK),
        );
        match wait.unwrap() {
            Wait::Exited(status) => assert_eq!(status.code(), Some(3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn times_out_while_the_child_runs_and_never_gets_ready() {
        let mut child = sleeper();
        let started = Instant::now();
        let wait = wait_ready(
            &mut child,
            Duration::from_millis(50),
            || false,
            sleeping(TICK),
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(wait.unwrap(), Wait::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn terminate_stops_a_child_that_honours_sigterm() {
        let status = terminate(sleeper(), Duration::from_secs(10)).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }

    #[test]
    fn terminate_kills_a_child_that_ignores_sigterm() {
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        // The trap is set once the shell has printed.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let err = terminate(child, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not exit"), "{err}");
    }

    #[test]
    fn a_pause_that_gives_up_waits_for_the_exit() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 0.05; exit 4"])
            .spawn()
            .unwrap();
        let wait = wait_ready(&mut child, Duration::from_secs(10), || false, |_| false);
        match wait.unwrap() {
            Wait::Exited(status) => assert_eq!(status.code(), Some(4)),
            other => panic!("{other:?}"),
        }
    }
}
