//! Applies Linux image layers to a root filesystem, as the image spec's changeset rules say:
//! layers in order, `.wh.<name>` deletes `<name>` from the layers below, `.wh..wh..opq` makes
//! a directory opaque (its lower contents go). Entries that would land outside the root
//! (`..`, absolute paths, through symlinks) are refused.

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";

/// Message of a job whose layers expand past the caps.
pub const TOO_BIG: &str = "layer expands beyond the limit";

/// Caps on what one job may unpack, across all its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content.
    pub max_bytes: u64,
    /// Tar entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// The part of [`Limits`] a job has used; shared by all its layers (and threads).
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    bytes: std::sync::atomic::AtomicU64,
    entries: std::sync::atomic::AtomicU64,
}

/// The error of a layer that expands beyond the caps: the image's fault.
#[derive(Debug, thiserror::Error)]
#[error("{TOO_BIG} ({what})")]
pub struct TooBig {
    /// Which cap, and how far.
    pub what: String,
}

impl Budget {
    /// A fresh budget.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            bytes: 0.into(),
            entries: 0.into(),
        }
    }

    /// No caps.
    pub fn unlimited() -> Self {
        Self::new(Limits {
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
        })
    }

    /// Takes one entry of `size` content bytes, before anything of it is written.
    pub fn take(&self, size: u64) -> std::result::Result<(), TooBig> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.entries.fetch_add(1, SeqCst).saturating_add(1);
        if n > self.limits.max_entries {
            return Err(TooBig {
                what: format!("more than {} entries", self.limits.max_entries),
            });
        }
        let b = self.bytes.fetch_add(size, SeqCst).saturating_add(size);
        if b > self.limits.max_bytes {
            return Err(TooBig {
                what: format!("more than {} bytes", self.limits.max_bytes),
            });
        }
        Ok(())
    }

    /// Bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// True when `e` (anywhere in its chain) is the disk or a quota running full: the host's
/// problem, not the image's.
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(28) | Some(122))
        })
    })
}
const OPAQUE: &str = ".wh..wh..opq";

/// How a layer is compressed, from its media type.
pub fn compression(media_type: &str) -> Result<Compression> {
    if media_type.ends_with("+gzip")
        || media_type.ends_with(".tar.gzip")
        || media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    {
        Ok(Compression::Gzip)
    } else if media_type.ends_with("+zstd") {
        bail!("zstd-compressed layers are not supported by this runner ({media_type})")
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Ok(Compression::None)
    } else {
        bail!("not a layer media type: {media_type}")
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
}

/// A path inside the layer, made relative and checked; `None` for the root itself.
fn clean(p: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => bail!("layer entry {} leaves the root", p.display()),
            Component::Prefix(_) => bail!("layer entry {} has a prefix", p.display()),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Checks that no directory on the way from `root` to `rel`'s parent is a symlink, so a
/// write cannot escape the root through one.
fn parent_inside(root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    bail!(
                        "layer entry {} goes through the symlink {}",
                        rel.display(),
                        cur.display()
                    )
                }
                Ok(m) if !m.is_dir() => {
                    // A file where a directory should be: the lower layer's file goes.
                    fs::remove_file(&cur)?;
                    fs::create_dir(&cur)?;
                }
                Ok(_) => {}
                Err(_) => {
                    fs::create_dir(&cur).with_context(|| format!("creating {}", cur.display()))?
                }
            }
        }
    }
    Ok(())
}

/// True when `rel` and every directory above it, under `root`, is a real directory (no
/// symlink anywhere on the way).
#[cfg(unix)]
fn real_dir_inside(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
            _ => return false,
        }
    }
    true
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one layer (a tar stream) to `root`, within `budget`. Returns the number of entries.
pub fn apply_layer(
    root: &Path,
    layer: &Path,
    compression: Compression,
    budget: &Budget,
) -> Result<usize> {
    let f = fs::File::open(layer).with_context(|| format!("opening {}", layer.display()))?;
    let r: Box<dyn Read> = match compression {
        Compression::None => Box::new(BufReader::new(f)),
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::new(f))),
    };
    apply_tar_within(root, r, budget)
}

/// A tar entry's (uid, gid).
type Owner = (u64, u64);

/// Applies a tar stream to `root`, without caps.
pub fn apply_tar(root: &Path, r: impl Read) -> Result<usize> {
    apply_tar_within(root, r, &Budget::unlimited())
}

/// Applies a tar stream to `root`; every entry is taken from `budget` before it is written.
pub fn apply_tar_within(root: &Path, r: impl Read, budget: &Budget) -> Result<usize> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    #[cfg(unix)]
    ar.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    let mut n = 0;
    // Directory modes and owners are applied at the end, so a read-only directory can still
    // be filled.
    let mut dirs: Vec<(PathBuf, u32, Option<Owner>)> = Vec::new();
    for entry in ar.entries().context("reading the layer")? {
        let mut e = entry.context("reading a layer entry")?;
        n += 1;
        let kind = e.header().entry_type();
        // Every entry's content counts: tar-rs writes `Continuous` and unknown typeflags as
        // regular files, and GNU sparse entries report their full size.
        budget.take(e.size())?;
        let raw = e.path().context("layer entry path")?.into_owned();
        let Some(rel) = clean(&raw)? else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        parent_inside(root, &rel)?;
        let dir = rel
            .parent()
            .map(|p| root.join(p))
            .unwrap_or(root.to_path_buf());
        if name == OPAQUE {
            // Everything the lower layers put in this directory goes.
            if let Ok(rd) = fs::read_dir(&dir) {
                for c in rd.flatten() {
                    remove_any(&c.path())?;
                }
            }
            continue;
        }
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            if target.is_empty() || target == "." || target == ".." {
                bail!("bad whiteout {}", rel.display());
            }
            remove_any(&dir.join(target))?;
            continue;
        }
        let dest = root.join(&rel);
        let existing = fs::symlink_metadata(&dest).ok();
        if let Some(m) = &existing {
            // A directory stays a directory (its lower contents merge); anything else is
            // replaced, never written through (a lower symlink must not redirect the write).
            if !(kind.is_dir() && m.is_dir()) {
                remove_any(&dest)?;
            }
        }
        if kind.is_hard_link() {
            let target = e
                .link_name()?
                .ok_or_else(|| anyhow::anyhow!("hard link without a target"))?
                .into_owned();
            let Some(t) = clean(&target)? else {
                bail!("hard link {} to the root", rel.display());
            };
            parent_inside(root, &t)?;
            fs::hard_link(root.join(&t), &dest)
                .with_context(|| format!("linking {} to {}", rel.display(), t.display()))?;
            continue;
        }
        if kind.is_dir() {
            fs::create_dir_all(&dest)?;
            let mode = e.header().mode().unwrap_or(0o755);
            let owner = e.header().uid().ok().zip(e.header().gid().ok());
            dirs.push((rel, mode, owner));
            continue;
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // Device nodes come from the runtime's /dev, not from images.
            continue;
        }
        e.unpack(&dest)
            .with_context(|| format!("unpacking {}", rel.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let chown = nix::unistd::geteuid().is_root();
        for (rel, mode, owner) in dirs.into_iter().rev() {
            // A later entry may have replaced the directory, or one above it, with a symlink:
            // never follow one out of the root (chmod follows symlinks).
            if !real_dir_inside(root, &rel) {
                continue;
            }
            let d = root.join(&rel);
            if chown {
                if let Some((uid, gid)) = owner {
                    let (uid, gid) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
                    let _ = std::os::unix::fs::lchown(&d, uid, gid);
                }
            }
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(mode & 0o7777));
        }
    }
    #[cfg(not(unix))]
    drop(dirs);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        apply_tar(
            r,
            &tar_of(&[
                ("etc/", None),
                ("etc/a", Some(b"1")),
                ("etc/b", Some(b"2")),
                ("var/", None),
                ("var/x", Some(b"x")),
                ("var/y", Some(b"y")),
            ])[..],
        )
        .unwrap();
        apply_tar(
            r,
            &tar_of(&[
                ("etc/.wh.a", Some(b"")),
                ("etc/b", Some(b"22")),
                ("var/.wh..wh..opq", Some(b"")),
                ("var/z", Some(b"z")),
            ])[..],
        )
        .unwrap();
        assert!(!r.join("etc/a").exists());
        assert_eq!(fs::read(r.join("etc/b")).unwrap(), b"22");
        assert!(!r.join("var/x").exists() && !r.join("var/y").exists());
        assert_eq!(fs::read(r.join("var/z")).unwrap(), b"z");
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_replaced_by_a_symlink_does_not_chmod_the_host() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o600)).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o6777);
        h.set_cksum();
        b.append_data(&mut h, "x", &[][..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_uid(0);
        l.set_gid(0);
        l.set_mtime(0);
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        l.set_mode(0o777);
        b.append_link(&mut l, "x", outside.path()).unwrap();
        apply_tar(root.path(), &b.into_inner().unwrap()[..]).unwrap();
        let mode = fs::metadata(outside.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(fs::symlink_metadata(root.path().join("x"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// Found in review: tar-rs writes `Continuous` ('7') and unknown typeflags as regular
    /// files, so a cap that charged only `Regular` entries let such a bomb through.
    #[test]
    fn the_cap_charges_every_entry_type() {
        for kind in [tar::EntryType::Continuous, tar::EntryType::new(b'Z')] {
            let root = tempfile::tempdir().unwrap();
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(4 << 20);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "big", std::io::repeat(0).take(4 << 20))
                .unwrap();
            let budget = Budget::new(Limits {
                max_bytes: 1 << 20,
                max_entries: 100,
            });
            let err = apply_tar_within(root.path(), &b.into_inner().unwrap()[..], &budget)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("layer expands beyond the limit"),
                "{kind:?}: {err}"
            );
            assert!(!root.path().join("big").exists(), "{kind:?}");
        }
    }

    #[test]
    fn refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        // `append_data` refuses `..`; write the raw name the way a hostile layer would.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let err = apply_tar(root.path(), &data[..]).unwrap_err().to_string();
        assert!(err.contains("leaves the root"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_writes_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        let err = apply_tar(root.path(), &tar_of(&[("evil/file", Some(b"x"))])[..])
            .unwrap_err()
            .to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(!outside.path().join("file").exists());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            compression("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Compression::None
        );
        assert!(compression("application/vnd.oci.image.layer.v1.tar+zstd").is_err());
    }
}
