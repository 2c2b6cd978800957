"""Mirrors and the pull-through cache (issue #7, docs/MIRROR.md), against real binaries.

Upstreams are a second `berth serve` (with and without token auth) and, where a test must
control the upstream (throttled blobs to interrupt a copy, HEAD counting, 429 with Retry-After,
an upstream that goes down), a small registry written here on Python's http.server that serves
what a test put in it. Images are Windows- and Linux-shaped OCI/Docker JSON from winimages.py.
"""
import hashlib
import http.server
import json
import os
import re
import signal
import socketserver
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import BERTH_BIN, Berth
from helpers import Client, Layer, wait_for, wait_for_log
import winimages as wi
from winimages import ALL_MANIFEST_TYPES, sha256

SOURCE_ANNOTATION = "dev.berth.mirror.source-digest"


# ---------------------------------------------------------------- a controllable upstream

class FakeRegistry:
    """A read-only registry: tags, manifests (GET/HEAD), blobs (GET/HEAD with Range).

    Knobs: `rate` (blob bytes per second, 0 = unthrottled), `status` (answer every request with
    this status, e.g. 429 or 503) and `retry_after`. Records (method, path, range) of requests.
    """

    def __init__(self):
        self.repos = {}      # repo -> {"tags": {tag: digest}, "manifests": {digest: (bytes, mt)}}
        self.blobs = {}
        self.files = {}      # other paths (foreign layer URLs) -> bytes
        self.rate = 0
        self.status = None
        self.retry_after = None
        self.requests = []
        self.sent = 0
        self.down = False
        self.stall = 0       # seconds every request waits before any answer (a silent upstream)
        self.unstall = threading.Event()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                outer._handle(self, head=True)

            def do_GET(self):
                outer._handle(self, head=False)

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = S(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        # Connections kept alive by clients stay with their handler threads: make those hang up.
        self.down = True
        self.unstall.set()
        self.server.shutdown()
        self.server.server_close()

    def put_image(self, repo, img, tag=None):
        r = self.repos.setdefault(repo, {"tags": {}, "manifests": {}})
        r["manifests"][img.digest] = (img.manifest, img.media_type)
        for d, b in img.blobs().items():
            self.blobs[d] = b
        if tag:
            r["tags"][tag] = img.digest

    def put_list(self, repo, tag, imgs, fmt="docker"):
        for im in imgs:
            self.put_image(repo, im)
        body, mt = wi.index_body([im.entry() for im in imgs], fmt)
        r = self.repos[repo]
        r["manifests"][sha256(body)] = (body, mt)
        r["tags"][tag] = sha256(body)
        return body

    def count(self, method, what):
        return sum(1 for m, p, _ in self.requests if m == method and what in p)

    def _send(self, h, status, body=b"", headers=(), head=False):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Docker-Distribution-API-Version", "registry/2.0")
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _handle(self, h, head):
        if self.down:
            h.close_connection = True
            return
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path, h.headers.get("Range")))
        if self.stall:
            self.unstall.wait(self.stall)  # not a wait: the upstream that accepts and says nothing
        if self.status:
            hdrs = [("Retry-After", self.retry_after)] if self.retry_after else []
            body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}).encode()
            return self._send(h, self.status, body, [("Content-Type", "application/json")] + hdrs, head)
        if path in ("/v2/", "/v2"):
            return self._send(h, 200, b"{}", head=head)
        if path in self.files:
            return self._send(h, 200, self.files[path], head=head)
        m = re.match(r"^/v2/(.+)/(manifests|blobs|tags)/([^/]+)$", path)
        if not m:
            return self._send(h, 404, head=head)
        repo, kind, ref = m.groups()
        r = self.repos.get(repo)
        if r is None:
            return self._send(h, 404, head=head)
        if kind == "tags":
            body = json.dumps({"name": repo, "tags": sorted(r["tags"])}).encode()
            return self._send(h, 200, body, [("Content-Type", "application/json")], head)
        if kind == "manifests":
            d = r["tags"].get(ref, ref)
            if d not in r["manifests"]:
                return self._send(h, 404, head=head)
            body, mt = r["manifests"][d]
            return self._send(h, 200, body, [("Content-Type", mt), ("Docker-Content-Digest", d)], head)
        blob = self.blobs.get(ref)
        if blob is None:
            return self._send(h, 404, head=head)
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            status = 206
        part = blob[start:]
        h.send_response(status)
        h.send_header("Content-Length", str(len(part)))
        h.send_header("Docker-Content-Digest", ref)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
        h.end_headers()
        if head:
            return
        step = 1 << 20
        try:
            for i in range(0, len(part), step):
                h.wfile.write(part[i:i + step])
                self.sent += len(part[i:i + step])
                if self.rate:
                    time.sleep(step / self.rate)  # not a wait: the fake upstream's bandwidth limit
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def fake():
    f = FakeRegistry()
    yield f
    f.stop()


# ---------------------------------------------------------------- helpers

def mirror_toml(name, upstream, repos, prefix, platforms=(), tags=None, sparse=None, auth=None,
                foreign=None, schedule=None):
    lines = ["[[mirrors]]", f"name = {json.dumps(name)}", f"upstream = {json.dumps(upstream)}",
             "repositories = [" + ", ".join(json.dumps(r) for r in repos) + "]",
             f"prefix = {json.dumps(prefix)}"]
    if sparse is not None:
        lines.append(f"sparse_index = {'true' if sparse else 'false'}")
    if foreign:
        lines.append(f"foreign_layers = {json.dumps(foreign)}")
    if schedule:
        lines.append(f"schedule = {json.dumps(schedule)}")
    if auth:
        lines.append("auth = { " + ", ".join(f"{k} = {json.dumps(str(v))}" for k, v in auth.items()) + " }")
    if tags:
        lines.append("[mirrors.tags]")
        for k, v in tags.items():
            lines.append(f"{k} = {json.dumps(v)}")
    for p in platforms:
        lines.append("[[mirrors.platforms]]")
        for k, v in p.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def cli(*args, timeout=300):
    p = subprocess.run([BERTH_BIN, *args], capture_output=True, text=True, timeout=timeout)
    return p


def run_remote(reg, name, creds=()):
    """`berth mirror run NAME --registry URL --json`: returns the report."""
    p = cli("mirror", "run", name, "--registry", reg.url, "--json", *creds)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def get_manifest(c, repo, ref):
    return c.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})


# ---------------------------------------------------------------- upstream: a second berth

@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A berth with a servercore-like list (ltsc2019, ltsc2022, ltsc2025, linux amd64/arm64) and
    a Linux app repository with version tags."""
    b = Berth(tmp_path_factory.mktemp("mirror-up") / "data").start()
    c = Client(b.url)
    imgs = wi.servercore_like(fmt="oci")
    body, dgst = wi.push_list(c, "windows/servercore", "ltsc", imgs, fmt="oci")
    app = wi.linux_image("amd64", fmt="oci", layers=1)
    wi.push_image(c, "lib/app", app)
    # Single-platform tags, as MCR publishes them next to the lists.
    for im in imgs[:3]:
        build = im.platform["os.version"].split(".")[2]
        wi.push_image(c, "windows/servercore", im, tag=f"{build}-amd64")
    for t in ["1.0.0", "1.2.0", "v1.3", "1.2.5-rc1", "2.0.0", "latest", "nightly-2024"]:
        r = c.put_manifest("lib/app", t, app.manifest, app.media_type)
        assert r.status_code == 201
    b.servercore = (body, dgst, imgs)
    yield b
    b.stop()


def test_unfiltered_mirror_keeps_the_index_digest_and_second_run_copies_nothing(upstream, berth_factory):
    body, dgst, imgs = upstream.servercore
    reg = berth_factory(config=mirror_toml("sc", upstream.url, ["windows/servercore"], "mirror/up"))
    rep = run_remote(reg, "sc")
    assert rep["state"] == "succeeded" and rep["failed"] == 0, rep
    blobs = {d for im in imgs for d in im.blobs()}
    assert rep["copied"] == 1 + len(imgs) + len(blobs), rep
    assert rep["bytes"] == sum(len(b) for im in imgs for b in im.blobs().values())
    c = Client(reg.url)
    r = get_manifest(c, "mirror/up/windows/servercore", "ltsc")
    assert r.status_code == 200
    assert r.content == body and r.headers["Docker-Content-Digest"] == dgst
    for im in imgs:
        assert get_manifest(c, "mirror/up/windows/servercore", im.digest).content == im.manifest
        for d, b in im.blobs().items():
            g = c.get(f"/v2/mirror/up/windows/servercore/blobs/{d}")
            assert g.status_code == 200 and sha256(g.content) == d
    again = run_remote(reg, "sc")
    assert again["copied"] == 0 and again["failed"] == 0 and again["bytes"] == 0, again
    assert [i["detail"] for i in again["items"]] == ["unchanged upstream"] * 4
    # Status, through the API and the CLI.
    s = requests.get(reg.url + "/berth/v1/mirrors/sc/runs").json()["runs"]
    assert [r["id"] for r in s] == [again["id"], rep["id"]]
    p = cli("mirror", "status", "--registry", reg.url)
    assert p.returncode == 0 and "sc" in p.stdout and "succeeded" in p.stdout, p.stdout


def test_filtered_by_os_version_sparse_keeps_the_digest_and_new_index_names_its_source(upstream, berth_factory):
    body, dgst, imgs = upstream.servercore
    ltsc2022 = [im for im in imgs if im.platform.get("os.version", "").startswith("10.0.20348.")]
    assert len(ltsc2022) == 1
    cfg = (mirror_toml("sparse", upstream.url, ["windows/servercore"], "sp",
                       platforms=[{"os": "windows", "os_version": "ltsc2022"}], sparse=True)
           + mirror_toml("fresh", upstream.url, ["windows/servercore"], "nw",
                         platforms=[{"os": "windows", "os_version": ">=ltsc2019, <ltsc2025"}], sparse=False))
    reg = berth_factory(config=cfg)
    c = Client(reg.url)
    rep = run_remote(reg, "sparse")
    assert rep["failed"] == 0, rep
    r = get_manifest(c, "sp/windows/servercore", "ltsc")
    assert r.content == body and r.headers["Docker-Content-Digest"] == dgst
    for im in imgs:
        want = 200 if im in ltsc2022 else 404
        assert get_manifest(c, "sp/windows/servercore", im.digest).status_code == want, im.platform
    info = wi.inspect(c, "sp/windows/servercore", "ltsc")
    assert [v["present"] for v in info["variants"]] == [im in ltsc2022 for im in imgs]

    rep = run_remote(reg, "fresh")
    assert rep["failed"] == 0, rep
    r = get_manifest(c, "nw/windows/servercore", "ltsc")
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] != dgst
    idx = r.json()
    assert idx["annotations"][SOURCE_ANNOTATION] == dgst
    versions = [e["platform"]["os.version"] for e in idx["manifests"]]
    assert versions == ["10.0.17763.5936", "10.0.20348.2527"]
    assert r.headers["Docker-Content-Digest"] == sha256(r.content)
    again = run_remote(reg, "fresh")
    assert again["copied"] == 0 and again["bytes"] == 0, again
    # Single-platform tags are filtered by what their image config says.
    tags = Client(reg.url).get("/v2/nw/windows/servercore/tags/list").json()["tags"]
    assert tags == ["17763-amd64", "20348-amd64", "ltsc"]
    skipped = [i for i in rep["items"] if i["outcome"] == "skipped"]
    assert [i["tag"] for i in skipped] == ["26100-amd64"] and "no platform filter" in skipped[0]["detail"]


def test_tag_filters_regex_semver_exclude(upstream, berth_factory):
    cfg = (mirror_toml("semver", upstream.url, ["lib/app"], "a",
                       tags={"semver": ">=1.2, <2", "exclude": ["-rc"]})
           + mirror_toml("regex", upstream.url, ["lib/app"], "b",
                         tags={"include": ["^latest$", "^nightly"], "exclude": ["2024"]}))
    reg = berth_factory(config=cfg)
    c = Client(reg.url)
    run_remote(reg, "semver")
    run_remote(reg, "regex")
    assert c.get("/v2/a/lib/app/tags/list").json()["tags"] == ["1.2.0", "v1.3"]
    assert c.get("/v2/b/lib/app/tags/list").json()["tags"] == ["latest"]


def test_admin_api_defines_and_runs_a_mirror(upstream, berth_factory):
    reg = berth_factory()
    d = {"upstream": upstream.url, "repositories": ["lib/app"], "prefix": "api",
         "tags": {"include": ["^1\\.0\\.0$"]}}
    r = requests.put(reg.url + "/berth/v1/mirrors/viaapi", json=d)
    assert r.status_code == 201, r.text
    r = requests.put(reg.url + "/berth/v1/mirrors/bad", json={**d, "platforms": [{"os_version": "ltsc2099"}]})
    assert r.status_code == 400 and "os_version" in r.text
    r = requests.post(reg.url + "/berth/v1/mirrors/viaapi/runs")
    assert r.status_code == 202
    run = r.headers["Location"]

    def finished():
        rep = requests.get(reg.url + run).json()
        return rep if rep["state"] != "running" else None
    rep = wait_for(finished, 10, "the mirror run started through the API to finish")
    assert rep["state"] == "succeeded", rep
    assert Client(reg.url).get("/v2/api/lib/app/tags/list").json()["tags"] == ["1.0.0"]
    lst = requests.get(reg.url + "/berth/v1/mirrors").json()["mirrors"]
    assert [(m["name"], m["source"], m["last_run"]["id"]) for m in lst] == [("viaapi", "api", rep["id"])]


def test_scheduled_run(upstream, berth_factory):
    reg = berth_factory(config=mirror_toml("sched", upstream.url, ["lib/app"], "s",
                                           tags={"include": ["^latest$"]}, schedule="1h"))
    c = Client(reg.url)
    wait_for(lambda: get_manifest(c, "s/lib/app", "latest").status_code == 200, 30,
             "the scheduled mirror run to copy s/lib/app:latest", 0.2)
    runs = requests.get(reg.url + "/berth/v1/mirrors/sched/runs").json()["runs"]
    assert runs[0]["trigger"] == "schedule"


# ---------------------------------------------------------------- token auth upstream

def test_token_flow_upstream(tmp_path, berth_factory):
    up = berth_factory(config='[auth]\nmode = "token"\n', name="authup")
    pw = "pw-" + uuid.uuid4().hex
    p = cli("user", "add", "mirror-bot", "--password", pw, "--admin", "--data-dir", str(up.data_dir))
    assert p.returncode == 0, p.stderr
    tok = requests.get(up.url + "/auth/token", params={"service": "berth", "scope": "repository:sec/app:push,pull"},
                       auth=("mirror-bot", pw)).json()["token"]
    c = Client(up.url)
    c.s.headers["Authorization"] = f"Bearer {tok}"
    img = wi.linux_image("amd64", fmt="oci", layers=1)
    wi.push_image(c, "sec/app", img, tag="1")
    assert requests.get(up.url + "/v2/sec/app/manifests/1").status_code == 401
    pwfile = tmp_path / "upstream-password"
    pwfile.write_text(pw + "\n")
    cfg = ('[auth]\nmode = "token"\n'
           + mirror_toml("good", up.url, ["sec/app"], "g",
                         auth={"type": "token", "username": "mirror-bot", "password_file": pwfile})
           + mirror_toml("anon", up.url, ["sec/app"], "x"))
    reg = berth_factory(config=cfg, name="down")
    admin_pw = "adm-" + uuid.uuid4().hex
    p = cli("user", "add", "root", "--password", admin_pw, "--admin", "--data-dir", str(reg.data_dir))
    assert p.returncode == 0, p.stderr
    # The admin API wants an admin.
    p = cli("mirror", "run", "good", "--registry", reg.url)
    assert p.returncode != 0 and "401" in p.stderr, (p.stdout, p.stderr)
    creds = ("--username", "root", "--password", admin_pw)
    rep = run_remote(reg, "good", creds)
    assert rep["failed"] == 0 and rep["copied"] == 3, rep
    tok = requests.get(reg.url + "/auth/token", params={"service": "berth", "scope": "repository:g/sec/app:pull"},
                       auth=("root", admin_pw)).json()["token"]
    r = requests.get(f"{reg.url}/v2/g/sec/app/manifests/1", headers={
        "Accept": ALL_MANIFEST_TYPES, "Authorization": f"Bearer {tok}"})
    assert r.status_code == 200 and r.content == img.manifest
    p = cli("mirror", "run", "anon", "--registry", reg.url, *creds)
    assert p.returncode != 0 and "failed" in p.stdout, p.stdout
    # No password comes back from the API.
    shown = requests.get(reg.url + "/berth/v1/mirrors/good", auth=("root", admin_pw))
    assert shown.status_code == 200 and pw not in shown.text
    assert shown.json()["auth"] == {"type": "token", "username": "mirror-bot", "password_file": str(pwfile)}


def test_mirror_run_waits_out_an_upstream_rate_limit(fake, berth_factory):
    img = wi.linux_image("amd64", fmt="oci", layers=1)
    fake.put_image("library/busybox", img, tag="1")
    reg = berth_factory(config=mirror_toml("hub", fake.url, ["library/busybox"], "hub"))
    fake.status, fake.retry_after = 429, "1"
    threading.Timer(1.5, lambda: setattr(fake, "status", None)).start()
    rep = run_remote(reg, "hub")
    assert rep["failed"] == 0 and rep["copied"] == 3, rep
    assert sum(1 for m, p, _ in fake.requests if p.endswith("/tags/list")) >= 2


# ---------------------------------------------------------------- resume after kill -9

@pytest.mark.fs_only  # the in-process CLI run uses the filesystem backend; S3 sessions resume per part
def test_interrupted_run_resumes_where_it_stopped(fake, tmp_path):
    big = Layer(os.urandom(48 << 20), wi.OCI_LAYER)   # incompressible bytes: stored as they are
    img = wi.linux_image("amd64", fmt="oci", layers=1)
    img.layers.append(big)
    img.rebuild()
    fake.put_image("big/img", img, tag="1")
    fake.rate = 16 << 20
    data = tmp_path / "data"
    cfgf = tmp_path / "m.toml"
    cfgf.write_text(mirror_toml("big", fake.url, ["big/img"], "m"))
    argv = [BERTH_BIN, "mirror", "run", "big", "--config", str(cfgf), "--data-dir", str(data)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith(f"fetching {big.digest}"):
            break
    wait_for(lambda: fake.sent >= (12 << 20), 30, "the upstream to have sent 12 MiB of the big layer", 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fake.sent < len(big.blob), "the copy finished before it could be interrupted"
    fake.rate = 0
    before = len(fake.requests)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.stdout, p.stderr)
    m = re.search(rf"resuming {big.digest} at byte (\d+)", p.stdout)
    assert m and int(m.group(1)) > 0, p.stdout
    ranges = [r for meth, path, r in fake.requests[before:] if big.digest in path]
    assert ranges == [f"bytes={m.group(1)}-"], ranges
    st = subprocess.run([BERTH_BIN, "mirror", "status", "big", "--config", str(cfgf), "--data-dir", str(data)],
                        capture_output=True, text=True)
    assert "interrupted" in st.stdout and "succeeded" in st.stdout, st.stdout
    b = Berth(data).start()
    try:
        g = requests.get(f"{b.url}/v2/m/big/img/blobs/{big.digest}")
        assert g.status_code == 200 and hashlib.sha256(g.content).hexdigest() == big.digest[7:]
        assert get_manifest(Client(b.url), "m/big/img", "1").content == img.manifest
    finally:
        b.stop()


# ---------------------------------------------------------------- foreign layers

def test_foreign_layers_kept_as_urls_or_fetched(fake, berth_factory):
    img = wi.windows_image("10.0.17763.5936", fmt="docker",
                           foreign_urls=lambda d: [f"{fake.url}/files/{d}"])
    base = img.layers[0]
    assert not base.push and base.urls
    fake.put_image("windows/servercore", img, tag="ltsc2019")
    fake.files[f"/files/{base.digest}"] = base.blob
    cfg = ("[validation]\nforeign_layer_allow = ['^http://127\\.0\\.0\\.1:']\n"
           + mirror_toml("keep", fake.url, ["windows/servercore"], "k")
           + mirror_toml("fetch", fake.url, ["windows/servercore"], "f", foreign="fetch"))
    reg = berth_factory(config=cfg)
    c = Client(reg.url)
    rep = run_remote(reg, "keep")
    assert rep["failed"] == 0, rep
    assert get_manifest(c, "k/windows/servercore", "ltsc2019").content == img.manifest
    assert c.get(f"/v2/k/windows/servercore/blobs/{base.digest}").status_code == 404
    assert fake.count("GET", f"/files/{base.digest}") == 0
    rep = run_remote(reg, "fetch")
    assert rep["failed"] == 0, rep
    assert get_manifest(c, "f/windows/servercore", "ltsc2019").content == img.manifest
    g = c.get(f"/v2/f/windows/servercore/blobs/{base.digest}")
    assert g.status_code == 200 and g.content == base.blob
    # The upstream registry is asked first, then the layer's URL.
    assert fake.count("GET", f"/blobs/{base.digest}") == 1
    assert fake.count("GET", f"/files/{base.digest}") == 1


# ---------------------------------------------------------------- pull-through cache

def proxy_toml(upstream, ttl=1):
    return f'[[proxy]]\nprefix = "cache"\nupstream = {json.dumps(upstream)}\ntag_ttl_secs = {ttl}\n'


def test_pull_through_miss_hit_revalidate_and_upstream_down(fake, berth_factory):
    imgs = wi.servercore_like(fmt="docker")[:2]
    body = fake.put_list("windows/nanoserver", "ltsc", imgs)
    reg = berth_factory(config=proxy_toml(fake.url, ttl=2))
    c = Client(reg.url)
    r = get_manifest(c, "cache/windows/nanoserver", "ltsc")
    assert r.status_code == 200 and r.content == body
    for im in imgs:
        assert get_manifest(c, "cache/windows/nanoserver", im.digest).content == im.manifest
        for d, b in im.blobs().items():
            g = c.get(f"/v2/cache/windows/nanoserver/blobs/{d}")
            assert g.status_code == 200 and g.content == b
    # After the TTL: one HEAD, no GET; within the TTL: no upstream request at all.
    heads, gets = fake.count("HEAD", "/manifests/ltsc"), fake.count("GET", "/manifests/")
    # Not a wait: the 2 s tag TTL must run out (time passing is what is under test here and below);
    # nothing outside berth shows it ran out but the upstream request the next pull makes.
    time.sleep(2.2)
    assert get_manifest(c, "cache/windows/nanoserver", "ltsc").content == body
    assert fake.count("HEAD", "/manifests/ltsc") == heads + 1
    assert fake.count("GET", "/manifests/") == gets
    n = len(fake.requests)
    assert get_manifest(c, "cache/windows/nanoserver", "ltsc").content == body
    assert len(fake.requests) == n
    # The tag moves upstream: the cache follows after the TTL.
    newer = wi.linux_image("arm64", fmt="docker", layers=1)
    fake.put_image("windows/nanoserver", newer, tag="ltsc")
    time.sleep(2.2)  # the TTL runs out (see above)
    assert get_manifest(c, "cache/windows/nanoserver", "ltsc").content == newer.manifest
    # Upstream down: the cached copy is served.
    fake.stop()
    time.sleep(2.2)  # the TTL runs out (see above): the revalidation finds the upstream down
    assert get_manifest(c, "cache/windows/nanoserver", "ltsc").content == newer.manifest
    d, b = next(iter(imgs[0].blobs().items()))
    assert c.get(f"/v2/cache/windows/nanoserver/blobs/{d}").content == b
    r = get_manifest(c, "cache/windows/nanoserver", "never-cached")
    assert r.status_code == 502, r.text
    # Outside the prefix nothing is proxied.
    assert get_manifest(c, "windows/nanoserver", "ltsc").status_code == 404


def test_pull_through_serves_the_cached_copy_when_the_upstream_goes_silent(fake, berth_factory):
    """Issue 17: an upstream that accepts connections and never answers stalled every pull of a
    cached tag past its TTL for the 60 s read timeout. The default upstream_timeout_secs (5 s)
    bounds it; the cached copy is served then."""
    img = wi.linux_image("amd64", fmt="oci", layers=1)
    fake.put_image("library/alpine", img, tag="3")
    reg = berth_factory(config=proxy_toml(fake.url, ttl=1))
    c = Client(reg.url)
    assert get_manifest(c, "cache/library/alpine", "3").content == img.manifest
    fake.stall = 120
    time.sleep(1.2)  # not a wait: the 1 s TTL must run out so that the next pull revalidates
    t0 = time.monotonic()
    r = c.s.get(f"{reg.url}/v2/cache/library/alpine/manifests/3", timeout=45,
                headers={"Accept": img.media_type})
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.content == img.manifest, r.text
    assert took < 20, f"the cached copy came after {took:.1f}s"
    assert fake.count("HEAD", "/manifests/3") >= 1
    # The log line is drained from stderr by a thread; it may land just after the response.
    wait_for_log(reg, "serving the cached copy")
    # a miss against the silent upstream fails in bounded time too, in the spec's error format
    t0 = time.monotonic()
    r = c.s.get(f"{reg.url}/v2/cache/library/alpine/manifests/never", timeout=45)
    assert r.status_code == 502 and time.monotonic() - t0 < 20, (r.status_code, r.text)


def test_pull_through_passes_429_with_retry_after(fake, berth_factory):
    img = wi.linux_image("amd64", fmt="oci", layers=1)
    fake.put_image("library/busybox", img, tag="1")
    reg = berth_factory(config=proxy_toml(fake.url, ttl=1))
    c = Client(reg.url)
    fake.status, fake.retry_after = 429, "17"
    r = get_manifest(c, "cache/library/busybox", "1")
    assert r.status_code == 429, r.text
    assert r.headers.get("Retry-After") == "17"
    assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    r = c.get(f"/v2/cache/library/busybox/blobs/{img.config_digest}")
    assert r.status_code == 429 and r.headers.get("Retry-After") == "17"
    # Once cached, a rate-limited revalidation serves the cached copy.
    fake.status = None
    assert get_manifest(c, "cache/library/busybox", "1").content == img.manifest
    fake.status = 429
    time.sleep(1.2)  # not a wait: the 1 s TTL must run out so that the next pull revalidates (and gets 429)
    assert get_manifest(c, "cache/library/busybox", "1").content == img.manifest


def test_pull_through_streams_a_blob_miss_and_keeps_it_when_the_client_hangs_up(fake, berth_factory):
    blob = os.urandom(24 << 20)
    d = sha256(blob)
    fake.repos["big/layer"] = {"tags": {}, "manifests": {}}
    fake.blobs[d] = blob
    fake.rate = 8 << 20                       # three seconds for the whole blob
    reg = berth_factory(config=proxy_toml(fake.url))
    t = time.time()
    r = requests.get(f"{reg.url}/v2/cache/big/layer/blobs/{d}", stream=True, timeout=30)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(blob)
    assert r.headers["Docker-Content-Digest"] == d
    next(r.iter_content(1 << 16))
    assert time.time() - t < 1.5, "the first bytes waited for the whole download"
    r.close()                                  # the client hangs up; the copy goes on
    wait_for(lambda: fake.sent >= len(blob), 30, "the upstream to send the whole blob")
    fake.stop()
    # with the upstream gone, only a kept copy can answer
    wait_for(lambda: requests.head(f"{reg.url}/v2/cache/big/layer/blobs/{d}").status_code == 200, 10,
             "berth to keep the blob it went on downloading after the client hung up")
    g = requests.get(f"{reg.url}/v2/cache/big/layer/blobs/{d}")
    assert g.status_code == 200 and g.content == blob
