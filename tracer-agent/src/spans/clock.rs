//! Kernel timestamps are CLOCK_MONOTONIC; spans need Unix time.
//!
//! The offset between the two is sampled with the monotonic read bracketed by two
//! wall-clock reads, keeping the tightest bracket, and re-sampled periodically so NTP's
//! corrections are followed. The conversion is a function of the monotonic instant alone:
//! a continuous, piecewise-linear offset whose segments never change once in use. A
//! correction of the wall clock (an NTP step, a VM resumed and re-synchronised) is slewed
//! in at a bounded rate from the resync on, so one instant converts the same way in every
//! span whenever that span is built, and two instants keep their order: a CLIENT span and
//! the SERVER span it encloses stay enclosed although one was built before the resync and
//! the other after it. Only a correction larger than [`STEP_NS`] is applied at once.

use std::collections::VecDeque;

/// Corrections beyond this are applied at once: slewing them in would leave span times
/// that far off for minutes.
pub const STEP_NS: i128 = 1_000_000_000;
/// A correction is spread over this much monotonic time...
const SLEW_HORIZON_NS: i128 = 10_000_000_000;
/// ...at most this fast (parts per billion): span durations stretch or shrink by at most
/// 0.5% while a correction is slewed in.
const MAX_SLEW_PPB: i128 = 5_000_000;
/// Segments kept for instants converted late (a long request's start): about ten minutes
/// at the agent's resync interval; older instants use the oldest segment's offset.
const MAX_SEGMENTS: usize = 64;

/// From `from_ns` on: `offset(t) = offset_ns + (t - from_ns) * rate_ppb / 10^9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    from_ns: u64,
    offset_ns: i128,
    rate_ppb: i128,
}

impl Segment {
    fn offset_at(&self, monotonic_ns: u64) -> i128 {
        let since = (monotonic_ns as i128 - self.from_ns as i128).max(0);
        self.offset_ns + since * self.rate_ppb / 1_000_000_000
    }
}

/// How a resync changed the conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// The offset now moves towards the wall clock at this rate; `error_ns` is what was
    /// left to correct.
    Slewed { error_ns: i128, rate_ppb: i128 },
    /// The offset jumped by this much.
    Stepped { by_ns: i128 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// Oldest first; never empty.
    segments: VecDeque<Segment>,
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

/// `(monotonic now, unix_ns - monotonic_ns)` from the tightest of five brackets.
fn sample_offset() -> (u64, i128) {
    let mut best: Option<(i128, i128, i128)> = None;
    for _ in 0..5 {
        let before = read(libc::CLOCK_REALTIME);
        let mono = read(libc::CLOCK_MONOTONIC);
        let after = read(libc::CLOCK_REALTIME);
        let width = after - before;
        let offset = (before + after) / 2 - mono;
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, mono, offset));
        }
    }
    let (_, mono, offset) = best.unwrap_or((0, 0, 0));
    (mono.max(0) as u64, offset)
}

impl Clock {
    /// A fixed offset (`unix_ns - monotonic_ns`), never adjusted unless told.
    pub fn from_offset(offset_ns: i128) -> Self {
        Clock {
            segments: VecDeque::from([Segment {
                from_ns: 0,
                offset_ns,
                rate_ppb: 0,
            }]),
        }
    }

    /// The system's offset now.
    pub fn sample() -> Self {
        Clock::from_offset(sample_offset().1)
    }

    pub fn monotonic_now_ns() -> u64 {
        read(libc::CLOCK_MONOTONIC) as u64
    }

    /// Re-samples the system's offset and follows it from now on.
    pub fn resync(&mut self) -> Adjustment {
        let (now, offset) = sample_offset();
        self.adjust(now, offset)
    }

    /// Follows `target_offset` (`unix_ns - monotonic_ns` sampled at `now_ns`) from `now_ns`
    /// on, leaving the conversion of every earlier instant as it was.
    pub fn adjust(&mut self, now_ns: u64, target_offset: i128) -> Adjustment {
        let last = *self.segments.back().expect("never empty");
        let current = last.offset_at(now_ns);
        let error = target_offset - current;
        // Instants from the last segment's start on may have been converted already: a
        // sample that old (never taken in practice) changes nothing.
        if now_ns <= last.from_ns {
            return Adjustment::Slewed {
                error_ns: error,
                rate_ppb: last.rate_ppb,
            };
        }
        let (segment, adjustment) = if error.abs() > STEP_NS {
            (
                Segment {
                    from_ns: now_ns,
                    offset_ns: target_offset,
                    rate_ppb: 0,
                },
                Adjustment::Stepped { by_ns: error },
            )
        } else {
            let rate_ppb =
                (error * 1_000_000_000 / SLEW_HORIZON_NS).clamp(-MAX_SLEW_PPB, MAX_SLEW_PPB);
            (
                Segment {
                    from_ns: now_ns,
                    offset_ns: current,
                    rate_ppb,
                },
                Adjustment::Slewed {
                    error_ns: error,
                    rate_ppb,
                },
            )
        };
        self.segments.push_back(segment);
        if self.segments.len() > MAX_SEGMENTS {
            self.segments.pop_front();
        }
        adjustment
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        // Instants are mostly recent: the newest segment first.
        let segment = self
            .segments
            .iter()
            .rev()
            .find(|s| s.from_ns <= monotonic_ns)
            .or(self.segments.front())
            .expect("never empty");
        (monotonic_ns as i128 + segment.offset_at(monotonic_ns)).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: i128 = 1_000_000;

    #[test]
    fn converts_monotonic_now_to_wall_now() {
        let mut clock = Clock::sample();
        for _ in 0..2 {
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
            clock.resync();
        }
    }

    #[test]
    fn applies_offset() {
        assert_eq!(Clock::from_offset(1_000).to_unix_nanos(5), 1_005);
        assert_eq!(Clock::from_offset(-10).to_unix_nanos(5), 0);
    }

    #[test]
    fn an_instant_converts_the_same_before_and_after_a_resync() {
        for error in [60 * MS, -60 * MS, 900 * MS, -900 * MS, 3, -3] {
            let mut clock = Clock::from_offset(1_000);
            let instants: Vec<u64> = (0..200).map(|i| i * 50_000_000).collect();
            let before: Vec<u64> = instants.iter().map(|&t| clock.to_unix_nanos(t)).collect();
            clock.adjust(10 * S, 1_000 + error);
            let after: Vec<u64> = instants.iter().map(|&t| clock.to_unix_nanos(t)).collect();
            assert_eq!(before, after, "error {error}");
        }
    }

    #[test]
    fn a_slewed_correction_keeps_order_and_converges() {
        for error in [60 * MS, -60 * MS, 900 * MS, -900 * MS] {
            let mut clock = Clock::from_offset(0);
            let adjustment = clock.adjust(10 * S, error);
            assert!(matches!(adjustment, Adjustment::Slewed { error_ns, .. } if error_ns == error));
            // Continuous at the resync; increasing after it, never backwards 1 ns apart.
            let mut prev = clock.to_unix_nanos(10 * S - 1);
            for t in (10 * S..12 * S).step_by(999_983) {
                let u = clock.to_unix_nanos(t);
                assert!(u > prev, "error {error}: {t} -> {u} after {prev}");
                prev = u;
            }
            let mut prev = clock.to_unix_nanos(10 * S - 1);
            for t in 10 * S..10 * S + 1000 {
                let u = clock.to_unix_nanos(t);
                assert!(u >= prev, "error {error}: {t} -> {u} after {prev}");
                prev = u;
            }
            assert_eq!(clock.to_unix_nanos(10 * S), 10 * S);
            // Resyncs every 10 s against the same target: the remaining error shrinks to
            // nothing, never past the target.
            let mut left = error.abs();
            for i in 2..40 {
                let now = i * 10 * S;
                let remaining = error - (clock.to_unix_nanos(now) as i128 - now as i128);
                assert!(
                    remaining.abs() <= left,
                    "error {error}: grew to {remaining}"
                );
                assert!(
                    remaining.signum() * error.signum() >= 0,
                    "overshot: {remaining}"
                );
                left = remaining.abs();
                clock.adjust(now, error);
            }
            assert_eq!(left, 0, "error {error}");
        }
    }

    #[test]
    fn a_slew_changes_durations_by_half_a_percent_at_most() {
        let mut clock = Clock::from_offset(0);
        clock.adjust(1, 900 * MS);
        let (a, b) = (S + 1, 2 * S + 1);
        let d = clock.to_unix_nanos(b) - clock.to_unix_nanos(a);
        assert_eq!(d, S + S / 200);
    }

    #[test]
    fn a_correction_beyond_the_step_threshold_is_applied_at_once() {
        let mut clock = Clock::from_offset(0);
        assert_eq!(
            clock.adjust(10 * S, 5 * S as i128),
            Adjustment::Stepped {
                by_ns: 5 * S as i128
            }
        );
        assert_eq!(clock.to_unix_nanos(10 * S - 1), 10 * S - 1);
        assert_eq!(clock.to_unix_nanos(10 * S), 15 * S);
    }

    #[test]
    fn history_is_bounded_and_old_instants_use_the_oldest_segment() {
        let mut clock = Clock::from_offset(0);
        for i in 1..=1000 {
            clock.adjust(i * S, 5 * MS);
        }
        assert_eq!(clock.segments.len(), MAX_SEGMENTS);
        let oldest = clock.segments[0];
        assert_eq!(
            clock.to_unix_nanos(1),
            (1 + oldest.offset_ns) as u64,
            "flat before the oldest segment"
        );
        // A sample older than the last resync changes nothing.
        let mut c = Clock::from_offset(0);
        c.adjust(10 * S, MS);
        let before = c.clone();
        c.adjust(5 * S, 3 * MS);
        c.adjust(10 * S, 3 * MS);
        assert_eq!(c, before);
    }
}
