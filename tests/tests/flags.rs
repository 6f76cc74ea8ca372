//! Root integration suite: every configuration mistake a user can make in the exchange,
//! sampling and capture flags ends the agent at once with exit status 1 and one line on
//! stderr, `error: …`, that names the flag and says what to do. Nothing is left running.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracer_testkit::harness::{agent_binary, require_root};

/// A token long enough to pass its own check, so the flag under test is the one refused.
const TOKEN: &str = "flags-suite-exchange-token-0123";

/// Runs the agent with `args` (and the exchange token in its environment); returns its exit
/// status and the `error:` lines of its stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(agent_binary().expect("agent binary"))
        .args(args)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("TRACER_EXCHANGE_TOKEN", TOKEN)
        .env_remove("NODE_NAME")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: the agent kept running instead of refusing the flags");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)
        .expect("stderr");
    let errors = stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect();
    (status.code(), errors)
}

/// Flags, environment beside the token, and what the one error line must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn mistakes_in_flags_end_the_agent_with_one_line_that_says_what_to_do() {
    require_root();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let cases: &[Case] = &[
        (&["--peer", "foo"], &[], "--peer \"foo\" is not HOST:PORT"),
        (
            &["--peers-from-kubernetes", "app=tracer-agent"],
            &[],
            "--peers-from-kubernetes needs --exchange-addr",
        ),
        (
            &[
                "--peers-from-kubernetes",
                "app=tracer-agent",
                "--exchange-addr",
                "127.0.0.1:0",
            ],
            &[],
            "set NODE_NAME",
        ),
        (
            &[
                "--peer",
                "10.0.0.1:9465",
                "--peers-from-kubernetes",
                "app=x",
            ],
            &[],
            "use either --peer or --peers-from-kubernetes",
        ),
        (
            &["--exchange-addr", &busy_addr],
            &[],
            "choose another address",
        ),
        (
            &["--exchange-addr", "127.0.0.1:0"],
            &[("TRACER_EXCHANGE_TOKEN", "short")],
            "at least 16 printable characters",
        ),
        (
            &["--sample-ratio", "2"],
            &[],
            "set --sample-ratio or OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            &["--capture-bytes", "0"],
            &[],
            "--capture-bytes must be between",
        ),
        (&["--exclude-path", "health"], &[], "must start with `/`"),
        (
            &[],
            &[("TRACER_EXCLUDE_PATHS", "/ok,metrics")],
            "--exclude-path `metrics` must start with `/`",
        ),
        (&["--route", "/a/*/b"], &[], "may only be the last segment"),
    ];
    for (args, env, want) in cases {
        let (code, errors) = run(args, env);
        assert_eq!(
            code,
            Some(1),
            "{args:?}: exit status 1, got {code:?} {errors:?}"
        );
        assert_eq!(errors.len(), 1, "{args:?}: one error line, got {errors:?}");
        assert!(
            errors[0].contains(want),
            "{args:?}: the error says {want:?}: {}",
            errors[0]
        );
    }
    drop(busy);
}
