"""berth with oras-py (PyPI `oras`): artifacts, a referrer pushed with `subject`, and the referrers API.

oras-py cannot list referrers, so the listing is read with `requests`. The subject descriptor is built
from the registry's Docker-Content-Digest and the stored manifest's size (oras.oci.Subject.from_manifest
recomputes a digest from re-serialized JSON, which is wrong for bytes it did not write itself).
"""
import hashlib
import json
import os

import pytest
import requests

try:
    import oras.oci
    import oras.provider
except ImportError as e:  # fail, never skip
    oras = None
    ORAS_IMPORT_ERROR = e

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json",
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2}
SIG_TYPE = "application/vnd.example.sig"
SBOM_TYPE = "application/vnd.example.sbom+json"
UNKNOWN_CONFIG = "application/vnd.unknown.config.v1+json"  # oras-py's default config media type


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


@pytest.fixture
def client(berth, tmp_path, monkeypatch):
    if oras is None:
        pytest.fail(f"oras-py is not installed (run tests/setup.sh): {ORAS_IMPORT_ERROR}")
    monkeypatch.chdir(tmp_path)  # oras-py wants pushed files relative to the working directory
    return oras.provider.Registry(hostname=berth.addr, insecure=True)


def stored_manifest(berth, repo, ref):
    r = requests.get(f"{berth.url}/v2/{repo}/manifests/{ref}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert r.status_code == 200, r.text
    return r


def referrers(berth, repo, digest, artifact_type=None):
    params = {"artifactType": artifact_type} if artifact_type else None
    r = requests.get(f"{berth.url}/v2/{repo}/referrers/{digest}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].split(";")[0].strip() == OCI_INDEX
    body = r.json()
    assert body["schemaVersion"] == 2
    assert body.get("mediaType") == OCI_INDEX
    assert isinstance(body["manifests"], list)
    return r, body["manifests"]


def test_oras_push_pull_and_referrer_with_subject(berth, client, tmp_path):
    repo = "e2e/oras-art"
    target = f"{berth.addr}/{repo}"
    art = os.urandom(300_000)
    (tmp_path / "artifact.bin").write_bytes(art)
    r = client.push(target=f"{target}:v1", files=["artifact.bin:application/vnd.example.data"])
    assert r.status_code == 201, r.text
    subj_digest = r.headers["Docker-Content-Digest"]
    stored = stored_manifest(berth, repo, "v1")
    assert stored.headers["Docker-Content-Digest"] == subj_digest == sha(stored.content)
    # oras-py sends json.dumps(manifest): the registry keeps those bytes
    assert "subject" not in stored.json()

    # nothing refers to it yet: an empty index, not a 404
    _, ms = referrers(berth, repo, subj_digest)
    assert ms == []

    sig = b"signature over " + subj_digest.encode() + os.urandom(32)
    (tmp_path / "sig.txt").write_bytes(sig)
    subject = oras.oci.Subject(OCI_MANIFEST, subj_digest, len(stored.content))
    r2 = client.push(target=f"{target}:sig", files=[f"sig.txt:{SIG_TYPE}"], subject=subject,
                     manifest_annotations={"org.example.kind": "signature"})
    assert r2.status_code == 201, r2.text
    sig_digest = r2.headers["Docker-Content-Digest"]
    assert r2.headers.get("OCI-Subject") == subj_digest
    sig_stored = stored_manifest(berth, repo, "sig")
    assert sha(sig_stored.content) == sig_digest
    assert sig_stored.json()["subject"] == {"mediaType": OCI_MANIFEST, "digest": subj_digest,
                                            "size": len(stored.content)}

    _, ms = referrers(berth, repo, subj_digest)
    assert len(ms) == 1, ms
    d = ms[0]
    assert d["mediaType"] == OCI_MANIFEST
    assert d["digest"] == sig_digest
    assert d["size"] == len(sig_stored.content)
    # no artifactType in the manifest: the config's media type stands in (OCI distribution spec 1.1)
    assert d["artifactType"] == UNKNOWN_CONFIG
    assert d["annotations"] == {"org.example.kind": "signature"}
    # the referrer itself has no referrers
    _, ms = referrers(berth, repo, sig_digest)
    assert ms == []

    # both artifacts pull back with oras-py, byte-exact
    out1 = client.pull(target=f"{target}:v1", outdir=str(tmp_path / "out1"))
    assert [os.path.basename(f) for f in out1] == ["artifact.bin"]
    assert open(out1[0], "rb").read() == art
    out2 = client.pull(target=f"{target}@{sig_digest}", outdir=str(tmp_path / "out2"))
    assert [os.path.basename(f) for f in out2] == ["sig.txt"]
    assert open(out2[0], "rb").read() == sig
    tags = requests.get(f"{berth.url}/v2/{repo}/tags/list").json()["tags"]
    assert tags == ["sig", "v1"]


def test_oras_chunked_push_pull(berth, client, tmp_path):
    repo = "e2e/oras-chunked"
    data = os.urandom(3 * 1024 * 1024 + 12345)
    (tmp_path / "big.bin").write_bytes(data)
    r = client.push(target=f"{berth.addr}/{repo}:v1", files=["big.bin"], do_chunked=True,
                    chunk_size=1024 * 1024)
    assert r.status_code == 201, r.text
    m = stored_manifest(berth, repo, "v1").json()
    assert m["layers"][0]["digest"] == sha(data) and m["layers"][0]["size"] == len(data)
    out = client.pull(target=f"{berth.addr}/{repo}:v1", outdir=str(tmp_path / "out"))
    assert open(out[0], "rb").read() == data


def test_oras_artifact_type_filter(berth, client, tmp_path):
    repo = "e2e/oras-filter"
    target = f"{berth.addr}/{repo}"
    (tmp_path / "app.bin").write_bytes(os.urandom(5000))
    r = client.push(target=f"{target}:v1", files=["app.bin"])
    assert r.status_code == 201, r.text
    subj_digest = r.headers["Docker-Content-Digest"]
    subj_size = len(stored_manifest(berth, repo, "v1").content)
    subject = {"mediaType": OCI_MANIFEST, "digest": subj_digest, "size": subj_size}

    # a signature pushed the oras-py way (artifact type = config media type)
    (tmp_path / "sig.txt").write_bytes(b"sig " + os.urandom(8))
    r = client.push(target=f"{target}:sig", files=[f"sig.txt:{SIG_TYPE}"],
                    subject=oras.oci.Subject(OCI_MANIFEST, subj_digest, subj_size))
    assert r.status_code == 201, r.text
    sig_digest = r.headers["Docker-Content-Digest"]

    # an SBOM with an explicit artifactType and the empty config, through upload_manifest()
    container = client.get_container(f"{target}:sbom")
    (tmp_path / "empty.json").write_bytes(b"{}")
    # the empty blob is in the repository already (the signature's config): oras-py's HEAD finds it, 200
    assert client.upload_blob(str(tmp_path / "empty.json"), container, dict(EMPTY)).status_code == 200
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": os.urandom(4).hex()}).encode()
    (tmp_path / "sbom.json").write_bytes(sbom)
    sbom_layer = {"mediaType": "application/spdx+json", "digest": sha(sbom), "size": len(sbom)}
    assert client.upload_blob(str(tmp_path / "sbom.json"), container, dict(sbom_layer)).status_code == 201
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM_TYPE,
                "config": EMPTY, "layers": [sbom_layer], "subject": subject,
                "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}
    r = client.upload_manifest(manifest, container)
    assert r.status_code == 201, r.text
    assert r.headers.get("OCI-Subject") == subj_digest
    sbom_digest = r.headers["Docker-Content-Digest"]
    sbom_bytes = stored_manifest(berth, repo, "sbom").content
    assert sha(sbom_bytes) == sbom_digest

    resp, ms = referrers(berth, repo, subj_digest)
    assert "OCI-Filters-Applied" not in resp.headers
    got = {d["digest"]: d for d in ms}
    assert set(got) == {sig_digest, sbom_digest}
    assert got[sbom_digest]["artifactType"] == SBOM_TYPE
    assert got[sbom_digest]["size"] == len(sbom_bytes)
    assert got[sbom_digest]["annotations"] == manifest["annotations"]
    assert got[sig_digest]["artifactType"] == UNKNOWN_CONFIG

    resp, ms = referrers(berth, repo, subj_digest, SBOM_TYPE)
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in ms] == [sbom_digest]

    resp, ms = referrers(berth, repo, subj_digest, UNKNOWN_CONFIG)
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in ms] == [sig_digest]

    resp, ms = referrers(berth, repo, subj_digest, "application/vnd.example.none")
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType"
    assert ms == []

    # referrers are per repository: the same subject manifest pushed to another repository has none there
    r = client.push(target=f"{berth.addr}/e2e/oras-other:v1", files=["app.bin"])
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == subj_digest
    _, ms = referrers(berth, "e2e/oras-other", subj_digest)
    assert ms == []

    # the SBOM pulls back with oras-py (no title annotation: oras names the file by digest)
    out = client.pull(target=f"{target}:sbom", outdir=str(tmp_path / "out"))
    assert len(out) == 1 and open(out[0], "rb").read() == sbom

    # deleting the SBOM manifest removes it from the referrers list
    d = requests.delete(f"{berth.url}/v2/{repo}/manifests/{sbom_digest}")
    assert d.status_code == 202, d.text
    _, ms = referrers(berth, repo, subj_digest)
    assert [x["digest"] for x in ms] == [sig_digest]


def test_oras_referrer_pushed_before_its_subject(berth, client, tmp_path):
    """OCI distribution spec 1.1: a registry MUST accept a manifest whose subject does not exist (yet)."""
    repo = "e2e/oras-order"
    container = client.get_container(f"{berth.addr}/{repo}:later")
    (tmp_path / "empty.json").write_bytes(b"{}")
    assert client.upload_blob(str(tmp_path / "empty.json"), container, dict(EMPTY)).status_code == 201
    payload = os.urandom(2048)
    (tmp_path / "payload.bin").write_bytes(payload)
    layer = {"mediaType": "application/vnd.example.payload", "digest": sha(payload), "size": len(payload)}
    assert client.upload_blob(str(tmp_path / "payload.bin"), container, dict(layer)).status_code == 201
    subject_manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.app",
                        "config": EMPTY, "layers": [layer]}
    # upload_manifest() sends requests' json= body, i.e. json.dumps() with default separators
    subj_bytes = json.dumps(subject_manifest).encode()
    subj_digest = sha(subj_bytes)

    (tmp_path / "sig.txt").write_bytes(b"early " + os.urandom(8))
    r = client.push(target=f"{berth.addr}/{repo}:early-sig", files=[f"sig.txt:{SIG_TYPE}"],
                    subject=oras.oci.Subject(OCI_MANIFEST, subj_digest, len(subj_bytes)))
    assert r.status_code == 201, r.text
    assert r.headers.get("OCI-Subject") == subj_digest
    sig_digest = r.headers["Docker-Content-Digest"]
    _, ms = referrers(berth, repo, subj_digest)
    assert [d["digest"] for d in ms] == [sig_digest]

    # now the subject arrives; the referrer is still listed
    r = client.upload_manifest(subject_manifest, container)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == subj_digest
    _, ms = referrers(berth, repo, subj_digest)
    assert [d["digest"] for d in ms] == [sig_digest]
    assert stored_manifest(berth, repo, "later").content == subj_bytes
