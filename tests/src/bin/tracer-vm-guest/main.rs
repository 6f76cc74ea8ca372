//! The VM test guest: `/init` of the initramfs that `cargo xtask vm-test` boots on each kernel.
//!
//! As PID 1 it mounts what a node has, brings up `lo`, runs the suite in [`cases`] against the
//! real agent (`/bin/tracer-agent`, or `TRACER_AGENT_BIN`), prints one `TRACER-VM-CASE` line per case and a final
//! `TRACER-VM-RESULT PASS|FAIL …` line on the console, and powers the VM off. The traffic comes
//! from the same binary re-executed in other roles (`serve`, `client`), so the guest needs no
//! other tool.
//!
//! Configuration comes from the kernel command line, which the kernel hands to init as
//! environment variables: `TRACER_VM_FILTER=<substring>` selects cases,
//! The two-hop chain must be one trace unless `TRACER_VM_ASSERT_LINKING=0`.
//!
//! With `TRACER_VM_NODE=a|b` (and `TRACER_VM_IP`, `TRACER_VM_PEER`) the guest is one of
//! the two nodes of the two-guest case instead: it loads the NIC driver, configures `eth0`,
//! and node a runs the `two_nodes` case while node b serves its part.
//!
//! `tracer-vm-guest suite [FILTER]` runs the same suite on a live machine as root (with
//! `TRACER_AGENT_BIN` pointing at the agent), which is handy when working on a case.

mod agent;
mod cases;
mod http;
mod init;
mod roles;

use std::process::ExitCode;

use anyhow::Result;

const RESULT: &str = "TRACER-VM-RESULT";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => roles::serve(&args[1..]),
        Some("client") => roles::client(&args[1..]),
        Some("suite") => {
            let filter = args.get(1).cloned().or_else(filter_from_env);
            return match suite(filter.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    println!("{RESULT} FAIL {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        None if std::process::id() == 1 => init_main(),
        _ => Err(anyhow::anyhow!(
            "usage: tracer-vm-guest [serve [--proxy-to PORT] | client PORT [--keep-alive] METHOD PATH... | suite [FILTER]] (no arguments: run as the VM's init)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn filter_from_env() -> Option<String> {
    std::env::var("TRACER_VM_FILTER")
        .ok()
        .filter(|f| !f.is_empty())
}

/// Runs the selected cases and prints the result line; `Ok(true)` when everything passed.
fn suite(filter: Option<&str>) -> Result<bool> {
    let release = init::kernel_release();
    // Linking is part of what the guest proves; `TRACER_VM_ASSERT_LINKING=0` turns it off.
    let assert_linking = !matches!(
        std::env::var("TRACER_VM_ASSERT_LINKING").as_deref(),
        Ok("0")
    );
    println!(
        "tracer-vm-guest: kernel {release}, filter {filter:?}, assert linking: {assert_linking}"
    );
    let ctx = cases::Ctx::new(release.clone(), assert_linking)?;
    let summary = match std::env::var("TRACER_VM_NODE").as_deref() {
        // The two-guest run: node a runs its case; node b serves (never returns unless its
        // setup fails).
        Ok("a") => {
            init::network("a", cases::node_addresses()?.0)?;
            cases::run(&ctx, cases::TWO_NODE_CASES, None)
        }
        Ok("b") => {
            init::network("b", cases::node_addresses()?.0)?;
            cases::node_b(&ctx)?;
            unreachable!("node b serves until the VM is stopped")
        }
        Ok(other) => anyhow::bail!("TRACER_VM_NODE must be a or b, got {other:?}"),
        Err(_) => cases::run(&ctx, cases::CASES, filter),
    };
    let ran = summary.passed + summary.failed.len();
    let pass = summary.failed.is_empty() && ran > 0;
    println!(
        "{RESULT} {} kernel={release} passed={} failed={} filtered_out={}{}",
        if pass { "PASS" } else { "FAIL" },
        summary.passed,
        summary.failed.len(),
        summary.filtered_out,
        if ran == 0 {
            format!(" (no case matches the filter {filter:?})")
        } else if summary.failed.is_empty() {
            String::new()
        } else {
            format!(" failing: {}", summary.failed.join(","))
        }
    );
    Ok(pass)
}

/// PID 1: set up, run the suite, power off whatever happens. A panic is reported as a failure
/// (exiting PID 1 would panic the kernel, which also ends the VM but says less).
fn init_main() -> Result<()> {
    if std::env::var_os("TRACER_AGENT_BIN").is_none() {
        // SAFETY: PID 1 has started no thread yet; nothing reads the environment concurrently.
        unsafe { std::env::set_var("TRACER_AGENT_BIN", "/bin/tracer-agent") };
    }
    let outcome = std::panic::catch_unwind(|| -> Result<bool> {
        init::setup()?;
        suite(filter_from_env().as_deref())
    });
    match outcome {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => println!("{RESULT} FAIL guest setup: {e:#}"),
        Err(_) => println!("{RESULT} FAIL the guest panicked (see above)"),
    }
    init::power_off()
}
