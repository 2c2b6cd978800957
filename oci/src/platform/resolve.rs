//! The pull and run rules: which entry of an image index a client on a given host pulls, and
//! whether that host can run it.
//!
//! Holds containerd's Windows matcher and comparator ([`containerd_windows_match`],
//! [`containerd_windows_cmp`]), moby's Windows filter and comparator ([`moby_windows_filter`],
//! [`moby_windows_cmp`]), `platforms.Only` for Linux hosts ([`platform_vector`]), Microsoft's
//! run-time compatibility rules ([`runnable`]) and the resolver that combines them ([`resolve`]),
//! with the host, candidate and verdict types they exchange. The rule sets and their sources are
//! described in the parent module's documentation.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::windows::{build, ltsc_floor, WindowsVersion};
use super::Platform;

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

/// Parses one of `names` (`(name, value)` pairs); the error names `what` and lists them.
fn one_of<T: Copy>(what: &str, s: &str, names: &[(&str, T)]) -> Result<T, String> {
    names
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            format!("{what} {s:?} is not one of: {}", all.join(", "))
        })
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        one_of(
            "isolation",
            s,
            &[("process", Self::Process), ("hyperv", Self::HyperV)],
        )
    }
}

impl std::str::FromStr for ClientRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        one_of(
            "rule",
            s,
            &[("containerd", Self::Containerd), ("moby", Self::Moby)],
        )
    }
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
    let missed_runnable = missed_runnable_of(candidates, &decisions, host)
        .iter()
        .map(|i| candidates[*i].index)
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
    if windows_host && host.rule == ClientRule::Containerd && host.isolation == Isolation::HyperV {
        let also: Vec<String> = missed_runnable_of(candidates, &decisions, host)
            .iter()
            .map(|i| format!("[{}] {}", candidates[*i].index, candidates[*i].platform))
            .collect();
        notes.push(if also.is_empty() {
            "containerd's platform matcher ignores isolation: it chose as it would for process isolation; it dropped nothing Hyper-V isolation could run".into()
        } else {
            format!(
                "containerd's platform matcher ignores isolation: it chose as it would for process isolation; under Hyper-V isolation this host could also run {}",
                also.join(", ")
            )
        });
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

/// Positions in `candidates` of entries runnable under the host's isolation that the client's
/// filter dropped.
fn missed_runnable_of(candidates: &[Candidate], decisions: &[Decision], host: &Host) -> Vec<usize> {
    candidates
        .iter()
        .zip(decisions)
        .enumerate()
        .filter(|(_, (c, d))| {
            !d.kept && runnable(host, &c.platform).verdict == Runnability::Runnable
        })
        .map(|(i, _)| i)
        .collect()
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
    use super::super::tests::plat;
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
    fn containerd_orders_versions_as_strings() {
        // Numeric order for WindowsVersion, string order for containerd (platforms#25).
        assert_eq!(
            containerd_windows_cmp(
                &plat("windows/amd64:10.0.20348.999"),
                &plat("windows/amd64:10.0.20348.1000")
            ),
            Ordering::Less
        );
    }

    #[test]
    fn serde_uses_oci_names() {
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
