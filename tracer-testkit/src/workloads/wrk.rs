//! wrk: pipelined load on one connection.

use std::process::Command;

use super::{TempDir, run_client};
use anyhow::{Context as _, Result, ensure};

/// wrk's own pipelining example (`scripts/pipeline.lua`): each write carries three
/// requests, the next three go out when all three answers arrived. Added: it stops the
/// thread after `args[1]` responses (a multiple of three, on one connection), so no request
/// is in flight when wrk exits and every count below is exact.
pub const WRK_PIPELINE_LUA: &str = r#"
local stop_after = 0
local seen = 0

init = function(args)
   stop_after = tonumber(args[1])
   local r = {}
   r[1] = wrk.format(nil, "/small.txt?p=1")
   r[2] = wrk.format(nil, "/small.txt?p=2")
   r[3] = wrk.format(nil, "/small.txt?p=3")
   req = table.concat(r)
end

request = function()
   return req
end

response = function(status, headers, body)
   seen = seen + 1
   if seen >= stop_after then
      wrk.thread:stop()
   end
end
"#;

/// Runs wrk on one connection with the pipelining script until it has `requests`
/// responses (at most 60 s); returns its pid and the requests it reports.
pub fn wrk_pipelined(dir: &TempDir, base_url: &str, requests: u64) -> Result<(u32, u64)> {
    ensure!(requests.is_multiple_of(3), "wrk pipelines by three");
    let script = dir.write("pipeline.lua", WRK_PIPELINE_LUA)?;
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c1", "-d60s", "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(base_url)
        .arg("--")
        .arg(requests.to_string());
    let (pid, out) = run_client(cmd, "wrk (install it, or run `cargo xtask test`)")?;
    // "  12345 requests in 1.00s, 3.45MB read"
    let reported = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .with_context(|| format!("no request count in wrk's output: {out}"))?;
    ensure!(
        !out.contains("Socket errors") && !out.contains("Non-2xx"),
        "wrk saw errors: {out}"
    );
    Ok((pid, reported))
}
