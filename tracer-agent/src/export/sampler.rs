//! Head sampling, decided after linking so that every span of one trace gets the same
//! decision.
//!
//! Configured like the OpenTelemetry SDKs: `OTEL_TRACES_SAMPLER` = `always_on`,
//! `always_off`, `traceidratio` (+ `OTEL_TRACES_SAMPLER_ARG`), or their `parentbased_`
//! forms; unset means `parentbased_always_on`, the SDKs' default. `--sample-ratio R` means
//! `parentbased_traceidratio` with R and overrides both variables.
//!
//! * A trace this agent started is kept when its id falls in the ratio (below): every
//!   span of it, here and on any other node running the agent, gets the same answer.
//! * A trace continuing a caller's `traceparent` (or B3 with a sampling flag) follows the
//!   caller's `sampled` flag under the `parentbased_` forms, so the agent keeps exactly the
//!   traces the applications' own SDKs keep; the linker passes that flag down to every
//!   span below. The plain forms apply the ratio to the trace id instead.

use crate::spans::{SpanRecord, TraceId};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error(
        "sampling ratio must be a number from 0 to 1, got `{0}`: set --sample-ratio or OTEL_TRACES_SAMPLER_ARG to e.g. 0.1"
    )]
    BadRatio(String),
    #[error(
        "unsupported OTEL_TRACES_SAMPLER `{0}`: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    UnknownSampler(String),
}

/// Keeps a trace when the trace id's last 8 bytes, read as a big-endian number, fall below
/// `ratio × 2^64` (unless the caller's decision applies: see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Traces kept have `low_bits < threshold`; `None` keeps everything.
    threshold: Option<u64>,
    /// A caller's `sampled` flag decides for the traces it started.
    parent_based: bool,
}

impl Sampler {
    /// `parentbased_always_on`: the default.
    pub const DEFAULT: Sampler = Sampler {
        threshold: None,
        parent_based: true,
    };

    /// `parentbased_traceidratio` with `ratio`.
    pub fn ratio(ratio: f64) -> Result<Self, SamplerError> {
        if !(0.0..=1.0).contains(&ratio) || ratio.is_nan() {
            return Err(SamplerError::BadRatio(ratio.to_string()));
        }
        if ratio >= 1.0 {
            return Ok(Self::DEFAULT);
        }
        // `as` saturates; below 1.0 the product is below 2^64.
        Ok(Sampler {
            threshold: Some((ratio * 2f64.powi(64)) as u64),
            parent_based: true,
        })
    }

    pub(crate) fn ignoring_parent(self) -> Self {
        Sampler {
            parent_based: false,
            ..self
        }
    }

    /// From `--sample-ratio` (if given) or the standard OTel variables read by `lookup`.
    pub fn resolve(
        flag: Option<f64>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SamplerError> {
        if let Some(r) = flag {
            return Self::ratio(r);
        }
        let Some(name) = lookup("OTEL_TRACES_SAMPLER") else {
            return Ok(Self::DEFAULT);
        };
        let name = name.trim().to_ascii_lowercase();
        let ratio_arg = || -> Result<f64, SamplerError> {
            match lookup("OTEL_TRACES_SAMPLER_ARG") {
                // The SDK default when the argument is missing.
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| SamplerError::BadRatio(a.clone())),
            }
        };
        let (parent_based, base) = match name.strip_prefix("parentbased_") {
            Some(base) => (true, base),
            None => (false, name.as_str()),
        };
        let sampler = match base {
            "" if parent_based => return Err(SamplerError::UnknownSampler(name)),
            "" | "always_on" => Self::DEFAULT,
            "always_off" => Self::ratio(0.0)?,
            "traceidratio" => Self::ratio(ratio_arg()?)?,
            _ => return Err(SamplerError::UnknownSampler(name)),
        };
        Ok(if parent_based {
            sampler
        } else {
            sampler.ignoring_parent()
        })
    }

    /// Whether `span`'s trace is exported.
    pub fn keeps(&self, span: &SpanRecord) -> bool {
        self.keeps_trace(&span.trace_id, span.parent_sampled)
    }

    /// `parent_sampled`: the decision of the caller whose context the trace continues.
    pub fn keeps_trace(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        if self.parent_based
            && let Some(sampled) = parent_sampled
        {
            return sampled;
        }
        match self.threshold {
            None => true,
            Some(t) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                u64::from_be_bytes(low) < t
            }
        }
    }

    pub fn describe(&self) -> String {
        let ratio = match self.threshold {
            None => "every trace".to_owned(),
            Some(t) => format!("{:.4}% of traces", t as f64 / 2f64.powi(64) * 100.0),
        };
        if self.parent_based {
            format!("{ratio} it starts; a caller's traceparent sampled flag decides for the rest")
        } else {
            format!("{ratio}, whatever the callers' traceparent sampled flags")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn id(low: u64) -> TraceId {
        let mut t = [0xab; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn ratio_bounds() {
        assert!(!Sampler::ratio(0.0).unwrap().keeps_trace(&id(0), None));
        assert!(
            !Sampler::ratio(0.0)
                .unwrap()
                .keeps_trace(&id(u64::MAX), None)
        );
        assert!(
            Sampler::ratio(1.0)
                .unwrap()
                .keeps_trace(&id(u64::MAX), None)
        );
        let half = Sampler::ratio(0.5).unwrap();
        assert!(half.keeps_trace(&id(u64::MAX / 2 - 1), None));
        assert!(!half.keeps_trace(&id(u64::MAX / 2 + 2), None));
        assert_eq!(
            Sampler::ratio(1.5),
            Err(SamplerError::BadRatio("1.5".into()))
        );
        assert!(Sampler::ratio(-0.1).is_err());
        assert!(Sampler::ratio(f64::NAN).is_err());
    }

    #[test]
    fn ten_percent_keeps_about_a_tenth_of_random_ids() {
        let s = Sampler::ratio(0.1).unwrap();
        let kept = (0..100_000u64)
            .filter(|i| s.keeps_trace(&id(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)), None))
            .count();
        assert!((9_500..10_500).contains(&kept), "{kept}");
    }

    #[test]
    fn decision_depends_only_on_the_trace_id() {
        let s = Sampler::ratio(0.3).unwrap();
        for i in 0..1000u64 {
            let t = id(i.wrapping_mul(0x2545_F491_4F6C_DD1D));
            assert_eq!(s.keeps_trace(&t, None), s.keeps_trace(&t.clone(), None));
        }
    }

    #[test]
    fn resolves_standard_variables_and_flag() {
        let plain = |r: f64| Sampler::ratio(r).map(Sampler::ignoring_parent);
        assert_eq!(Sampler::resolve(None, env(&[])), Ok(Sampler::DEFAULT));
        assert_eq!(
            Sampler::resolve(
                None,
                env(&[
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25")
                ])
            ),
            Sampler::ratio(0.25)
        );
        assert_eq!(
            Sampler::resolve(None, env(&[("OTEL_TRACES_SAMPLER", "traceidratio")])),
            plain(1.0)
        );
        assert_eq!(
            Sampler::resolve(None, env(&[("OTEL_TRACES_SAMPLER", "always_off")])),
            plain(0.0)
        );
        assert_eq!(
            Sampler::resolve(
                None,
                env(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")])
            ),
            Sampler::ratio(0.0)
        );
        assert_eq!(
            Sampler::resolve(Some(0.1), env(&[("OTEL_TRACES_SAMPLER", "always_off")])),
            Sampler::ratio(0.1)
        );
        assert_eq!(
            Sampler::resolve(None, env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")])),
            Err(SamplerError::UnknownSampler("jaeger_remote".into()))
        );
        assert_eq!(
            Sampler::resolve(None, env(&[("OTEL_TRACES_SAMPLER", "parentbased_")])),
            Err(SamplerError::UnknownSampler("parentbased_".into()))
        );
        assert!(
            Sampler::resolve(
                None,
                env(&[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "ten")
                ])
            )
            .is_err()
        );
    }

    #[test]
    fn parent_based_follows_the_callers_flag() {
        let below = id(1);
        let above = id(u64::MAX);
        for sampler in [Sampler::DEFAULT, Sampler::ratio(0.5).unwrap()] {
            assert!(sampler.keeps_trace(&above, Some(true)));
            assert!(!sampler.keeps_trace(&below, Some(false)));
            assert!(sampler.keeps_trace(&below, None), "own trace: by ratio");
        }
        let half = Sampler::ratio(0.5).unwrap();
        assert!(!half.keeps_trace(&above, None));
        // The plain form looks at the trace id only.
        let plain = half.ignoring_parent();
        assert!(!plain.keeps_trace(&above, Some(true)));
        assert!(plain.keeps_trace(&below, Some(false)));
        let always_off = Sampler::resolve(None, env(&[("OTEL_TRACES_SAMPLER", "always_off")]));
        assert!(!always_off.unwrap().keeps_trace(&below, Some(true)));
    }
}
