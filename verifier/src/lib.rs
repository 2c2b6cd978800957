//! `berth-verifier`: a worker that claims verification jobs from a berth registry, pulls the
//! candidate image variant through the registry API (every digest checked), boots it with a
//! runner and reports the result.
//!
//! It talks to the registry over HTTP like any client and depends only on `berth-oci`, so it
//! builds for Windows alone.

pub mod client;
pub mod hcs;
#[cfg(target_os = "linux")]
pub mod oci_runtime;
pub mod runner;
#[cfg(target_os = "linux")]
pub mod seccomp;
#[cfg(target_os = "linux")]
pub mod shim;
pub mod unpack;
pub mod workdir;
pub mod worker;
