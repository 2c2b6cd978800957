//! Turns a Windows image layer (a tar, optionally gzip-compressed) into the folder the storage
//! calls expect.
//!
//! Windows layer tars hold `Files/` (the C:\ tree), `Hives/` (registry hive deltas) and, in a
//! base layer, `UtilityVM/` (WINDOWS.md §2.3; hcsshim `internal/wclayer/legacy.go`,
//! `pkg/ociwclayer/import.go`). Two targets:
//!
//! * [`Target::Base`]: the base layer is written straight into its layer folder, as hcsshim's
//!   `baseLayerWriter` does, without `Hives/` (`HcsSetupBaseOSLayer` creates the hives and
//!   fails if they exist: hcsshim `SetupContainerBaseLayer`). Whiteouts are meaningless there.
//! * [`Target::Import`]: any other layer is written to a source folder in the legacy layout
//!   `HcsImportLayer` reads: `Files/`, `Hives/`, `UtilityVM/`, and whiteouts (`.wh.<name>`)
//!   turned into `tombstones.txt` (`\xEF\xBB\xBFVersion 1.0` then one `\<path>` a line).
//!
//! Every entry name is checked before anything is written: no absolute paths, drive letters,
//! `..`, NUL, or top-level folders other than the three above (both `/` and `\` count as
//! separators, since Windows reads both). Symlinks and other reparse points are skipped and
//! counted: without backup semantics they cannot be written faithfully, and a link could point
//! out of the folder. PAX security descriptors and attributes (`MSWINDOWS.*`) are not applied
//! (that needs `BackupWrite`, see docs/HCS.md). Cross-platform; no HCS calls here.

use crate::runner::Layer;
use flate2::read::GzDecoder;
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// How a layer is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The base layer, into its layer folder.
    Base,
    /// Any other layer, into a source folder for `HcsImportLayer`.
    Import,
}

/// What an unpacked layer contained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files and hard links written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Whiteouts turned into tombstones.
    pub tombstones: Vec<String>,
    /// Entries skipped (symlinks, devices, `Hives/` of a base layer).
    pub skipped: u64,
    /// It has `UtilityVM/Files/` (a utility VM image).
    pub has_utility_vm: bool,
    /// It has the registry hives of a full OS (`Files/Windows/System32/config/SYSTEM`) or
    /// base-layer hive links (`Hives/*_BASE`): the marks of a base layer.
    pub looks_like_base: bool,
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer is malformed or unsafe: the image's fault.
    #[error("invalid layer {digest}: {reason}")]
    Invalid {
        /// Layer digest.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing failed: the host's problem.
    #[error("unpacking layer {digest}: {source}")]
    Io {
        /// Layer digest.
        digest: String,
        /// The error.
        source: io::Error,
    },
}

impl UnpackError {
    /// True when the image is at fault.
    pub fn is_image_fault(&self) -> bool {
        matches!(self, UnpackError::Invalid { .. })
    }
}

/// The three top-level folders of a Windows layer tar.
const ROOTS: [&str; 3] = ["Files", "Hives", "UtilityVM"];

/// Splits and checks a tar entry name: returns its components with the top-level folder
/// spelled canonically (`files/x` → `Files/x`), or why it is refused.
pub fn check_entry_name(name: &str) -> Result<Vec<String>, String> {
    if name.contains('\0') {
        return Err(format!("{name:?}: NUL in name"));
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(format!("{name:?}: absolute path"));
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[1] == b':' {
        return Err(format!("{name:?}: drive-qualified path"));
    }
    let mut parts = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => return Err(format!("{name:?}: parent-directory component")),
            p if p.contains(':') => return Err(format!("{name:?}: ':' (alternate data stream)")),
            p => parts.push(p.to_owned()),
        }
    }
    let Some(first) = parts.first_mut() else {
        return Err(format!("{name:?}: empty path"));
    };
    match ROOTS.iter().find(|r| r.eq_ignore_ascii_case(first)) {
        Some(root) => *first = (*root).to_owned(),
        None => return Err(format!("{name:?}: outside Files/, Hives/ and UtilityVM/")),
    }
    Ok(parts)
}

fn to_path(base: &Path, parts: &[String]) -> PathBuf {
    let mut p = base.to_path_buf();
    for c in parts {
        p.push(c);
    }
    p
}

/// Opens the layer blob as a tar stream: plain for `…tar` media types, gzip for `…+gzip`.
/// zstd is refused (the verifier does not pull it).
pub fn open_layer(layer: &Layer) -> Result<Box<dyn Read + Send>, UnpackError> {
    let f = fs::File::open(&layer.path).map_err(|e| UnpackError::Io {
        digest: layer.digest.clone(),
        source: e,
    })?;
    let mt = layer.media_type.as_str();
    if mt.ends_with("+zstd") || mt.ends_with(".zstd") {
        return Err(UnpackError::Invalid {
            digest: layer.digest.clone(),
            reason: format!("media type {mt}: zstd layers are not supported"),
        });
    }
    let gzip = mt.ends_with("+gzip") || mt.ends_with(".gzip") || mt.ends_with("tar.gzip");
    let r = BufReader::new(f);
    Ok(if gzip {
        Box::new(GzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

/// Unpacks `layer` into `dest` (created if missing) for `target`, every entry taken from the
/// job's `budget` before it is written.
pub fn unpack_layer(
    layer: &Layer,
    dest: &Path,
    target: Target,
    budget: &crate::unpack::Budget,
) -> Result<Unpacked, UnpackError> {
    let reader = open_layer(layer)?;
    unpack_tar_within(reader, dest, target, budget).map_err(|e| match e {
        Failure::Invalid(reason) => UnpackError::Invalid {
            digest: layer.digest.clone(),
            reason,
        },
        Failure::Io(source) => UnpackError::Io {
            digest: layer.digest.clone(),
            source,
        },
    })
}

/// Why [`unpack_tar`] failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad content.
    Invalid(String),
    /// I/O.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    /// Errors while *reading* the archive. The blob's digest was checked before unpacking, so
    /// a stream that does not parse (bad tar header, bad gzip) is the content's fault; errors
    /// while writing are mapped to [`Failure::Io`] explicitly where they happen.
    fn from(e: io::Error) -> Self {
        Failure::Invalid(format!("malformed layer archive: {e}"))
    }
}

/// Copies an entry's data to `to`: read errors are the archive's, write errors the disk's.
fn copy_entry(from: &mut impl Read, to: &mut impl io::Write) -> Result<(), Failure> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).map_err(Failure::Io)?;
    }
}

/// Unpacks a tar stream into `dest` for `target` (see the module docs), without caps.
pub fn unpack_tar(reader: impl Read, dest: &Path, target: Target) -> Result<Unpacked, Failure> {
    unpack_tar_within(reader, dest, target, &crate::unpack::Budget::unlimited())
}

/// [`unpack_tar`] within `budget` (the job's unpack caps, across its layers).
pub fn unpack_tar_within(
    reader: impl Read,
    dest: &Path,
    target: Target,
    budget: &crate::unpack::Budget,
) -> Result<Unpacked, Failure> {
    fs::create_dir_all(dest).map_err(Failure::Io)?;
    let mut out = Unpacked::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let size = if entry.header().entry_type().is_file()
            || entry.header().entry_type() == tar::EntryType::GNUSparse
        {
            entry.size()
        } else {
            0
        };
        budget
            .take(size)
            .map_err(|e| Failure::Invalid(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|_| Failure::Invalid("entry name is not UTF-8".into()))?;
        let parts = check_entry_name(&name).map_err(Failure::Invalid)?;
        let kind = entry.header().entry_type();

        if parts.len() >= 2 && parts[0] == "Hives" && parts[1].ends_with("_BASE") {
            out.looks_like_base = true;
        }
        if parts.len() >= 2 && parts[0] == "UtilityVM" && parts[1].eq_ignore_ascii_case("Files") {
            out.has_utility_vm = true;
        }
        if parts.len() == 5
            && parts[0] == "Files"
            && parts[1..4]
                .iter()
                .zip(["Windows", "System32", "config"])
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            && parts[4].eq_ignore_ascii_case("SYSTEM")
        {
            out.looks_like_base = true;
        }

        if target == Target::Base && parts[0] == "Hives" {
            out.skipped += 1;
            continue;
        }

        // Whiteout: `<dir>/.wh.<name>` deletes `<dir>/<name>` of a lower layer.
        let leaf = parts.last().map(String::as_str).unwrap_or("");
        if let Some(deleted) = leaf.strip_prefix(".wh.") {
            if deleted.is_empty() || deleted.starts_with(".wh.") || parts[0] != "Files" {
                return Err(Failure::Invalid(format!("{name:?}: unsupported whiteout")));
            }
            if target == Target::Import {
                let mut t = parts[1..parts.len() - 1].to_vec();
                t.push(deleted.to_owned());
                out.tombstones.push(format!("\\{}", t.join("\\")));
            } else {
                out.skipped += 1;
            }
            continue;
        }

        let path = to_path(dest, &parts);
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&path).map_err(Failure::Io)?;
                out.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(Failure::Io)?;
                }
                let mut f = fs::File::create(&path).map_err(Failure::Io)?;
                copy_entry(&mut entry, &mut f)?;
                out.files += 1;
            }
            tar::EntryType::Link => {
                let target_name = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| {
                        Failure::Invalid(format!("{name:?}: hard link without target"))
                    })?;
                let tparts = check_entry_name(&target_name).map_err(Failure::Invalid)?;
                if target == Target::Base && tparts[0] == "Hives" {
                    out.skipped += 1;
                    continue;
                }
                let tpath = to_path(dest, &tparts);
                if !tpath.is_file() {
                    return Err(Failure::Invalid(format!(
                        "{name:?}: hard link to {target_name:?}, which is not an earlier file"
                    )));
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(Failure::Io)?;
                }
                if path.exists() {
                    fs::remove_file(&path).map_err(Failure::Io)?;
                }
                if fs::hard_link(&tpath, &path).is_err() {
                    fs::copy(&tpath, &path).map_err(Failure::Io)?;
                }
                out.files += 1;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            _ => out.skipped += 1,
        }
    }
    if target == Target::Import && !out.tombstones.is_empty() {
        let mut text = String::from("\u{feff}Version 1.0\n");
        for t in &out.tombstones {
            text.push_str(t);
            text.push('\n');
        }
        fs::write(dest.join("tombstones.txt"), text).map_err(Failure::Io)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            } else {
                h.set_size(data.len() as u64);
            }
            h.set_mode(0o644);
            // `append_data` would refuse `..`; write the raw name to test our own check.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            check_entry_name("Files/a/b.txt").unwrap(),
            ["Files", "a", "b.txt"]
        );
        assert_eq!(check_entry_name("./files\\x").unwrap(), ["Files", "x"]);
        for bad in [
            "/Files/x",
            "\\Files\\x",
            "C:/Windows",
            "Files/../../etc/passwd",
            "Files\\..\\..\\x",
            "Other/x",
            "Files/a:stream",
            "",
        ] {
            assert!(check_entry_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn traversal_is_rejected_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[("Files/ok.txt", b"ok"), ("Files/../../evil.txt", b"x")]);
        let e = unpack_tar(&t[..], &dir.path().join("l"), Target::Import).unwrap_err();
        assert!(matches!(e, Failure::Invalid(ref m) if m.contains("parent-directory")));
        assert!(!dir.path().join("evil.txt").exists());
    }

    #[test]
    fn whiteouts_become_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("Files/", b""),
            ("Files/app/", b""),
            ("Files/app/new.txt", b"new"),
            ("Files/app/.wh.old.txt", b""),
            ("Hives/Software_Delta", b"hive"),
        ]);
        let u = unpack_tar(&t[..], dir.path(), Target::Import).unwrap();
        assert_eq!(u.tombstones, [r"\app\old.txt"]);
        assert_eq!(u.files, 2);
        assert!(!u.looks_like_base);
        let ts = fs::read_to_string(dir.path().join("tombstones.txt")).unwrap();
        assert_eq!(ts, "\u{feff}Version 1.0\n\\app\\old.txt\n");
        assert!(dir.path().join("Hives/Software_Delta").is_file());
    }

    #[test]
    fn base_layer_skips_hives_and_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("Files/Windows/System32/config/SYSTEM", b"sys"),
            ("Hives/System_Base", b"h"),
            ("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi", b"efi"),
        ]);
        let u = unpack_tar(&t[..], dir.path(), Target::Base).unwrap();
        assert!(u.looks_like_base && u.has_utility_vm);
        assert!(!dir.path().join("Hives").exists());
        assert_eq!(u.skipped, 1);
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        // 64 MiB of zeros in one file: a few KB of gzip.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(64 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "Files/zeros", io::repeat(0).take(64 << 20))
            .unwrap();
        let t = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let budget = crate::unpack::Budget::new(crate::unpack::Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        });
        let e = unpack_tar_within(&t[..], dir.path(), Target::Import, &budget).unwrap_err();
        assert!(
            matches!(&e, Failure::Invalid(m) if m.contains("layer expands beyond the limit")),
            "{e:?}"
        );
        assert!(!dir.path().join("Files/zeros").exists());
    }

    #[test]
    fn garbage_is_the_images_fault() {
        let dir = tempfile::tempdir().unwrap();
        let junk = vec![0x42u8; 1024];
        let e = unpack_tar(&junk[..], dir.path(), Target::Import).unwrap_err();
        assert!(matches!(e, Failure::Invalid(_)), "{e:?}");
    }
}
