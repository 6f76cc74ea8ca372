//! Every manifest under deploy/ against the Kubernetes OpenAPI schemas, offline, with
//! `kubernetes-validate` (PyPI; it ships the schemas). `cargo xtask test` installs it; a
//! missing validator fails these tests rather than skipping them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Oldest and newest Kubernetes minor versions the deployment claims to support, and one in
/// between (the validator ships schemas for 1.25 to 1.37).
const VERSIONS: &[&str] = &["1.29.0", "1.33.0", "1.37.0"];

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn validator() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubernetes-validate"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is not installed: run `cargo xtask test` (it installs it) or `python3 -m pip install kubernetes-validate`"
        )
    })
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

/// Kubernetes objects: every YAML file but kustomizations.
fn manifests() -> Vec<PathBuf> {
    let mut all = Vec::new();
    yaml_files(&deploy_dir(), &mut all);
    all.retain(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"));
    assert!(
        all.len() >= 10,
        "expected the agent's and the demo's manifests: {all:?}"
    );
    all
}

fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let files = manifests();
    for version in VERSIONS {
        let (ok, output) = validate(version, &files);
        assert!(ok, "Kubernetes {version}:\n{output}");
        // One "passed" line per document: nothing was skipped for lack of a schema.
        let documents: usize = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .split("\n---")
                    .filter(|d| d.contains("kind:"))
                    .count()
            })
            .sum();
        let valid = output
            .lines()
            .filter(|l| l.contains("passed for resource"))
            .count();
        assert_eq!(valid, documents, "Kubernetes {version}:\n{output}");
    }
}

/// The validator really rejects what the API server would: a wrong type and an unknown
/// field in a DaemonSet.
#[test]
fn the_validator_rejects_broken_manifests() {
    let dir = std::env::temp_dir().join(format!("manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let daemonset = std::fs::read_to_string(deploy_dir().join("agent/daemonset.yaml")).unwrap();
    for (what, broken) in [
        (
            "a wrong type",
            daemonset.replace("hostPID: true", "hostPID: \"yes\""),
        ),
        (
            "an unknown field",
            daemonset.replace("hostPID: true", "hostPID: true\n      hostPid: true"),
        ),
    ] {
        assert_ne!(broken, daemonset);
        let file = dir.join("broken.yaml");
        std::fs::write(&file, broken).unwrap();
        let (ok, output) = validate(VERSIONS[0], &[file]);
        assert!(!ok, "{what} passed validation:\n{output}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `resources:` entries of a kustomization (our files keep to `  - path` lines).
fn kustomize_resources(kustomization: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(kustomization).unwrap();
    let mut in_resources = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_resources = line.trim_end() == "resources:";
            continue;
        }
        if in_resources && let Some(item) = line.trim().strip_prefix("- ") {
            out.push(item.trim().to_owned());
        }
    }
    out
}

/// `kubectl apply -k` applies exactly the files a kustomization lists: each must exist, and
/// no manifest may be left out.
#[test]
fn kustomizations_list_every_manifest() {
    let mut kustomizations = Vec::new();
    yaml_files(&deploy_dir(), &mut kustomizations);
    kustomizations.retain(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"));
    let mut listed = Vec::new();
    for k in &kustomizations {
        let dir = k.parent().unwrap();
        for r in kustomize_resources(k) {
            let p = dir.join(&r);
            assert!(
                p.is_file() || p.join("kustomization.yaml").is_file(),
                "{} lists {r}, which does not exist",
                k.display()
            );
            if p.is_file() {
                listed.push(p.canonicalize().unwrap());
            }
        }
    }
    for m in manifests() {
        assert!(
            listed.contains(&m.canonicalize().unwrap()),
            "{} is in no kustomization",
            m.display()
        );
    }
    assert!(deploy_dir().join("kustomization.yaml").is_file());
}

/// What the podman suite verified is what the DaemonSet asks for: the same capabilities,
/// no privileged mode, the host PID namespace, read-only host mounts.
#[test]
fn the_daemonset_matches_what_the_podman_suite_runs() {
    let ds = std::fs::read_to_string(deploy_dir().join("agent/daemonset.yaml")).unwrap();
    let caps_line = ds
        .lines()
        .find(|l| l.trim_start().starts_with("add: ["))
        .expect("capabilities.add");
    let caps: Vec<String> = caps_line
        .trim()
        .trim_start_matches("add: [")
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_owned())
        .collect();
    assert_eq!(caps, tracer_tests::podman::AGENT_CAPS);
    assert!(ds.contains("privileged: false"));
    assert!(ds.contains("drop: [\"ALL\"]"));
    assert!(ds.contains("hostPID: true"));
    assert!(!ds.contains("hostNetwork"));
    assert_eq!(
        ds.matches("readOnly: true").count(),
        ds.matches("mountPath:").count(),
        "every host mount is read-only"
    );
    for probe in [
        "path: /healthz",
        "path: /readyz",
        "fieldPath: spec.nodeName",
    ] {
        assert!(ds.contains(probe), "{probe}");
    }
}
