//! The `hcs` runner: boots Windows images through the Host Compute Service.
//!
//! Layout, after hcsshim's split (docs/HCS.md has the call sequence and what is and is not
//! verified):
//!
//! * [`api`]: the [`api::HcsApi`] trait, one method per HCS call, with [`api::HcsError`]
//!   (HRESULT + HCS message) and [`api::classify`] (infrastructure, image or incompatible).
//! * [`doc`]: the HCS JSON documents (schema 2.1) as pure, deterministic builders.
//! * [`unpack`]: Windows layer tars (`Files/`, `Hives/`, `UtilityVM/`) to layer folders.
//! * [`runner`]: [`runner::HcsRunner`], the [`crate::runner::Runner`] over any `HcsApi`: the
//!   sequence, timeouts, verdicts and cleanup. Cross-platform.
//! * [`double`]: [`double::HcsDouble`], the **test double** of `HcsApi` (records, scripts,
//!   validates, reports leaks). Results of a runner over it are marked simulated.
//! * `windows` (Windows only): `RealHcs`, the `HcsApi` over computecore.dll and
//!   computestorage.dll with the `windows` crate. The only module with `unsafe`. It is
//!   type-checked for `x86_64-pc-windows-gnu` in CI (tests/windows-check.sh) but has never been
//!   run here: running it needs a Windows host with the Containers feature.
//!
//! Entry points for the worker: [`double_runner`], and on Windows `real_runner` and
//! `host_platform`.

pub mod api;
pub mod doc;
pub mod double;
pub mod runner;
pub mod unpack;
#[cfg(windows)]
pub mod windows;

use std::sync::Arc;

pub use double::{HcsDouble, Script};
pub use runner::{HcsConfig, HcsRunner};

/// The runner over the HCS test double (`name() == "hcs-double"`, `simulated() == true`),
/// with probes exiting 0. Keep the `Arc` to script or inspect the double.
pub fn double_runner(double: Arc<HcsDouble>) -> HcsRunner<HcsDouble> {
    HcsRunner::new(double)
}

/// The runner over the real Host Compute Service (`name() == "hcs"`).
#[cfg(windows)]
pub fn real_runner() -> HcsRunner<windows::RealHcs> {
    HcsRunner::new(Arc::new(windows::RealHcs::new()))
}

/// This host's platform: `windows/<arch>` with `os.version` = `major.minor.build.UBR` read from
/// `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion` (`os.version` is left out if the
/// registry cannot be read, which makes every image's version check fail closed).
#[cfg(windows)]
pub fn host_platform() -> berth_oci::platform::Platform {
    windows::host_platform()
}
