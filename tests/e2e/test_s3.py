"""berth's S3 blob backend against a real S3-protocol server (moto; tests/run-all.sh starts one).

Runs in the normal pass: every registry here is started with the S3 settings given explicitly, on
a bucket of its own, at the endpoint named by BERTH_TEST_S3_ENDPOINT (the tests fail when it is
unset). The bucket is inspected with boto3, so what berth leaves in S3 (blob objects under the
configured prefix, upload markers, pending multipart uploads) is checked, not just the HTTP side.
moto enforces S3's rule that every part but the last is at least 5 MiB (EntityTooSmall), so a big
blob pushed in small PATCHes proves berth buffers chunks into full parts.
"""
import hashlib
import os
import subprocess
import uuid
from urllib.parse import urlsplit

import pytest
import requests

import conftest
from conftest import BERTH_BIN
from helpers import Client, assert_error, digest, uniq, wait_for
from test_docker import build_image, image_id, image_layers, images, push, push_digest, run  # noqa: F401

MIB = 1 << 20
PART = 5 * MIB
AWS_KEY = "testing"
AWS_SECRET = "testing"


@pytest.fixture(autouse=True)
def own_settings_only(monkeypatch):
    """The registries here get exactly the S3 settings each test gives, whatever BERTH_TEST_BACKEND says."""
    monkeypatch.setattr(conftest, "BACKEND", "filesystem")


@pytest.fixture(scope="module")
def endpoint():
    ep = conftest.S3_ENDPOINT
    if not ep:
        pytest.fail("BERTH_TEST_S3_ENDPOINT is not set: test_s3.py needs an S3-protocol server "
                    "(tests/run-all.sh starts moto and sets it)")
    try:
        requests.get(ep, timeout=10)
    except requests.RequestException as e:
        pytest.fail(f"S3 endpoint {ep} (BERTH_TEST_S3_ENDPOINT) does not answer: {e}")
    return ep.rstrip("/")


@pytest.fixture(scope="module")
def s3(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET)


def s3_env(endpoint, bucket, prefix="", redirect=True, part_size=PART, create_bucket=True, **extra):
    env = {
        "BERTH_STORAGE__BACKEND": "s3",
        "BERTH_STORAGE__S3__BUCKET": bucket,
        "BERTH_STORAGE__S3__ENDPOINT": endpoint,
        "BERTH_STORAGE__S3__REGION": "us-east-1",
        "BERTH_STORAGE__S3__FORCE_PATH_STYLE": "true",
        "BERTH_STORAGE__S3__CREATE_BUCKET": "true" if create_bucket else "false",
        "BERTH_STORAGE__S3__REDIRECT": "true" if redirect else "false",
        "AWS_ACCESS_KEY_ID": AWS_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    if prefix:
        env["BERTH_STORAGE__S3__PREFIX"] = prefix
    if part_size is not None:
        env["BERTH_STORAGE__S3__PART_SIZE"] = str(part_size)
    env.update(extra)
    return env


def new_bucket():
    return "berth-s3t-" + uuid.uuid4().hex[:16]


def keys(s3, bucket, prefix=""):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def pending(s3, bucket):
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def blob_key(prefix, dgst):
    alg, hexd = dgst.split(":")
    return f"{prefix}blobs/{alg}/{hexd[:2]}/{hexd}"


def chunked_push(c, repo, data, chunk):
    """POST, then PATCHes of `chunk` bytes with Content-Range, then PUT ?digest=. Returns the digest."""
    return chunked_push_from(c, c.start_upload(repo), data, 0, chunk)


def chunked_push_from(c, loc, data, off, chunk):
    """PATCHes data[off:] in `chunk`-byte pieces into the upload at `loc`, then PUT ?digest=."""
    while off < len(data):
        part = data[off:off + chunk]
        r = c.patch_chunk(loc, part, f"{off}-{off + len(part) - 1}")
        assert r.status_code == 202, (off, r.status_code, r.text)
        loc = r.headers["Location"]
        off += len(part)
    d = digest(data)
    r = c.put_upload(loc, d)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == d
    return d


def fetch(url, d, data):
    """GETs a blob following any redirect; checks the bytes."""
    r = requests.get(url, timeout=120)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert len(r.content) == len(data)
    assert hashlib.sha256(r.content).hexdigest() == d.split(":")[1]
    return r


# ------------------------------------------------------------------ redirect mode

def test_redirect_get_is_presigned_head_from_metadata_range_follows(berth_factory, endpoint, s3):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="reg/one"))
    c = Client(b.url)
    repo = uniq("s3")
    data = os.urandom(300_000)
    d = c.push_blob(repo, data)
    url = f"{b.url}/v2/{repo}/blobs/{d}"

    r = requests.get(url, allow_redirects=False, timeout=30)
    assert r.status_code == 307, (r.status_code, r.text)
    loc = r.headers["Location"]
    assert loc.startswith(endpoint + "/"), loc
    assert "X-Amz-Signature=" in loc, loc
    assert urlsplit(loc).path == f"/{bucket}/{blob_key('reg/one/', d)}", loc
    assert r.headers["Docker-Content-Digest"] == d
    assert r.content == b""

    # following the presigned URL gives the exact bytes
    got = requests.get(loc, timeout=30)
    assert got.status_code == 200
    assert got.content == data
    fetch(url, d, data)

    # a Range through the redirect: berth redirects, S3 serves the range
    r = requests.get(url, headers={"Range": "bytes=1000-1999"}, allow_redirects=False, timeout=30)
    assert r.status_code == 307, r.status_code
    r = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert r.status_code == 206, r.status_code
    assert r.content == data[1000:2000]
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    # an unsatisfiable range is still berth's own 416, not a redirect
    r = requests.get(url, headers={"Range": f"bytes={len(data) + 10}-"}, allow_redirects=False, timeout=30)
    assert r.status_code == 416, r.status_code
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"

    # HEAD is answered by berth itself: no redirect
    h = requests.head(url, allow_redirects=False, timeout=30)
    assert h.status_code == 200, h.status_code
    assert "Location" not in h.headers
    assert int(h.headers["Content-Length"]) == len(data)
    assert h.headers["Docker-Content-Digest"] == d

    # an unknown blob is berth's 404, not a redirect
    r = requests.get(f"{b.url}/v2/{repo}/blobs/{digest(b'absent')}", allow_redirects=False, timeout=30)
    assert_error(r, 404, "BLOB_UNKNOWN")

    # HEAD and the redirect come from berth's metadata alone: with the object removed behind
    # berth's back, both still answer (only the presigned URL then finds nothing)
    s3.delete_object(Bucket=bucket, Key=blob_key("reg/one/", d))
    h = requests.head(url, allow_redirects=False, timeout=30)
    assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(data)
    r = requests.get(url, allow_redirects=False, timeout=30)
    assert r.status_code == 307
    assert requests.get(r.headers["Location"], timeout=30).status_code == 404


def test_redirect_off_streams_through_berth(berth_factory, endpoint, s3):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, redirect=False))
    c = Client(b.url)
    repo = uniq("s3")
    data = os.urandom(123_457)
    d = c.push_blob(repo, data)
    r = requests.get(f"{b.url}/v2/{repo}/blobs/{d}", allow_redirects=False, timeout=30)
    assert r.status_code == 200, r.status_code
    assert "Location" not in r.headers
    assert r.headers["Docker-Content-Digest"] == d
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.content == data
    r = requests.get(f"{b.url}/v2/{repo}/blobs/{d}", headers={"Range": "bytes=5-9"}, allow_redirects=False,
                     timeout=30)
    assert r.status_code == 206
    assert r.content == data[5:10]
    # no prefix configured: the blob sits at the bucket's root layout
    assert blob_key("", d) in keys(s3, bucket)


def test_chunk_min_length_is_the_part_size(berth_factory, endpoint):
    six = 6 * MIB
    b = berth_factory(env=s3_env(endpoint, new_bucket(), part_size=six), name="six")
    r = requests.post(f"{b.url}/v2/{uniq('s3')}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers.get("OCI-Chunk-Min-Length") == str(six), dict(r.headers)
    # the default part size is 16 MiB
    b = berth_factory(env=s3_env(endpoint, new_bucket(), part_size=None), name="default")
    r = requests.post(f"{b.url}/v2/{uniq('s3')}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers.get("OCI-Chunk-Min-Length") == str(16 * MIB), dict(r.headers)


# ------------------------------------------------------------------ multipart uploads

def test_64mib_blob_in_1mib_patches_buffers_into_full_parts(berth_factory, endpoint, s3):
    bucket = new_bucket()
    prefix = "mp/"
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="mp", redirect=False))
    c = Client(b.url)
    repo = uniq("s3")
    data = os.urandom(64 * MIB)
    loc = c.start_upload(repo)
    uid = urlsplit(loc).path.rsplit("/", 1)[1]
    for i in range(64):
        r = c.patch_chunk(loc, data[i * MIB:(i + 1) * MIB], f"{i * MIB}-{(i + 1) * MIB - 1}")
        assert r.status_code == 202, (i, r.status_code, r.text)
        loc = r.headers["Location"]
        if i == 11:
            # 12 MiB received: two full 5 MiB parts are already in S3, the rest is buffered
            ups = pending(s3, bucket)
            assert len(ups) == 1, ups
            assert ups[0]["Key"] == f"{prefix}objects/{uid}"
            parts = s3.list_parts(Bucket=bucket, Key=ups[0]["Key"], UploadId=ups[0]["UploadId"])["Parts"]
            assert [p["Size"] for p in parts] == [PART, PART], parts
            assert f"{prefix}_uploads/{uid}" in keys(s3, bucket), "no upload marker while multipart is open"
    d = digest(data)
    r = c.put_upload(loc, d)
    assert r.status_code == 201, (r.status_code, r.text)

    r = c.get_blob(repo, d)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == d

    objs = keys(s3, bucket)
    assert all(k.startswith(prefix) for k in objs), objs
    assert not [k for k in objs if k.startswith(f"{prefix}_uploads/")], objs
    assert objs.get(f"{prefix}objects/{uid}") == len(data), objs
    assert pending(s3, bucket) == []
    # 64 MiB in 5 MiB parts: 13 parts (the S3 ETag of a multipart object ends in -<parts>)
    etag = s3.head_object(Bucket=bucket, Key=f"{prefix}objects/{uid}")["ETag"].strip('"')
    assert etag.endswith("-13"), etag


@pytest.mark.parametrize("size", [PART, PART + 1, 0], ids=["part_size", "part_size_plus_1", "empty"])
def test_boundary_sizes(berth_factory, endpoint, s3, size):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="edge"))
    c = Client(b.url)
    repo = uniq("s3")
    data = os.urandom(size)
    d = digest(data)
    # monolithic, into one repository...
    assert c.push_blob(repo, data) == d
    # ...and chunked (PATCH then PUT with the rest), into another
    repo2 = uniq("s3")
    loc = c.start_upload(repo2)
    head = data[:size // 2]
    if head:
        r = c.patch_chunk(loc, head, f"0-{len(head) - 1}")
        assert r.status_code == 202, r.text
        loc = r.headers["Location"]
    r = c.put_upload(loc, d, data=data[len(head):])
    assert r.status_code == 201, (r.status_code, r.text)
    for name in (repo, repo2):
        url = f"{b.url}/v2/{name}/blobs/{d}"
        h = requests.head(url, timeout=30)
        assert h.status_code == 200
        assert int(h.headers["Content-Length"]) == size
        fetch(url, d, data)
    objs = keys(s3, bucket)
    assert objs and all(k.startswith("edge/") for k in objs), objs
    assert not [k for k in objs if "_uploads/" in k], objs
    assert pending(s3, bucket) == []
    if size < PART:
        assert objs == {blob_key("edge/", d): size}, objs
    else:
        assert sorted(objs.values()) == [size], objs  # one copy: the second upload was dropped


def test_cancelled_multipart_upload_leaves_nothing(berth_factory, endpoint, s3):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="cx"))
    c = Client(b.url)
    repo = uniq("s3")
    loc = c.start_upload(repo)
    uid = urlsplit(loc).path.rsplit("/", 1)[1]
    r = c.patch_chunk(loc, os.urandom(PART + 1000), f"0-{PART + 999}")
    assert r.status_code == 202, r.text
    assert len(pending(s3, bucket)) == 1
    assert f"cx/_uploads/{uid}" in keys(s3, bucket)
    r = c.delete(loc)
    assert r.status_code == 204, (r.status_code, r.text)
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == {}
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")


def test_patch_cut_after_parts_were_sent_is_all_or_nothing(berth_factory, endpoint, s3):
    """A PATCH whose connection drops after two parts went to S3 leaves the upload at its previous
    length; resending from there replaces those parts and the blob comes out exact."""
    import socket

    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, redirect=False))
    c = Client(b.url)
    repo = uniq("s3")
    blob = os.urandom(1000 + 12 * MIB + 5)
    loc = c.start_upload(repo)
    r = c.patch_chunk(loc, blob[:1000], "0-999")
    assert r.status_code == 202
    loc = r.headers["Location"]
    head = (f"PATCH {urlsplit(loc).path} HTTP/1.1\r\nHost: {b.addr}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {12 * MIB}\r\nContent-Range: 1000-{1000 + 12 * MIB - 1}\r\n\r\n").encode()
    host, port = b.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(head + blob[1000:1000 + 11 * MIB])
        def two_parts():
            ups = pending(s3, bucket)
            ps = s3.list_parts(Bucket=bucket, Key=ups[0]["Key"], UploadId=ups[0]["UploadId"]).get("Parts", []) \
                if ups else []
            return ps if len(ps) >= 2 else None
        sent = wait_for(two_parts, 10, "two parts of the streamed PATCH to reach S3", 0.2)
        assert [p["Size"] for p in sent] == [PART, PART], sent
    finally:
        s.close()
    def status_range():
        st = c.get(loc)
        assert st.status_code == 204, (st.status_code, st.text)
        return st.headers["Range"]
    wait_for(lambda: status_range() == "0-999", 10,
             lambda: f"the upload to fall back to its last whole chunk (Range {status_range()})", 0.2)
    d = chunked_push_from(c, loc, blob, 1000, 3 * MIB)
    r = c.get_blob(repo, d)
    assert r.status_code == 200 and r.content == blob
    assert pending(s3, bucket) == []
    assert list(keys(s3, bucket).values()) == [len(blob)]


def test_digest_mismatch_discards_multipart_upload(berth_factory, endpoint, s3):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="dm"))
    c = Client(b.url)
    repo = uniq("s3")
    loc = c.start_upload(repo)
    r = c.patch_chunk(loc, os.urandom(PART + 10), f"0-{PART + 9}")
    assert r.status_code == 202
    assert len(pending(s3, bucket)) == 1
    assert_error(c.put_upload(r.headers["Location"], digest(b"other"), b"tail"), 400, "DIGEST_INVALID")
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == {}
    # monolithic: the parts sent while the body streamed are aborted too
    r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest(b"other")}, data=os.urandom(2 * PART + 1))
    assert_error(r, 400, "DIGEST_INVALID")
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == {}


def test_concurrent_pushes_of_one_big_blob_keep_one_object(berth_factory, endpoint, s3):
    import concurrent.futures as cf

    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="cc"))
    data = os.urandom(PART + 4321)
    names = [uniq("s3") for _ in range(4)]
    with cf.ThreadPoolExecutor(len(names)) as ex:
        ds = list(ex.map(lambda n: Client(b.url).push_blob(n, data), names))
    assert set(ds) == {digest(data)}
    for n in names:
        fetch(f"{b.url}/v2/{n}/blobs/{ds[0]}", ds[0], data)
    assert list(keys(s3, bucket).values()) == [len(data)], keys(s3, bucket)
    assert pending(s3, bucket) == []


# ------------------------------------------------------------------ real clients

def test_docker_push_pull_and_skopeo_copy_with_redirects(berth_factory, endpoint, s3, tmp_path, docker_ok,
                                                         images):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="dk"))
    uid = uuid.uuid4().hex[:10]
    app, base, payload, generated = build_image(tmp_path, docker_ok, images, uid)
    layers = image_layers(app)
    orig = image_id(app)
    repo = f"e2e/s3-{uid}"
    remote = images.add(f"{b.addr}/{repo}:v1")
    run(["docker", "tag", app, remote])
    dgst, _size = push_digest(push(remote), "v1")
    assert all(k.startswith("dk/") for k in keys(s3, bucket))
    images.rmi(remote, app, base)
    p = run(["docker", "pull", remote])
    assert f"Digest: {dgst}" in p.stdout + p.stderr
    assert image_id(remote) == orig
    assert image_layers(remote) == layers
    r = run(["docker", "run", "--rm", "--network", "none", remote, "cat", "/data/payload.txt",
             "/data/generated.txt"])
    assert r.stdout == payload + generated

    # skopeo copies it back out (following the redirects) byte-identical
    out = tmp_path / "out"
    sk = run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{b.addr}/{repo}:v1", f"dir:{out}"])
    assert sk.returncode == 0
    man = (out / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(man).hexdigest() == dgst
    r = requests.get(f"{b.url}/v2/{repo}/manifests/v1",
                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=30)
    m = r.json()
    for desc in [m["config"], *m["layers"]]:
        f = out / desc["digest"].split(":")[1]
        blob = f.read_bytes()
        assert len(blob) == desc["size"]
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == desc["digest"]
        assert requests.get(f"{b.url}/v2/{repo}/blobs/{desc['digest']}", timeout=60).content == blob


# ------------------------------------------------------------------ crashes and expiry

def test_kill9_keeps_every_acknowledged_blob_and_manifest(berth_factory, endpoint, s3):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="k9"))
    c = Client(b.url)
    repo = uniq("s3")
    blobs = {}
    for data in (os.urandom(1000), b"", os.urandom(PART + 7)):
        blobs[c.push_blob(repo, data)] = data
    big = os.urandom(2 * PART + 3)
    blobs[chunked_push(c, repo, big, MIB)] = big
    img = c.push_image(repo, tag="v1", layers=2)
    blobs.update(img.blobs())
    b.kill9()
    b.restart()
    c = Client(b.url)
    for d, data in blobs.items():
        fetch(f"{b.url}/v2/{repo}/blobs/{d}", d, data)
    r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": img.media_type})
    assert r.status_code == 200
    assert r.content == img.manifest
    assert r.headers["Docker-Content-Digest"] == img.digest
    assert pending(s3, bucket) == []


def test_upload_left_by_killed_process_is_aborted_when_it_expires(berth_factory, endpoint, s3):
    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="exp"))
    c = Client(b.url)
    repo = uniq("s3")
    loc = c.start_upload(repo)
    uid = urlsplit(loc).path.rsplit("/", 1)[1]
    r = c.patch_chunk(loc, os.urandom(PART + 5), f"0-{PART + 4}")
    assert r.status_code == 202, r.text
    done = c.push_blob(repo, os.urandom(PART + 9))  # a finished blob beside it must stay
    assert len(pending(s3, bucket)) == 1
    assert f"exp/_uploads/{uid}" in keys(s3, bucket)
    b.kill9()
    b.env.update({"BERTH_UPLOADS__TTL_SECS": "1", "BERTH_UPLOADS__PURGE_INTERVAL_SECS": "1"})
    b.restart()
    wait_for(lambda: pending(s3, bucket) == [] and f"exp/_uploads/{uid}" not in keys(s3, bucket), 20,
             "the expiry purge to abort the killed process's multipart upload and remove its state", 0.5)
    assert pending(s3, bucket) == [], "the killed process's multipart upload was not aborted"
    objs = keys(s3, bucket)
    assert not [k for k in objs if "_uploads/" in k], objs
    assert_error(Client(b.url).get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert Client(b.url).head(f"/v2/{repo}/blobs/{done}").status_code == 200


def test_monolithic_post_cut_by_kill9_is_aborted_at_restart(berth_factory, endpoint, s3):
    """A monolithic POST has no session row: the start-up sweep aborts what its marker names."""
    import socket

    bucket = new_bucket()
    b = berth_factory(env=s3_env(endpoint, bucket, prefix="sw"))
    data = os.urandom(3 * PART)
    head = (f"POST /v2/s3/sweep/blobs/uploads/?digest={digest(data)} HTTP/1.1\r\nHost: {b.addr}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    host, port = b.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(head + data[:2 * PART + 100])
        wait_for(lambda: pending(s3, bucket), 10, "the first part to be sent while the body streams", 0.2)
        assert len(pending(s3, bucket)) == 1, "the first part was not sent while the body streamed"
        assert [k for k in keys(s3, bucket) if k.startswith("sw/_uploads/")], keys(s3, bucket)
        b.kill9()
    finally:
        s.close()
    b.restart()
    wait_for(lambda: not pending(s3, bucket) and not keys(s3, bucket), 10,
             "the restart's sweep to abort the dropped upload and remove every key", 0.2)
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == {}
    assert_error(Client(b.url).head(f"/v2/s3/sweep/blobs/{digest(data)}"), 404, "BLOB_UNKNOWN")


# ------------------------------------------------------------------ bad configuration

def closed_port_url():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


SPEC_5XX = {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]}


@pytest.mark.parametrize("fault", ["missing_bucket", "unreachable_endpoint"])
def test_bad_s3_config_starts_then_push_is_a_spec_500(berth_factory, endpoint, s3, fault):
    """berth does not check the bucket at start (create_bucket = false); pushes then fail with the
    contract's 5xx body while everything that needs no S3 keeps working."""
    bucket = new_bucket()  # never created
    ep = endpoint if fault == "missing_bucket" else closed_port_url()
    b = berth_factory(env=s3_env(ep, bucket, create_bucket=False))
    c = Client(b.url)
    assert c.get("/v2/").status_code == 200
    repo = uniq("s3")
    data = os.urandom(2000)
    big = os.urandom(PART + 1)  # a multipart upload: CreateMultipartUpload fails
    for blob in (data, big, data):
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob)
        assert r.status_code == 500, (r.status_code, r.text)
        assert r.json() == SPEC_5XX
        assert b.proc.poll() is None, "berth exited"
    # a chunked push fails too, at the latest when the blob is committed; the blob stays unknown
    loc = c.start_upload(repo)
    r = c.put_upload(loc, digest(data), data=data)
    assert r.status_code == 500, (r.status_code, r.text)
    assert r.json() == SPEC_5XX
    assert_error(c.head(f"/v2/{repo}/blobs/{digest(data)}"), 404, "BLOB_UNKNOWN")
    assert c.get("/v2/").status_code == 200
    assert c.get("/v2/_catalog").status_code == 200
    assert b.proc.poll() is None
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.list_objects_v2(Bucket=bucket)


def test_check_config_s3(tmp_path):
    def check(text):
        p = tmp_path / f"c{uuid.uuid4().hex[:6]}.toml"
        p.write_text(text)
        return subprocess.run([BERTH_BIN, "check-config", str(p)], capture_output=True, text=True, timeout=30)

    r = check('[storage]\nbackend = "s3"\n')
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "storage.s3.bucket" in r.stdout + r.stderr, (r.stdout, r.stderr)
    r = check('[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "b"\npart_size = 1048576\n')
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "storage.s3.part_size" in r.stdout + r.stderr, (r.stdout, r.stderr)
    r = check('[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "b"\nprefix = "reg"\nendpoint = "http://x:9000"\n'
              'force_path_style = true\npart_size = 5242880\nredirect = false\npresign_ttl_secs = 60\n'
              'create_bucket = true\nregion = "us-east-1"\n')
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "ok"
