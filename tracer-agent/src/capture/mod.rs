//! Kernel side, seen from user space: preflight checks, BTF offsets, loading and attaching the
//! eBPF programs, and decoding what they send.

pub mod adopt;
pub mod btf;
pub mod events;
pub mod features;
pub mod loader;
pub mod preflight;
pub mod python;
pub mod stack;
