//! The OpenTelemetry resource of a traced process, from what /proc says about it.

use std::path::Path;

pub use crate::spans::runtime::Runtime;
use crate::spans::{AttrValue, Resource};

/// What /proc says about a process; read once per pid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Thread name from the kernel event (survives the process's exit).
    pub comm: String,
    pub exe_path: Option<String>,
    pub command_args: Option<Vec<String>>,
    /// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` from the process's environment.
    pub otel_service_name: Option<String>,
    pub otel_resource_attributes: Option<String>,
    /// From the executable's ELF sections; `Native` when it cannot be read.
    pub runtime: Runtime,
}

impl ProcessInfo {
    pub fn read(proc_root: &Path, pid: u32, comm: &str) -> Self {
        let dir = proc_root.join(pid.to_string());
        let exe_path = std::fs::read_link(dir.join("exe")).ok().map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        });
        let command_args = std::fs::read(dir.join("cmdline")).ok().map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        });
        let runtime = crate::spans::runtime::of_process(proc_root, pid);
        let mut info = ProcessInfo {
            pid,
            comm: comm.to_owned(),
            exe_path,
            command_args,
            runtime,
            ..Default::default()
        };
        if let Ok(environ) = std::fs::read(dir.join("environ")) {
            for var in environ.split(|&b| b == 0) {
                let var = String::from_utf8_lossy(var);
                if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
                    info.otel_service_name = Some(v.to_owned());
                } else if let Some(v) = var.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
                    info.otel_resource_attributes = Some(v.to_owned());
                }
            }
        }
        info
    }

    pub fn executable_name(&self) -> String {
        self.exe_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.comm)
            .to_owned()
    }
}

/// Pure: the resource for a process, by the OpenTelemetry precedence rules
/// (`OTEL_SERVICE_NAME` > `service.name` in `OTEL_RESOURCE_ATTRIBUTES` > executable name).
pub fn process_resource(info: &ProcessInfo, host_name: &str) -> Resource {
    let mut attributes: Vec<(String, AttrValue)> = Vec::new();
    let mut from_env: Vec<(String, String)> = Vec::new();
    if let Some(raw) = &info.otel_resource_attributes {
        for pair in raw.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                let k = k.trim();
                if !k.is_empty() {
                    from_env.push((k.to_owned(), v.trim().to_owned()));
                }
            }
        }
    }
    let service = info
        .otel_service_name
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            from_env
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| info.executable_name());
    attributes.push(("service.name".into(), service.into()));
    for (k, v) in from_env {
        if k != "service.name" {
            attributes.push((k, v.into()));
        }
    }
    attributes.push(("process.pid".into(), AttrValue::Int(info.pid as i64)));
    attributes.push((
        "process.executable.name".into(),
        info.executable_name().into(),
    ));
    if let Some(path) = &info.exe_path {
        attributes.push(("process.executable.path".into(), path.clone().into()));
    }
    if let Some(name) = info.runtime.otel_name() {
        attributes.push(("process.runtime.name".into(), name.into()));
    }
    attributes.push(("host.name".into(), host_name.into()));
    attributes.push(("telemetry.sdk.name".into(), "tracer-agent".into()));
    attributes.push(("telemetry.sdk.language".into(), "rust".into()));
    attributes.push((
        "telemetry.sdk.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));
    Resource { attributes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_precedence() {
        let mut info = ProcessInfo {
            pid: 42,
            comm: "python3".into(),
            exe_path: Some("/usr/bin/python3.11".into()),
            ..Default::default()
        };
        let r = process_resource(&info, "node1");
        assert_eq!(r.service_name(), "python3.11");
        assert_eq!(r.get("process.pid"), Some(&AttrValue::Int(42)));
        assert_eq!(r.get("host.name"), Some(&AttrValue::Str("node1".into())));

        info.otel_resource_attributes = Some("service.name=from-attrs, team=web".into());
        let r = process_resource(&info, "node1");
        assert_eq!(r.service_name(), "from-attrs");
        assert_eq!(r.get("team"), Some(&AttrValue::Str("web".into())));

        info.otel_service_name = Some("checkout".into());
        assert_eq!(process_resource(&info, "n").service_name(), "checkout");

        info.exe_path = None;
        info.otel_service_name = None;
        info.otel_resource_attributes = None;
        assert_eq!(process_resource(&info, "n").service_name(), "python3");
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let info = ProcessInfo::read(Path::new("/proc"), me, "x");
        assert!(info.exe_path.is_some());
        assert!(!info.executable_name().is_empty());
    }
}
