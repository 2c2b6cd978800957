#!/usr/bin/env python3
"""Writes berth's fuzz seed corpus from the same images the e2e tests build (tests/e2e/winimages.py):
Windows servercore-like images for ltsc2019/2022/2025, Linux amd64 and arm64/v8, in Docker and OCI
formats, their configs, indexes over them, an artifact with a subject, and the names, references and
platform strings the tests use. Run it again when the fixtures change; the output is checked in."""
import hashlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "e2e"))
import winimages as w  # noqa: E402


def put(target, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


for fmt in ("docker", "oci"):
    imgs = w.servercore_like(fmt=fmt)
    for img in imgs:
        put("manifest", img.manifest)
        put("manifest", img.config)
    body, _ = w.index_body([i.entry() for i in imgs], fmt=fmt)
    put("manifest", body)
    # An index entry that lies about its os.version, and a foreign base layer.
    liar = w.windows_image("10.0.20348.2527", fmt=fmt, config_os_version="10.0.17763.5936")
    put("manifest", w.index_body([liar.entry()], fmt=fmt)[0])
    foreign = w.windows_image("10.0.17763.5936", fmt=fmt,
                              foreign_urls=["https://mcr.microsoft.com/v2/windows/blobs/x"])
    put("manifest", foreign.manifest)
artifact = {
    "schemaVersion": 2, "mediaType": w.OCI_MANIFEST, "artifactType": "application/vnd.berth.verify.v1+json",
    "config": {"mediaType": "application/vnd.oci.empty.v1+json",
               "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
    "layers": [], "subject": {"mediaType": w.OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 10},
}
put("manifest", w.gojson(artifact))

for s in ["library/alpine", "mirror/mcr.microsoft.com/windows/servercore", "a__b/c-d--e.f", "a",
          "latest", "ltsc2022", "v1.2.3", "_x", "sha256:" + "0" * 64, "sha512:" + "f" * 128,
          ".INVALID_MANIFEST_NAME", "UPPER/case", "a//b"]:
    put("names_refs", s)
for s in ["windows/amd64:10.0.20348.2340", "linux/arm64/v8", "linux/arm/v7", "windows/amd64",
          "10.0.17763.5458|10.0.20348.1", "10.0.26100|10.0.26100.0", "linux/amd64:x"]:
    put("platform", s)


# unpack: whole tars (one layer each; the target reads anything else as structured input).
# The root is unpacked next to `outside/` (secret, dir/f, up -> ../outside), so `../outside/...`
# aims out of it.
def tar_seed(entries, fmt=None):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt or tarfile.GNU_FORMAT) as t:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            data = b""
            if kind == tarfile.REGTYPE:
                data = arg or b""
                ti.size = len(data)
            elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = arg
            elif kind == "mode":
                kind, ti.mode = tarfile.DIRTYPE, arg
            ti.type = kind
            t.addfile(ti, io.BytesIO(data) if data else None)
    put("unpack", buf.getvalue())


import tarfile as tf  # noqa: E402

tar_seed([("etc/", tf.DIRTYPE, None), ("etc/a", tf.REGTYPE, b"1"), ("etc/b", tf.REGTYPE, b"2"),
          ("etc/h", tf.LNKTYPE, "etc/a"), ("etc/s", tf.SYMTYPE, "a"), ("var/x", tf.REGTYPE, b"x")])
tar_seed([("etc/.wh.a", tf.REGTYPE, b""), ("var/.wh..wh..opq", tf.REGTYPE, b""),
          ("etc/.wh..", tf.REGTYPE, b""), ("dev/null", tf.CHRTYPE, None), ("p", tf.FIFOTYPE, None),
          ("ro", "mode", 0o555), ("ro/f", tf.REGTYPE, b"in a read-only dir")])
tar_seed([("../escape", tf.REGTYPE, b"x"), ("/abs/file", tf.REGTYPE, b"y"), ("./a/../../b", tf.REGTYPE, b"z")])
tar_seed([("evil", tf.SYMTYPE, "../outside"), ("evil/file", tf.REGTYPE, b"through"),
          ("evil2", tf.SYMTYPE, "../outside/secret"), ("evil2", tf.REGTYPE, b"over"),
          ("h", tf.LNKTYPE, "../outside/secret"), ("h2", tf.LNKTYPE, "evil/secret")])
tar_seed([("x", "mode", 0o6777), ("x", tf.SYMTYPE, "../outside/secret"),
          ("up", tf.SYMTYPE, "/"), ("up/outside/new", tf.REGTYPE, b"abs")])
tar_seed([("d/" * 70 + "long-name", tf.REGTYPE, b"gnu long name"),
          ("l", tf.SYMTYPE, "../" * 40 + "outside/secret")])
tar_seed([("p/" * 70 + "pax-name", tf.REGTYPE, b"pax"), ("pl", tf.SYMTYPE, "x" * 150)],
         fmt=tf.PAX_FORMAT)
tar_seed([("big", tf.REGTYPE, b"\0" * 9000)])

# hcs_docs: its input is `arbitrary`-decoded, so any bytes decode; a few lengths of fixed noise.
for n in (16, 64, 256, 1024, 4096):
    put("hcs_docs", hashlib.shake_256(b"berth hcs_docs %d" % n).digest(n))

# scopes: token-request scope strings (auth/src/scope.rs).
for s in ["repository:team/app:pull,push", "registry:catalog:*", "repository:a:pull repository:b:push",
          "repository:mirror/host:5000/x:pull, delete ,admin", "repository::pull", "nonsense",
          "repository:a:", "a:b:verify,,fly"]:
    put("scopes", s)

# oci_path: the text after /v2/ of every endpoint, and near misses.
D256 = "sha256:" + "a" * 64
for s in ["a/b/manifests/v1", f"a/manifests/{D256}", f"x/blobs/y/blobs/{D256}", "manifests/blobs/uploads/",
          "a/blobs/uploads", "a/tags/list/tags/list", f"library/busybox/referrers/{D256}",
          "mirror/mcr.microsoft.com/windows/servercore/blobs/uploads/3f1c-uuid", "a/manifests/-bad",
          "A/manifests/v1", "a//b/manifests/v1", "a/blobs/sha256:zz", "a/whatever/x", "/manifests/v1",
          f"a/manifests/sha512:{'b' * 128}", "a/blobs/uploads/blobs/uploads/"]:
    put("oci_path", s)

# accept: first line the offered types, then one Accept header a line.
INDEX, LIST = "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"
for headers in [[f"{INDEX}, {w.OCI_MANIFEST};q=0.5"], ["*/*"], [f"*/*, {INDEX};q=0"], [""],
                ["application/*;q=0.2", f"{LIST};q=0.300"], [f"{INDEX.upper()} ; q=1.0, text/plain;level=1;q=0.9"],
                ["a/b;q=1.001, c/d;foo;q=0.5, */x"]]:
    put("accept", "\n".join([f"{INDEX} {LIST} {w.OCI_MANIFEST}"] + headers))
put("accept", f"{w.OCI_MANIFEST} {INDEX}")

# auth_headers, tokens: `arbitrary`-decoded input, fixed noise of a few lengths (the raw header
# text is decoded first, so the Basic and Bearer headers lead a few seeds).
for t in ("auth_headers", "tokens"):
    for n in (16, 64, 256, 1024):
        put(t, hashlib.shake_256(b"berth %s %d" % (t.encode(), n)).digest(n))
for h in [b"Basic YWxpY2U6czNjcjN0", b"Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig", b'Bearer realm="a\\"b",service=x']:
    put("auth_headers", bytes([len(h)]) + h + hashlib.shake_256(h).digest(64))
