//! Kernel features the capture depends on, probed once at start.
//!
//! The decision is pure ([`decide`]): required features that are missing stop the agent with
//! one line naming the feature and the first Linux release that has it; optional ones that
//! are missing are reported with what the agent does instead. The probes ([`probe`]) are a
//! thin shell over aya's feature probes plus one raw `bpf(2)` call.
//!
//! The summary line (`kernel features: ring_buffer=yes … bpf_loop=no`) is stable: the VM
//! suite (`cargo xtask vm-test`) checks it against each kernel of the matrix.

use std::fmt;
use std::path::Path;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported};

use super::btf::VMLINUX_BTF;

/// A kernel feature, with the first mainline release that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// `/sys/kernel/btf/vmlinux`: struct offsets for socket addresses.
    VmlinuxBtf,
    /// `.rodata`/`.bss` maps: how the loader passes its settings to the programs.
    GlobalData,
    /// `bpf_probe_read_user` / `bpf_probe_read_kernel`.
    ProbeReadUser,
    /// `BPF_MAP_TYPE_RINGBUF`: the kernel→agent event channel.
    RingBuffer,
    /// BTF-enabled raw tracepoints (`tp_btf`).
    BtfTracepoints,
    /// The `bpf_loop` helper.
    BpfLoop,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::VmlinuxBtf,
        Feature::GlobalData,
        Feature::ProbeReadUser,
        Feature::RingBuffer,
        Feature::BtfTracepoints,
        Feature::BpfLoop,
    ];

    /// The key in the summary line.
    pub const fn key(self) -> &'static str {
        match self {
            Feature::VmlinuxBtf => "vmlinux_btf",
            Feature::GlobalData => "global_data",
            Feature::ProbeReadUser => "probe_read_user",
            Feature::RingBuffer => "ring_buffer",
            Feature::BtfTracepoints => "btf_tracepoints",
            Feature::BpfLoop => "bpf_loop",
        }
    }

    pub const fn description(self) -> &'static str {
        match self {
            Feature::VmlinuxBtf => "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)",
            Feature::GlobalData => "BPF global data (.rodata/.bss maps)",
            Feature::ProbeReadUser => "the bpf_probe_read_user helper",
            Feature::RingBuffer => "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
            Feature::BtfTracepoints => "BTF tracepoints (tp_btf)",
            Feature::BpfLoop => "the bpf_loop helper",
        }
    }

    /// First mainline Linux release with the feature.
    pub const fn since(self) -> &'static str {
        match self {
            Feature::VmlinuxBtf => "5.4",
            Feature::GlobalData => "5.2",
            Feature::ProbeReadUser => "5.5",
            Feature::RingBuffer => "5.8",
            Feature::BtfTracepoints => "5.5",
            Feature::BpfLoop => "5.17",
        }
    }

    /// What the agent does without an optional feature; `None` for required ones.
    pub const fn fallback(self) -> Option<&'static str> {
        match self {
            Feature::BtfTracepoints => {
                Some("connections are tracked from syscall tracepoints only")
            }
            Feature::BpfLoop => Some(
                "vectored I/O is walked by bounded unrolled loops (the first iovecs are copied, the rest counted)",
            ),
            _ => None,
        }
    }

    pub const fn required(self) -> bool {
        self.fallback().is_none()
    }
}

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Yes,
    No,
    /// The probe itself failed (e.g. an unexpected errno); the reason is kept for the log.
    Unknown(String),
}

impl Probe {
    fn as_str(&self) -> &'static str {
        match self {
            Probe::Yes => "yes",
            Probe::No => "no",
            Probe::Unknown(_) => "unknown",
        }
    }
}

/// Probe results, one per [`Feature::ALL`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The running kernel's release, for messages.
    pub kernel_release: String,
    pub results: Vec<(Feature, Probe)>,
}

impl Probed {
    pub fn get(&self, feature: Feature) -> &Probe {
        self.results
            .iter()
            .find(|(f, _)| *f == feature)
            .map(|(_, p)| p)
            .unwrap_or(&Probe::No)
    }

    /// `kernel features: vmlinux_btf=yes global_data=yes … bpf_loop=no`, in [`Feature::ALL`]
    /// order.
    pub fn summary(&self) -> String {
        let mut line = String::from("kernel features:");
        for feature in Feature::ALL {
            line.push_str(&format!(
                " {}={}",
                feature.key(),
                self.get(feature).as_str()
            ));
        }
        line
    }
}

/// What the agent may use on this kernel (required features are implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    pub btf_tracepoints: bool,
    pub bpf_loop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFeature {
    pub feature: Feature,
    pub kernel_release: String,
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let feature = self.feature;
        write!(
            f,
            "this kernel ({}) lacks {}, which the agent requires: it needs Linux {} or newer (the oldest kernel tested is 5.10)",
            self.kernel_release,
            feature.description(),
            feature.since()
        )
    }
}

impl std::error::Error for MissingFeature {}

/// Pure: may the agent run with these features, and with which optional ones? A required
/// feature whose probe failed does not stop the agent (loading will tell); an optional one is
/// treated as absent.
pub fn decide(probed: &Probed) -> Result<KernelFeatures, MissingFeature> {
    if let Some(feature) = Feature::ALL
        .into_iter()
        .find(|f| f.required() && *probed.get(*f) == Probe::No)
    {
        return Err(MissingFeature {
            feature,
            kernel_release: probed.kernel_release.clone(),
        });
    }
    Ok(KernelFeatures {
        btf_tracepoints: *probed.get(Feature::BtfTracepoints) == Probe::Yes,
        bpf_loop: *probed.get(Feature::BpfLoop) == Probe::Yes,
    })
}

/// Probes everything in [`Feature::ALL`]. Needs root and, before 5.11, a raised
/// RLIMIT_MEMLOCK (the probes create small maps and programs).
pub fn probe() -> Probed {
    let helper = |helper| match is_helper_supported(ProgramType::TracePoint, helper) {
        Ok(true) => Probe::Yes,
        Ok(false) => Probe::No,
        Err(e) => Probe::Unknown(e.to_string()),
    };
    let results = Feature::ALL
        .into_iter()
        .map(|feature| {
            let result = match feature {
                Feature::VmlinuxBtf => match Path::new(VMLINUX_BTF).exists() {
                    true => Probe::Yes,
                    false => Probe::No,
                },
                Feature::GlobalData => match aya::features().bpf_global_data() {
                    true => Probe::Yes,
                    false => Probe::No,
                },
                Feature::ProbeReadUser => helper(BpfHelper::BPF_FUNC_probe_read_user),
                Feature::RingBuffer => match is_map_supported(MapType::RingBuf) {
                    Ok(true) => Probe::Yes,
                    Ok(false) => Probe::No,
                    Err(e) => Probe::Unknown(e.to_string()),
                },
                Feature::BtfTracepoints => probe_btf_tracepoints(),
                Feature::BpfLoop => helper(BpfHelper::BPF_FUNC_loop),
            };
            (feature, result)
        })
        .collect();
    Probed {
        kernel_release: kernel_release(),
        results,
    }
}

/// Probes, logs the summary and every fallback, and decides. Call after the preflight checks.
pub fn check() -> anyhow::Result<KernelFeatures> {
    let probed = probe();
    tracing::info!("{}", probed.summary());
    for (feature, result) in &probed.results {
        match (result, feature.fallback()) {
            (Probe::Yes, _) => {}
            (Probe::No, Some(fallback)) => tracing::info!(
                "{} unavailable ({} needs Linux {}): {fallback}",
                feature.key(),
                feature.description(),
                feature.since()
            ),
            (Probe::Unknown(why), Some(fallback)) => tracing::warn!(
                "could not probe {} ({why}): assuming it is missing: {fallback}",
                feature.description()
            ),
            (Probe::Unknown(why), None) => tracing::warn!(
                "could not probe {} ({why}): loading anyway",
                feature.description()
            ),
            (Probe::No, None) => {}
        }
    }
    Ok(decide(&probed)?)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown release".into())
}

/// `BPF_PROG_LOAD` attributes up to `attach_btf_id` (Linux 5.5 layout); the kernel treats a
/// shorter struct as zero-extended.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;

/// tp_btf: load a trivial `BPF_PROG_TYPE_TRACING` / `BPF_TRACE_RAW_TP` program without a
/// target. A kernel that knows the type reaches the verifier, which asks for the BTF id
/// ("Tracing programs must provide btf_id"); an older one rejects the type with an empty log.
/// This is the probe libbpf and aya use for tracing programs, minus the fentry attach that
/// some kernels forbid while allowing tp_btf.
fn probe_btf_tracepoints() -> Probe {
    // r0 = 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let mut log = [0u8; 256];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_TRACE_RAW_TP,
        ..Default::default()
    };
    // SAFETY: attr points to a valid, fully initialised struct whose pointers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            size_of::<ProgLoadAttr>() as u32,
        )
    };
    if rc >= 0 {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(rc as i32) };
        return Probe::Yes;
    }
    let err = std::io::Error::last_os_error();
    let log = String::from_utf8_lossy(&log);
    match err.raw_os_error() {
        Some(libc::EINVAL) if log.contains("must provide btf_id") => Probe::Yes,
        Some(libc::EINVAL) | Some(libc::E2BIG) => Probe::No,
        _ => Probe::Unknown(format!("bpf(BPF_PROG_LOAD) failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(no: &[Feature]) -> Probed {
        Probed {
            kernel_release: "4.19.0-27-cloud-amd64".into(),
            results: Feature::ALL
                .into_iter()
                .map(|f| {
                    (
                        f,
                        if no.contains(&f) {
                            Probe::No
                        } else {
                            Probe::Yes
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn everything_present_enables_everything() {
        assert_eq!(
            decide(&probed(&[])),
            Ok(KernelFeatures {
                btf_tracepoints: true,
                bpf_loop: true
            })
        );
    }

    #[test]
    fn optional_features_fall_back() {
        // Linux 5.10: everything but bpf_loop.
        assert_eq!(
            decide(&probed(&[Feature::BpfLoop])),
            Ok(KernelFeatures {
                btf_tracepoints: true,
                bpf_loop: false
            })
        );
    }

    #[test]
    fn missing_ring_buffer_names_feature_and_version() {
        // Linux 5.4: BTF and tracepoints, no ring buffer, no bpf_loop.
        let err = decide(&probed(&[Feature::RingBuffer, Feature::BpfLoop])).unwrap_err();
        assert_eq!(err.feature, Feature::RingBuffer);
        let msg = err.to_string();
        assert!(msg.contains("BPF ring buffer"), "{msg}");
        assert!(msg.contains("Linux 5.8 or newer"), "{msg}");
        assert!(msg.contains("4.19.0-27-cloud-amd64"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn the_first_missing_required_feature_is_reported() {
        let err = decide(&probed(&[Feature::RingBuffer, Feature::GlobalData])).unwrap_err();
        assert_eq!(err.feature, Feature::GlobalData);
    }

    #[test]
    fn failed_probes_do_not_block_required_features_but_disable_optional_ones() {
        let mut p = probed(&[]);
        for (f, r) in &mut p.results {
            if matches!(f, Feature::RingBuffer | Feature::BpfLoop) {
                *r = Probe::Unknown("EPERM".into());
            }
        }
        assert_eq!(
            decide(&p),
            Ok(KernelFeatures {
                btf_tracepoints: true,
                bpf_loop: false
            })
        );
        assert!(p.summary().contains("ring_buffer=unknown"));
    }

    #[test]
    fn summary_lists_every_feature_in_order() {
        assert_eq!(
            probed(&[Feature::BpfLoop]).summary(),
            "kernel features: vmlinux_btf=yes global_data=yes probe_read_user=yes ring_buffer=yes btf_tracepoints=yes bpf_loop=no"
        );
    }

    #[test]
    fn every_feature_is_required_or_has_a_fallback() {
        let required: Vec<_> = Feature::ALL.into_iter().filter(|f| f.required()).collect();
        assert_eq!(
            required,
            [
                Feature::VmlinuxBtf,
                Feature::GlobalData,
                Feature::ProbeReadUser,
                Feature::RingBuffer
            ]
        );
    }
}
