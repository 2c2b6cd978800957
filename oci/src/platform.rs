//! Image platforms and the rules clients use to pick one entry of an image index.
//!
//! Pure data and pure functions: no I/O, no clock, no host probing. The registry, the mirror and
//! the verifier call [`resolve`] to answer "which manifest would *this* host pull from *this*
//! index, and could it run it?". Nothing here imports from other berth crates.
//!
//! Three rule sets are reproduced, each from its source (see `/work/shared/docs/WINDOWS.md`):
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
//! [`resolve`] reports both, so a verification report can say "moby pulls 17763 on this 20348 host
//! and it will fail with 0xc0370101 under process isolation".
//!
//! Stored values are never rewritten: [`Platform::normalized`] returns a copy for comparisons only.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

// === Windows build numbers ===

/// Windows build numbers that matter for container images (hcsshim `osversion/windowsbuilds.go`,
/// containerd/platforms `platform_windows_compat.go`).
pub mod build {
    /// Windows Server 2016 / Windows 10 1607 (ltsc2016). UBR must match under process isolation.
    pub const LTSC2016: u32 = 14393;
    /// Windows Server 2019 / Windows 10 1809 (ltsc2019, "RS5"). First build where UBRs may differ.
    pub const LTSC2019: u32 = 17763;
    /// Windows Server / Windows 10 version 1903.
    pub const V1903: u32 = 18362;
    /// Windows Server / Windows 10 version 1909.
    pub const V1909: u32 = 18363;
    /// Windows Server / Windows 10 version 2004.
    pub const V2004: u32 = 19041;
    /// Windows Server / Windows 10 version 20H2.
    pub const V20H2: u32 = 19042;
    /// Windows Server 2022 (ltsc2022): the first stable-ABI release.
    pub const LTSC2022: u32 = 20348;
    /// Windows 11 21H2.
    pub const WIN11_21H2: u32 = 22000;
    /// Windows 11 22H2.
    pub const WIN11_22H2: u32 = 22621;
    /// Windows Server annual channel 23H2.
    pub const V23H2: u32 = 25398;
    /// Windows Server 2025 (ltsc2025) / Windows 11 24H2.
    pub const LTSC2025: u32 = 26100;
    /// Windows 11 25H2, a build past the latest LTSC (the platforms#34 case).
    pub const WIN11_25H2: u32 = 26200;
}

/// Stable-ABI LTSC releases, ascending (containerd/platforms `compatLTSCReleases`).
pub const COMPAT_LTSC_RELEASES: [u32; 2] = [build::LTSC2022, build::LTSC2025];

/// Names that mirror filters may use for a build; the first name of a build is its canonical one.
/// Matching is ASCII case-insensitive. Ambiguous names ("21H2" is 19044, 20348 and 22000) are left out.
pub const NAMED_BUILDS: &[(&str, u32)] = &[
    ("ltsc2016", build::LTSC2016),
    ("1607", build::LTSC2016),
    ("ltsc2019", build::LTSC2019),
    ("1809", build::LTSC2019),
    ("1903", build::V1903),
    ("1909", build::V1909),
    ("2004", build::V2004),
    ("20h2", build::V20H2),
    ("ltsc2022", build::LTSC2022),
    ("win11-21h2", build::WIN11_21H2),
    ("win11-22h2", build::WIN11_22H2),
    ("23h2", build::V23H2),
    ("ltsc2025", build::LTSC2025),
    ("win11-24h2", build::LTSC2025),
    ("win11-25h2", build::WIN11_25H2),
];

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

// === WindowsVersion ===

/// A Windows `os.version`: `major.minor.build[.ubr]`, e.g. `10.0.20348.2340`.
///
/// Parsing follows containerd's `getWindowsOSVersion`: the first three dot-separated components
/// must be unsigned decimal numbers that fit containerd's widths (major and minor <= 255, build <=
/// 65535); fewer than three components is an error. The fourth component (UBR, the monthly patch
/// revision) is optional and, if it is not a number, is read as absent rather than rejected.
/// Anything after it is ignored. The derived order compares numerically, UBR last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WindowsVersion {
    /// Major version, 10 for every container-capable Windows.
    pub major: u32,
    /// Minor version, 0 for every container-capable Windows.
    pub minor: u32,
    /// Build: changes with each release (14393, 17763, 20348, 26100, ...).
    pub build: u32,
    /// Update build revision: changes with monthly patches.
    pub ubr: Option<u32>,
}

impl WindowsVersion {
    /// `10.0.<build>` with no UBR.
    pub const fn ten(build: u32) -> Self {
        Self {
            major: 10,
            minor: 0,
            build,
            ubr: None,
        }
    }

    /// The build for a name in [`NAMED_BUILDS`] (`ltsc2022` → 20348), case-insensitive.
    pub fn build_for_name(name: &str) -> Option<u32> {
        NAMED_BUILDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, b)| *b)
    }

    /// The canonical name of a build (20348 → `ltsc2022`), if it has one.
    pub fn name_for_build(build: u32) -> Option<&'static str> {
        NAMED_BUILDS
            .iter()
            .find(|(_, b)| *b == build)
            .map(|(n, _)| *n)
    }

    /// `major.minor.build`, the prefix moby matches (it appends a `.`).
    pub fn build_prefix(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// Parses one component with Go `strconv.ParseUint(s, 10, bits)` semantics: digits only (no sign,
/// no spaces), value <= `max`.
fn parse_component(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|n| *n <= max)
}

impl FromStr for WindowsVersion {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PlatformError::WindowsVersion {
            input: s.to_owned(),
            reason,
        };
        let mut parts = s.split('.');
        let mut next = |max, what| {
            parts
                .next()
                .and_then(|p| parse_component(p, max))
                .ok_or(what)
        };
        let major = next(255, "major is not a number in 0..=255").map_err(err)?;
        let minor = next(255, "minor is not a number in 0..=255").map_err(err)?;
        let build = next(65535, "build is not a number in 0..=65535").map_err(err)?;
        let ubr = parts.next().and_then(|p| parse_component(p, u32::MAX));
        Ok(Self {
            major,
            minor,
            build,
            ubr,
        })
    }
}

impl TryFrom<String> for WindowsVersion {
    type Error = PlatformError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WindowsVersion> for String {
    fn from(v: WindowsVersion) -> Self {
        v.to_string()
    }
}

impl fmt::Display for WindowsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)?;
        match self.ubr {
            Some(ubr) => write!(f, ".{ubr}"),
            None => Ok(()),
        }
    }
}

/// The oldest image build a host at `host_build` (>= 20348) runs under process isolation.
///
/// This is containerd/platforms#34 ("largest LTSC <= host, then step one back"): every host from
/// LTSC N up to LTSC N+1 runs images from LTSC N-1 up to its own build, so 20348, 22621, 25398,
/// 26100 and 26200 all get 20348. It is implemented rather than the code before it ("newest LTSC
/// strictly below the host") because that version gives a 26200 host the floor 26100 and drops
/// WS2022 images, contradicting Microsoft's stable-ABI policy; #34 ships in platforms v1.0.0-rc.5.
/// Clients still on older platforms (and hcsshim's `CheckHostAndContainerCompat`) differ only for
/// hosts above 26100.
pub fn ltsc_floor(host_build: u32) -> u32 {
    match COMPAT_LTSC_RELEASES
        .iter()
        .rposition(|ltsc| host_build >= *ltsc)
    {
        Some(i) if i > 0 => COMPAT_LTSC_RELEASES[i - 1],
        _ => COMPAT_LTSC_RELEASES[0],
    }
}

/// containerd's `checkWindowsHostAndContainerCompat` with the #34 floor: `Ok` with why it matches,
/// `Err` with why not. Does not look at UBR.
fn build_window(host: &WindowsVersion, image: &WindowsVersion) -> Result<String, String> {
    if (host.major, host.minor) != (image.major, image.minor) {
        return Err(format!(
            "os.version {} is {}.{}, host is {}.{}",
            image, image.major, image.minor, host.major, host.minor
        ));
    }
    if host.build < build::LTSC2022 {
        return if image.build == host.build {
            Ok(format!("build {} equals host build", image.build))
        } else {
            Err(format!(
                "os.version {} build {} differs from host {} (hosts before 20348 need the same build)",
                image, image.build, host.build
            ))
        };
    }
    let floor = ltsc_floor(host.build);
    if image.build > host.build {
        Err(format!(
            "os.version {} build {} is newer than host {}",
            image, image.build, host.build
        ))
    } else if image.build < floor {
        Err(format!(
            "os.version {} build {} is below the stable-ABI floor {} of host {}",
            image, image.build, floor, host.build
        ))
    } else {
        Ok(format!(
            "build {} within stable-ABI window [{}, {}]",
            image.build, floor, host.build
        ))
    }
}

// === Host, isolation, rules ===

/// How the host runs Windows containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Shared kernel ("Argon"): builds must match, or fall in the WS2022+ stable-ABI window.
    Process,
    /// Utility VM ("Xenon"): any image build <= host build.
    #[serde(rename = "hyperv")]
    HyperV,
}

/// Which client's selection rules to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientRule {
    /// containerd / CRI / nerdctl, and dockerd with the containerd image store: the host matcher
    /// `platforms.Default()`. Per-runtime-class guest platforms (KEP-4216, containerd#9014) and the
    /// pre-`containerd/platforms` in-tree matcher (prefix match, exact-UBR first) are not modelled.
    Containerd,
    /// dockerd's graphdriver distribution code.
    Moby,
}

/// A host that pulls from an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Host platform. On Windows, `os.version` is the host's version (containerd reads only
    /// major.minor.build; the UBR is used by [`runnable`] for the 14393 revision rule) and
    /// `os.features` what the host offers (containerd's default host declares none).
    pub platform: Platform,
    /// Isolation the container will run with; ignored for Linux hosts.
    pub isolation: Isolation,
    /// Client whose pull rules apply.
    pub rule: ClientRule,
}

/// One entry of an image index, as the resolver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Position in the index's `manifests` array (list order matters to moby).
    pub index: usize,
    /// Manifest digest, e.g. `sha256:…`; carried through, not validated here.
    pub digest: String,
    /// The entry's platform. (Entries without one are matched last by both clients; give them a
    /// platform or leave them out.)
    pub platform: Platform,
}

/// Whether one client's pull filter keeps a candidate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Kept by the filter.
    pub kept: bool,
    /// Human-readable reason, e.g. `os.version 10.0.17763.1 build 17763 differs from host 20348 …`.
    pub reason: String,
}

impl Decision {
    fn keep(reason: impl Into<String>) -> Self {
        Self {
            kept: true,
            reason: reason.into(),
        }
    }
    fn reject(reason: impl Into<String>) -> Self {
        Self {
            kept: false,
            reason: reason.into(),
        }
    }
}

/// Microsoft's answer to "can this host run this image".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runnability {
    /// Supported combination.
    Runnable,
    /// Refused, e.g. HCS `0xc0370101` for a build mismatch under process isolation.
    NotRunnable,
    /// Not decidable from the metadata (no or unparseable os.version, unknown revision).
    Unknown,
}

/// A [`Runnability`] with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compat {
    /// The verdict.
    pub verdict: Runnability,
    /// Why.
    pub reason: String,
}

impl Compat {
    fn new(verdict: Runnability, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            reason: reason.into(),
        }
    }
}

/// The resolver's answer for one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateVerdict {
    /// [`Candidate::index`].
    pub index: usize,
    /// [`Candidate::digest`].
    pub digest: String,
    /// Kept by the client's filter.
    pub kept: bool,
    /// Position in the client's sorted order among kept entries (0 is pulled); `None` if dropped.
    pub rank: Option<usize>,
    /// Why it was kept or dropped.
    pub reason: String,
}

/// What a host's client would pull from an index, and what would happen at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The entry the client pulls, or `None` ("no matching manifest").
    pub chosen: Option<Candidate>,
    /// One verdict per candidate, in input order.
    pub verdicts: Vec<CandidateVerdict>,
    /// [`runnable`] for the chosen entry under the host's isolation.
    pub chosen_compat: Option<Compat>,
    /// True when the host uses process isolation and the chosen entry is not runnable that way:
    /// the pull succeeds and the run fails (moby keeps older builds for Hyper-V's sake).
    pub process_mismatch: bool,
    /// Indices of candidates runnable under the host's isolation that the client's filter dropped,
    /// e.g. older builds under Hyper-V on containerd (containerd#6862, KEP-4216).
    pub missed_runnable: Vec<usize>,
    /// Remarks for reports, e.g. a newer UBR of the same build losing the ordering.
    pub notes: Vec<String>,
}

impl Resolution {
    /// Digest of the chosen entry.
    pub fn chosen_digest(&self) -> Option<&str> {
        self.chosen.as_ref().map(|c| c.digest.as_str())
    }
}

// === Shared helpers ===

/// Image platform normalised the way a client on `host` sees it: an empty `os` becomes the
/// host's (containerd's `normalizeOS` falls back to `runtime.GOOS`).
fn normalized_for(image: &Platform, host: &Platform) -> Platform {
    let mut p = image.normalized();
    if p.os.is_empty() {
        p.os = host.os.clone();
    }
    p
}

fn show_features(f: &[String]) -> String {
    format!("[{}]", f.join(", "))
}

fn show_opt(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

/// containerd's os.features rule: the image's (normalised) features must be a subset of the
/// host's; on a Windows host `win32k` is removed from the image's list first (platforms#31,
/// because Nano Server lacks win32k.sys and containerd's host declares no features).
fn features_ok(host: &Platform, image: &Platform) -> Result<(), String> {
    let have: BTreeSet<&str> = host.os_features.iter().map(String::as_str).collect();
    let windows = host.os == "windows";
    let missing: Vec<String> = image
        .os_features
        .iter()
        .filter(|f| {
            let ignored = windows && f.as_str() == "win32k";
            !ignored && !have.contains(f.as_str())
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "os.features {} not offered by host {}{}",
        show_features(&missing),
        show_features(&host.os_features),
        if windows { " (win32k ignored)" } else { "" }
    ))
}

// === containerd, Windows host ===

/// containerd's Windows matcher: `matcher.Match` of `NewMatcher(host)` for a Windows host.
///
/// In order: `os`, `architecture` and `variant` equal after normalisation; the os.version check
/// (host without a parseable version matches everything; empty image version matches; otherwise
/// [`ltsc_floor`]'s window, same build below 20348); `os.features` subset with `win32k` ignored.
/// Isolation plays no part (containerd#6862).
pub fn containerd_windows_match(host: &Platform, image: &Platform) -> Decision {
    let host = host.normalized();
    let img = normalized_for(image, &host);
    if let Err(why) = os_arch_variant_equal(&host, &img) {
        return Decision::reject(why);
    }
    let version = match (host.windows_version(), img.os_version_str()) {
        (None, _) => "host has no os.version, so any image version matches".to_owned(),
        (Some(_), "") => "empty os.version matches any host build (containerd#7431)".to_owned(),
        (Some(h), v) => match v.parse::<WindowsVersion>() {
            Err(_) => {
                return Decision::reject(format!(
                    "os.version {v:?} lacks three numeric components; containerd reads it as 0.0.0, which never matches"
                ))
            }
            Ok(i) => match build_window(&h, &i) {
                Ok(why) => why,
                Err(why) => return Decision::reject(why),
            },
        },
    };
    match features_ok(&host, &img) {
        Ok(()) => Decision::keep(version),
        Err(why) => Decision::reject(why),
    }
}

fn os_arch_variant_equal(host: &Platform, img: &Platform) -> Result<(), String> {
    if img.os != host.os {
        return Err(format!("os {} differs from host {}", img.os, host.os));
    }
    if img.architecture != host.architecture {
        return Err(format!(
            "architecture {} differs from host {}",
            img.architecture, host.architecture
        ));
    }
    if img.variant_str() != host.variant_str() {
        return Err(format!(
            "variant {} differs from host {}",
            show_opt(img.variant_str()),
            show_opt(host.variant_str())
        ));
    }
    Ok(())
}

/// containerd's `windowsMatchComparer.Less` between two matching entries, as an `Ordering` for a
/// stable sort (`Less` first): `os.version` as a **plain string**, descending (platforms#25).
///
/// The string compare misranks revisions of different lengths: `"10.0.20348.999"` sorts before
/// `"10.0.20348.1000"`, so the older patch is pulled. An empty os.version sorts after any other.
pub fn containerd_windows_cmp(a: &Platform, b: &Platform) -> Ordering {
    b.os_version_str().cmp(a.os_version_str())
}

// === moby, Windows host ===

/// moby's `filterManifests` + `checkImageCompatibility` for one entry on a Windows host.
///
/// `architecture` must equal the host's GOARCH **as written** (no normalisation: `x86_64` is
/// dropped), `os` must be `windows` case-insensitively (`image.CheckOS`). For the os.version, only
/// a numeric third component greater than the host build rejects; an empty, short or non-numeric
/// version is kept. Variant and `os.features` are not looked at. With no host version the build
/// check is skipped (the real daemon always knows its build).
pub fn moby_windows_filter(host: &Platform, image: &Platform) -> Decision {
    let host = host.normalized();
    if image.architecture != host.architecture {
        return Decision::reject(format!(
            "architecture {:?} is not exactly {:?} (moby compares runtime.GOARCH unnormalised)",
            image.architecture, host.architecture
        ));
    }
    if !image.os.eq_ignore_ascii_case(&host.os) {
        return Decision::reject(format!(
            "os {} is not the host's {}",
            show_opt(&image.os),
            host.os
        ));
    }
    let v = image.os_version_str();
    let parts: Vec<&str> = v.split('.').collect();
    // Go's strconv.Atoi: optional sign, decimal digits; i64 parsing matches for these inputs.
    let image_build = if parts.len() >= 3 {
        parts[2].parse::<i64>().ok()
    } else {
        None
    };
    match (host.windows_version(), image_build) {
        (None, _) => Decision::keep("host has no os.version; build check skipped"),
        (_, None) if v.is_empty() => Decision::keep("empty os.version; moby keeps it"),
        (_, None) => Decision::keep(format!(
            "os.version {v:?} has no numeric build; moby keeps it"
        )),
        (Some(h), Some(b)) if b > i64::from(h.build) => Decision::reject(format!(
            "os.version {v} build {b} is newer than host {} (moby#36184)",
            h.build
        )),
        (Some(h), Some(b)) => Decision::keep(format!(
            "build {b} not newer than host {}; moby ignores isolation and revision",
            h.build
        )),
    }
}

/// moby's `manifestsByVersion.Less` as an `Ordering` for a stable sort: Windows entries first,
/// then entries whose os.version starts with `"<maj>.<min>.<build>."` of the host (note the dot:
/// a bare `10.0.20348` does not count). Everything else keeps list order; UBR is never compared.
pub fn moby_windows_cmp(host: &WindowsVersion, a: &Platform, b: &Platform) -> Ordering {
    let prefix = format!("{}.", host.build_prefix());
    let key = |p: &Platform| (!p.is_windows(), !p.os_version_str().starts_with(&prefix));
    key(a).cmp(&key(b))
}

// === Linux host: platforms.Only ===

/// containerd's `platformVector` for `platforms.Only(host)`: the host platform, then what it can
/// also run, best first. amd64/vN adds amd64/vN-1..v1 then 386; arm/vN adds arm/vN-1..v5; arm64
/// adds lower arm64 minors (v9.x also v8.x+5) then the arm vector from v8.
pub fn platform_vector(host: &Platform) -> Vec<Platform> {
    let host = host.normalized();
    let mut out = vec![host.clone()];
    push_fallbacks(&host, &mut out);
    out.into_iter().map(|p| p.normalized()).collect()
}

fn with_arch(p: &Platform, arch: &str, variant: String) -> Platform {
    Platform {
        architecture: arch.to_owned(),
        variant: (!variant.is_empty()).then_some(variant),
        ..p.clone()
    }
}

/// Go's `strconv.Atoi(strings.TrimPrefix(s, "v"))`.
fn atoi_v(s: &str) -> Option<i64> {
    s.strip_prefix('v').unwrap_or(s).parse().ok()
}

fn push_fallbacks(p: &Platform, out: &mut Vec<Platform>) {
    let variant = p.variant_str().to_owned();
    match p.architecture.as_str() {
        "amd64" => {
            if let Some(n) = atoi_v(&variant).filter(|n| *n > 1) {
                out.extend((1..n).rev().map(|v| with_arch(p, "amd64", format!("v{v}"))));
            }
            out.push(with_arch(p, "386", String::new()));
        }
        "arm" => {
            if let Some(n) = atoi_v(&variant).filter(|n| *n > 5) {
                out.extend((5..n).rev().map(|v| with_arch(p, "arm", format!("v{v}"))));
            }
        }
        "arm64" => {
            let mut variant = if variant.is_empty() {
                "v8".to_owned()
            } else {
                variant
            };
            let (major_s, minor_s) = match variant.split_once('.') {
                Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
                None => (variant.clone(), None),
            };
            if let Some(mut major) = atoi_v(&major_s).filter(|m| *m >= 8) {
                // containerd only reads the minor of four-character variants ("v8.2", not "v8.10").
                let mut minor = match (&minor_s, variant.len() == 4) {
                    (Some(m), true) => m.parse::<i64>().unwrap_or(0),
                    _ => 0,
                };
                let name = |maj: i64, min: i64| {
                    if min == 0 {
                        format!("v{maj}")
                    } else {
                        format!("v{maj}.{min}")
                    }
                };
                if major == 9 {
                    out.extend((0..minor).rev().map(|m| with_arch(p, "arm64", name(9, m))));
                    minor += 5;
                    major = 8;
                    out.push(with_arch(p, "arm64", format!("v8.{minor}")));
                }
                out.extend(
                    (0..minor)
                        .rev()
                        .map(|m| with_arch(p, "arm64", name(major, m))),
                );
            }
            if variant.starts_with("v8.") || variant.starts_with("v9.") {
                variant = "v8".to_owned();
            }
            let arm = with_arch(p, "arm", variant);
            out.push(arm.clone());
            push_fallbacks(&arm, out);
        }
        _ => {}
    }
}

/// `platforms.Only(host)` for one entry: `Ok(rank)` with the position of the first vector entry
/// it matches (lower is preferred), or `Err(reason)`. No os.version check (Linux hosts have none).
fn only_match(vector: &[Platform], image: &Platform) -> Result<usize, String> {
    let Some(host) = vector.first() else {
        return Err("empty platform vector".to_owned());
    };
    let img = normalized_for(image, host);
    let mut feature_err = None;
    for (rank, want) in vector.iter().enumerate() {
        if os_arch_variant_equal(want, &img).is_ok() {
            match features_ok(want, &img) {
                Ok(()) => return Ok(rank),
                Err(why) => feature_err = Some(why),
            }
        }
    }
    if let Some(why) = feature_err {
        return Err(why);
    }
    if img.os != host.os {
        return Err(format!("os {} differs from host {}", img.os, host.os));
    }
    let accepted: Vec<String> = vector
        .iter()
        .map(|p| {
            Platform {
                os_version: None,
                ..p.clone()
            }
            .to_string()
        })
        .collect();
    Err(format!(
        "{} is not among the host's accepted platforms [{}]",
        Platform {
            os_version: None,
            ..img
        },
        accepted.join(", ")
    ))
}

// === Run-time compatibility ===

/// Can `host` run `image` under `host.isolation`, by Microsoft's rules (MicrosoftDocs
/// `version-compatibility.md`) and, for Linux, containerd's platform vector?
///
/// Windows, process isolation: major.minor equal; below 20348 the build must equal the host's,
/// and below 17763 (WS2016 era) the UBR must equal too (unknown UBR gives `Unknown`); from 20348
/// the image build must lie in [`ltsc_floor`]..=host build. Hyper-V: any image build <= host build.
/// `os.features` are not checked here (only `win32k` is defined, and server hosts have it).
/// Client SKUs (Windows 10 1809 cannot process-isolate) are not modelled.
pub fn runnable(host: &Host, image: &Platform) -> Compat {
    use Runnability::{NotRunnable, Runnable, Unknown};
    let h = host.platform.normalized();
    let img = normalized_for(image, &h);
    if h.os != "windows" {
        return match only_match(&platform_vector(&h), &img) {
            Ok(_) => Compat::new(Runnable, format!("{} runs on {}", img, h)),
            Err(why) => Compat::new(NotRunnable, why),
        };
    }
    if img.os != "windows" {
        return Compat::new(NotRunnable, format!("{} image on a Windows host", img.os));
    }
    if img.architecture != h.architecture {
        return Compat::new(
            NotRunnable,
            format!(
                "architecture {} on a {} host",
                img.architecture, h.architecture
            ),
        );
    }
    let Some(hv) = h.windows_version() else {
        return Compat::new(Unknown, "host os.version unknown");
    };
    let iv = match img.os_version_str() {
        "" => {
            return Compat::new(
                Unknown,
                "image declares no os.version: runs only if version-agnostic (e.g. HostProcess)",
            )
        }
        v => match v.parse::<WindowsVersion>() {
            Ok(iv) => iv,
            Err(_) => return Compat::new(Unknown, format!("os.version {v:?} is not parseable")),
        },
    };
    if (hv.major, hv.minor) != (iv.major, iv.minor) {
        return Compat::new(
            NotRunnable,
            format!("os.version {iv} is not {}.{}", hv.major, hv.minor),
        );
    }
    match host.isolation {
        Isolation::HyperV if iv.build <= hv.build => Compat::new(
            Runnable,
            format!("build {} <= host {} under Hyper-V isolation", iv.build, hv.build),
        ),
        Isolation::HyperV => Compat::new(
            NotRunnable,
            format!("build {} is newer than host {}; no isolation runs it", iv.build, hv.build),
        ),
        Isolation::Process => match build_window(&hv, &iv) {
            Err(why) => Compat::new(NotRunnable, format!("{why} under process isolation")),
            Ok(why) if iv.build >= build::LTSC2019 => Compat::new(Runnable, why),
            // Before 1809 the revision must match as well (version-compatibility.md, "Revision number").
            Ok(_) => match (hv.ubr, iv.ubr) {
                (Some(a), Some(b)) if a == b => Compat::new(Runnable, "same build and revision"),
                (Some(a), Some(b)) => Compat::new(
                    NotRunnable,
                    format!("revision {b} differs from host {a}; build {} needs the same revision under process isolation", iv.build),
                ),
                _ => Compat::new(
                    Unknown,
                    format!("build {} needs the same revision as the host; a revision is unknown", iv.build),
                ),
            },
        },
    }
}

// === The resolver ===

/// What `host.rule` pulls from `candidates` (an index's entries), with a verdict per entry.
///
/// The per-client filter and stable sort are applied as the client does, the first kept entry is
/// chosen, and [`runnable`] is evaluated for it (and for every dropped entry, to fill
/// `missed_runnable`). Linux hosts use `platforms.Only` for both clients.
pub fn resolve(candidates: &[Candidate], host: &Host) -> Resolution {
    let hp = host.platform.normalized();
    let windows_host = hp.os == "windows";
    let vector = platform_vector(&hp);
    let host_version = hp.windows_version();

    // Filter: one decision per candidate, plus the Only() rank used for Linux ordering.
    let mut decisions = Vec::with_capacity(candidates.len());
    let mut only_ranks = Vec::with_capacity(candidates.len());
    for c in candidates {
        let (d, rank) = match (windows_host, host.rule) {
            (true, ClientRule::Containerd) => (containerd_windows_match(&hp, &c.platform), 0),
            (true, ClientRule::Moby) => (moby_windows_filter(&hp, &c.platform), 0),
            (false, _) => match only_match(&vector, &c.platform) {
                Ok(r) => (
                    Decision::keep(format!("matches host preference #{r} ({})", vector[r])),
                    r,
                ),
                Err(why) => (Decision::reject(why), usize::MAX),
            },
        };
        decisions.push(d);
        only_ranks.push(rank);
    }

    // Order: a stable sort of the kept positions with the client's comparator.
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|i| decisions[*i].kept)
        .collect();
    match (windows_host, host.rule, host_version) {
        (true, ClientRule::Containerd, _) => order.sort_by(|a, b| {
            containerd_windows_cmp(&candidates[*a].platform, &candidates[*b].platform)
        }),
        (true, ClientRule::Moby, Some(hv)) => order.sort_by(|a, b| {
            moby_windows_cmp(&hv, &candidates[*a].platform, &candidates[*b].platform)
        }),
        (true, ClientRule::Moby, None) => {}
        (false, _, _) => order.sort_by_key(|i| only_ranks[*i]),
    }

    let mut verdicts: Vec<CandidateVerdict> = candidates
        .iter()
        .zip(&decisions)
        .map(|(c, d)| CandidateVerdict {
            index: c.index,
            digest: c.digest.clone(),
            kept: d.kept,
            rank: None,
            reason: d.reason.clone(),
        })
        .collect();
    for (rank, i) in order.iter().enumerate() {
        verdicts[*i].rank = Some(rank);
    }

    let chosen = order.first().map(|i| candidates[*i].clone());
    let chosen_compat = chosen.as_ref().map(|c| runnable(host, &c.platform));
    let process_mismatch = windows_host
        && host.isolation == Isolation::Process
        && chosen_compat
            .as_ref()
            .is_some_and(|c| c.verdict == Runnability::NotRunnable);
    let missed_runnable = candidates
        .iter()
        .zip(&decisions)
        .filter(|(c, d)| !d.kept && runnable(host, &c.platform).verdict == Runnability::Runnable)
        .map(|(c, _)| c.index)
        .collect();

    let mut notes = Vec::new();
    if let Some(c) = &chosen {
        if let Some(note) = ubr_note(c, &order, candidates, host.rule) {
            notes.push(note);
        }
    }
    if let (Some(c), Some(compat)) = (&chosen, &chosen_compat) {
        if process_mismatch {
            notes.push(format!(
                "{} pulls {} ({}) but it will not start under process isolation: {}",
                rule_name(host.rule),
                c.digest,
                c.platform,
                compat.reason
            ));
        }
    }
    if windows_host && host.rule == ClientRule::Moby && host_version.is_none() {
        notes.push("host os.version unknown: moby's build filter and ordering were skipped".into());
    }
    Resolution {
        chosen,
        verdicts,
        chosen_compat,
        process_mismatch,
        missed_runnable,
        notes,
    }
}

fn rule_name(rule: ClientRule) -> &'static str {
    match rule {
        ClientRule::Containerd => "containerd",
        ClientRule::Moby => "moby",
    }
}

/// A note when a kept entry of the chosen one's build has a higher UBR than the chosen one.
fn ubr_note(
    chosen: &Candidate,
    order: &[usize],
    all: &[Candidate],
    rule: ClientRule,
) -> Option<String> {
    let cv = chosen.platform.windows_version()?;
    let newer = order
        .iter()
        .map(|i| &all[*i])
        .filter_map(|c| c.platform.windows_version().map(|v| (c, v)))
        .filter(|(_, v)| v.build_prefix() == cv.build_prefix() && v.ubr > cv.ubr)
        .max_by_key(|(_, v)| v.ubr)?;
    let why = match rule {
        ClientRule::Containerd => "containerd orders os.version as a plain string (platforms#25)",
        ClientRule::Moby => "moby never compares revisions; list order decides",
    };
    Some(format!(
        "chose {} ({}) over newer revision {} ({}): {why}",
        chosen.digest,
        chosen.platform.os_version_str(),
        newer.0.digest,
        newer.0.platform.os_version_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sources named by the table rows.
    const CD_COMPAT: &str =
        "containerd/platforms platform_windows_compat.go checkWindowsHostAndContainerCompat (+#34)";
    const CD_ORDER: &str =
        "containerd/platforms platform_windows_compat.go windowsMatchComparer.Less (#25)";
    const CD_MATCH: &str = "containerd/platforms platforms.go matcher.Match";
    const CD_FEAT: &str = "containerd/platforms#31 platform_windows_compat.go stripWin32kFeature";
    const CD_ONLY: &str = "containerd/platforms compare.go platformVector/Only";
    const CD_NORM: &str = "containerd/platforms database.go normalizeArch";
    const MOBY_FILTER: &str =
        "moby/moby daemon/internal/distribution/pull_v2_windows.go checkImageCompatibility";
    const MOBY_ORDER: &str =
        "moby/moby daemon/internal/distribution/pull_v2_windows.go manifestsByVersion";
    const MOBY_UNIX: &str =
        "moby/moby daemon/internal/distribution/pull_v2_unix.go filterManifests";
    const MS: &str =
        "MicrosoftDocs/Virtualization-Documentation deploy-containers/version-compatibility.md";

    use ClientRule::{Containerd as C, Moby as M};
    use Isolation::{HyperV as V, Process as P};

    /// One scenario. `host` and images use `os/arch[/variant][:os.version]` plus `+feature`
    /// suffixes; images are `digest=spec`. `run` is the expected [`runnable`] of the chosen entry:
    /// 'R' runnable, 'N' not, 'U' unknown, '-' nothing chosen.
    struct Row {
        host: &'static str,
        iso: Isolation,
        rule: ClientRule,
        images: &'static [&'static str],
        want: Option<&'static str>,
        run: char,
        source: &'static str,
    }

    const fn row(
        host: &'static str,
        iso: Isolation,
        rule: ClientRule,
        images: &'static [&'static str],
        want: Option<&'static str>,
        run: char,
        source: &'static str,
    ) -> Row {
        Row {
            host,
            iso,
            rule,
            images,
            want,
            run,
            source,
        }
    }

    fn plat(spec: &str) -> Platform {
        let mut parts = spec.split('+');
        let mut p: Platform = parts.next().unwrap().parse().unwrap();
        p.os_features = parts.map(str::to_owned).collect();
        p
    }

    fn cands(images: &[&str]) -> Vec<Candidate> {
        images
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let (digest, spec) = s.split_once('=').unwrap();
                Candidate {
                    index,
                    digest: digest.to_owned(),
                    platform: plat(spec),
                }
            })
            .collect()
    }

    const W14: &str = "windows/amd64:10.0.14393.1000";
    const W17: &str = "windows/amd64:10.0.17763.5458";
    const W19: &str = "windows/amd64:10.0.19041.1415";
    const W20: &str = "windows/amd64:10.0.20348.2340";
    const W22: &str = "windows/amd64:10.0.22621.3007";
    const W25: &str = "windows/amd64:10.0.25398.700";
    const W26: &str = "windows/amd64:10.0.26100.3000";
    const W262: &str = "windows/amd64:10.0.26200.100";

    #[rustfmt::skip]
    const TABLE: &[Row] = &[
        // --- 14393 (WS2016) ---
        row(W14, P, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.14393.1000"], Some("b"), 'R', CD_COMPAT),
        row(W14, P, C, &["a=windows/amd64:10.0.14393.900"], Some("a"), 'N', MS), // revision must match on 14393
        row(W14, V, C, &["a=windows/amd64:10.0.14393.900"], Some("a"), 'R', MS),
        row(W14, P, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.14393.1000"], Some("b"), 'R', MOBY_FILTER),
        row("windows/amd64:10.0.14393", P, C, &["a=windows/amd64:10.0.14393.900"], Some("a"), 'U', MS), // host UBR unknown
        // --- 17763 (WS2019) ---
        row(W17, P, C, &["a=windows/amd64:10.0.20348.1", "b=windows/amd64:10.0.17763.5000", "c=windows/amd64:10.0.14393.1"], Some("b"), 'R', CD_COMPAT),
        row(W17, V, C, &["a=windows/amd64:10.0.14393.1"], None, '-', CD_COMPAT), // matcher ignores isolation
        row(W17, V, M, &["a=windows/amd64:10.0.14393.1"], Some("a"), 'R', MOBY_FILTER),
        row(W17, P, M, &["a=windows/amd64:10.0.14393.1"], Some("a"), 'N', MOBY_FILTER), // pulls, then 0xc0370101
        row(W17, P, M, &["a=windows/amd64:10.0.14393.1", "b=windows/amd64:10.0.17763.100"], Some("b"), 'R', MOBY_ORDER),
        row(W17, P, M, &["a=windows/amd64:10.0.17763.100", "b=windows/amd64:10.0.17763.200"], Some("a"), 'R', MOBY_ORDER),
        row(W17, V, M, &["a=windows/amd64:10.0.20348.1"], None, '-', MOBY_FILTER), // newer build never pulled
        // --- 19041 (2004) ---
        row(W19, P, C, &["a=windows/amd64:10.0.19042.1", "b=windows/amd64:10.0.19041.1", "c=windows/amd64:10.0.17763.1"], Some("b"), 'R', CD_COMPAT),
        row(W19, V, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], None, '-', CD_COMPAT),
        row(W19, V, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("a"), 'R', MOBY_FILTER),
        // --- 20348 (WS2022) ---
        row(W20, P, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1000", "c=windows/amd64:10.0.26100.1"], Some("b"), 'R', CD_COMPAT),
        row(W20, P, C, &["a=windows/amd64:10.0.17763.1"], None, '-', CD_COMPAT), // floor is 20348
        row(W20, V, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("b"), 'R', CD_COMPAT),
        row(W20, P, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("b"), 'R', MOBY_ORDER),
        row(W20, P, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.26100.1"], Some("a"), 'N', MOBY_FILTER),
        row(W20, V, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.26100.1"], Some("a"), 'R', MOBY_FILTER),
        row(W20, P, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348"], Some("a"), 'N', MOBY_ORDER), // "10.0.20348" lacks the "." moby's prefix needs
        // --- UBR ordering ---
        row(W20, P, C, &["a=windows/amd64:10.0.20348.999", "b=windows/amd64:10.0.20348.1000"], Some("a"), 'R', CD_ORDER), // "999" > "1000"
        row(W20, P, C, &["a=windows/amd64:10.0.20348.1000", "b=windows/amd64:10.0.20348.999"], Some("b"), 'R', CD_ORDER),
        row(W20, P, C, &["a=windows/amd64:10.0.20348.2322", "b=windows/amd64:10.0.20348.2340"], Some("b"), 'R', CD_ORDER),
        row(W20, P, M, &["a=windows/amd64:10.0.20348.1000", "b=windows/amd64:10.0.20348.999"], Some("a"), 'R', MOBY_ORDER),
        row(W20, P, M, &["a=windows/amd64:10.0.20348.999", "b=windows/amd64:10.0.20348.1000"], Some("a"), 'R', MOBY_ORDER),
        // --- 22621 (Windows 11 22H2) ---
        row(W22, P, C, &["a=windows/amd64:10.0.20348.1", "b=windows/amd64:10.0.22621.1", "c=windows/amd64:10.0.17763.1"], Some("b"), 'R', CD_ORDER),
        row(W22, P, C, &["a=windows/amd64:10.0.20348.1", "c=windows/amd64:10.0.17763.1"], Some("a"), 'R', CD_COMPAT),
        row(W22, P, C, &["a=windows/amd64:10.0.26100.1"], None, '-', CD_COMPAT),
        row(W22, P, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("a"), 'N', MOBY_ORDER),
        row(W22, V, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("a"), 'R', MOBY_ORDER),
        // --- 25398 (23H2) ---
        row(W25, P, C, &["a=windows/amd64:10.0.20348.5", "b=windows/amd64:10.0.25398.5", "c=windows/amd64:10.0.26100.5"], Some("b"), 'R', CD_ORDER),
        row(W25, P, C, &["a=windows/amd64:10.0.20348.5", "c=windows/amd64:10.0.26100.5"], Some("a"), 'R', CD_COMPAT),
        row(W25, P, M, &["a=windows/amd64:10.0.26100.5", "b=windows/amd64:10.0.20348.5"], Some("b"), 'R', MOBY_FILTER),
        row(W25, V, C, &["a=windows/amd64:10.0.17763.5", "b=windows/amd64:10.0.20348.5"], Some("b"), 'R', CD_COMPAT),
        // --- 26100 (WS2025) ---
        row(W26, P, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1", "c=windows/amd64:10.0.26100.1"], Some("c"), 'R', CD_ORDER),
        row(W26, P, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("b"), 'R', CD_COMPAT),
        row(W26, P, C, &["a=windows/amd64:10.0.20348.1", "b=windows/amd64:10.0.25398.1"], Some("b"), 'R', CD_ORDER),
        row(W26, P, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("a"), 'N', MOBY_ORDER),
        row(W26, V, M, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("a"), 'R', MOBY_ORDER),
        row(W26, V, C, &["a=windows/amd64:10.0.17763.1", "b=windows/amd64:10.0.20348.1"], Some("b"), 'R', CD_COMPAT),
        // --- 26200 (past the latest LTSC: platforms#34) ---
        row(W262, P, C, &["a=windows/amd64:10.0.20348.1", "b=windows/amd64:10.0.26100.1"], Some("b"), 'R', CD_ORDER),
        row(W262, P, C, &["x=windows/amd64:10.0.17763.1", "a=windows/amd64:10.0.20348.1"], Some("a"), 'R', CD_COMPAT), // none before #34
        row(W262, V, C, &["a=windows/amd64:10.0.17763.1"], None, '-', CD_COMPAT),
        row(W262, P, M, &["a=windows/amd64:10.0.26100.1", "b=windows/amd64:10.0.26200.1"], Some("b"), 'R', MOBY_ORDER),
        // --- empty / short os.version ---
        row(W20, P, C, &["a=windows/amd64", "b=windows/amd64:10.0.17763.1"], Some("a"), 'U', CD_COMPAT), // containerd#7431
        row(W20, P, C, &["a=windows/amd64", "b=windows/amd64:10.0.20348.1"], Some("b"), 'R', CD_ORDER), // "" sorts last
        row(W20, P, M, &["a=windows/amd64", "b=windows/amd64:10.0.17763.1"], Some("a"), 'U', MOBY_ORDER),
        row(W20, P, C, &["a=windows/amd64:10.0"], None, '-', CD_COMPAT), // fewer than 3 components
        row(W20, P, M, &["a=windows/amd64:10.0"], Some("a"), 'U', MOBY_FILTER),
        // --- os.features ---
        row(W20, P, C, &["a=windows/amd64:10.0.20348.1+win32k"], Some("a"), 'R', CD_FEAT),
        row(W20, P, C, &["a=windows/amd64:10.0.20348.5+foo", "b=windows/amd64:10.0.20348.1+win32k"], Some("b"), 'R', CD_MATCH),
        row("windows/amd64:10.0.20348.2340+foo", P, C, &["a=windows/amd64:10.0.20348.5+foo+win32k", "b=windows/amd64:10.0.20348.1"], Some("a"), 'R', CD_MATCH),
        row(W20, P, M, &["a=windows/amd64:10.0.20348.5+foo"], Some("a"), 'R', MOBY_FILTER), // moby ignores features
        row("linux/amd64", P, C, &["a=linux/amd64+win32k"], None, '-', CD_FEAT), // stripped only for Windows
        // --- normalisation ---
        row(W20, P, C, &["a=windows/x86_64:10.0.20348.1"], Some("a"), 'R', CD_NORM),
        row(W20, P, M, &["a=windows/x86_64:10.0.20348.1", "b=windows/amd64:10.0.17763.1"], Some("b"), 'N', MOBY_FILTER),
        row(W20, P, M, &["a=Windows/amd64:10.0.20348.1"], Some("a"), 'R', MOBY_FILTER), // EqualFold
        row(W20, P, C, &["a=linux/amd64", "b=windows/arm64:10.0.20348.1"], None, '-', CD_MATCH),
        row("windows/arm64:10.0.26100.1", P, C, &["a=windows/amd64:10.0.26100.1", "b=windows/arm64/v8:10.0.26100.1"], Some("b"), 'R', CD_NORM),
        // --- Linux hosts: platforms.Only ---
        row("linux/arm64", P, C, &["a=linux/arm/v7", "b=linux/arm64/v8"], Some("b"), 'R', CD_ONLY),
        row("linux/aarch64", P, C, &["a=linux/arm/v7", "b=linux/amd64"], Some("a"), 'R', CD_ONLY),
        row("linux/arm/v7", P, C, &["a=linux/arm/v6", "b=linux/arm/v7"], Some("b"), 'R', CD_ONLY),
        row("linux/arm/v6", P, C, &["a=linux/arm/v7"], None, '-', CD_ONLY),
        row("linux/arm/v7", P, M, &["a=linux/arm/v5", "b=linux/arm/v6"], Some("b"), 'R', MOBY_UNIX),
        row("linux/amd64", P, C, &["a=windows/amd64:10.0.20348.1", "b=linux/386", "c=linux/amd64"], Some("c"), 'R', CD_ONLY),
        row("linux/amd64", V, M, &["a=linux/386"], Some("a"), 'R', MOBY_UNIX),
        row("linux/amd64", P, C, &["a=linux/arm64"], None, '-', CD_ONLY),
        row("linux/arm64/v8.2", P, C, &["a=linux/arm64/v8.3", "b=linux/arm64/v8.1"], Some("b"), 'R', CD_ONLY),
    ];

    #[test]
    fn table() {
        assert!(TABLE.len() >= 45);
        for (n, r) in TABLE.iter().enumerate() {
            let host = Host {
                platform: plat(r.host),
                isolation: r.iso,
                rule: r.rule,
            };
            let res = resolve(&cands(r.images), &host);
            let ctx = format!(
                "row {n} ({}; {:?} {:?}; {:?}): {res:#?}",
                r.source, r.iso, r.rule, r.images
            );
            assert_eq!(res.chosen_digest(), r.want, "{ctx}");
            let run = match &res.chosen_compat {
                None => '-',
                Some(c) => match c.verdict {
                    Runnability::Runnable => 'R',
                    Runnability::NotRunnable => 'N',
                    Runnability::Unknown => 'U',
                },
            };
            assert_eq!(run, r.run, "{ctx}");
            let expect_mismatch = r.iso == P && run == 'N' && host.platform.is_windows();
            assert_eq!(res.process_mismatch, expect_mismatch, "{ctx}");
            assert_eq!(res.verdicts.len(), r.images.len(), "{ctx}");
            assert!(res.verdicts.iter().all(|v| !v.reason.is_empty()), "{ctx}");
        }
    }

    #[test]
    fn table_covers_required_hosts() {
        for b in [
            "14393", "17763", "19041", "20348", "22621", "25398", "26100", "26200",
        ] {
            for iso in [P, V] {
                assert!(
                    TABLE.iter().any(|r| r.host.contains(b) && r.iso == iso),
                    "no row for {b} {iso:?}"
                );
            }
        }
    }

    #[test]
    fn reasons_and_notes() {
        let host = Host {
            platform: plat(W20),
            isolation: P,
            rule: C,
        };
        let res = resolve(
            &cands(&[
                "a=windows/amd64:10.0.17763.1",
                "b=windows/amd64:10.0.20348.999",
                "c=windows/amd64:10.0.20348.1000",
            ]),
            &host,
        );
        assert_eq!(
            res.verdicts[0].reason,
            "os.version 10.0.17763.1 build 17763 is below the stable-ABI floor 20348 of host 20348"
        );
        assert_eq!(res.verdicts[1].rank, Some(0));
        assert_eq!(res.verdicts[2].rank, Some(1));
        assert!(
            res.notes
                .iter()
                .any(|n| n.contains("over newer revision c") && n.contains("#25")),
            "{res:#?}"
        );

        let host = Host {
            platform: plat(W20),
            isolation: P,
            rule: M,
        };
        let res = resolve(&cands(&["a=windows/amd64:10.0.17763.1"]), &host);
        assert!(res.process_mismatch);
        let reason = &res.chosen_compat.as_ref().unwrap().reason;
        assert_eq!(
            reason,
            "os.version 10.0.17763.1 build 17763 is below the stable-ABI floor 20348 of host 20348 under process isolation"
        );
        assert!(res.notes.iter().any(|n| n.contains("will not start")));

        let host = Host {
            platform: plat(W17),
            isolation: V,
            rule: C,
        };
        let res = resolve(
            &cands(&["a=windows/amd64:10.0.14393.1", "b=linux/amd64"]),
            &host,
        );
        assert_eq!(res.missed_runnable, vec![0]);
        assert_eq!(res.verdicts[1].reason, "os linux differs from host windows");

        let host = Host {
            platform: plat("linux/amd64"),
            isolation: P,
            rule: C,
        };
        let res = resolve(&cands(&["a=linux/arm64"]), &host);
        assert_eq!(
            res.verdicts[0].reason,
            "linux/arm64 is not among the host's accepted platforms [linux/amd64, linux/386]"
        );
    }

    #[test]
    fn moby_without_host_version() {
        let host = Host {
            platform: plat("windows/amd64"),
            isolation: P,
            rule: M,
        };
        let res = resolve(&cands(&["a=windows/amd64:10.0.26100.1"]), &host);
        assert_eq!(res.chosen_digest(), Some("a"));
        assert_eq!(
            res.chosen_compat.as_ref().map(|c| c.verdict),
            Some(Runnability::Unknown)
        );
        assert!(!res.notes.is_empty());
    }

    #[test]
    fn ltsc_floor_is_platforms_34() {
        for (host, floor) in [
            (20348, 20348),
            (22000, 20348),
            (22621, 20348),
            (25398, 20348),
            (26100, 20348),
            (26200, 20348),
            (30000, 20348),
        ] {
            assert_eq!(ltsc_floor(host), floor, "host {host}");
        }
    }

    #[test]
    fn runnable_rules() {
        let h = |v: &str, iso| Host {
            platform: plat(v),
            isolation: iso,
            rule: C,
        };
        let r = |host: &Host, img: &str| runnable(host, &plat(img)).verdict;
        use Runnability::{NotRunnable as N, Runnable as R, Unknown as U};
        assert_eq!(r(&h(W14, P), "windows/amd64:10.0.14393.1000"), R);
        assert_eq!(r(&h(W14, P), "windows/amd64:10.0.14393"), U);
        assert_eq!(r(&h(W17, P), "windows/amd64:10.0.17763.1"), R); // UBR may differ from 1809
        assert_eq!(r(&h(W17, V), "windows/amd64:10.0.14393.1"), R);
        assert_eq!(r(&h(W17, V), "windows/amd64:10.0.20348.1"), N);
        assert_eq!(r(&h(W262, P), "windows/amd64:10.0.20348.1"), R);
        assert_eq!(r(&h(W262, P), "windows/amd64:10.0.25398.1"), R);
        assert_eq!(r(&h(W262, P), "windows/amd64:10.0.17763.1"), N);
        assert_eq!(r(&h(W20, P), "windows/arm64:10.0.20348.1"), N);
        assert_eq!(r(&h(W20, P), "linux/amd64"), N);
        assert_eq!(r(&h(W20, P), "windows/amd64:11.0.20348.1"), N);
        assert_eq!(r(&h("windows/amd64", P), "windows/amd64:10.0.20348.1"), U);
        assert_eq!(r(&h("linux/arm64", P), "linux/arm/v7"), R);
        assert_eq!(r(&h("linux/arm64", P), "windows/arm64:10.0.26100.1"), N);
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
    fn platform_vectors() {
        let v = |s: &str| {
            platform_vector(&plat(s))
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(v("linux/amd64"), ["linux/amd64", "linux/386"]);
        assert_eq!(
            v("linux/amd64/v3"),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            v("linux/arm/v7"),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(
            v("linux/arm64"),
            [
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            v("linux/arm64/v9.1")[..5],
            [
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.6",
                "linux/arm64/v8.5",
                "linux/arm64/v8.4"
            ]
        );
    }

    #[test]
    fn windows_version_parse() {
        let v: WindowsVersion = "10.0.20348.2340".parse().unwrap();
        assert_eq!(
            v,
            WindowsVersion {
                major: 10,
                minor: 0,
                build: 20348,
                ubr: Some(2340)
            }
        );
        assert_eq!(v.to_string(), "10.0.20348.2340");
        assert_eq!(
            "10.0.20348".parse::<WindowsVersion>().unwrap(),
            WindowsVersion::ten(20348)
        );
        assert_eq!(
            "10.0.20348.abc".parse::<WindowsVersion>().unwrap().ubr,
            None
        );
        assert_eq!(
            "10.0.20348.5.9".parse::<WindowsVersion>().unwrap().ubr,
            Some(5)
        );
        for bad in [
            "",
            "10",
            "10.0",
            "10.0.",
            "10.0.x",
            "10.0.70000",
            "+10.0.20348",
            "10.0.-1",
            "256.0.1",
            " 10.0.1",
        ] {
            assert!(
                bad.parse::<WindowsVersion>().is_err(),
                "{bad:?} should not parse"
            );
        }
        // Numeric order, unlike containerd's string order.
        let a: WindowsVersion = "10.0.20348.999".parse().unwrap();
        let b: WindowsVersion = "10.0.20348.1000".parse().unwrap();
        assert!(a < b);
        assert_eq!(
            containerd_windows_cmp(
                &plat("windows/amd64:10.0.20348.999"),
                &plat("windows/amd64:10.0.20348.1000")
            ),
            Ordering::Less
        );
    }

    #[test]
    fn named_builds() {
        assert_eq!(WindowsVersion::build_for_name("LTSC2022"), Some(20348));
        assert_eq!(WindowsVersion::build_for_name("ltsc2016"), Some(14393));
        assert_eq!(WindowsVersion::build_for_name("ltsc2019"), Some(17763));
        assert_eq!(WindowsVersion::build_for_name("2004"), Some(19041));
        assert_eq!(WindowsVersion::build_for_name("win11-22h2"), Some(22621));
        assert_eq!(WindowsVersion::build_for_name("23H2"), Some(25398));
        assert_eq!(WindowsVersion::build_for_name("ltsc2025"), Some(26100));
        assert_eq!(WindowsVersion::build_for_name("21h2"), None);
        assert_eq!(WindowsVersion::name_for_build(26100), Some("ltsc2025"));
        assert_eq!(WindowsVersion::name_for_build(17763), Some("ltsc2019"));
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
        let v: WindowsVersion = serde_json::from_str(r#""10.0.26100.3000""#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#""10.0.26100.3000""#);
        assert!(serde_json::from_str::<WindowsVersion>(r#""10.0""#).is_err());
        let host = Host {
            platform: plat(W20),
            isolation: V,
            rule: M,
        };
        let s = serde_json::to_string(&host).unwrap();
        assert!(
            s.contains(r#""isolation":"hyperv""#) && s.contains(r#""rule":"moby""#),
            "{s}"
        );
    }
}
