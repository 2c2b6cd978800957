"""Helpers for berth's HTTP end-to-end tests (tests/e2e/test_api*.py).

Everything here talks HTTP to a real `berth serve` process started by conftest.Berth.
"""
import gzip
import hashlib
import json
import os
import pathlib
import re
import socket
import time
import uuid
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from conftest import Berth

API_VERSION = "registry/2.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

EMPTY_JSON = b"{}"

SPEC_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
}


# ---------------------------------------------------------------- waiting

def wait_for(predicate, timeout, what, interval=0.1):
    """Polls predicate() until it returns something truthy, and returns that; after `timeout` seconds
    fails the test naming `what` it waited for (a string, or a function called then for one that
    reports the state) and the last value seen, when there was one.

    The tests wait on a condition they can observe (a file gone, a log line, a state), never for a
    fixed time: fast when the condition comes early, a clear message when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            last = "" if got is None or got is False else f" (last: {got!r})"
            pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}{last}")
        time.sleep(interval)


def wait_for_log(berth, text, timeout=10, after=0):
    """Waits until berth's stderr (drained by a thread into berth.log) has a line containing `text`
    among the lines from index `after` on; returns that line."""
    def find():
        return next((l for l in berth.log[after:] if text in l), None)
    return wait_for(find, timeout, f"berth to log {text!r}")


# ---------------------------------------------------------------- digests and names

def digest(data, alg="sha256"):
    return f"{alg}:" + hashlib.new(alg, data).hexdigest()


def uniq(prefix="t"):
    """A fresh repository name, so tests can share one registry process."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def canon(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def rand_bytes(n):
    return os.urandom(n)


# ---------------------------------------------------------------- the HTTP client

def _check_api_version(resp, *args, **kwargs):
    got = resp.headers.get("Docker-Distribution-API-Version")
    assert got == API_VERSION, (
        f"{resp.request.method} {resp.request.url} -> {resp.status_code}: "
        f"Docker-Distribution-API-Version = {got!r}"
    )


class Client:
    """requests.Session bound to one registry. Every response is checked for the API version header."""

    def __init__(self, base_url):
        self.base = base_url.rstrip("/")
        self.s = requests.Session()
        self.s.hooks["response"].append(_check_api_version)

    def url(self, path_or_location):
        """Absolute URL for a path ('/v2/...') or a Location header value (relative or absolute)."""
        return urljoin(self.base + "/", path_or_location)

    def request(self, method, path, **kw):
        kw.setdefault("allow_redirects", False)
        kw.setdefault("timeout", 60)
        return self.s.request(method, self.url(path), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # -- blobs ------------------------------------------------------------------
    def push_blob(self, name, data, alg="sha256"):
        """Monolithic single-POST upload. Returns the digest."""
        d = digest(data, alg)
        r = self.post(f"/v2/{name}/blobs/uploads/", params={"digest": d}, data=data,
                      headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, (r.status_code, r.text)
        assert r.headers.get("Docker-Content-Digest") == d
        return d

    def start_upload(self, name):
        r = self.post(f"/v2/{name}/blobs/uploads/")
        assert r.status_code == 202, (r.status_code, r.text)
        return r.headers["Location"]

    def patch_chunk(self, location, data, content_range=None):
        headers = {"Content-Type": "application/octet-stream"}
        if content_range is not None:
            headers["Content-Range"] = content_range
        return self.patch(location, data=data, headers=headers)

    def put_upload(self, location, dgst=None, data=b""):
        params = {"digest": dgst} if dgst is not None else None
        return self.put(location, params=params, data=data,
                        headers={"Content-Type": "application/octet-stream"})

    def get_blob(self, name, dgst, **kw):
        return self.get(f"/v2/{name}/blobs/{dgst}", **kw)

    # -- manifests --------------------------------------------------------------
    def put_manifest(self, name, ref, body, media_type=OCI_MANIFEST, params=None):
        if not isinstance(body, (bytes, bytearray)):
            body = canon(body)
        headers = {"Content-Type": media_type} if media_type else {}
        return self.put(f"/v2/{name}/manifests/{ref}", data=body, headers=headers, params=params)

    def push_manifest(self, name, ref, body, media_type=OCI_MANIFEST):
        """PUT a manifest that must succeed. Returns (bytes, digest)."""
        if not isinstance(body, (bytes, bytearray)):
            body = canon(body)
        r = self.put_manifest(name, ref, body, media_type)
        assert r.status_code == 201, (r.status_code, r.text)
        d = digest(body)
        assert r.headers.get("Docker-Content-Digest") == d
        return body, d

    def push_image(self, name, tag=None, layers=1, config_media=OCI_CONFIG, manifest_media=OCI_MANIFEST,
                   layer_media=OCI_LAYER, extra=None, layer_data=None):
        """Builds a small image (random layer bytes unless layer_data) and pushes it. Returns the Image."""
        cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
               "nonce": uuid.uuid4().hex}
        ls = [Layer(layer_data[i] if layer_data else rand_bytes(64 + i), layer_media) for i in range(layers)]
        img = Image(cfg, ls, media_type=manifest_media, config_media_type=config_media, extra=extra)
        self.push(name, img, tag)
        return img

    def push(self, name, img, tag=None):
        """Pushes an Image's blobs (not its foreign layers) and its manifest, by tag or by digest."""
        for data in img.blobs().values():
            self.push_blob(name, data)
        self.push_manifest(name, tag if tag is not None else img.digest, img.manifest, img.media_type)
        return img.digest

    def upload_status(self, location):
        return self.get(location)


class Layer:
    """One layer as a registry stores it (`blob`), and its uncompressed tar (`raw`) when there is one."""

    def __init__(self, blob, media_type=OCI_LAYER, raw=None, urls=None, push=True):
        self.blob = blob
        self.raw = raw
        self.digest = digest(blob)
        # rootfs.diff_ids name the uncompressed tar; a layer built from opaque bytes names itself.
        self.diff_id = digest(raw) if raw is not None else self.digest
        self.media_type = media_type
        self.urls = urls
        self.push = push               # False: a foreign layer the registry never receives

    @classmethod
    def tar_gz(cls, raw, media_type=OCI_LAYER, **kw):
        """A tar+gzip layer from the uncompressed tar (gzip without a timestamp, so reproducible)."""
        return cls(gzip.compress(raw, mtime=0), media_type, raw=raw, **kw)

    def descriptor(self):
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}
        if self.urls:
            d["urls"] = list(self.urls)
        return d


class Image:
    """An image the tests build: config + layers + manifest (and, for index entries, its platform).

    config_obj / config (bytes) / config_digest; layers (Layer); manifest_obj / manifest (bytes) /
    digest / media_type. JSON is compact in insertion order (canon), so an image whose dicts are built
    in Go struct field order serialises byte for byte as skopeo and docker write it.
    """

    def __init__(self, config, layers, media_type=OCI_MANIFEST, config_media_type=OCI_CONFIG,
                 platform=None, extra=None):
        self.platform = platform
        self.config_obj = config
        self.config = canon(config)
        self.config_digest = digest(self.config)
        self.layers = list(layers)
        self.media_type = media_type
        self.config_media_type = config_media_type
        self.extra = extra
        self.rebuild()

    def rebuild(self):
        """Recomputes the manifest after layers changed."""
        self.manifest_obj = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": {"mediaType": self.config_media_type, "digest": self.config_digest,
                       "size": len(self.config)},
            "layers": [l.descriptor() for l in self.layers],
        }
        if self.extra:
            self.manifest_obj.update(self.extra)
        self.manifest = canon(self.manifest_obj)
        self.digest = digest(self.manifest)
        return self

    @property
    def size(self):
        """Config plus layer sizes (what berth's inspect reports)."""
        return len(self.config) + sum(len(l.blob) for l in self.layers)

    def blobs(self):
        """digest -> bytes of every blob a push uploads: the config and the layers that are pushed."""
        out = {self.config_digest: self.config}
        for l in self.layers:
            if l.push:
                out[l.digest] = l.blob
        return out

    def descriptor(self, **extra):
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}
        d.update(extra)
        return d

    def entry(self, platform=None):
        """The index / manifest list entry for this image (platform defaults to the true one)."""
        return self.descriptor(platform=dict(platform if platform is not None else self.platform))


# ---------------------------------------------------------------- assertions

def assert_error(resp, status, code):
    """A spec error: the status, a JSON body, errors[0].code == code."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url}: expected {status} {code}, got {resp.status_code} "
        f"{resp.text[:500]!r}")
    if resp.request.method == "HEAD":
        return
    ctype = resp.headers.get("Content-Type", "")
    assert "json" in ctype, f"error Content-Type {ctype!r}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.text[:500]!r}")
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], body
    err = body["errors"][0]
    assert err.get("code") == code, f"expected code {code}, got {body}"
    assert isinstance(err.get("message"), str), body


def assert_spec_error_body(resp):
    """A JSON error envelope with some spec code (for statuses whose code the contract leaves open)."""
    body = resp.json()
    assert body["errors"] and body["errors"][0]["code"] in SPEC_CODES, body
    return body["errors"][0]["code"]


def loc_path(resp):
    loc = resp.headers.get("Location")
    assert loc, f"no Location header on {resp.status_code}"
    return urlsplit(loc).path


def upload_uuid_from(location):
    return urlsplit(location).path.rstrip("/").rsplit("/", 1)[1]


def parse_link(resp):
    """The next URL from a `Link: <url>; rel="next"` header, or None."""
    link = resp.headers.get("Link")
    if not link:
        return None
    m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
    assert m, f"malformed Link header: {link!r}"
    return m.group(1)


def header_list(resp, name):
    """All values of a header that may repeat (each OCI-Tag is its own header line)."""
    vals = resp.raw.headers.getlist(name)
    out = []
    for v in vals:
        out.extend(x.strip() for x in v.split(","))
    return out


def files_under(path):
    p = pathlib.Path(path)
    if not p.exists():
        return []
    return sorted(x for x in p.rglob("*") if x.is_file())


def range_end(resp):
    """Parses a `Range: 0-<end>` header and returns end."""
    rng = resp.headers.get("Range")
    assert rng is not None, f"no Range header on {resp.status_code}"
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", rng.strip())
    assert m, f"bad Range header {rng!r}"
    return int(m.group(1))


def raw_http(addr, request_bytes, read=True, timeout=10):
    """Sends raw bytes on a fresh TCP connection; returns what came back (until close or timeout)."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        s.sendall(request_bytes)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except socket.timeout:
                break
            if not c:
                break
            chunks.append(c)
        return b"".join(chunks)
    finally:
        s.close()


def keepalive_pair(addr, first_request, timeout=10):
    """Sends first_request on one TCP connection, reads its response, then sends `GET /v2/` on the
    same connection. Returns (status line, headers dict, second response bytes or the exception)."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        try:
            s.sendall(first_request)
        except OSError:
            pass  # the server may answer before taking the whole body
        buf = b""
        while b"\r\n\r\n" not in buf:
            c = s.recv(65536)
            if not c:
                raise AssertionError(f"connection closed before a response: {buf!r}")
            buf += c
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            c = s.recv(65536)
            if not c:
                break
            rest += c
        try:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
            second = s.recv(65536)
        except OSError as e:
            second = e
        return lines[0], headers, second
    finally:
        s.close()


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One registry shared by a test module; tests use uniq() repository names to stay apart."""
    b = Berth(tmp_path_factory.mktemp("shared") / "data").start()
    yield b
    b.stop()


@pytest.fixture
def c(shared):
    return Client(shared.url)


# For a test that mixes HTTP checks with checks of the filesystem backend's own files
# (<data>/blobs, <data>/uploads): [http] makes only the HTTP checks and runs on every backend;
# [files] makes both and is marked fs_only (not run on S3). The test takes an `fs_files` argument.
with_fs_files = pytest.mark.parametrize("fs_files", [
    pytest.param(False, id="http"),
    pytest.param(True, id="files", marks=pytest.mark.fs_only),
])
