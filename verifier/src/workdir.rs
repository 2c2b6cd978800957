//! The worker's work directory, and the job directories under it, made safe from other local
//! users.
//!
//! The worker runs as root and unpacks image files under its work directory, so a directory
//! another user controls is a way to root: pre-create it, swap a job directory for a symlink,
//! and the worker writes image files (or the runtime state it later feeds to runc) wherever the
//! link points. So:
//!
//! * the default is `/var/lib/berth-verifier`, not a shared temporary directory;
//! * a missing work directory is created with mode 0711 (owner only, but traversable so the
//!   user-namespaced container can reach its own bundle; nothing can be listed);
//! * an existing one is refused unless it is a real directory (not a symlink), owned by the
//!   worker's user and not writable by group or others, and every directory above it is owned
//!   by root or the worker's user and not writable by others (unless sticky, like `/tmp`);
//! * job directories are created fresh with `mkdir` (which never follows a symlink and fails on
//!   anything already there) and checked with `lstat` afterwards.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The default work directory.
pub fn default_dir() -> PathBuf {
    if cfg!(windows) {
        std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            .join("berth-verifier")
    } else {
        PathBuf::from("/var/lib/berth-verifier")
    }
}

/// Creates or checks the work directory (see the module docs). `traversable`: the directories
/// above it must be searchable by others (the container runs as an unprivileged host uid and
/// must reach its bundle).
#[cfg(unix)]
pub fn prepare(dir: &Path, traversable: bool) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = nix::unistd::geteuid().as_raw();
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => {
            // The umask may have taken bits away; set exactly 0711.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if m.file_type().is_symlink() || !m.is_dir() {
        bail!(
            "work directory {} is not a directory (a symlink or a file); refusing to use it",
            dir.display()
        );
    }
    if m.uid() != uid {
        bail!(
            "work directory {} is owned by uid {}, not by the worker's uid {uid}; refusing to use it (another user could redirect the worker's writes)",
            dir.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "work directory {} is writable by group or others (mode {:o}); refusing to use it",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    // Every directory above: a user who may rename entries there could swap the work
    // directory itself.
    let abs = std::path::absolute(dir)?;
    let mut cur = abs.parent();
    while let Some(p) = cur {
        let m = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if m.uid() != 0 && m.uid() != uid {
            bail!(
                "{} (above the work directory) is owned by uid {}; refusing to use {}",
                p.display(),
                m.uid(),
                dir.display()
            );
        }
        if m.mode() & 0o002 != 0 && m.mode() & 0o1000 == 0 {
            bail!(
                "{} (above the work directory) is writable by others and not sticky; refusing to use {}",
                p.display(),
                dir.display()
            );
        }
        if traversable && m.mode() & 0o001 == 0 {
            bail!(
                "{} (above the work directory) is not searchable by others (mode {:o}): the user-namespaced container could not reach its bundle; use a work directory such as /var/lib/berth-verifier",
                p.display(),
                m.mode() & 0o7777
            );
        }
        cur = p.parent();
    }
    Ok(())
}

/// Windows: the directory is created; its ACL is inherited from the parent (ProgramData).
#[cfg(not(unix))]
pub fn prepare(dir: &Path, _traversable: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let m = std::fs::symlink_metadata(dir)?;
    if m.file_type().is_symlink() || !m.is_dir() {
        bail!("work directory {} is not a directory", dir.display());
    }
    Ok(())
}

/// Creates a fresh directory `name` in `parent` with `mode`, never through a symlink: `mkdir`
/// fails on anything already there (a planted symlink included), and the result is checked
/// with `lstat`.
pub fn create_private(parent: &Path, name: &str, mode: u32) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("bad directory name {name:?}");
    }
    let path = parent.join(name);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let m = std::fs::symlink_metadata(&path)?;
        if m.file_type().is_symlink() || !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
            bail!("{} was replaced while it was created", path.display());
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let m = std::fs::symlink_metadata(&path)?;
        if m.file_type().is_symlink() || !m.is_dir() {
            bail!("{} was replaced while it was created", path.display());
        }
    }
    Ok(path)
}

/// A directory the worker keeps (the runtime state): created private if missing; if it exists
/// it must be a real directory of the worker's user, not writable by others.
pub fn ensure_private(parent: &Path, name: &str) -> Result<PathBuf> {
    let path = parent.join(name);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private(parent, name, 0o700),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        Ok(m) => {
            if m.file_type().is_symlink() || !m.is_dir() {
                bail!(
                    "{} is not a directory (a symlink?); refusing it",
                    path.display()
                );
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                if m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
                    bail!(
                        "{} is not private to the worker (uid {}, mode {:o}); refusing it",
                        path.display(),
                        m.uid(),
                        m.mode() & 0o7777
                    );
                }
            }
            Ok(path)
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("job-1")).unwrap();
        assert!(create_private(d.path(), "job-1", 0o700).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        std::os::unix::fs::symlink(outside.path(), d.path().join("runtime-state")).unwrap();
        assert!(ensure_private(d.path(), "runtime-state").is_err());
    }

    #[test]
    fn a_world_writable_work_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("w");
        std::fs::create_dir(&w).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&w, false).unwrap_err().to_string();
        assert!(e.contains("writable"), "{e}");
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare(&w, false).unwrap();
        let fresh = d.path().join("fresh");
        prepare(&fresh, false).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o711);
    }
}
