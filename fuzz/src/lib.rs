//! Shared pieces of berth's fuzz targets: slow reference implementations of the spec grammars
//! (written independently of the code under test, so that a disagreement is a finding), and a
//! structure-aware JSON mutator for manifests and configs.

/// The distribution spec's repository-name grammar, checked the slow way: split into
/// components, then each component into alternating runs of `[a-z0-9]` and other bytes.
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
pub fn reference_name_ok(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    s.split('/').all(|component| {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut runs: Vec<(bool, String)> = Vec::new();
        for c in component.chars() {
            match runs.last_mut() {
                Some((a, run)) if *a == alnum(c) => run.push(c),
                _ => runs.push((alnum(c), c.to_string())),
            }
        }
        let Some(first) = runs.first() else {
            return false;
        };
        let last = runs.last().expect("non-empty");
        first.0
            && last.0
            && runs.iter().filter(|(a, _)| !*a).all(|(_, sep)| {
                sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-')
            })
    })
}

/// The tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn reference_tag_ok(s: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if word(c) => {}
        _ => return false,
    }
    s.chars().count() <= 128 && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// The digests berth accepts: `sha256:` + 64 or `sha512:` + 128 lowercase hex digits.
pub fn reference_digest_ok(s: &str) -> bool {
    let hex_ok =
        |h: &str, n: usize| h.len() == n && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    if let Some(h) = s.strip_prefix("sha256:") {
        hex_ok(h, 64)
    } else if let Some(h) = s.strip_prefix("sha512:") {
        hex_ok(h, 128)
    } else {
        false
    }
}

/// A small deterministic PRNG for the mutator (libFuzzer hands us a seed).
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u32) -> Self {
        Rng(u64::from(seed) | 0x9e37_79b9_0000_0000)
    }
    /// Next value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Strings that matter to manifest and config validation, spliced in by the mutator.
pub const DICTIONARY: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/json",
    "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "sha512:00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "sha256:ABCDEF",
    "windows",
    "linux",
    "amd64",
    "arm64",
    "v8",
    "10.0.17763.5458",
    "10.0.20348.2340",
    "10.0.26100.1",
    "win32k",
    "",
    "https://mcr.microsoft.com/layer",
];

/// Object keys the validators look at.
pub const KEYS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "fsLayers",
    "digest",
    "size",
    "urls",
    "platform",
    "os",
    "architecture",
    "variant",
    "os.version",
    "os.features",
    "rootfs",
    "diff_ids",
];

fn random_leaf(rng: &mut Rng) -> serde_json::Value {
    use serde_json::Value;
    match rng.below(8) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::from(2),
        3 => Value::from(-1),
        4 => Value::from(i64::MAX),
        5 => Value::from(1.5),
        6 => Value::Array(vec![]),
        _ => Value::String(DICTIONARY[rng.below(DICTIONARY.len())].to_owned()),
    }
}

fn count_nodes(v: &serde_json::Value) -> usize {
    1 + match v {
        serde_json::Value::Array(a) => a.iter().map(count_nodes).sum(),
        serde_json::Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Applies `f` to the `n`-th node of `v` in pre-order; false if there are fewer nodes.
fn with_nth_node(
    v: &mut serde_json::Value,
    n: &mut usize,
    f: &mut dyn FnMut(&mut serde_json::Value),
) -> bool {
    if *n == 0 {
        f(v);
        return true;
    }
    *n -= 1;
    match v {
        serde_json::Value::Array(a) => a.iter_mut().any(|c| with_nth_node(c, n, f)),
        serde_json::Value::Object(o) => o.values_mut().any(|c| with_nth_node(c, n, f)),
        _ => false,
    }
}

/// One structure-aware mutation of a JSON document: pick a node and replace it, delete or add a
/// key, duplicate or drop an array element, or put a dictionary string in. Returns `None` when
/// `data` is not JSON (the caller falls back to libFuzzer's byte mutations).
pub fn mutate_json(data: &[u8], seed: u32) -> Option<Vec<u8>> {
    use serde_json::Value;
    let mut doc: Value = serde_json::from_slice(data).ok()?;
    let mut rng = Rng::new(seed);
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let mut n = rng.below(count_nodes(&doc));
        let op = rng.below(6);
        let mut mutate = |node: &mut Value| match (op, node) {
            (1, Value::Object(o)) if !o.is_empty() => {
                let k = o
                    .keys()
                    .nth(rng.below(o.len()))
                    .cloned()
                    .unwrap_or_default();
                o.remove(&k);
            }
            (2, Value::Object(o)) => {
                o.insert(
                    KEYS[rng.below(KEYS.len())].to_owned(),
                    random_leaf(&mut rng),
                );
            }
            (3, Value::Array(a)) if !a.is_empty() => {
                let i = rng.below(a.len());
                let dup = a[i].clone();
                a.insert(i, dup);
            }
            (4, Value::Array(a)) if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            (5, Value::String(s)) => *s = DICTIONARY[rng.below(DICTIONARY.len())].to_owned(),
            (_, node) => *node = random_leaf(&mut rng),
        };
        with_nth_node(&mut doc, &mut n, &mut mutate);
    }
    serde_json::to_vec(&doc).ok()
}
