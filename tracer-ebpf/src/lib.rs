//! The eBPF programs are the binary target; this empty library only lets the agent list the
//! crate as a build dependency so cargo rebuilds the agent when it changes.
#![no_std]
