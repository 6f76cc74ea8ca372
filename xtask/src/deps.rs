//! System tools the integration tests drive (real servers and clients), installed from the
//! distribution's packages when missing.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

/// (command that must exist, Debian package providing it)
const TEST_TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("python3", "python3"),
    // The podman suite: a static busybox (wget) and Go for the demo's database service.
    ("busybox", "busybox-static"),
    ("go", "golang-go"),
    // The fidelity suite (tests/tests/programs.rs): a pre-fork server and reverse proxy
    // serving with sendfile, a pipelining load generator, Node.js's `http`.
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("node", "nodejs"),
    // npm installs the gRPC suite's Node.js package (`ensure_node_test_packages`).
    ("npm", "npm"),
    // The capture suite's real TLS server and certificate.
    ("openssl", "openssl"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ensure_test_tools() -> Result<()> {
    ensure_packages(TEST_TOOLS)?;
    crate::image::ensure_image_tools()?;
    ensure_manifest_validator()?;
    ensure_python_test_packages()?;
    ensure_node_test_packages()?;
    ensure_go_grpc()
}

/// Where Debian's Go library packages put their sources: the GOPATH the gRPC programs of
/// the suites build in (GOPATH mode, offline).
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// grpc-go for the HTTP/2 suite's and the VM guest's Go gRPC programs, from Debian's
/// `golang-google-grpc-dev` (its sources and dependencies under [`DEBIAN_GOPATH`]).
pub fn ensure_go_grpc() -> Result<()> {
    let marker = std::path::Path::new(DEBIAN_GOPATH).join("src/google.golang.org/grpc/server.go");
    if marker.is_file() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "the Go gRPC programs need grpc-go under {DEBIAN_GOPATH}: install Debian's golang-google-grpc-dev"
        );
    }
    apt_install(&["golang-google-grpc-dev"])
}

/// A second Go release for the linking suite, next to the distribution's `go`: the goroutine
/// layout the agent reads differs between releases. Debian trixie's, unpacked under
/// `target/test-tools/` (the system is not touched). Returns its `go` command.
pub const NEWER_GO_SUITE: &str = "trixie";
pub const NEWER_GO: &str = "1.24";

pub fn ensure_newer_go() -> Result<std::path::PathBuf> {
    let dest = crate::workspace_root().join(format!("target/test-tools/go-{NEWER_GO}"));
    let go = dest.join(format!("usr/lib/go-{NEWER_GO}/bin/go"));
    if go.is_file() {
        return Ok(go);
    }
    eprintln!(
        "==> fetching Go {NEWER_GO} from Debian {NEWER_GO_SUITE} into {}",
        dest.display()
    );
    let _ = std::fs::remove_dir_all(&dest);
    crate::debian::fetch_unpacked(
        NEWER_GO_SUITE,
        &[
            &format!("golang-{NEWER_GO}-go"),
            &format!("golang-{NEWER_GO}-src"),
        ],
        &dest,
    )
    .with_context(|| format!("fetching Go {NEWER_GO} from Debian {NEWER_GO_SUITE}"))?;
    if !go.is_file() {
        bail!("the golang-{NEWER_GO}-go package has no {}", go.display());
    }
    Ok(go)
}

/// Python packages the suites import, installed with pip into `target/test-tools/python`
/// (on `PYTHONPATH` in the tests), not into the system: (module, pinned requirement).
/// `requests` for the fidelity suite, `aiohttp` for the asyncio service of the linking
/// suite, `grpcio` for the HTTP/2 suite's gRPC server and client (a manylinux wheel: no
/// compiler needed).
const PYTHON_TEST_PACKAGES: &[(&str, &str)] = &[
    ("requests", "requests==2.32.3"),
    ("aiohttp", "aiohttp==3.12.15"),
    ("grpc", "grpcio==1.75.1"),
];

/// Where [`ensure_python_test_packages`] installs (for `PYTHONPATH`).
pub fn python_test_packages_dir() -> std::path::PathBuf {
    crate::workspace_root().join("target/test-tools/python")
}

pub fn ensure_python_test_packages() -> Result<()> {
    let dir = python_test_packages_dir();
    let importable = |module: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .env("PYTHONPATH", &dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if PYTHON_TEST_PACKAGES.iter().all(|(m, _)| importable(m)) {
        return Ok(());
    }
    let reqs: Vec<&str> = PYTHON_TEST_PACKAGES.iter().map(|(_, r)| *r).collect();
    eprintln!("==> installing {} into {}", reqs.join(" "), dir.display());
    // All of them in one resolution, replacing what is there: `--target` does not merge
    // a second install's shared dependencies (idna) into the directory.
    run_cmd(pip_install_into(&dir).arg("--upgrade").args(&reqs))
        .context("installing the tests' Python packages with pip failed")
}

/// npm packages the suites `require`, installed into `target/test-tools/node/node_modules`
/// (on `NODE_PATH` in the tests), not globally: (module, pinned version). `@grpc/grpc-js`
/// for the HTTP/2 suite's Node.js gRPC server and client (pure JavaScript).
const NODE_TEST_PACKAGES: &[(&str, &str)] = &[("@grpc/grpc-js", "1.14.3")];

/// Where [`ensure_node_test_packages`] installs: the directory holding `node_modules`.
pub fn node_test_packages_dir() -> std::path::PathBuf {
    crate::workspace_root().join("target/test-tools/node")
}

pub fn ensure_node_test_packages() -> Result<()> {
    let dir = node_test_packages_dir();
    let modules = dir.join("node_modules");
    // The installed version, from each package's own package.json: a changed pin reinstalls.
    let installed = |module: &str, version: &str| {
        std::fs::read_to_string(modules.join(module).join("package.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["version"] == version)
    };
    if NODE_TEST_PACKAGES.iter().all(|(m, v)| installed(m, v)) {
        return Ok(());
    }
    let deps: serde_json::Map<String, serde_json::Value> = NODE_TEST_PACKAGES
        .iter()
        .map(|(m, v)| ((*m).to_owned(), (*v).into()))
        .collect();
    eprintln!(
        "==> installing {} into {}",
        NODE_TEST_PACKAGES
            .iter()
            .map(|(m, v)| format!("{m}@{v}"))
            .collect::<Vec<_>>()
            .join(" "),
        modules.display()
    );
    std::fs::create_dir_all(&dir)?;
    // A package.json of its own: npm would otherwise install next to the nearest one above.
    std::fs::write(
        dir.join("package.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "name": "tracer-test-tools",
            "private": true,
            "dependencies": deps,
        }))?,
    )?;
    run_cmd(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--omit=dev"])
            .args(["--no-package-lock", "--loglevel=error"])
            .current_dir(&dir),
    )
    .context("installing the tests' Node.js packages with npm failed")
}

/// Installs the Debian packages of the `(command, package)` pairs whose command is missing.
pub fn ensure_packages(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "the integration tests need {}: install them with your package manager",
            missing.join(", ")
        );
    }
    apt_install(&missing)
}

/// Installs Debian `packages` with apt-get (which the caller has checked for).
fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("==> installing: {}", packages.join(" "));
    run_cmd(Command::new("apt-get").arg("update"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {} failed", packages.join(", ")))
}

/// The offline Kubernetes schema validator the manifest tests run (`kubernetes-validate`
/// from PyPI; it ships the OpenAPI schemas of every Kubernetes version it knows).
pub const MANIFEST_VALIDATOR: &str = "kubernetes-validate";
const MANIFEST_VALIDATOR_VERSION: &str = "1.37.0";

pub fn ensure_manifest_validator() -> Result<()> {
    if have(MANIFEST_VALIDATOR) {
        return Ok(());
    }
    eprintln!("==> installing {MANIFEST_VALIDATOR} (validates deploy/ manifests offline)");
    run_cmd(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("{MANIFEST_VALIDATOR}=={MANIFEST_VALIDATOR_VERSION}"),
    ]))
    .context("installing kubernetes-validate with pip failed")?;
    if !have(MANIFEST_VALIDATOR) {
        bail!(
            "{MANIFEST_VALIDATOR} was installed but is not on PATH: add pip's script directory to PATH"
        );
    }
    Ok(())
}

/// `python3 -m pip install` into `dir` (put on `PYTHONPATH` by its users), never into the
/// system; the caller adds what to install.
pub fn pip_install_into(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(["--no-warn-script-location", "--target"])
    .arg(dir);
    cmd
}

/// `python3 -m pip` (the pip of that python3), from the distribution when missing.
pub fn ensure_pip() -> Result<()> {
    let pip_works = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pip_works {
        ensure_packages(&[("pip3", "python3-pip")])?;
    }
    Ok(())
}

/// System packages the lesson's demo needs (`cargo xtask demo`, tests/tests/demo.rs): its
/// three runtimes, pip for the backend's packages and iproute2 for the pods' namespaces.
const DEMO_TOOLS: &[(&str, &str)] = &[
    ("node", "nodejs"),
    ("npm", "npm"),
    ("python3", "python3"),
    ("go", "golang-go"),
    ("ip", "iproute2"),
];

/// Installs the lesson's demo apps' dependencies under `deps` (a directory of the target
/// dir, never the system): express + axios from npm into `frontend/node_modules`, Flask +
/// requests from PyPI into `backend/site` (`pip --target`), and `database/database` built
/// from `sources/database/main.go` with the distribution's Go (standard library only, so
/// offline). npm and pip run again only when the pinned versions change.
pub fn ensure_demo_apps(sources: &std::path::Path, deps: &std::path::Path) -> Result<()> {
    ensure_packages(DEMO_TOOLS)?;
    ensure_pip()?;

    // Each installer runs when the file pinning its versions differs from the copy kept
    // beside its last successful install.
    let stale = |manifest: &std::path::Path, stamp: &std::path::Path, installed: &str| -> bool {
        let want = std::fs::read(manifest).ok();
        want.is_none()
            || want != std::fs::read(stamp).ok()
            || !stamp.with_file_name(installed).exists()
    };

    let frontend = deps.join("frontend");
    let manifest = sources.join("frontend/package.json");
    let stamp = frontend.join("package.json");
    if stale(&manifest, &stamp, "node_modules") {
        eprintln!(
            "==> demo frontend: npm install (express, axios) into {}",
            frontend.display()
        );
        std::fs::create_dir_all(&frontend)?;
        std::fs::copy(&manifest, &stamp)?;
        run_cmd(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--omit=dev"])
                .args(["--no-package-lock", "--loglevel=error"])
                .current_dir(&frontend),
        )
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&stamp);
        })
        .context("npm install of the demo frontend's dependencies failed")?;
    }

    let backend = deps.join("backend");
    let manifest = sources.join("backend/requirements.txt");
    let stamp = backend.join("requirements.txt");
    if stale(&manifest, &stamp, "site") {
        let site = backend.join("site");
        eprintln!(
            "==> demo backend: pip install (flask, requests) into {}",
            site.display()
        );
        let _ = std::fs::remove_dir_all(&site);
        std::fs::create_dir_all(&backend)?;
        run_cmd(pip_install_into(&site).arg("-r").arg(&manifest))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&site);
            })
            .context("pip install of the demo backend's dependencies failed")?;
        std::fs::copy(&manifest, &stamp)?;
    }

    // go build is incremental (its cache lives beside the binary): cheap to run every time.
    let database = deps.join("database");
    let go = deps.join("go");
    std::fs::create_dir_all(&database)?;
    eprintln!("==> demo database: go build");
    run_cmd(
        Command::new("go")
            .args(["build", "-trimpath", "-o"])
            .arg(database.join("database"))
            .arg("main.go")
            .current_dir(sources.join("database"))
            .env("GOPATH", &go)
            .env("GOCACHE", go.join("cache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0"),
    )
    .context("go build of the demo database failed")
}
