//! Head sampling by trace id, decided after linking so that every span of one trace gets
//! the same decision: the ratio is applied to the trace id, which all linked spans share
//! (the agent's own and those continuing a caller's `traceparent`).
//!
//! Configured like the OpenTelemetry SDKs: `OTEL_TRACES_SAMPLER` = `always_on`,
//! `always_off`, `traceidratio` (+ `OTEL_TRACES_SAMPLER_ARG`), or their `parentbased_`
//! forms, which behave the same here because the agent's linked spans already share their
//! root's trace id. `--sample-ratio` overrides both.

use crate::spans::TraceId;

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
/// `ratio × 2^64`: the same rule for every span of a trace, in this agent and on any other
/// node running it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Traces kept have `low_bits < threshold`; `None` keeps everything.
    threshold: Option<u64>,
}

impl Sampler {
    pub const ALWAYS_ON: Sampler = Sampler { threshold: None };

    pub fn ratio(ratio: f64) -> Result<Self, SamplerError> {
        if !(0.0..=1.0).contains(&ratio) || ratio.is_nan() {
            return Err(SamplerError::BadRatio(ratio.to_string()));
        }
        if ratio >= 1.0 {
            return Ok(Self::ALWAYS_ON);
        }
        // `as` saturates; below 1.0 the product is below 2^64.
        Ok(Sampler {
            threshold: Some((ratio * 2f64.powi(64)) as u64),
        })
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
            return Ok(Self::ALWAYS_ON);
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
        match name.strip_prefix("parentbased_").unwrap_or(&name) {
            "" | "always_on" => Ok(Self::ALWAYS_ON),
            "always_off" => Self::ratio(0.0),
            "traceidratio" => Self::ratio(ratio_arg()?),
            _ => Err(SamplerError::UnknownSampler(name)),
        }
    }

    pub fn keeps(&self, trace_id: &TraceId) -> bool {
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
        match self.threshold {
            None => "every trace".to_owned(),
            Some(t) => format!("{:.4}% of traces", t as f64 / 2f64.powi(64) * 100.0),
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
        assert!(!Sampler::ratio(0.0).unwrap().keeps(&id(0)));
        assert!(!Sampler::ratio(0.0).unwrap().keeps(&id(u64::MAX)));
        assert!(Sampler::ratio(1.0).unwrap().keeps(&id(u64::MAX)));
        let half = Sampler::ratio(0.5).unwrap();
        assert!(half.keeps(&id(u64::MAX / 2 - 1)));
        assert!(!half.keeps(&id(u64::MAX / 2 + 2)));
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
            .filter(|i| s.keeps(&id(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
            .count();
        assert!((9_500..10_500).contains(&kept), "{kept}");
    }

    #[test]
    fn decision_depends_only_on_the_trace_id() {
        let s = Sampler::ratio(0.3).unwrap();
        for i in 0..1000u64 {
            let t = id(i.wrapping_mul(0x2545_F491_4F6C_DD1D));
            assert_eq!(s.keeps(&t), s.keeps(&t.clone()));
        }
    }

    #[test]
    fn resolves_standard_variables_and_flag() {
        assert_eq!(Sampler::resolve(None, env(&[])), Ok(Sampler::ALWAYS_ON));
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
            Ok(Sampler::ALWAYS_ON)
        );
        assert_eq!(
            Sampler::resolve(None, env(&[("OTEL_TRACES_SAMPLER", "always_off")])),
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
}
