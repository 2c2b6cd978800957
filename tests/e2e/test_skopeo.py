"""berth with skopeo: a multi-arch OCI index round trip (byte-identical) and a Docker v2s2 copy.

The source OCI layout is written here from Python. Its JSON is written the way skopeo's Go code
serializes it (compact, Go struct field order), so `--preserve-digests` holds and any byte change
seen afterwards comes from the registry.
"""
import gzip
import hashlib
import io
import json
import os
import pathlib
import subprocess
import tarfile

import pytest
import requests

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALL_MANIFESTS = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_V2S2,
                           "application/vnd.docker.distribution.manifest.list.v2+json"])


def gojson(obj):
    """Compact JSON like Go's encoding/json (the dicts below are built in Go struct field order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Layout:
    def __init__(self, root):
        self.root = pathlib.Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs = []

    def put(self, b):
        d = sha(b)
        (self.root / "blobs" / "sha256" / d[7:]).write_bytes(b)
        return d

    def image(self, platform, n_layers):
        """Writes config + layers + manifest; returns (manifest_bytes, descriptor_for_index)."""
        layers, diff_ids = [], []
        for i in range(n_layers):
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
                data = os.urandom(int.from_bytes(os.urandom(2), "big") % 50_000 + 1000)
                ti = tarfile.TarInfo(f"layer{i}/random.bin")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                t.addfile(ti, io.BytesIO(data))
            gz = gzip.compress(raw.getvalue(), mtime=0)
            diff_ids.append(sha(raw.getvalue()))
            layers.append({"mediaType": OCI_LAYER_GZ, "digest": self.put(gz), "size": len(gz)})
        cfg = {"architecture": platform["architecture"], "os": platform["os"]}
        if "os.version" in platform:
            cfg["os.version"] = platform["os.version"]
        if "variant" in platform:
            cfg["variant"] = platform["variant"]
        cfg["config"] = {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}
        cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        cfg_b = gojson(cfg)
        man = gojson({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": self.put(cfg_b), "size": len(cfg_b)},
                      "layers": layers})
        desc = {"mediaType": OCI_MANIFEST, "digest": self.put(man), "size": len(man), "platform": platform}
        return man, desc

    def ref(self, name, desc):
        d = {"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"],
             "annotations": {"org.opencontainers.image.ref.name": name}}
        self.refs.append(d)
        (self.root / "index.json").write_bytes(gojson({"schemaVersion": 2, "manifests": self.refs}))

    def blobs(self):
        return {p.name: p.read_bytes() for p in (self.root / "blobs" / "sha256").iterdir()}


PLATFORMS = [
    ({"architecture": "amd64", "os": "linux"}, 2),
    ({"architecture": "arm64", "os": "linux", "variant": "v8"}, 1),
    ({"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2527"}, 2),
]


def run(args, timeout=300):
    p = subprocess.run(args, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        pytest.fail(f"command failed (rc={p.returncode}): {' '.join(map(str, args))}\n"
                    f"stdout:\n{p.stdout.decode(errors='replace')}\nstderr:\n{p.stderr.decode(errors='replace')}")
    return p.stdout


@pytest.fixture
def multi_layout(tmp_path):
    lay = Layout(tmp_path / "src")
    children = {}
    descs = []
    for platform, n in PLATFORMS:
        man, desc = lay.image(platform, n)
        children[desc["digest"]] = man
        descs.append(desc)
    index = gojson({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs})
    idx_digest = lay.put(index)
    lay.ref("v1", {"mediaType": OCI_INDEX, "digest": idx_digest, "size": len(index)})
    return lay, index, idx_digest, children


def test_skopeo_multiarch_index_round_trip_is_byte_identical(berth, tmp_path, skopeo, multi_layout):
    lay, index, idx_digest, children = multi_layout
    repo = "e2e/multi"
    dest = f"docker://{berth.addr}/{repo}:v1"
    run([skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", f"oci:{lay.root}:v1", dest])

    # the index as served by the registry: same digest, same bytes, same media type
    r = requests.get(f"{berth.url}/v2/{repo}/manifests/v1", headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == idx_digest
    assert r.headers["Content-Type"] == OCI_INDEX
    assert r.content == index
    h = requests.head(f"{berth.url}/v2/{repo}/manifests/v1", headers={"Accept": ALL_MANIFESTS})
    assert h.status_code == 200
    assert h.headers["Docker-Content-Digest"] == idx_digest
    assert int(h.headers["Content-Length"]) == len(index)
    r = requests.get(f"{berth.url}/v2/{repo}/manifests/{idx_digest}", headers={"Accept": ALL_MANIFESTS})
    assert r.status_code == 200 and r.content == index

    # every child manifest byte-exact by digest, and every blob it references
    src_blobs = lay.blobs()
    for digest, man in children.items():
        r = requests.get(f"{berth.url}/v2/{repo}/manifests/{digest}", headers={"Accept": ALL_MANIFESTS})
        assert r.status_code == 200, (digest, r.text)
        assert r.content == man
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        m = json.loads(man)
        for d in [m["config"]] + m["layers"]:
            b = requests.get(f"{berth.url}/v2/{repo}/blobs/{d['digest']}")
            assert b.status_code == 200
            assert b.content == src_blobs[d["digest"][7:]]

    # skopeo sees the same bytes
    assert run([skopeo, "inspect", "--raw", "--tls-verify=false", dest]) == index
    for digest, man in children.items():
        assert run([skopeo, "inspect", "--raw", "--tls-verify=false",
                    f"docker://{berth.addr}/{repo}@{digest}"]) == man
    tags = json.loads(run([skopeo, "list-tags", "--tls-verify=false", f"docker://{berth.addr}/{repo}"]))
    assert tags["Tags"] == ["v1"]
    # skopeo's platform selection reads the index
    cfg = json.loads(run([skopeo, "inspect", "--tls-verify=false", "--override-os", "linux",
                          "--override-arch", "arm64", "--override-variant", "v8", dest]))
    assert cfg["Architecture"] == "arm64" and cfg["Os"] == "linux"

    # copy back into a fresh OCI layout: every blob byte-identical to the source
    out = tmp_path / "out"
    run([skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", dest, f"oci:{out}:v1"])
    out_blobs = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
    assert sorted(out_blobs) == sorted(src_blobs)
    for name, b in out_blobs.items():
        assert b == src_blobs[name], name
        assert hashlib.sha256(b).hexdigest() == name
    out_index = json.loads((out / "index.json").read_text())
    assert [(m["digest"], m["mediaType"]) for m in out_index["manifests"]] == [(idx_digest, OCI_INDEX)]


def test_skopeo_docker_v2s2_copy(berth, tmp_path, skopeo):
    lay = Layout(tmp_path / "src")
    man, desc = lay.image({"architecture": "amd64", "os": "linux"}, 2)
    lay.ref("single", desc)
    src = json.loads(man)
    repo = "e2e/single"
    dest = f"docker://{berth.addr}/{repo}:v1"
    run([skopeo, "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{lay.root}:single", dest])

    r = requests.get(f"{berth.url}/v2/{repo}/manifests/v1", headers={"Accept": f"{DOCKER_V2S2}, {OCI_MANIFEST}"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == DOCKER_V2S2
    assert r.headers["Docker-Content-Digest"] == sha(r.content)
    m = r.json()
    assert m["mediaType"] == DOCKER_V2S2 and m["schemaVersion"] == 2
    assert m["config"]["mediaType"] == DOCKER_CONFIG
    # same config and layer bytes, docker media types
    assert m["config"]["digest"] == src["config"]["digest"]
    assert [(l["digest"], l["size"], l["mediaType"]) for l in m["layers"]] == \
        [(l["digest"], l["size"], DOCKER_LAYER_GZ) for l in src["layers"]]
    raw = run([skopeo, "inspect", "--raw", "--tls-verify=false", dest])
    assert raw == r.content
    assert json.loads(run([skopeo, "inspect", "--tls-verify=false", dest]))["Digest"] == sha(r.content)
    by_digest = requests.get(f"{berth.url}/v2/{repo}/manifests/{sha(r.content)}",
                             headers={"Accept": DOCKER_V2S2})
    assert by_digest.status_code == 200
    assert by_digest.content == r.content and by_digest.headers["Content-Type"] == DOCKER_V2S2

    # and back to a Docker-format directory: the blobs are the source's
    out = tmp_path / "out"
    run([skopeo, "copy", "--src-tls-verify=false", dest, f"dir:{out}"])
    assert (out / "manifest.json").read_bytes() == r.content
    src_blobs = lay.blobs()
    for d in [src["config"]] + src["layers"]:
        assert (out / d["digest"][7:]).read_bytes() == src_blobs[d["digest"][7:]]

    # skopeo delete resolves the tag and deletes the manifest by digest
    run([skopeo, "delete", "--tls-verify=false", dest])
    gone = requests.get(f"{berth.url}/v2/{repo}/manifests/{sha(r.content)}", headers={"Accept": DOCKER_V2S2})
    assert gone.status_code == 404
    assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert requests.get(f"{berth.url}/v2/{repo}/manifests/v1", headers={"Accept": DOCKER_V2S2}).status_code == 404
