//! The verifier's Linux layer unpacker (`berth_verifier::unpack::apply_tar_within`): one to
//! three layers, built from structured entries (names with `..`, absolute paths, symlinks and
//! hard links pointing out, whiteouts, opaque markers, devices, long GNU names, PAX headers,
//! lying sizes) or raw bytes, applied in order to a fresh root inside a parent directory that
//! also holds an `outside/` tree for the links to aim at.
//!
//! Asserts: the parent directory outside the root is exactly as before (nothing created,
//! removed, written, chmodded or re-timed there: a write through a symlink or a hard link
//! would show), the file content under the root never exceeds the byte cap, an accepted layer
//! set stays within the entry cap, and every refusal is an error, not a panic.
//!
//! A seed that is a whole tar (ustar magic) is one layer, under fixed caps. The parent
//! directory is `$TMPDIR/berth-fuzz-unpack-<pid>`, removed at exit (or by the next run).
//!
//! When run as root (as here), each input is unpacked with the effective uid and gid of
//! `nobody`: the unpacker then takes its unprivileged path (no chown), and an escape could
//! not touch anything `nobody` cannot write.
#![no_main]

use arbitrary::Arbitrary;
use berth_verifier::unpack::{apply_tar_within, Budget, Limits};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NOBODY: u32 = 65534;

/// Path segments entries are named from.
const SEG: &[&str] = &[
    "a",
    "b",
    "etc",
    "..",
    ".",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh.",
    ".wh..",
    ".wh...",
    "dir",
    "link",
    "",
    "x y",
    "outside",
];

#[derive(Arbitrary, Debug)]
enum Name {
    /// Segments joined by `/`.
    Segs(Vec<u8>),
    /// An absolute path: `/` + segments.
    Abs(Vec<u8>),
    /// A long name (GNU long-name header when over 100 bytes).
    Long(u8, Vec<u8>),
    /// Anything.
    Free(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Target {
    /// Relative, inside or out (`../outside/f`).
    Rel(Vec<u8>),
    /// The parent directory's `outside/…`, by absolute path.
    Outside(u8),
    /// An absolute path `/` + segments (read as inside the root by a careful unpacker).
    Abs(Vec<u8>),
    /// Anything.
    Free(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    kind: u8,
    name: Name,
    target: Target,
    data: Vec<u8>,
    /// When set, the header claims this size instead of the data's.
    lie: Option<u16>,
    mode: u16,
    /// PAX records put before the entry: (key index, value).
    pax: Vec<(u8, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum Layer {
    Entries(Vec<Entry>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_bytes: u16,
    max_entries: u8,
    layers: Vec<Layer>,
}

const KINDS: &[u8] = b"0\x00125673467SZ";
const PAX_KEYS: &[&str] = &[
    "path",
    "linkpath",
    "size",
    "uid",
    "mtime",
    "GNU.sparse.size",
];

/// The fixed parent directory (one per process): `outside/` and the per-input roots.
static P: OnceLock<PathBuf> = OnceLock::new();

fn parent() -> &'static Path {
    P.get_or_init(|| {
        let tmp = std::env::temp_dir();
        // Parents of earlier runs that crashed (their process is gone).
        for d in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("berth-fuzz-unpack-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(d.path());
                }
            }
        }
        let p = tmp.join(format!("berth-fuzz-unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        extern "C" fn cleanup() {
            if let Some(p) = P.get() {
                back_to_root();
                let _ = fs::remove_dir_all(p);
            }
        }
        // SAFETY: registers a plain function; libFuzzer leaves through exit().
        unsafe { libc::atexit(cleanup) };
        as_nobody(|| {
            fs::create_dir_all(p.join("outside/dir")).expect("parent dir");
            fs::write(p.join("outside/secret"), b"host file").expect("outside file");
            fs::write(p.join("outside/dir/f"), b"host dir file").expect("outside file");
            std::os::unix::fs::symlink("../outside", p.join("outside/up")).expect("symlink");
        });
        p
    })
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Runs `f` with the effective ids of `nobody` when the process is root; a panic hook restores
/// root first, so that libFuzzer can still write its crash artifact.
fn as_nobody<T>(f: impl FnOnce() -> T) -> T {
    if !is_root() {
        return f();
    }
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            back_to_root();
            prev(info)
        }));
        // SAFETY: dropping supplementary groups (root's group 0) once, before any thread.
        assert_eq!(unsafe { libc::setgroups(0, std::ptr::null()) }, 0);
    });
    // SAFETY: setegid/seteuid have no memory preconditions; the real and saved ids stay 0.
    unsafe {
        assert_eq!(libc::setegid(NOBODY), 0);
        assert_eq!(libc::seteuid(NOBODY), 0);
    }
    let out = f();
    back_to_root();
    out
}

fn back_to_root() {
    if is_root() {
        // SAFETY: as above; allowed because the real uid is 0.
        unsafe {
            libc::seteuid(0);
            libc::setegid(0);
        }
    }
}

fn segs(b: &[u8]) -> String {
    b.iter()
        .take(8)
        .map(|i| SEG[*i as usize % SEG.len()])
        .collect::<Vec<_>>()
        .join("/")
}

fn name_bytes(n: &Name) -> Vec<u8> {
    match n {
        Name::Segs(s) => segs(s).into_bytes(),
        Name::Abs(s) => format!("/{}", segs(s)).into_bytes(),
        Name::Long(len, s) => {
            let mut v = "d/".repeat(*len as usize % 64).into_bytes();
            v.extend(segs(s).bytes());
            v
        }
        Name::Free(b) => b.clone(),
    }
}

fn target_bytes(t: &Target) -> Vec<u8> {
    match t {
        Target::Rel(s) => segs(s).into_bytes(),
        Target::Outside(i) => {
            let leaf = ["", "secret", "dir", "dir/f", "up", "up/secret", "new"];
            parent()
                .join("outside")
                .join(leaf[*i as usize % leaf.len()])
                .to_string_lossy()
                .into_owned()
                .into_bytes()
        }
        Target::Abs(s) => format!("/{}", segs(s)).into_bytes(),
        Target::Free(b) => b.clone(),
    }
}

/// One tar header carrying `name` (GNU long-name/long-link entries first when needed).
fn header(
    b: &mut tar::Builder<Vec<u8>>,
    kind: u8,
    name: &[u8],
    link: &[u8],
    size: u64,
    mode: u32,
) -> tar::Header {
    for (flag, long) in [(b'L', name), (b'K', link)] {
        if long.len() > 100 {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(tar::EntryType::new(flag));
            let mut data = long.to_vec();
            data.push(0);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &data[..]).expect("in memory");
        }
    }
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().expect("gnu");
        let n = name.len().min(100);
        g.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        g.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_cksum();
    h
}

fn build(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries.iter().take(24) {
        let kind = KINDS[e.kind as usize % KINDS.len()];
        let name = name_bytes(&e.name);
        let link = target_bytes(&e.target);
        let data = &e.data[..e.data.len().min(4096)];
        if !e.pax.is_empty() {
            let mut recs = Vec::new();
            for (k, v) in e.pax.iter().take(4) {
                let key = PAX_KEYS[*k as usize % PAX_KEYS.len()];
                let body_len = key.len() + v.len() + 3; // ' ', '=', '\n'
                                                        // The length field counts itself.
                let mut total = body_len + 1;
                while total != body_len + total.to_string().len() {
                    total = body_len + total.to_string().len();
                }
                recs.extend(format!("{total} {key}=").bytes());
                recs.extend(v);
                recs.push(b'\n');
            }
            let mut h = header(&mut b, b'x', b"PaxHeader", b"", recs.len() as u64, 0o644);
            h.set_cksum();
            b.append(&h, &recs[..]).expect("in memory");
        }
        let size = e.lie.map_or(data.len() as u64, u64::from);
        let h = header(&mut b, kind, &name, &link, size, u32::from(e.mode));
        // A lying size: the stream carries the real data (padded), the header another length.
        b.append(&h, data).expect("in memory");
    }
    b.into_inner().expect("in memory")
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    Other,
}

/// Everything under `dir` (not following symlinks) except `skip`: kind, content, mode,
/// owner, mtime.
fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, (Node, u32, u32, i64)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for c in rd.flatten() {
        let p = c.path();
        if p == skip {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let node = if m.file_type().is_symlink() {
            Node::Link(fs::read_link(&p).unwrap_or_default())
        } else if m.is_dir() {
            Node::Dir
        } else if m.is_file() {
            Node::File(fs::read(&p).unwrap_or_default())
        } else {
            Node::Other
        };
        let is_dir = node == Node::Dir;
        out.insert(p.clone(), (node, m.mode(), m.uid(), m.mtime()));
        if is_dir {
            snapshot(&p, skip, out);
        }
    }
}

/// Content bytes of the distinct regular files under `dir`, and makes every real directory
/// writable again so the root can be removed.
fn content_bytes(dir: &Path, seen: &mut BTreeSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for c in rd.flatten() {
        let p = c.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_symlink() {
            continue;
        }
        if m.is_dir() {
            n += content_bytes(&p, seen);
        } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
            n += m.len();
        }
    }
    n
}

/// Caps of a whole-input tar (the seeds: `fuzz/make_seeds.py`).
const RAW_LIMITS: Limits = Limits {
    max_bytes: 8192,
    max_entries: 64,
};

fuzz_target!(|data: &[u8]| {
    let parent = parent();
    // A whole tar (ustar magic at 257) is one layer as is; anything else is structured input.
    let (layers, limits) = if data.get(257..262) == Some(b"ustar") {
        (vec![data.to_vec()], RAW_LIMITS)
    } else {
        let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
            return;
        };
        let layers: Vec<Vec<u8>> = input
            .layers
            .iter()
            .take(3)
            .map(|l| match l {
                Layer::Entries(e) => build(e),
                Layer::Raw(b) => b.clone(),
            })
            .collect();
        let limits = Limits {
            max_bytes: u64::from(input.max_bytes),
            max_entries: u64::from(input.max_entries),
        };
        (layers, limits)
    };
    as_nobody(|| {
        let root = parent.join("root");
        let mut before = BTreeMap::new();
        snapshot(parent, &root, &mut before);
        fs::create_dir(&root).expect("fresh root");
        let budget = Budget::new(limits);
        let mut entries = 0u64;
        let mut all_ok = true;
        for l in &layers {
            match apply_tar_within(&root, &l[..], &budget) {
                Ok(n) => entries += n as u64,
                Err(_) => {
                    all_ok = false;
                    break;
                }
            }
        }
        let mut after = BTreeMap::new();
        snapshot(parent, &root, &mut after);
        assert_eq!(before, after, "something outside the root changed");
        let written = content_bytes(&root, &mut BTreeSet::new());
        assert!(
            written <= limits.max_bytes,
            "{written} content bytes under a cap of {}",
            limits.max_bytes
        );
        if all_ok {
            assert!(entries <= limits.max_entries, "{entries} entries accepted");
        }
        fs::remove_dir_all(&root).expect("root removed");
    });
});
