//! Kernel timestamps are CLOCK_MONOTONIC; spans need Unix time. The offset between the two is
//! sampled with the read bracketed by two wall-clock reads, keeping the tightest bracket, and
//! refreshed periodically so NTP slews do not accumulate.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// unix_ns - monotonic_ns
    offset_ns: i128,
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn from_offset(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    pub fn sample() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let before = read(libc::CLOCK_REALTIME);
            let mono = read(libc::CLOCK_MONOTONIC);
            let after = read(libc::CLOCK_REALTIME);
            let width = after - before;
            let offset = (before + after) / 2 - mono;
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Clock {
            offset_ns: best.map(|(_, o)| o).unwrap_or(0),
        }
    }

    pub fn monotonic_now_ns() -> u64 {
        read(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_now_to_wall_now() {
        let clock = Clock::sample();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let converted = clock.to_unix_nanos(Clock::monotonic_now_ns()) as i128;
        assert!(
            (converted - wall).abs() < 50_000_000,
            "off by {}ns",
            converted - wall
        );
    }

    #[test]
    fn applies_offset() {
        assert_eq!(Clock::from_offset(1_000).to_unix_nanos(5), 1_005);
        assert_eq!(Clock::from_offset(-10).to_unix_nanos(5), 0);
    }
}
