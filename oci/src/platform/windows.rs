//! Windows versions as they appear in an image's `os.version`: parsing `major.minor.build[.ubr]`
//! the way containerd does, the optional UBR (monthly patch revision), the numeric order of
//! [`WindowsVersion`], the build numbers that matter for containers ([`build`]) with their names
//! (`ltsc2022` → 20348, [`NAMED_BUILDS`]), and the stable-ABI floor ([`ltsc_floor`]).
//!
//! Pure values, no rules about clients: those are in the sibling `resolve` module. Sources are
//! named per item; background in `../shared/docs/WINDOWS.md` (relative to the repository root).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::PlatformError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn serde_is_a_string() {
        let v: WindowsVersion = serde_json::from_str(r#""10.0.26100.3000""#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#""10.0.26100.3000""#);
        assert!(serde_json::from_str::<WindowsVersion>(r#""10.0""#).is_err());
    }
}
