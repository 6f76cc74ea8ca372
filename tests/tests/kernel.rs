//! Root integration suite: the VM guest's cases on this machine's kernel. `cargo xtask
//! vm-test` boots each kernel of the matrix with `tracer-vm-guest` as its init, which runs
//! these cases; here the same binary runs them in its `suite` mode, so a case written once
//! runs on every kernel, the host's included.

use std::process::Command;

use tracer_testkit::harness::{agent_binary, require_root};

#[test]
fn the_vm_guest_cases_pass_on_this_kernel() {
    require_root();
    let tools = std::env::var_os("TRACER_GUEST_TOOLS").expect(
        "TRACER_GUEST_TOOLS is not set: run `cargo xtask test`, which builds the cases' Go programs",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tracer-vm-guest"))
        .arg("suite")
        .env("TRACER_AGENT_BIN", agent_binary().unwrap())
        .env("TRACER_GUEST_TOOLS", tools)
        .output()
        .expect("tracer-vm-guest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Shown when the test fails: every case's own lines and the agent's log.
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout
        .lines()
        .find(|l| l.starts_with("TRACER-VM-RESULT"))
        .unwrap_or("no TRACER-VM-RESULT line");
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("TRACER-VM-CASE") && l.contains(" FAIL "))
        .collect();
    assert!(
        out.status.success() && result.starts_with("TRACER-VM-RESULT PASS"),
        "{result} ({}):\n{}",
        out.status,
        failed.join("\n")
    );
}
