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
