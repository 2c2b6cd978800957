//! Image platforms and the rules clients use to pick one entry of an image index.
//!
//! Pure data and pure functions: no I/O, no clock, no host probing. The registry, the mirror and
//! the verifier call [`resolve()`] to answer "which manifest would *this* host pull from *this*
//! index, and could it run it?". Nothing here imports from other berth crates.
//!
//! Three rule sets are reproduced, each from its source (see `../shared/docs/WINDOWS.md`, relative
//! to the repository root):
//!
//! * **containerd** on Windows (`containerd/platforms` `platforms.go` `matcher.Match`,
//!   `platform_windows_compat.go`, `defaults_windows.go` `Default()`): os/arch/variant equality after
//!   normalisation, `os.features` subset with `win32k` ignored (platforms#31), the os.version build
//!   window (with the platforms#34 floor), and the `windowsMatchComparer` order: plain string
//!   compare of `os.version`, descending (platforms#25).
//! * **moby** (dockerd graphdriver path, `moby/moby daemon/internal/distribution/pull_v2_windows.go`):
//!   exact `architecture == runtime.GOARCH`, reject only an image build newer than the host build
//!   (moby#36184), then a stable sort that moves entries whose `os.version` starts with
//!   `"<maj>.<min>.<build>."` to the front. dockerd with the containerd image store uses the
//!   containerd rules: model it as [`ClientRule::Containerd`].
//! * **Linux hosts**, where both clients use `platforms.Only(host)` (`compare.go` `platformVector`;
//!   moby `pull_v2_unix.go`): the host platform plus its fallbacks (amd64 → 386, arm64 → arm/v8..v5,
//!   arm/vN → arm/vN-1..v5), ranked in that order.
//!
//! Pull rules and run rules are kept apart on purpose. The pull matchers above do not know about
//! isolation; [`runnable`] answers with Microsoft's compatibility rules (process isolation needs the
//! same build, or the WS2022+ stable-ABI window; Hyper-V runs any image build <= host build), and
//! [`resolve()`] reports both, so a verification report can say "moby pulls 17763 on this 20348 host
//! and it will fail with 0xc0370101 under process isolation".
//!
//! Stored values are never rewritten: [`Platform::normalized`] returns a copy for comparisons only.
//!
//! This file holds the [`Platform`] type itself: its fields, builders, parsing of
//! `os/arch[/variant][:os.version]` specifiers, display and containerd's normalisation. The rest
//! lives in two submodules, re-exported here so every item keeps its `berth_oci::platform::…`
//! path:
//!
//! * `windows`: Windows `os.version` values ([`WindowsVersion`]: parsing, UBR, numeric order),
//!   the build numbers and names (`ltsc2022` → 20348) and the stable-ABI floor.
//! * `resolve`: the containerd and moby pull matchers and comparators, the Linux platform vector,
//!   Microsoft's run-time rules ([`runnable`]) and the resolver ([`resolve()`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod resolve;
mod windows;

pub use resolve::{
    containerd_windows_cmp, containerd_windows_match, moby_windows_cmp, moby_windows_filter,
    platform_vector, resolve, runnable, Candidate, CandidateVerdict, ClientRule, Compat, Decision,
    Host, Isolation, Resolution, Runnability,
};
pub use windows::{build, ltsc_floor, WindowsVersion, COMPAT_LTSC_RELEASES, NAMED_BUILDS};

// === Errors ===

/// Why a platform specifier or a Windows version string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformError {
    /// Not of the form `os/arch[/variant][:os.version]`.
    Specifier {
        /// The rejected input.
        input: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// An `os.version` whose first three dot-separated components are not numbers in range.
    WindowsVersion {
        /// The rejected input.
        input: String,
        /// What was wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Specifier { input, reason } => write!(f, "invalid platform {input:?}: {reason}"),
            Self::WindowsVersion { input, reason } => {
                write!(f, "invalid Windows os.version {input:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for PlatformError {}

// === Platform ===

/// The `platform` object of an OCI index entry (image-spec `image-index.md`), field for field.
///
/// `variant` and `os.version` are `None` when absent; an empty string is treated like `None` by
/// every rule here, as Go's zero value is. `os.features` is kept byte-exact and in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, e.g. `amd64`, `arm64` (GOARCH values).
    pub architecture: String,
    /// Operating system, e.g. `linux`, `windows` (GOOS values).
    pub os: String,
    /// Full OS version, e.g. `10.0.20348.2340` (Windows: major.minor.build.UBR).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Mandatory OS features, e.g. `["win32k"]` on MCR Server Core images.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant, e.g. `v7` for arm, `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// A platform with just `os` and `architecture`.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Self {
            os: os.into(),
            architecture: architecture.into(),
            ..Self::default()
        }
    }

    /// Sets `os.version` (builder style).
    #[must_use]
    pub fn with_os_version(mut self, v: impl Into<String>) -> Self {
        self.os_version = Some(v.into());
        self
    }

    /// Sets `variant` (builder style).
    #[must_use]
    pub fn with_variant(mut self, v: impl Into<String>) -> Self {
        self.variant = Some(v.into());
        self
    }

    /// Sets `os.features` (builder style).
    #[must_use]
    pub fn with_features<S: Into<String>>(mut self, f: impl IntoIterator<Item = S>) -> Self {
        self.os_features = f.into_iter().map(Into::into).collect();
        self
    }

    /// The variant, with `Some("")` read as absent.
    pub fn variant_str(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }

    /// The os.version, with `Some("")` read as absent.
    pub fn os_version_str(&self) -> &str {
        self.os_version.as_deref().unwrap_or("")
    }

    /// True when `os` is `windows` (ASCII case-insensitive, as moby's `strings.EqualFold`).
    pub fn is_windows(&self) -> bool {
        self.os.eq_ignore_ascii_case("windows")
    }

    /// The parsed Windows version, if `os.version` has three numeric components.
    pub fn windows_version(&self) -> Option<WindowsVersion> {
        self.os_version.as_deref().and_then(|v| v.parse().ok())
    }

    /// containerd's `Normalize` (`platforms.go`, `database.go`): lowercases `os`, maps `macos` to
    /// `darwin`, normalises architecture and variant ([`normalize_arch`]) and sorts and dedups
    /// `os.features`. `os.version` is untouched. An empty `os` stays empty here; the matchers
    /// substitute the host's OS for it, as containerd substitutes `runtime.GOOS`.
    #[must_use]
    pub fn normalized(&self) -> Self {
        let mut os = self.os.to_ascii_lowercase();
        if os == "macos" {
            os = "darwin".to_owned();
        }
        let (architecture, variant) = normalize_arch(&self.architecture, self.variant_str());
        let mut os_features = self.os_features.clone();
        os_features.sort();
        os_features.dedup();
        Self {
            architecture,
            os,
            os_version: self.os_version.clone().filter(|v| !v.is_empty()),
            os_features,
            variant: (!variant.is_empty()).then_some(variant),
        }
    }
}

/// containerd's `normalizeArch` (`database.go`): lowercases both, then `i386`→`386`,
/// `x86_64`/`x86-64`→`amd64` (variant `v1` dropped), `aarch64`→`arm64` (variant `8`/`v8` dropped,
/// v8 being the default), `armhf`→`arm/v7`, `armel`→`arm/v6`, and `arm` gets `v7` when no variant
/// is given (`5`/`6`/`7`/`8` gain a `v`). Other architectures pass through lowercased.
pub fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".into(),
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64".into(),
            if variant == "8" || variant == "v8" {
                String::new()
            } else {
                variant
            },
        ),
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".to_owned(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

/// Characters containerd allows in a specifier component (`specifierRe`).
fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant][:os.version]`, e.g. `windows/amd64:10.0.20348.2340` or
    /// `linux/arm64/v8`. The parts are kept as written (call [`Platform::normalized`] to compare);
    /// containerd's own `Parse` uses `windows(10.0.20348)/amd64` instead of the `:` suffix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PlatformError::Specifier {
            input: s.to_owned(),
            reason,
        };
        let (spec, version) = match s.split_once(':') {
            Some((spec, v)) if valid_component(v) => (spec, Some(v.to_owned())),
            Some(_) => {
                return Err(err(
                    "os.version after ':' is empty or has invalid characters",
                ))
            }
            None => (s, None),
        };
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(err("expected os/arch[/variant]"));
        }
        if !parts.iter().all(|p| valid_component(p)) {
            return Err(err(
                "a component is empty or has characters outside [A-Za-z0-9_.-]",
            ));
        }
        Ok(Self {
            architecture: parts[1].to_owned(),
            os: parts[0].to_owned(),
            os_version: version,
            os_features: Vec::new(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl Platform {
    /// A host platform as people write it: on Windows, `os.version` may be a named build
    /// (`windows/amd64:ltsc2022`), read as that build without a revision (`10.0.20348`);
    /// anything else there must be a Windows version. Other systems pass unchanged.
    pub fn with_named_build(mut self) -> Result<Self, PlatformError> {
        if !self.os.eq_ignore_ascii_case("windows") {
            return Ok(self);
        }
        let Some(v) = self.os_version.as_deref().filter(|v| !v.is_empty()) else {
            return Ok(self);
        };
        if v.parse::<WindowsVersion>().is_ok() {
            return Ok(self);
        }
        match WindowsVersion::build_for_name(v) {
            Some(b) => {
                self.os_version = Some(format!("10.0.{b}"));
                Ok(self)
            }
            None => Err(PlatformError::WindowsVersion {
                input: v.to_owned(),
                reason: "neither a Windows version (10.0.20348.2340) nor a named build (ltsc2019, ltsc2022, ltsc2025, 1809, 20h2, ...)",
            }),
        }
    }
}

impl fmt::Display for Platform {
    /// `os/arch[/variant][:os.version]`; `os.features` are not part of this form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant_str().is_empty() {
            write!(f, "/{}", self.variant_str())?;
        }
        if !self.os_version_str().is_empty() {
            write!(f, ":{}", self.os_version_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A platform from `os/arch[/variant][:os.version]` plus `+feature` suffixes; shared with the
    /// submodules' tests.
    pub(super) fn plat(spec: &str) -> Platform {
        let mut parts = spec.split('+');
        let mut p: Platform = parts.next().unwrap().parse().unwrap();
        p.os_features = parts.map(str::to_owned).collect();
        p
    }

    #[test]
    fn named_builds_name_hosts() {
        for (spec, want) in [
            ("windows/amd64:ltsc2022", Ok(Some("10.0.20348"))),
            ("windows/amd64:LTSC2019", Ok(Some("10.0.17763"))),
            ("windows/amd64:1809", Ok(Some("10.0.17763"))),
            ("windows/amd64:10.0.26100.1", Ok(Some("10.0.26100.1"))),
            ("windows/amd64", Ok(None)),
            ("linux/amd64:whatever", Ok(Some("whatever"))),
            ("windows/amd64:ltsc2099", Err(())),
            ("windows/amd64:10.x", Err(())),
        ] {
            let got = spec
                .parse::<Platform>()
                .unwrap()
                .with_named_build()
                .map(|p| p.os_version)
                .map_err(|_| ());
            assert_eq!(got, want.map(|v| v.map(str::to_owned)), "{spec}");
        }
    }

    #[test]
    fn platform_parse_and_display() {
        let p: Platform = "windows/amd64:10.0.20348.2340".parse().unwrap();
        assert_eq!(
            p,
            Platform::new("windows", "amd64").with_os_version("10.0.20348.2340")
        );
        assert_eq!(p.to_string(), "windows/amd64:10.0.20348.2340");
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(p.normalized().variant, None);
        let p: Platform = "windows/arm64/v8:10.0.26100.1".parse().unwrap();
        assert_eq!(
            (p.variant_str(), p.os_version_str()),
            ("v8", "10.0.26100.1")
        );
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/amd64:",
            "linux/am d64",
            "linux/amd64:10 0",
            "linux//v7",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} should not parse");
        }
        let e = "linux".parse::<Platform>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid platform \"linux\": expected os/arch[/variant]"
        );
    }

    #[test]
    fn normalization_matches_containerd() {
        let n = |s: &str| plat(s).normalized().to_string();
        assert_eq!(n("linux/x86_64"), "linux/amd64");
        assert_eq!(n("linux/x86-64/v1"), "linux/amd64");
        assert_eq!(n("linux/amd64/v3"), "linux/amd64/v3");
        assert_eq!(n("linux/aarch64"), "linux/arm64");
        assert_eq!(n("linux/aarch64/8"), "linux/arm64");
        assert_eq!(n("linux/arm64/v8"), "linux/arm64");
        assert_eq!(n("linux/arm64/v8.2"), "linux/arm64/v8.2");
        assert_eq!(n("linux/armhf"), "linux/arm/v7");
        assert_eq!(n("linux/armel"), "linux/arm/v6");
        assert_eq!(n("linux/arm"), "linux/arm/v7");
        assert_eq!(n("linux/arm/6"), "linux/arm/v6");
        assert_eq!(n("linux/i386"), "linux/386");
        assert_eq!(n("Linux/AMD64"), "linux/amd64");
        assert_eq!(n("macos/arm64"), "darwin/arm64");
        assert_eq!(n("linux/ppc64le"), "linux/ppc64le");
        let p = plat("windows/amd64:10.0.20348.1+win32k+b+win32k").normalized();
        assert_eq!(p.os_features, ["b", "win32k"]);
    }

    #[test]
    fn serde_uses_oci_names() {
        let json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.5458","os.features":["win32k"]}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p.os_version.as_deref(), Some("10.0.17763.5458"));
        assert_eq!(p.os_features, ["win32k"]);
        assert_eq!(p.variant, None);
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
        let p: Platform =
            serde_json::from_str(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
                .unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
    }
}
