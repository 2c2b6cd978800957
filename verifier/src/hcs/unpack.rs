//! Turns a Windows image layer (a tar, optionally gzip-compressed) into what the storage calls
//! expect.
//!
//! Windows layer tars hold `Files/` (the C:\ tree), `Hives/` (registry hive deltas) and, in a
//! base layer, `UtilityVM/` (../shared/docs/WINDOWS.md §2.3; hcsshim
//! `internal/wclayer/legacy.go`, `pkg/ociwclayer/import.go`). Two targets:
//!
//! * [`Target::Base`]: the base layer is written straight into its layer folder, as hcsshim's
//!   `baseLayerWriter` does, without `Hives/` (`HcsSetupBaseOSLayer` creates the hives and
//!   fails if they exist: hcsshim `SetupContainerBaseLayer`). Whiteouts are meaningless there.
//!   Plain file I/O: security descriptors and attributes are not applied (docs/HCS.md).
//! * [`Target::Import`]: any other layer is written to a source folder in the **transport
//!   format** that `HcsImportLayer` (like vmcompute's `ImportLayer`) reads, exactly as hcsshim's
//!   `legacyLayerWriter` writes it:
//!   - every `Files\` file is a file holding its 4-byte attribute word (little endian) followed
//!     by a Win32 backup stream: the security descriptor (`MSWINDOWS.rawsd`) as
//!     `BACKUP_SECURITY_DATA`, a symlink or junction as `BACKUP_REPARSE_DATA`, the data as
//!     `BACKUP_DATA`, alternate data streams (`name:stream` entries) as
//!     `BACKUP_ALTERNATE_DATA` (go-winio `backuptar.WriteBackupStreamFromTarFile`);
//!   - every `Files\` directory is a directory plus a `<dir>.$wcidirs$` file in that format;
//!   - `Hives\` files are written decoded (hcsshim restores them with `BackupWrite`);
//!   - `UtilityVM\` is not imported: the parent's `UtilityVM\Files` is cloned into the new layer
//!     folder (hard links; the BCD files copied, since they are patched) and the layer's own
//!     `UtilityVM\` entries are written there (`legacy.go` `initUtilityVM`, `cloneTree`);
//!   - hard links (also to files of parent layers) and whiteouts are returned in [`Unpacked`]
//!     and applied to the new layer after the import ([`finish_import`]; hcsshim
//!     `legacyLayerWriterWrapper.Close`). No `tombstones.txt` is written (hcsshim stopped in
//!     731a68d7e).
//!
//! Every entry name is checked before anything is written: no absolute paths, drive letters,
//! `..`, NUL, or top-level folders other than the three above (both `/` and `\` count as
//! separators, since Windows reads both). Cross-platform; no HCS calls here.

use crate::runner::Layer;
use flate2::read::GzDecoder;
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// How a layer is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The base layer, into its layer folder.
    Base,
    /// Any other layer, into a source folder for `HcsImportLayer`.
    Import {
        /// The new layer's folder (receives `UtilityVM\`).
        layer: &'a Path,
        /// The parent layer folders, topmost first.
        parents: &'a [PathBuf],
    },
}

/// A hard link made after the import (hcsshim `pendingLink`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLink {
    /// The link, relative to the new layer.
    pub name: PathBuf,
    /// The folder holding the target: a parent layer, or `None` for the new layer itself.
    pub root: Option<PathBuf>,
    /// The target, relative to `root`.
    pub target: PathBuf,
}

/// What an unpacked layer contained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files and hard links written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Whiteouts of `Files\` (relative paths, `Files\…`), removed from the new layer after
    /// the import.
    pub tombstones: Vec<PathBuf>,
    /// Hard links to make after the import.
    pub links: Vec<PendingLink>,
    /// Entries skipped (symlinks, devices, `Hives/` of a base layer).
    pub skipped: u64,
    /// It has `UtilityVM/Files/` (a utility VM image; for an imported layer: the parent's,
    /// cloned and patched).
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

/// Win32 backup stream ids (winbase.h `BACKUP_*`; go-winio `backup.go`).
pub mod stream {
    /// `BACKUP_DATA`.
    pub const DATA: u32 = 1;
    /// `BACKUP_SECURITY_DATA`.
    pub const SECURITY: u32 = 3;
    /// `BACKUP_ALTERNATE_DATA`.
    pub const ALTERNATE_DATA: u32 = 4;
    /// `BACKUP_REPARSE_DATA`.
    pub const REPARSE_DATA: u32 = 8;
}

/// `FILE_ATTRIBUTE_DIRECTORY`.
pub const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;
/// `FILE_ATTRIBUTE_REPARSE_POINT`.
pub const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
/// The suffix of a directory's metadata file in the transport format.
pub const WCIDIRS: &str = ".$wcidirs$";

/// Writes one `WIN32_STREAM_ID` header (`dwStreamId`, `dwStreamAttributes`, `Size`,
/// `dwStreamNameSize`, then the UTF-16 name), 20 bytes + name, little endian.
pub fn stream_header(id: u32, size: u64, name: &str) -> Vec<u8> {
    let name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut h = Vec::with_capacity(20 + name16.len());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&(name16.len() as u32).to_le_bytes());
    h.extend_from_slice(&name16);
    h
}

/// One stream of a parsed backup stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Its id ([`stream`]).
    pub id: u32,
    /// Its name (alternate data streams).
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Parses a whole Win32 backup stream; `Err` when it is truncated or has trailing bytes.
pub fn parse_backup_stream(mut b: &[u8]) -> Result<Vec<Stream>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 20 {
            return Err(format!("truncated stream header ({} bytes)", b.len()));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let id = u32_at(0);
        let size = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        let name_len = u32_at(16) as usize;
        if !(1..=10).contains(&id) || !name_len.is_multiple_of(2) {
            return Err(format!("not a backup stream header (id {id})"));
        }
        let rest = &b[20..];
        let total = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(name_len))
            .filter(|t| *t <= rest.len())
            .ok_or_else(|| format!("stream {id} of {size} bytes overruns the file"))?;
        let name16: Vec<u16> = rest[..name_len]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        out.push(Stream {
            id,
            name: String::from_utf16_lossy(&name16),
            data: rest[name_len..total].to_vec(),
        });
        b = &rest[total..];
    }
    Ok(out)
}

/// A `REPARSE_DATA_BUFFER` for a symlink or a junction (mount point) to `target` (go-winio
/// `EncodeReparsePoint`).
pub fn reparse_point(target: &str, mount_point: bool) -> Vec<u8> {
    let b = target.as_bytes();
    let (nt, relative) = if let Some(rest) = target.strip_prefix(r"\\?\") {
        (format!(r"\??\{rest}"), false)
    } else if let Some(rest) = target.strip_prefix(r"\\") {
        (format!(r"\??\UNC\{rest}"), false)
    } else if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        (format!(r"\??\{target}"), false)
    } else {
        (target.to_owned(), true)
    };
    let t16: Vec<u16> = target.encode_utf16().chain([0]).collect();
    let n16: Vec<u16> = nt.encode_utf16().chain([0]).collect();
    let mut size = 8 + n16.len() * 2 + t16.len() * 2;
    let tag: u32 = if mount_point {
        0xA000_0003
    } else {
        0xA000_000C
    };
    if !mount_point {
        size += 4;
    }
    let mut out = Vec::new();
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(size as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(((n16.len() - 1) * 2) as u16).to_le_bytes());
    out.extend_from_slice(&((n16.len() * 2) as u16).to_le_bytes());
    out.extend_from_slice(&(((t16.len() - 1) * 2) as u16).to_le_bytes());
    if !mount_point {
        out.extend_from_slice(&u32::from(relative).to_le_bytes());
    }
    for c in n16.iter().chain(t16.iter()) {
        out.extend_from_slice(&c.to_le_bytes());
    }
    out
}

/// The Windows metadata of an entry from its PAX records (go-winio `backuptar`).
#[derive(Debug, Default)]
struct WinMeta {
    attributes: Option<u32>,
    raw_sd: Option<Vec<u8>>,
    mount_point: bool,
}

fn win_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<WinMeta, Failure> {
    use base64::Engine as _;
    let mut m = WinMeta::default();
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(m);
    };
    for ext in exts {
        let ext = ext?;
        let (Ok(k), Ok(v)) = (ext.key(), ext.value()) else {
            continue;
        };
        match k {
            "MSWINDOWS.fileattr" => {
                m.attributes = Some(v.trim().parse().map_err(|_| {
                    Failure::Invalid(format!("MSWINDOWS.fileattr {v:?} is not a number"))
                })?);
            }
            "MSWINDOWS.rawsd" => {
                m.raw_sd = Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .map_err(|_| Failure::Invalid("MSWINDOWS.rawsd is not base64".into()))?,
                );
            }
            "MSWINDOWS.mountpoint" => m.mount_point = true,
            _ => {}
        }
    }
    Ok(m)
}

fn rel(parts: &[String]) -> PathBuf {
    parts.iter().collect()
}

/// Removes what is at `p` (file, link or folder); absent is fine.
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The BCD files the import patches: copied, never linked, when a utility VM is cloned
/// (`legacy.go` `mutatedUtilityVMFiles`).
fn is_mutated_uvm_file(rel_to_files: &Path) -> bool {
    let s = rel_to_files
        .to_string_lossy()
        .replace('/', "\\")
        .to_ascii_uppercase();
    matches!(
        s.as_str(),
        r"EFI\MICROSOFT\BOOT\BCD"
            | r"EFI\MICROSOFT\BOOT\BCD.LOG"
            | r"EFI\MICROSOFT\BOOT\BCD.LOG1"
            | r"EFI\MICROSOFT\BOOT\BCD.LOG2"
    )
}

/// Clones `from` into `to`: folders created, files hard-linked (copied when linking fails or
/// for the mutated BCD files). `base` is `from`'s `UtilityVM\Files`, to name mutated files.
fn clone_tree(from: &Path, to: &Path, base: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            clone_tree(&src, &dst, base)?;
        } else if ft.is_file() {
            let mutated = src.strip_prefix(base).is_ok_and(is_mutated_uvm_file);
            if mutated || fs::hard_link(&src, &dst).is_err() {
                fs::copy(&src, &dst)?;
            }
        }
    }
    Ok(())
}

/// State of one import unpack.
struct Importer<'a> {
    source: &'a Path,
    layer: &'a Path,
    parents: &'a [PathBuf],
    uvm_ready: bool,
    /// Names (components joined by `\`, upper-cased) of files added by this layer.
    added: std::collections::HashSet<String>,
    /// The last `Files\` file written, for its alternate data streams: its name and path.
    last_file: Option<(String, PathBuf)>,
}

fn key(parts: &[String]) -> String {
    parts.join("\\").to_ascii_uppercase()
}

impl Importer<'_> {
    /// Clones the parent's utility VM into the new layer, once (`initUtilityVM`).
    fn init_uvm(&mut self, out: &mut Unpacked) -> Result<(), Failure> {
        if self.uvm_ready {
            return Ok(());
        }
        let parent = self
            .parents
            .first()
            .map(|p| p.join("UtilityVM").join("Files"))
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                Failure::Invalid(
                    "the layer updates UtilityVM/ but its parent has no UtilityVM/Files".into(),
                )
            })?;
        let to = self.layer.join("UtilityVM").join("Files");
        clone_tree(&parent, &to, &parent).map_err(Failure::Io)?;
        self.uvm_ready = true;
        out.has_utility_vm = true;
        Ok(())
    }

    fn write_transport<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parts: &[String],
        kind: tar::EntryType,
        meta: &WinMeta,
    ) -> Result<(), Failure> {
        let path = to_path(self.source, parts);
        let is_dir = kind == tar::EntryType::Directory
            || (kind == tar::EntryType::Symlink
                && meta
                    .attributes
                    .is_some_and(|a| a & FILE_ATTRIBUTE_DIRECTORY != 0));
        let mut attributes =
            meta.attributes
                .unwrap_or(if is_dir { FILE_ATTRIBUTE_DIRECTORY } else { 0 });
        if kind == tar::EntryType::Symlink {
            attributes |= FILE_ATTRIBUTE_REPARSE_POINT;
        }
        let file = if is_dir {
            fs::create_dir_all(&path).map_err(Failure::Io)?;
            let mut name = path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            name.push(WCIDIRS);
            path.with_file_name(name)
        } else {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(Failure::Io)?;
            }
            path.clone()
        };
        let mut f = io::BufWriter::new(fs::File::create(&file).map_err(Failure::Io)?);
        let w = |f: &mut io::BufWriter<fs::File>, b: &[u8]| f.write_all(b).map_err(Failure::Io);
        w(&mut f, &attributes.to_le_bytes())?;
        if let Some(sd) = &meta.raw_sd {
            w(
                &mut f,
                &stream_header(stream::SECURITY, sd.len() as u64, ""),
            )?;
            w(&mut f, sd)?;
        }
        if kind == tar::EntryType::Symlink {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).replace('/', "\\"))
                .unwrap_or_default();
            let rp = reparse_point(&target, meta.mount_point);
            w(
                &mut f,
                &stream_header(stream::REPARSE_DATA, rp.len() as u64, ""),
            )?;
            w(&mut f, &rp)?;
        }
        if !is_dir && kind != tar::EntryType::Symlink {
            let size = entry.header().size()?;
            w(&mut f, &stream_header(stream::DATA, size, ""))?;
            copy_entry(entry, &mut f)?;
        }
        f.flush().map_err(Failure::Io)?;
        self.added.insert(key(parts));
        self.last_file = (!is_dir).then(|| (parts.join("/"), file));
        Ok(())
    }

    /// Appends an alternate data stream entry (`<file>:<stream>`) to its file.
    fn append_ads<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stream_name: &str,
    ) -> Result<(), Failure> {
        let Some((_, file)) = &self.last_file else {
            return Err(Failure::Invalid(
                "alternate data stream without its file".into(),
            ));
        };
        let size = entry.header().size()?;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(file)
            .map_err(Failure::Io)?;
        f.write_all(&stream_header(
            stream::ALTERNATE_DATA,
            size,
            &format!(":{stream_name}:$DATA"),
        ))
        .map_err(Failure::Io)?;
        copy_entry(entry, &mut f)
    }
}

use std::io::Write as _;

/// Unpacks a tar stream into `dest` for `target` (see the module docs), without caps.
pub fn unpack_tar(reader: impl Read, dest: &Path, target: Target<'_>) -> Result<Unpacked, Failure> {
    unpack_tar_within(reader, dest, target, &crate::unpack::Budget::unlimited())
}

/// [`unpack_tar`] within `budget` (the job's unpack caps, across its layers).
pub fn unpack_tar_within(
    reader: impl Read,
    dest: &Path,
    target: Target<'_>,
    budget: &crate::unpack::Budget,
) -> Result<Unpacked, Failure> {
    fs::create_dir_all(dest).map_err(Failure::Io)?;
    let mut out = Unpacked::default();
    let mut importer = match target {
        Target::Base => None,
        Target::Import { layer, parents } => Some(Importer {
            source: dest,
            layer,
            parents,
            uvm_ready: false,
            added: Default::default(),
            last_file: None,
        }),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // Every entry's content counts, whatever its typeflag says.
        budget
            .take(entry.size())
            .map_err(|e| Failure::Invalid(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|_| Failure::Invalid("entry name is not UTF-8".into()))?;
        let kind = entry.header().entry_type();

        // An alternate data stream: `<previous file>:<stream>` (go-winio backuptar).
        if let Some(imp) = importer.as_mut() {
            let ads = imp.last_file.as_ref().and_then(|(last, _)| {
                name.trim_start_matches("./")
                    .replace('\\', "/")
                    .strip_prefix(&format!("{last}:"))
                    .map(str::to_owned)
            });
            if let Some(stream_name) = ads {
                if stream_name.is_empty() || stream_name.contains(['/', '\\', ':', '\0']) {
                    return Err(Failure::Invalid(format!("{name:?}: bad stream name")));
                }
                imp.append_ads(&mut entry, &stream_name)?;
                continue;
            }
        }
        let parts = check_entry_name(&name).map_err(Failure::Invalid)?;

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
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }

        // Whiteout: `<dir>/.wh.<name>` deletes `<dir>/<name>` of a lower layer.
        let leaf = parts.last().map(String::as_str).unwrap_or("");
        if let Some(deleted) = leaf.strip_prefix(".wh.") {
            if deleted.is_empty() || deleted.starts_with(".wh.") || parts[0] == "Hives" {
                return Err(Failure::Invalid(format!("{name:?}: unsupported whiteout")));
            }
            let mut t = parts[..parts.len() - 1].to_vec();
            t.push(deleted.to_owned());
            match importer.as_mut() {
                None => out.skipped += 1,
                Some(_) if t[0] == "Files" => out.tombstones.push(rel(&t)),
                Some(imp) => {
                    // UtilityVM/Files: removed from the cloned utility VM now (`Remove`).
                    if t.len() < 3 || !t[1].eq_ignore_ascii_case("Files") {
                        return Err(Failure::Invalid(format!("{name:?}: invalid tombstone")));
                    }
                    imp.init_uvm(&mut out)?;
                    let p = to_path(imp.layer, &t);
                    if fs::symlink_metadata(&p).is_err() {
                        return Err(Failure::Invalid(format!(
                            "{name:?}: whiteout of a file the utility VM does not have"
                        )));
                    }
                    remove_any(&p).map_err(Failure::Io)?;
                }
            }
            continue;
        }

        if let Some(imp) = importer.as_mut() {
            let meta = win_meta(&mut entry)?;
            match (parts[0].as_str(), kind) {
                (_, tar::EntryType::Link) => {
                    let target_name = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .ok_or_else(|| {
                            Failure::Invalid(format!("{name:?}: hard link without target"))
                        })?;
                    let tparts = check_entry_name(&target_name).map_err(Failure::Invalid)?;
                    let in_uvm = |p: &[String]| {
                        p.len() >= 3 && p[0] == "UtilityVM" && p[1].eq_ignore_ascii_case("Files")
                    };
                    let root = if tparts[0] == "Files" && tparts.len() >= 2 {
                        if imp.added.contains(&key(&tparts)) {
                            None
                        } else {
                            let found = imp
                                .parents
                                .iter()
                                .find(|r| fs::symlink_metadata(to_path(r, &tparts)).is_ok())
                                .cloned();
                            Some(found.ok_or_else(|| {
                                Failure::Invalid(format!(
                                    "{name:?}: hard link to {target_name:?}, which neither this layer nor a parent has"
                                ))
                            })?)
                        }
                    } else if in_uvm(&tparts) {
                        imp.init_uvm(&mut out)?;
                        None
                    } else {
                        return Err(Failure::Invalid(format!("{name:?}: invalid hard link")));
                    };
                    if (parts[0] != "Files" || parts.len() < 2) && !in_uvm(&parts) {
                        return Err(Failure::Invalid(format!("{name:?}: invalid hard link")));
                    }
                    out.links.push(PendingLink {
                        name: rel(&parts),
                        root,
                        target: rel(&tparts),
                    });
                    imp.added.insert(key(&parts));
                    imp.last_file = None;
                    out.files += 1;
                }
                ("Files", tar::EntryType::Directory)
                | ("Files", tar::EntryType::Symlink)
                | ("Files", tar::EntryType::Regular)
                | ("Files", tar::EntryType::Continuous) => {
                    imp.write_transport(&mut entry, &parts, kind, &meta)?;
                    if kind == tar::EntryType::Directory {
                        out.dirs += 1;
                    } else {
                        out.files += 1;
                    }
                }
                ("Hives", tar::EntryType::Directory) => {
                    fs::create_dir_all(to_path(dest, &parts)).map_err(Failure::Io)?;
                    out.dirs += 1;
                }
                ("Hives", tar::EntryType::Regular | tar::EntryType::Continuous) => {
                    let path = to_path(dest, &parts);
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent).map_err(Failure::Io)?;
                    }
                    let mut f = fs::File::create(&path).map_err(Failure::Io)?;
                    copy_entry(&mut entry, &mut f)?;
                    out.files += 1;
                }
                ("UtilityVM", k) => {
                    imp.init_uvm(&mut out)?;
                    if parts.len() == 1 {
                        continue;
                    }
                    if !parts[1].eq_ignore_ascii_case("Files") {
                        return Err(Failure::Invalid(format!(
                            "{name:?}: invalid UtilityVM layer"
                        )));
                    }
                    let path = to_path(imp.layer, &parts);
                    match k {
                        tar::EntryType::Directory => {
                            fs::create_dir_all(&path).map_err(Failure::Io)?;
                            out.dirs += 1;
                        }
                        tar::EntryType::Regular | tar::EntryType::Continuous => {
                            if let Some(parent) = path.parent() {
                                fs::create_dir_all(parent).map_err(Failure::Io)?;
                            }
                            // Overwrite (never write through) a hard link of the clone.
                            remove_any(&path).map_err(Failure::Io)?;
                            let mut f = fs::File::create(&path).map_err(Failure::Io)?;
                            copy_entry(&mut entry, &mut f)?;
                            out.files += 1;
                        }
                        _ => out.skipped += 1,
                    }
                    imp.last_file = None;
                }
                _ => out.skipped += 1,
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
                if tparts[0] == "Hives" {
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
            _ => out.skipped += 1,
        }
    }
    if importer.is_some() {
        let files = dest.join("Files");
        fs::create_dir_all(&files).map_err(Failure::Io)?;
        fill_wcidirs(&files).map_err(Failure::Io)?;
    }
    Ok(out)
}

/// Gives every directory under `dir` that the tar created only implicitly (no entry of its
/// own) a `$wcidirs$` file with plain directory attributes, so the source is complete.
fn fill_wcidirs(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            let mut name = e.file_name();
            name.push(WCIDIRS);
            let meta = dir.join(name);
            if !meta.exists() {
                fs::write(&meta, FILE_ATTRIBUTE_DIRECTORY.to_le_bytes())?;
            }
            fill_wcidirs(&e.path())?;
        }
    }
    Ok(())
}

/// After `HcsImportLayer` wrote `layer`: removes the whiteouts from it and makes the hard links
/// (hcsshim `legacyLayerWriterWrapper.Close`: tombstones, then `PendingLinks`).
pub fn finish_import(layer: &Path, u: &Unpacked) -> io::Result<()> {
    for t in &u.tombstones {
        remove_any(&layer.join(t))?;
    }
    for l in &u.links {
        let dst = layer.join(&l.name);
        let src = l.root.as_deref().unwrap_or(layer).join(&l.target);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        remove_any(&dst)?;
        fs::hard_link(&src, &dst)?;
    }
    Ok(())
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

    fn import<'a>(layer: &'a Path, parents: &'a [PathBuf]) -> Target<'a> {
        Target::Import { layer, parents }
    }

    #[test]
    fn traversal_is_rejected_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[("Files/ok.txt", b"ok"), ("Files/../../evil.txt", b"x")]);
        let layer = dir.path().join("layer");
        let e = unpack_tar(&t[..], &dir.path().join("l"), import(&layer, &[])).unwrap_err();
        assert!(matches!(e, Failure::Invalid(ref m) if m.contains("parent-directory")));
        assert!(!dir.path().join("evil.txt").exists());
    }

    /// Reads a transport-format file: its attribute word and streams.
    fn transport(p: &Path) -> (u32, Vec<Stream>) {
        let b = fs::read(p).unwrap();
        let attr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (attr, parse_backup_stream(&b[4..]).unwrap())
    }

    #[test]
    fn app_layers_are_written_in_the_transport_format() {
        let dir = tempfile::tempdir().unwrap();
        let (src, layer) = (dir.path().join("src"), dir.path().join("layer"));
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, data: &[u8], pax: &[(&str, &[u8])]| {
            if !pax.is_empty() {
                b.append_pax_extensions(pax.iter().copied()).unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("Files", tar::EntryType::Directory, b"", &[]);
        add(
            "Files/app",
            tar::EntryType::Directory,
            b"",
            &[("MSWINDOWS.fileattr", b"16")],
        );
        add(
            "Files/app/new.txt",
            tar::EntryType::Regular,
            b"new",
            &[
                ("MSWINDOWS.fileattr", b"32"),
                ("MSWINDOWS.rawsd", b"AQIDBA=="),
            ],
        );
        add(
            "Files/app/new.txt:Zone.Identifier",
            tar::EntryType::Regular,
            b"[Z]",
            &[],
        );
        add("Files/app/.wh.old.txt", tar::EntryType::Regular, b"", &[]);
        add(
            "Hives/Software_Delta",
            tar::EntryType::Regular,
            b"hive",
            &[],
        );
        let t = b.into_inner().unwrap();
        let u = unpack_tar(&t[..], &src, import(&layer, &[])).unwrap();
        assert_eq!(u.tombstones, [PathBuf::from("Files/app/old.txt")]);
        assert!(!src.join("tombstones.txt").exists());
        assert!(src.join("Files/app").is_dir());
        let (attr, streams) = transport(&src.join("Files/app.$wcidirs$"));
        assert_eq!(attr, FILE_ATTRIBUTE_DIRECTORY);
        assert!(streams.is_empty());
        assert!(src.join("Files.$wcidirs$").is_file());
        let (attr, streams) = transport(&src.join("Files/app/new.txt"));
        assert_eq!(attr, 32);
        let ids: Vec<u32> = streams.iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            [stream::SECURITY, stream::DATA, stream::ALTERNATE_DATA]
        );
        assert_eq!(streams[0].data, [1, 2, 3, 4]);
        assert_eq!(streams[1].data, b"new");
        assert_eq!(streams[2].name, ":Zone.Identifier:$DATA");
        assert_eq!(streams[2].data, b"[Z]");
        // Hives are written decoded.
        assert_eq!(fs::read(src.join("Hives/Software_Delta")).unwrap(), b"hive");
    }

    #[test]
    fn links_across_layers_and_the_utility_vm_clone() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("00");
        fs::create_dir_all(parent.join("Files/Windows/System32")).unwrap();
        fs::write(parent.join("Files/Windows/System32/cmd.exe"), b"MZ").unwrap();
        let boot = parent.join("UtilityVM/Files/EFI/Microsoft/Boot");
        fs::create_dir_all(&boot).unwrap();
        fs::write(boot.join("bootmgfw.efi"), b"efi").unwrap();
        fs::write(boot.join("BCD"), b"bcd").unwrap();
        fs::write(parent.join("UtilityVM/Files/old.dll"), b"old").unwrap();
        let (src, layer) = (dir.path().join("src"), dir.path().join("01"));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "Files/cmd2.exe", "Files/Windows/System32/cmd.exe")
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "UtilityVM/Files/new.dll", &b"new"[..])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        b.append_data(&mut h, "UtilityVM/Files/.wh.old.dll", &b""[..])
            .unwrap();
        let t = b.into_inner().unwrap();
        let parents = [parent.clone()];
        let u = unpack_tar(&t[..], &src, import(&layer, &parents)).unwrap();
        assert!(u.has_utility_vm);
        assert!(!src.join("UtilityVM").exists(), "UtilityVM is not imported");
        let files = layer.join("UtilityVM/Files");
        assert_eq!(fs::read(files.join("new.dll")).unwrap(), b"new");
        assert!(!files.join("old.dll").exists());
        assert!(files.join("EFI/Microsoft/Boot/bootmgfw.efi").is_file());
        assert_eq!(
            u.links,
            [PendingLink {
                name: "Files/cmd2.exe".into(),
                root: Some(parent.clone()),
                target: "Files/Windows/System32/cmd.exe".into(),
            }]
        );
        finish_import(&layer, &u).unwrap();
        assert_eq!(fs::read(layer.join("Files/cmd2.exe")).unwrap(), b"MZ");
        // A link to a file no layer has is the image's fault.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "Files/x.exe", "Files/nowhere.exe")
            .unwrap();
        let t = b.into_inner().unwrap();
        let e = unpack_tar(&t[..], &dir.path().join("s2"), import(&layer, &parents)).unwrap_err();
        assert!(matches!(e, Failure::Invalid(_)), "{e:?}");
    }

    #[test]
    fn junctions_get_a_reparse_stream() {
        let rp = reparse_point(r"C:\Users", true);
        assert_eq!(&rp[..4], &0xA000_0003u32.to_le_bytes());
        let rp = reparse_point(r"..\x", false);
        assert_eq!(&rp[..4], &0xA000_000Cu32.to_le_bytes());
        // Relative symlink flag.
        assert_eq!(&rp[16..20], &1u32.to_le_bytes());
        assert!(parse_backup_stream(&stream_header(stream::DATA, 5, "")).is_err());
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
    fn garbage_is_the_images_fault() {
        let dir = tempfile::tempdir().unwrap();
        let junk = vec![0x42u8; 1024];
        let e = unpack_tar(&junk[..], dir.path(), import(dir.path(), &[])).unwrap_err();
        assert!(matches!(e, Failure::Invalid(_)), "{e:?}");
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
        let layer = dir.path().join("layer");
        let budget = crate::unpack::Budget::new(crate::unpack::Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        });
        let e = unpack_tar_within(
            &t[..],
            &dir.path().join("src"),
            import(&layer, &[]),
            &budget,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Failure::Invalid(m) if m.contains("layer expands beyond the limit")),
            "{e:?}"
        );
        assert!(!dir.path().join("src/Files/zeros").exists());
    }
}
