#!/usr/bin/env python3
"""Prints a seccomp profile for the agent's container under podman: podman's default
profile, except that bpf() and perf_event_open() are allowed to a container holding
CAP_BPF and CAP_PERFMON respectively.

Older containers-common profiles (podman 4.x) allow these two calls only with
CAP_SYS_ADMIN; this keeps the rest of the default filter instead of `seccomp=unconfined`.

    python3 deploy/podman/seccomp-profile.py > tracer-seccomp.json
    podman run --security-opt seccomp=tracer-seccomp.json ...
"""

import json
import sys

DEFAULT = "/usr/share/containers/seccomp.json"
GATED = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    with open(source, encoding="utf-8") as f:
        profile = json.load(f)
    rules = []
    for rule in profile["syscalls"]:
        # Denials of the two calls go; the default action still denies them to a
        # container without the capability.
        if rule.get("action") != "SCMP_ACT_ALLOW":
            rule["names"] = [n for n in rule["names"] if n not in GATED]
        if rule["names"]:
            rules.append(rule)
    for name, cap in GATED.items():
        rules.append(
            {"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
        )
    profile["syscalls"] = rules
    json.dump(profile, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
