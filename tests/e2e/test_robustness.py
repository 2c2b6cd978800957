"""Robustness: a full disk, garbage input, abusive connections, SIGTERM mid-upload, log hygiene.

The promises pinned here (CONTRACT.md plus the operational ones):
- bad input gets a spec JSON error (4xx) and the registry keeps serving; nothing committed is lost;
- a full disk (blob store or SQLite) answers 507 with
  {"errors":[{"code":"UNKNOWN","message":"registry storage is full"}]}, never a 2xx for bytes that
  did not fit and never a 400/500; the half-written upload is cut back or discarded, and once space
  is freed pushes work again;
- SIGTERM ends the process promptly even while an upload streams;
- with BERTH_LOG__FORMAT=json every stderr line is a JSON object; stdout is the one `listening on` line.

The full-disk tests mount a small tmpfs (we run as root) and fill it with a ballast file first, so
the point where the disk runs out is reached quickly and deterministically.
"""
import errno
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from conftest import BERTH_BIN
from helpers import (
    API_VERSION, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, SPEC_CODES, Client, canon, digest,
    rand_bytes, uniq, wait_for,
)

FULL_BODY = {"errors": [{"code": "UNKNOWN", "message": "registry storage is full"}]}


# ---------------------------------------------------------------- raw HTTP

class RawResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> last value
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:300]!r}>"


class Reader:
    """Parses HTTP/1.1 responses off one socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        c = self.sock.recv(65536)
        if not c:
            raise ConnectionError(f"connection closed; have {self.buf[:200]!r}")
        self.buf += c

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_request=False):
        status_line = self._line().decode("latin-1")
        parts = status_line.split(" ", 2)
        assert parts[0].startswith("HTTP/1."), status_line
        status = int(parts[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body = b""
        if head_request or status in (204, 304) or 100 <= status < 200:
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                self._take(2)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:  # until close
            try:
                while True:
                    self._fill()
            except ConnectionError:
                pass
            body, self.buf = self.buf, b""
        return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body)


def connect(addr, timeout=30):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def raw_request(addr, method, path, headers=None, body=b"", chunk=64 * 1024, timeout=30):
    """One request on its own connection. The body is sent from a thread while the response is read,
    so a server that answers before taking the whole body (a full disk) is still heard."""
    headers = dict(headers or {})
    headers.setdefault("Host", "berth")
    headers.setdefault("Connection", "close")
    if body is not None and "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    s = connect(addr, timeout)
    send_err = []

    def sender():
        try:
            s.sendall(head.encode("latin-1"))
            for i in range(0, len(body or b""), chunk):
                s.sendall(body[i:i + chunk])
        except OSError as e:
            send_err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        return Reader(s).response(head_request=(method == "HEAD"))
    except (ConnectionError, OSError) as e:
        raise AssertionError(f"{method} {path}: no response ({e!r}); send error {send_err!r}")
    finally:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
        t.join(10)


def path_of(location):
    u = urlsplit(location)
    return u.path + (("?" + u.query) if u.query else "")


def assert_spec_4xx(status, body_bytes, what, ctype=None):
    assert 400 <= status < 500, f"{what}: expected a 4xx, got {status} {body_bytes[:300]!r}"
    if ctype is not None:
        assert "json" in ctype, f"{what}: error Content-Type {ctype!r}"
    try:
        body = json.loads(body_bytes)
    except ValueError:
        raise AssertionError(f"{what}: {status} error body is not JSON: {body_bytes[:300]!r}")
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], (what, body)
    assert body["errors"][0].get("code") in SPEC_CODES, (what, body)
    assert isinstance(body["errors"][0].get("message"), str), (what, body)
    return body["errors"][0]["code"]


def assert_alive(b):
    assert b.proc.poll() is None, f"berth exited with {b.proc.returncode}; log tail: {''.join(b.log[-20:])}"
    r = requests.get(f"{b.url}/v2/", timeout=10)
    assert r.status_code == 200 and r.json() == {}, (r.status_code, r.text)
    assert r.headers.get("Docker-Distribution-API-Version") == API_VERSION


# ---------------------------------------------------------------- on-disk checks

def check_blob_files(data_dir):
    """Every file under <data>/blobs/<alg>/<xx>/<hex> hashes to its name. Returns the count."""
    root = pathlib.Path(data_dir) / "blobs"
    bad, n = [], 0
    if not root.exists():
        return 0
    for p in root.rglob("*"):
        if p.is_dir():
            continue
        n += 1
        alg = p.relative_to(root).parts[0]
        h = hashlib.new(alg, p.read_bytes()).hexdigest() if alg in ("sha256", "sha512") else None
        if h != p.name or p.parent.name != p.name[:2]:
            bad.append((str(p.relative_to(root)), p.stat().st_size, h))
    assert not bad, f"partial or misplaced blob files: {bad[:5]}"
    return n


def upload_files(data_dir):
    d = pathlib.Path(data_dir) / "uploads"
    return {p.name: p.stat().st_size for p in d.iterdir()} if d.exists() else {}


# ---------------------------------------------------------------- tmpfs

@pytest.fixture
def tmpfs(tmp_path):
    """A 24 MiB tmpfs at tmp_path/mnt; the registry's data dir is mnt/data, the ballast mnt/ballast."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} (these tests need root and mount): "
                    f"rc={r.returncode} {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            # berth may still hold it (the factory stops it after this teardown): detach lazily
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def write_ballast(path, nbytes=None):
    """Writes nbytes of ballast, or (None) until the file system is full. Returns bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    written = 0
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            buf = b"\0" * size
            while nbytes is None or written + size <= nbytes:
                try:
                    n = os.write(fd, buf)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
                written += n
                if n < size:
                    break
    finally:
        os.close(fd)
    return written


def start_on_tmpfs(berth_factory, mnt):
    return berth_factory(name=str(pathlib.Path(mnt.name) / "data"))


# ---------------------------------------------------------------- pushing a committed baseline

def push_baseline(cl, repo, n_layers=2):
    """config + layers + manifest (tag v1) + an index (tag idx). Returns (blobs, manifests)."""
    blobs, mans = {}, []
    img = cl.push_image(repo, tag="v1", layers=n_layers,
                        layer_data=[rand_bytes(300_000 + i) for i in range(n_layers)])
    blobs.update(img.blobs())
    mans.append((repo, "v1", img.digest, img.manifest, OCI_MANIFEST))
    idx = canon({"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [img.descriptor(platform={"os": "linux", "architecture": "amd64"})]})
    _, idx_d = cl.push_manifest(repo, "idx", idx, OCI_INDEX)
    mans.append((repo, "idx", idx_d, idx, OCI_INDEX))
    return blobs, mans


def verify_committed(cl, repo, blobs, mans):
    for d, data in blobs.items():
        r = cl.get(f"/v2/{repo}/blobs/{d}")
        assert r.status_code == 200, f"committed blob {d} not served: {r.status_code} {r.text[:200]}"
        assert r.content == data, f"committed blob {d} served with other bytes ({len(r.content)} vs {len(data)})"
    for rp, tag, d, body, mt in mans:
        for ref in (tag, d):
            r = cl.get(f"/v2/{rp}/manifests/{ref}", headers={"Accept": mt})
            assert r.status_code == 200, f"committed manifest {rp}:{ref} not served: {r.status_code} {r.text[:200]}"
            assert r.content == body, f"committed manifest {rp}:{ref} has other bytes"
            assert r.headers.get("Docker-Content-Digest") == d


def assert_full(resp, what):
    assert resp.status == 507, f"{what}: expected 507, got {resp!r}"
    assert "json" in resp.headers.get("content-type", ""), (what, resp.headers)
    assert resp.json() == FULL_BODY, (what, resp.body)
    assert resp.headers.get("docker-distribution-api-version") == API_VERSION, (what, resp.headers)


def outcome(resp, ok, what):
    """ok or 507 (with the exact body); anything else fails. Returns True when ok."""
    if resp.status == ok:
        return True
    assert resp.status == 507, f"{what}: expected {ok} or 507, got {resp!r}"
    assert_full(resp, what)
    return False


# ---------------------------------------------------------------- 1. full disk

def test_full_disk_blob_pushes_answer_507_and_recover(tmpfs, berth_factory):
    b = start_on_tmpfs(berth_factory, tmpfs)
    cl = Client(b.url)
    repo = "full/blobs"
    blobs, mans = push_baseline(cl, repo)
    # an upload with two thirds stored; its last third comes with the closing PUT on a full disk
    pend = rand_bytes(600_000)
    pend_loc = cl.start_upload(repo)
    for a, e in ((0, 200_000), (200_000, 400_000)):
        r = cl.patch_chunk(pend_loc, pend[a:e], f"{a}-{e - 1}")
        assert r.status_code == 202, r.text
        pend_loc = r.headers["Location"]
    pend_loc = path_of(pend_loc)
    ballast = tmpfs / "ballast"
    slack = 3 << 20
    write_ballast(ballast, free_bytes(tmpfs) - slack)
    assert free_bytes(tmpfs) <= slack + (1 << 20), free_bytes(tmpfs)

    pushed = {}        # digest -> bytes acknowledged with 201 while the disk filled
    refused = {}       # digest -> bytes whose push got 507
    open_uploads = {}  # upload path -> (bytes stored so far, the whole blob, chunk that failed)
    saw_507 = {"mono": 0, "chunked": 0}
    size = 700_000
    for i in range(40):
        data = rand_bytes(size + i)
        d = digest(data)
        mode = "mono" if i % 2 == 0 else "chunked"
        last_in_put = i % 4 == 3  # every other chunked upload sends its last third with the PUT
        if mode == "mono":
            r = raw_request(b.addr, "POST", f"/v2/{repo}/blobs/uploads/?digest={d}", body=data,
                            headers={"Content-Type": "application/octet-stream"})
            if outcome(r, 201, f"monolithic POST #{i}"):
                assert r.headers.get("docker-content-digest") == d
                pushed[d] = data
            else:
                refused[d] = data
                saw_507["mono"] += 1
        else:
            r = raw_request(b.addr, "POST", f"/v2/{repo}/blobs/uploads/", body=b"")
            if not outcome(r, 202, f"POST upload #{i}"):
                saw_507["chunked"] += 1
                refused[d] = data
                continue
            loc = path_of(r.headers["location"])
            third = len(data) // 3
            cuts = [0, third, 2 * third, len(data)]
            failed = False
            for a, e in zip(cuts[:-1] if last_in_put else cuts, cuts[1:-1] if last_in_put else cuts[1:]):
                r = raw_request(b.addr, "PATCH", loc, body=data[a:e],
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Range": f"{a}-{e - 1}"})
                if not outcome(r, 202, f"PATCH {a}-{e - 1} of #{i}"):
                    failed = True
                    # the half-written chunk is cut back: the upload still stands at `a`
                    st = raw_request(b.addr, "GET", loc, body=None)
                    assert st.status == 204, f"upload status after a 507 PATCH: {st!r}"
                    want = f"0-{a - 1}" if a else "0-0"
                    assert st.headers.get("range") == want, (
                        f"after a 507 on bytes {a}-{e - 1} the upload should stand at {a} bytes: {st.headers}")
                    open_uploads[loc] = (a, data)
                    break
                assert r.headers.get("range") == f"0-{e - 1}", r.headers
                loc = path_of(r.headers["location"])
            if failed:
                saw_507["chunked"] += 1
                refused[d] = data
                continue
            rest = data[cuts[2]:] if last_in_put else b""
            r = raw_request(b.addr, "PUT", f"{loc}{'&' if '?' in loc else '?'}digest={d}", body=rest,
                            headers={"Content-Type": "application/octet-stream"})
            if outcome(r, 201, f"closing PUT #{i} ({len(rest)} bytes)"):
                pushed[d] = data
            else:
                saw_507["chunked"] += 1
                refused[d] = data
                # the last chunk is cut back (session kept at 2/3) or the session is gone
                st = raw_request(b.addr, "GET", loc, body=None)
                # (berth drops a session only when the blob is published, never on a 507)
                assert st.status == 204, f"upload status after a 507 closing PUT: {st!r}"
                assert st.headers.get("range") == f"0-{cuts[2] - 1}", (
                    f"after a 507 on the closing PUT the upload should stand at {cuts[2]} bytes: {st.headers}")
                open_uploads[loc] = (cuts[2], data)
        if saw_507["mono"] and saw_507["chunked"]:
            break
    print(f"507s {saw_507}, {len(pushed)} pushed while filling, {len(open_uploads)} uploads cut back, {i + 1} tries")
    assert saw_507["mono"] and saw_507["chunked"], (
        f"the disk never filled for both upload kinds ({saw_507}); free now {free_bytes(tmpfs)}")

    # the disk to its last byte: a closing PUT with a last chunk answers 507, the chunk is cut back
    write_ballast(tmpfs / "ballast2")
    r = raw_request(b.addr, "PUT", f"{pend_loc}{'&' if '?' in pend_loc else '?'}digest={digest(pend)}",
                    body=pend[400_000:], headers={"Content-Type": "application/octet-stream"})
    assert_full(r, "closing PUT with a 200 KB last chunk on a full disk")
    refused[digest(pend)] = pend
    st = raw_request(b.addr, "GET", pend_loc, body=None)
    assert st.status == 204, f"upload status after a 507 closing PUT: {st!r}"
    assert st.headers.get("range") == "0-399999", (
        f"after a 507 on the closing PUT the upload should stand at 400000 bytes: {st.headers}")
    open_uploads[pend_loc] = (400_000, pend)

    # still serving, and nothing committed is damaged; nothing that was refused is visible
    assert_alive(b)
    verify_committed(cl, repo, {**blobs, **pushed}, mans)
    for d in refused:
        h = cl.head(f"/v2/{repo}/blobs/{d}")
        assert h.status_code == 404, f"blob {d} answered 507 but is served: {h.status_code}"
    check_blob_files(b.data_dir)
    # upload files: only the sessions left open, each cut back to what the server reports
    ups = upload_files(b.data_dir)
    open_ids = {urlsplit(loc).path.rsplit("/", 1)[1]: n for loc, (n, _) in open_uploads.items()}
    assert set(ups) <= set(open_ids), f"upload files left by refused pushes: {set(ups) - set(open_ids)}"
    for uid, n in open_ids.items():
        assert ups.get(uid, 0) == n, f"upload {uid} holds {ups.get(uid)} bytes, the server said {n}"

    # free the space: every kind of push works again, and a cut-back upload can be resumed
    ballast.unlink()
    (tmpfs / "ballast2").unlink()
    for loc, (n, data) in open_uploads.items():
        r = raw_request(b.addr, "PATCH", loc, body=data[n:],
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{n}-{len(data) - 1}"})
        assert r.status == 202, f"resuming the upload cut back by a 507: {r!r}"
        loc2 = path_of(r.headers["location"])
        d = digest(data)
        r = raw_request(b.addr, "PUT", f"{loc2}{'&' if '?' in loc2 else '?'}digest={d}", body=b"")
        assert r.status == 201, f"closing the resumed upload (digest of the whole blob): {r!r}"
        pushed[d] = data
    for d, data in list(refused.items())[:2]:
        assert cl.push_blob(repo, data) == d
        pushed[d] = data
    data = rand_bytes(size)
    loc = cl.start_upload(repo)
    r = cl.patch_chunk(loc, data, f"0-{len(data) - 1}")
    assert r.status_code == 202, r.text
    r = cl.put_upload(r.headers["Location"], digest(data))
    assert r.status_code == 201, r.text
    pushed[digest(data)] = data
    img = cl.push_image(repo, tag="after", layers=1)
    verify_committed(cl, repo, {**blobs, **pushed, **img.blobs()},
                     mans + [(repo, "after", img.digest, img.manifest, OCI_MANIFEST)])
    check_blob_files(b.data_dir)
    b.stop()


def fill_sqlite(b, cl, repo, base, stop_after=3, start=0):
    """PUTs ~200 KB manifests on a full disk until SQLite runs out `stop_after` times.
    Every 201 must be readable at once. Returns (acked, refused)."""
    acked, refused = [], []
    for i in range(start, start + 120):
        m = dict(base)
        m["annotations"] = {"n": str(i), "pad": rand_bytes(96 << 10).hex()}
        body = canon(m)
        tag = f"m{i}"
        r = raw_request(b.addr, "PUT", f"/v2/{repo}/manifests/{tag}", body=body,
                        headers={"Content-Type": OCI_MANIFEST})
        if outcome(r, 201, f"manifest PUT {tag} on a full disk"):
            assert r.headers.get("docker-content-digest") == digest(body)
            g = cl.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            assert g.status_code == 200 and g.content == body, (
                f"PUT /v2/{repo}/manifests/{tag} answered 201 on the full disk (after {len(refused)} 507s), "
                f"but GET answers {g.status_code} {g.text[:150]}: an acknowledged write is not stored")
            acked.append((repo, tag, digest(body), body, OCI_MANIFEST))
        else:
            refused.append((tag, digest(body)))
            if len(refused) >= stop_after:
                break
    assert refused, f"{len(acked)} manifests of ~200 KB each fitted on a full disk: SQLite never ran out"
    return acked, refused


def test_full_disk_manifest_put_hits_sqlite(tmpfs, berth_factory):
    b = start_on_tmpfs(berth_factory, tmpfs)
    cl = Client(b.url)
    repo = "full/manifests"
    blobs, mans = push_baseline(cl, repo)
    base = json.loads(mans[0][3])
    ballast = tmpfs / "ballast"
    write_ballast(ballast)  # to the last byte
    assert free_bytes(tmpfs) < 64 << 10, free_bytes(tmpfs)
    acked, refused = fill_sqlite(b, cl, repo, base)

    # while full: still serving reads, all committed data intact; a blob push answers 507
    assert_alive(b)
    verify_committed(cl, repo, blobs, mans + acked)
    data = rand_bytes(200_000)
    r = raw_request(b.addr, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest(data)}", body=data)
    assert_full(r, "monolithic POST on a full disk")
    r = raw_request(b.addr, "GET", f"/v2/{repo}/tags/list", body=None)
    assert r.status == 200, r
    assert {t for _, t, _, _, _ in acked} <= set(r.json()["tags"]), r.json()

    # kill -9 on the full disk, free the space, restart: everything acknowledged is there
    b.kill9()
    ballast.unlink()
    b.restart()
    cl = Client(b.url)
    verify_committed(cl, repo, blobs, mans + acked)
    for tag, d in refused:
        r = cl.get(f"/v2/{repo}/manifests/{d}")
        assert r.status_code == 404, f"manifest {tag} answered 507 but is stored: {r.status_code}"
        r = cl.get(f"/v2/{repo}/manifests/{tag}")
        assert r.status_code == 404, f"tag {tag} answered 507 but exists: {r.status_code}"
    tags = set(cl.get(f"/v2/{repo}/tags/list").json()["tags"])
    assert {t for _, t, _, _, _ in acked} | {"v1", "idx"} <= tags
    img2 = cl.push_image(repo, tag="after", layers=1)
    verify_committed(cl, repo, img2.blobs(), [(repo, "after", img2.digest, img2.manifest, OCI_MANIFEST)])
    check_blob_files(b.data_dir)
    b.stop()


def test_writes_after_sqlite_full_are_durable_once_space_is_freed(tmpfs, berth_factory):
    """One 507 from SQLite, then space is freed: the next pushes must really be stored (no restart)."""
    b = start_on_tmpfs(berth_factory, tmpfs)
    cl = Client(b.url)
    repo = "full/after"
    blobs, mans = push_baseline(cl, repo)
    base = json.loads(mans[0][3])
    ballast = tmpfs / "ballast"
    write_ballast(ballast)
    m = dict(base)
    tries = []
    # PUT big manifests until SQLite has refused twice (only SQLite writes here: no blob is pushed)
    for i in range(120):
        m["annotations"] = {"n": str(i), "pad": rand_bytes(96 << 10).hex()}
        r = raw_request(b.addr, "PUT", f"/v2/{repo}/manifests/f{i}", body=canon(m),
                        headers={"Content-Type": OCI_MANIFEST})
        tries.append(r.status)
        outcome(r, 201, f"manifest PUT f{i}")
        if tries.count(507) >= 2:
            break
    assert tries.count(507) >= 2, f"SQLite never ran out: {tries}"
    ballast.unlink()

    m["annotations"] = {"n": "after-free"}
    body, d = canon(m), digest(canon(m))
    r = cl.put_manifest(repo, "after-free", body)
    assert r.status_code == 201, (r.status_code, r.text)
    g = cl.get(f"/v2/{repo}/manifests/after-free", headers={"Accept": OCI_MANIFEST})
    data = rand_bytes(5000)
    bd = cl.push_blob(repo, data)
    h = cl.head(f"/v2/{repo}/blobs/{bd}")
    problems = []
    if g.status_code != 200 or g.content != body:
        problems.append(f"PUT manifests/after-free -> 201, then GET -> {g.status_code}")
    if h.status_code != 200:
        problems.append(f"POST blob {bd[:19]}.. -> 201, then HEAD -> {h.status_code}")
    b.kill9()
    b.restart()
    cl = Client(b.url)
    g = cl.get(f"/v2/{repo}/manifests/{d}", headers={"Accept": OCI_MANIFEST})
    if g.status_code != 200 or g.content != body:
        problems.append(f"after kill -9 and restart: GET manifests/{d[:19]}.. -> {g.status_code}")
    h = cl.head(f"/v2/{repo}/blobs/{bd}")
    if h.status_code != 200:
        problems.append(f"after kill -9 and restart: HEAD blob -> {h.status_code}")
    assert not problems, (f"after SQLite answered 507 ({len(tries)} PUTs: {tries[-3:]}) and space was freed, "
                          f"acknowledged writes are lost: {problems}")
    verify_committed(cl, repo, blobs, mans)
    b.stop()


# ---------------------------------------------------------------- 2. garbage in

def _valid_manifest_bytes(cl, repo):
    cfg = canon({"os": "linux", "architecture": "amd64", "n": uuid.uuid4().hex})
    layer = rand_bytes(100)
    return canon({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": {"mediaType": OCI_CONFIG, "digest": cl.push_blob(repo, cfg), "size": len(cfg)},
                  "layers": [{"mediaType": OCI_LAYER, "digest": cl.push_blob(repo, layer), "size": len(layer)}]})


GARBAGE = {
    "random-bytes": lambda v: os.urandom(4096),
    "empty": lambda v: b"",
    "truncated": lambda v: v[: len(v) // 2],
    "truncated-by-one": lambda v: v[:-1],
    "nested-arrays-100k": lambda v: b"[" * 100_000 + b"]" * 100_000,
    "nested-arrays-unclosed": lambda v: b"[" * 1_000_000,
    "nested-objects-50k": lambda v: b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nested-in-annotations": lambda v: v[:-1] + b',"annotations":{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
    "non-utf8": lambda v: v.replace(b'"schemaVersion"', b'"schema\xff\xfeVersion"'),
    "non-utf8-in-string": lambda v: v[:-1] + b',"annotations":{"x":"\xc3\x28\xa0\xa1"}}',
    "utf16": lambda v: v.decode().encode("utf-16"),
    "nul-bytes": lambda v: v[:10] + b"\0" * 100 + v[10:],
    "top-level-null": lambda v: b"null",
    "top-level-array": lambda v: b"[1,2,3]",
    "top-level-string": lambda v: b'"' + b"a" * 10_000 + b'"',
    "huge-number": lambda v: v.replace(b'"schemaVersion":2', b'"schemaVersion":' + b"9" * 5000),
    "float-schema": lambda v: v.replace(b'"schemaVersion":2', b'"schemaVersion":2e308'),
    "negative-size": lambda v: v.replace(b'"size":100', b'"size":-100'),
    "size-overflow": lambda v: v.replace(b'"size":100', b'"size":99999999999999999999999'),
    "duplicate-keys": lambda v: v[:-1] + b',"schemaVersion":3}',
    "lone-surrogate": lambda v: v[:-1] + b',"annotations":{"x":"\\ud800"}}',
    "trailing-garbage": lambda v: v + b"\x00garbage",
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_manifest_gets_4xx(berth, case):
    cl = Client(berth.url)
    repo = uniq("garbage")
    valid = _valid_manifest_bytes(cl, repo)
    body = GARBAGE[case](valid)
    for mt in (OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json", None):
        headers = {"Content-Type": mt} if mt else {}
        for ref in ("t1", digest(body)):
            r = raw_request(berth.addr, "PUT", f"/v2/{repo}/manifests/{ref}", body=body, headers=headers)
            assert_spec_4xx(r.status, r.body, f"PUT manifest {case} ({mt}, ref {ref[:12]})",
                            r.headers.get("content-type", ""))
    assert_alive(berth)
    # nothing got stored, and a valid manifest still goes in
    assert cl.get(f"/v2/{repo}/manifests/t1").status_code == 404
    assert cl.put_manifest(repo, "good", valid).status_code == 201
    assert cl.get(f"/v2/{repo}/manifests/good").content == valid


# Well-formed ranges that do not start where the upload stands (10 bytes) are 416; everything else here is
# malformed or not a range at all, 400. Both are BLOB_UPLOAD_INVALID.
RANGE_NOT_AT_OFFSET = {"18446744073709551615-18446744073709551615", "0-9/18446744073709551616"}
CONTENT_RANGES = [
    "99999999999999999999-1",
    "0-99999999999999999999",
    "18446744073709551615-18446744073709551615",
    "18446744073709551616-18446744073709551617",
    "0-18446744073709551615",
    "1-0",
    "-1-5",
    "0--1",
    "0-",
    "-",
    "0-1-2",
    " 0 - 9 ",
    "0x0-0x9",
    "0-9/18446744073709551616",
    "bytes 0-99999999999999999999/*",
    "\u00bd-1",
]


@pytest.mark.parametrize("cr", CONTENT_RANGES)
def test_absurd_content_range(berth, cr):
    cl = Client(berth.url)
    repo = uniq("range")
    loc = cl.start_upload(repo)
    first = rand_bytes(10)
    r = cl.patch_chunk(loc, first, "0-9")
    assert r.status_code == 202
    loc = path_of(r.headers["Location"])
    body = b""  # zero bytes: a range that claims more is a length mismatch
    r = raw_request(berth.addr, "PATCH", loc, body=body,
                    headers={"Content-Range": cr.encode("utf-8").decode("latin-1"),
                             "Content-Type": "application/octet-stream"})
    want = 416 if cr in RANGE_NOT_AT_OFFSET else 400
    assert r.status == want, f"PATCH Content-Range {cr!r} with a 0-byte body: expected {want}, got {r!r}"
    code = assert_spec_4xx(r.status, r.body, f"Content-Range {cr!r}", r.headers.get("content-type", ""))
    assert code == "BLOB_UPLOAD_INVALID", (cr, r)
    # the upload is untouched and can be finished
    st = cl.get(loc)
    assert st.status_code == 204 and st.headers["Range"] == "0-9", (cr, st.status_code, st.headers)
    rest = rand_bytes(5)
    r = cl.patch_chunk(loc, rest, "10-14")
    assert r.status_code == 202, r.text
    r = cl.put_upload(r.headers["Location"], digest(first + rest))
    assert r.status_code == 201, r.text
    assert_alive(berth)


def test_content_range_length_overflows_u64(berth):
    """`0-18446744073709551615` covers 2^64 bytes: end - start + 1 must not wrap to 0 and match an empty body."""
    cl = Client(berth.url)
    repo = uniq("range")
    loc = path_of(cl.start_upload(repo))
    r = raw_request(berth.addr, "PATCH", loc, body=b"",
                    headers={"Content-Range": "0-18446744073709551615", "Content-Type": "application/octet-stream"})
    assert r.status == 400, f"PATCH Content-Range 0-18446744073709551615, Content-Length 0: expected 400, got {r!r}"
    assert assert_spec_4xx(r.status, r.body, "2^64-byte range", r.headers.get("content-type")) == "BLOB_UPLOAD_INVALID"
    assert_alive(berth)
    data = rand_bytes(20)
    r = cl.patch_chunk(loc, data, "0-19")
    assert r.status_code == 202, r.text
    assert cl.put_upload(r.headers["Location"], digest(data)).status_code == 201


def test_content_range_longer_than_streamed_body(berth):
    """Transfer-Encoding: chunked has no Content-Length; the Content-Range still has to match the bytes."""
    cl = Client(berth.url)
    repo = uniq("range")
    loc = path_of(cl.start_upload(repo))
    data = rand_bytes(10)
    req = (f"PATCH {loc} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Range: 0-99\r\n"
           f"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    req += b"a\r\n" + data + b"\r\n0\r\n\r\n"
    s = connect(berth.addr)
    try:
        s.sendall(req)
        r = Reader(s).response()
    finally:
        s.close()
    assert r.status == 400, (
        f"PATCH Content-Range 0-99 with a 10-byte chunked body: expected 400 BLOB_UPLOAD_INVALID, got {r!r}")
    assert assert_spec_4xx(r.status, r.body, "range/body mismatch") == "BLOB_UPLOAD_INVALID"
    st = cl.get(loc)
    assert st.status_code == 204 and st.headers["Range"] == "0-0", st.headers


@pytest.mark.parametrize("kind", ["patch", "post-digest", "put-last-chunk", "manifest"])
def test_content_length_larger_than_body_then_close(berth, kind):
    cl = Client(berth.url)
    repo = uniq("short")
    first = rand_bytes(10)
    loc = path_of(cl.start_upload(repo))
    r = cl.patch_chunk(loc, first, "0-9")
    assert r.status_code == 202
    loc = path_of(r.headers["Location"])
    sent = rand_bytes(1000)
    full = sent + rand_bytes(9000)
    if kind == "patch":
        line = f"PATCH {loc}"
    elif kind == "post-digest":
        line = f"POST /v2/{repo}/blobs/uploads/?digest={digest(full)}"
    elif kind == "put-last-chunk":
        line = f"PUT {loc}{'&' if '?' in loc else '?'}digest={digest(first + full)}"
    else:
        line = f"PUT /v2/{repo}/manifests/short"
    head = (f"{line} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(full)}\r\n\r\n").encode()
    s = connect(berth.addr, timeout=15)
    try:
        s.sendall(head + sent)
        s.shutdown(socket.SHUT_WR)  # the client is done sending: the body stays short
        try:
            r = Reader(s).response()
        except (ConnectionError, OSError):
            r = None  # closing without an answer is acceptable for a broken request
    finally:
        s.close()
    if r is not None:
        assert 400 <= r.status < 500, f"{kind}: short body answered {r!r}"
        assert_spec_4xx(r.status, r.body, f"{kind} with a short body", r.headers.get("content-type", ""))
    assert_alive(berth)
    for d in (digest(full), digest(sent), digest(first + sent), digest(first + full)):
        assert cl.head(f"/v2/{repo}/blobs/{d}").status_code == 404, f"{kind}: a short body became blob {d}"
    assert cl.get(f"/v2/{repo}/manifests/short").status_code == 404
    st = cl.get(loc)
    if kind == "put-last-chunk" and st.status_code == 404:
        return  # a failed closing PUT may end the session
    assert st.status_code == 204 and st.headers["Range"] == "0-9", (kind, st.status_code, st.headers)
    rest = rand_bytes(7)
    r = cl.patch_chunk(loc, rest, "10-16")
    assert r.status_code == 202, (kind, r.status_code, r.text)
    r = cl.put_upload(r.headers["Location"], digest(first + rest))
    assert r.status_code == 201, (kind, r.status_code, r.text)


@pytest.mark.parametrize("bad_chunk", [
    b"ZZ\r\nxx\r\n0\r\n\r\n",                     # size is not hex
    b"10\r\nshort\r\n0\r\n\r\n",                  # fewer bytes than announced, then the terminator
    b"5\r\nhelloXX0\r\n\r\n",                     # no CRLF after the data
    b"ffffffffffffffffffff\r\nx\r\n",             # size overflows u64
    b"5;" + b"e" * 100_000 + b"\r\nhello\r\n0\r\n\r\n",  # absurd chunk extension
])
def test_patch_with_malformed_chunked_body(berth, bad_chunk):
    cl = Client(berth.url)
    repo = uniq("chunk")
    first = rand_bytes(10)
    loc = path_of(cl.start_upload(repo))
    r = cl.patch_chunk(loc, first, "0-9")
    assert r.status_code == 202
    loc = path_of(r.headers["Location"])
    req = (f"PATCH {loc} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n").encode() + b"5\r\nabcde\r\n" + bad_chunk
    s = connect(berth.addr, timeout=10)
    try:
        s.sendall(req)
        try:
            s.shutdown(socket.SHUT_WR)  # nothing more comes: a server waiting for the rest sees EOF
        except OSError:
            pass  # the server already dropped the connection
        try:
            r = Reader(s).response()
        except (ConnectionError, OSError):
            r = None
    finally:
        s.close()
    if r is not None:
        assert 400 <= r.status < 500, f"malformed chunk {bad_chunk[:30]!r} answered {r!r}"
        assert_spec_4xx(r.status, r.body, "malformed chunked body", r.headers.get("content-type", ""))
    assert_alive(berth)
    st = cl.get(loc)
    assert st.status_code == 204, st.status_code
    assert st.headers["Range"] == "0-9", f"a broken chunked body changed the upload: {st.headers}"
    rest = rand_bytes(3)
    r = cl.patch_chunk(loc, rest, "10-12")
    assert r.status_code == 202, r.text
    r = cl.put_upload(r.headers["Location"], digest(first + rest))
    assert r.status_code == 201, r.text


def test_pipelined_requests(berth):
    cl = Client(berth.url)
    repo = uniq("pipe")
    img = cl.push_image(repo, tag="v1", layers=1)
    layer_d = img.manifest_obj["layers"][0]["digest"]
    layer = img.blobs()[layer_d]
    chunk = rand_bytes(333)
    loc = path_of(cl.start_upload(repo))
    reqs = [
        ("GET", "/v2/", b"", 200),
        ("HEAD", f"/v2/{repo}/blobs/{layer_d}", b"", 200),
        ("GET", f"/v2/{repo}/manifests/v1", b"", 200),
        ("GET", f"/v2/{repo}/manifests/nope", b"", 404),
        ("PATCH", loc, chunk, 202),
        ("GET", f"/v2/{repo}/blobs/{layer_d}", b"", 200),
        ("PUT", f"/v2/{repo}/manifests/bad", b"{not json", 400),
        ("GET", "/v2/Bad..Name/tags/list", b"", 400),
        ("GET", f"/v2/{repo}/tags/list", b"", 200),
        ("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={digest(chunk)}", b"", 201),
        ("GET", f"/v2/{repo}/blobs/{digest(chunk)}", b"", 200),
    ]
    def encode(m, p, body):
        h = f"{m} {p} HTTP/1.1\r\nHost: berth\r\nContent-Length: {len(body)}\r\n"
        if m in ("PUT", "PATCH"):
            h += f"Content-Type: {OCI_MANIFEST if 'manifests' in p else 'application/octet-stream'}\r\n"
        return (h + "\r\n").encode() + body

    # all requests go out in one write; a response that says `Connection: close` ends the pipeline
    # (the rest were never read by the server) and the remaining ones are pipelined again
    got, todo, rounds = [], list(reqs), 0
    while todo:
        rounds += 1
        assert rounds <= len(reqs), "pipeline made no progress"
        s = connect(berth.addr, timeout=15)
        try:
            s.sendall(b"".join(encode(m, p, body) for m, p, body, _ in todo))
            rd = Reader(s)
            while todo:
                m, p, _, want = todo[0]
                try:
                    resp = rd.response(head_request=(m == "HEAD"))
                except (ConnectionError, OSError) as e:
                    raise AssertionError(f"pipelined: connection dropped without `Connection: close` before "
                                         f"answering {m} {p} (answered so far: {[g.status for g in got]}): {e!r}")
                todo.pop(0)
                got.append(resp)
                assert resp.status == want, f"pipelined {m} {p}: expected {want}, got {resp!r}"
                assert resp.headers.get("docker-distribution-api-version") == API_VERSION
                if resp.headers.get("connection", "").lower() == "close":
                    break
        finally:
            s.close()
    assert rounds < len(reqs), f"the server closed after almost every request ({rounds} connections)"
    assert got[2].body == img.manifest
    assert got[5].body == layer
    assert got[10].body == chunk
    assert_alive(berth)


def test_many_idle_connections(berth):
    cl = Client(berth.url)
    repo = uniq("idle")
    img = cl.push_image(repo, tag="v1", layers=1)
    socks = []
    try:
        for i in range(200):
            s = connect(berth.addr, timeout=10)
            if i % 4 == 1:
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n")  # headers never finished
            elif i % 4 == 2:
                s.sendall(b"PATCH /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: b\r\nContent-Length: 100000\r\n\r\nab")
            elif i % 4 == 3:
                s.sendall(b"GE")
            socks.append(s)
        # while they all hang there, real requests are served promptly
        t0 = time.time()
        for _ in range(5):
            r = requests.get(f"{berth.url}/v2/{repo}/manifests/v1", timeout=10,
                             headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == img.manifest
        assert time.time() - t0 < 5, "requests stalled behind 200 idle connections"
        assert cl.push_blob(repo, rand_bytes(1000))
    finally:
        for s in socks:
            s.close()
    # Not a wait for a condition: berth gets a moment to handle the 200 hang-ups before it is checked
    # to be alive (a crash they caused has no other sign to wait for).
    time.sleep(0.3)
    assert_alive(berth)
    r = cl.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == img.manifest
    # and another 200 connections can be opened and used after the first ones went away
    ok = 0
    socks = [connect(berth.addr) for _ in range(200)]
    try:
        for s in socks[::20]:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
            ok += Reader(s).response().status == 200
    finally:
        for s in socks:
            s.close()
    assert ok == 10


# (method, path, status, code): a name that is no valid repository name is 400 NAME_INVALID; a path whose
# encoded slash makes it no route at all is 404 NAME_UNKNOWN ("no such endpoint").
TRAVERSAL = [
    ("GET", "/v2/..%2F..%2F..%2Fetc/tags/list", 400, "NAME_INVALID"),
    ("GET", "/v2/a%2F..%2F..%2F..%2Fescape/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/a/../../../escape/manifests/latest", 400, "NAME_INVALID"),
    ("GET", "/v2/%2e%2e/%2e%2e/escape/tags/list", 400, "NAME_INVALID"),
    ("GET", "/v2/a/%2e%2e/%2e%2e/escape/blobs/sha256:" + "0" * 64, 400, "NAME_INVALID"),
    ("GET", "/v2/a/blobs/sha256:..%2F..%2F..%2Fberth.db", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/a/blobs/sha256%3A" + "0" * 64, 404, "BLOB_UNKNOWN"),
    ("GET", "/v2/a/blobs/..%2F..%2Fberth.db", 404, "NAME_UNKNOWN"),
    ("GET", "/v2/a/manifests/..%2F..%2Fberth.db", 404, "NAME_UNKNOWN"),
    ("PUT", "/v2/..%2F..%2Fescape/manifests/latest", 400, "NAME_INVALID"),
    ("PUT", "/v2/a%2F..%2F..%2Fescape/manifests/..%2Fescape", 404, "NAME_UNKNOWN"),
    ("POST", "/v2/..%2F..%2Fescape/blobs/uploads/", 400, "NAME_INVALID"),
    ("POST", "/v2/%2e%2e%2f%2e%2e%2fescape/blobs/uploads/?digest=DIGEST", 400, "NAME_INVALID"),
    ("POST", "/v2/a/../../escape/blobs/uploads/?digest=DIGEST", 400, "NAME_INVALID"),
    ("PATCH", "/v2/a/blobs/uploads/..%2F..%2F..%2Fescape", 404, "NAME_UNKNOWN"),
    ("PUT", "/v2/a/blobs/uploads/..%2F..%2Fescape?digest=DIGEST", 404, "NAME_UNKNOWN"),
    ("DELETE", "/v2/a/blobs/uploads/%2e%2e%2f%2e%2e%2fberth.db", 404, "NAME_UNKNOWN"),
    ("DELETE", "/v2/..%2F..%2Fescape/manifests/sha256:" + "0" * 64, 400, "NAME_INVALID"),
    ("GET", "/v2/a%00b/tags/list", 400, "NAME_INVALID"),
    ("GET", "/v2/a%5C..%5C..%5Cescape/tags/list", 400, "NAME_INVALID"),
]


@pytest.mark.parametrize("method,path,status,want_code", TRAVERSAL)
def test_path_traversal_in_names(berth, tmp_path, method, path, status, want_code):
    cl = Client(berth.url)
    img = cl.push_image("a", tag="v1", layers=1)
    body = rand_bytes(64)
    path = path.replace("DIGEST", digest(body))
    if method == "PUT" and "manifests" in path:
        body = img.manifest
    outside_before = sorted(str(p) for p in tmp_path.rglob("*") if berth.data_dir not in p.parents
                            and p != berth.data_dir)
    data_before = {str(p): p.stat().st_size for p in berth.data_dir.rglob("*") if p.is_file()}
    r = raw_request(berth.addr, method, path, body=body if method in ("PUT", "POST", "PATCH") else None,
                    headers={"Content-Type": OCI_MANIFEST if "manifests" in path else "application/octet-stream"})
    assert r.status == status, f"{method} {path}: expected {status} {want_code}, got {r!r}"
    code = assert_spec_4xx(r.status, r.body, f"{method} {path}", r.headers.get("content-type", ""))
    assert code == want_code, (path, code)
    outside_after = sorted(str(p) for p in tmp_path.rglob("*") if berth.data_dir not in p.parents
                           and p != berth.data_dir)
    assert outside_after == outside_before, f"{method} {path} touched files outside the data dir"
    assert not list(pathlib.Path("/").glob("escape*")) and not (tmp_path / "escape").exists()
    data_after = {str(p): p.stat().st_size for p in berth.data_dir.rglob("*") if p.is_file()}
    new = {p for p in set(data_after) - set(data_before)
           if not p.endswith(("-wal", "-shm", "-journal"))}
    assert not new, f"{method} {path} created files: {new}"
    assert_alive(berth)
    r = cl.get("/v2/a/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == img.manifest
    cat = cl.get("/v2/_catalog").json()["repositories"]
    assert cat == ["a"], f"{method} {path} created repositories: {cat}"


# ---------------------------------------------------------------- 3. SIGTERM mid-upload

def test_sigterm_while_upload_streams(berth_factory):
    b = berth_factory(name="term")
    cl = Client(b.url)
    repo = "term/r"
    blobs, mans = push_baseline(cl, repo, n_layers=1)
    loc = path_of(cl.start_upload(repo))
    stop = threading.Event()
    streamed = [0]

    def trickle():
        try:
            s = connect(b.addr, timeout=30)
            s.sendall((f"PATCH {loc} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n"
                       f"Content-Length: {200 << 20}\r\n\r\n").encode())
            piece = rand_bytes(32 << 10)
            while not stop.is_set():
                s.sendall(piece)
                streamed[0] += len(piece)
                time.sleep(0.02)  # a slow client is the case under test
        except OSError:
            pass

    idle = connect(b.addr)  # an idle keep-alive connection too
    idle.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
    assert Reader(idle).response().status == 200
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    # the PATCH is well under way (more than the socket buffers hold) when the signal comes
    wait_for(lambda: streamed[0] >= 1 << 20, 10, "the trickling PATCH to stream 1 MiB")
    t0 = time.time()
    b.proc.send_signal(signal.SIGTERM)
    try:
        b.proc.wait(12)
        exited = time.time() - t0
    except subprocess.TimeoutExpired:
        exited = None
        b.kill9()
    stop.set()
    t.join(10)
    idle.close()
    assert exited is not None, (
        f"berth still running 12 s after SIGTERM while an upload streamed ({streamed[0]} bytes sent); "
        f"log tail: {''.join(b.log[-5:])}")
    assert exited <= 10, f"berth took {exited:.1f}s to exit after SIGTERM"
    b.restart()
    cl = Client(b.url)
    verify_committed(cl, repo, blobs, mans)
    check_blob_files(b.data_dir)
    st = cl.get(loc)
    assert st.status_code == 204, st.status_code   # the interrupted upload survives the restart
    img = cl.push_image(repo, tag="after", layers=1)
    verify_committed(cl, repo, img.blobs(), [(repo, "after", img.digest, img.manifest, OCI_MANIFEST)])


def test_sigterm_idle_exits_cleanly(berth_factory):
    b = berth_factory(name="term2")
    cl = Client(b.url)
    blobs, mans = push_baseline(cl, "term/idle", n_layers=1)
    t0 = time.time()
    b.proc.send_signal(signal.SIGTERM)
    rc = b.proc.wait(10)
    assert time.time() - t0 < 5
    assert rc == 0, f"exit status {rc} after SIGTERM"
    b.restart()
    verify_committed(Client(b.url), "term/idle", blobs, mans)


# ---------------------------------------------------------------- 4. log hygiene

def test_json_logs_and_single_stdout_line(tmp_path):
    data = tmp_path / "logs"
    env = dict(os.environ)
    env.update({"BERTH_LOG__FORMAT": "json", "BERTH_LOG__LEVEL": "debug", "RUST_LOG": "debug"})
    # stderr goes to a file: debug logs outgrow a pipe nobody reads while the test runs.
    errlog = tmp_path / "stderr.log"
    with open(errlog, "wb") as errf:
        p = subprocess.Popen([BERTH_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
                             stdout=subprocess.PIPE, stderr=errf, env=env)
    try:
        first = p.stdout.readline().decode()
        assert first.startswith("listening on "), (first, errlog.read_bytes()[:4000] if p.poll() is not None else "")
        addr = first.split("listening on ", 1)[1].strip()
        cl = Client(f"http://{addr}")
        repo = "logs/r"
        # a mix of successes, client errors and odd input that ends up in log fields
        img = cl.push_image(repo, tag="v1", layers=2)
        cl.get(f"/v2/{repo}/manifests/missing")
        cl.get("/v2/Bad%0AName%0D%0Ainjected/tags/list")
        cl.put(f"/v2/{repo}/manifests/x", data=b"\xff\xfe{\n}", headers={"Content-Type": OCI_MANIFEST})
        cl.get(f"/v2/{repo}/blobs/sha256:{'z' * 64}")
        raw_request(addr, "GET", "/v2/", headers={"User-Agent": "evil\x7f\xe9 agent", "X-Thing": '"}{'},
                    body=None)
        raw_request(addr, "PATCH", "/v2/logs/r/blobs/uploads/not-a-uuid",
                    headers={"Content-Range": "99999999999999999999-1"}, body=b"x")
        loc = cl.start_upload(repo)
        cl.patch_chunk(loc, b"abc", "5-7")
        cl.delete(loc)
        s = connect(addr)
        s.sendall(b"GARBAGE\r\n\r\n")
        s.close()
        assert cl.get(f"/v2/{repo}/manifests/v1").content == img.manifest
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    err = errlog.read_bytes()
    assert out == b"", f"stdout has more than the listening line: {out[:500]!r}"
    lines = err.decode("utf-8", "replace").splitlines()
    assert lines, "no log lines at all on stderr"
    bad = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(obj, dict):
            bad.append(line)
    assert not bad, f"{len(bad)} of {len(lines)} stderr lines are not JSON objects: {bad[:5]}"
    # the interesting events are there
    text = "\n".join(lines)
    assert "blob stored" in text
