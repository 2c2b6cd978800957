"""Crash safety: SIGKILL berth during concurrent pushes, restart on the same data dir, check what survived.

What a 201 acknowledged must survive a kill -9 of the process (the page cache and a committed SQLite
WAL transaction outlive the process). Nothing partial may ever be visible: every file under
<data>/blobs/<alg>/ hashes to its own name, and a blob whose upload was not acknowledged is either
absent or complete.
"""
import hashlib
import os
import random
import re
import socket
import threading
import time
import json
import urllib.parse

import pytest
import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
N_THREADS = 8


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Pusher(threading.Thread):
    """Pushes blobs (monolithic, chunked, POST+PUT) and manifests until an error or `stop`."""

    def __init__(self, base, idx, stop, seed):
        super().__init__(daemon=True)
        self.base = base
        self.idx = idx
        self.repo = f"crash/t{idx}"
        self.stop = stop
        self.rng = random.Random(seed)
        self.s = requests.Session()
        self.acked_blobs = {}      # digest -> size   (201 received)
        self.attempted_blobs = {}  # digest -> size   (upload started, no 201)
        self.acked_manifests = []  # (repo, tag, digest, bytes)
        self.attempted_manifests = []
        self.error = None
        self.modes = {"mono": 0, "chunked": 0, "postput": 0}

    def url(self, loc):
        return urllib.parse.urljoin(self.base, loc)

    def _expect(self, r, code, what):
        if r.status_code != code:
            raise AssertionError(f"{what}: expected {code}, got {r.status_code} {r.text[:300]}")

    def push_blob(self, data, mode=None):
        d = sha(data)
        self.attempted_blobs[d] = len(data)
        mode = mode or self.rng.choice(["mono", "chunked", "chunked", "postput"])
        post = f"{self.base}/v2/{self.repo}/blobs/uploads/"
        if mode == "mono":
            r = self.s.post(post, params={"digest": d}, data=data, timeout=30,
                            headers={"Content-Type": "application/octet-stream"})
            self._expect(r, 201, f"monolithic POST {d}")
        else:
            r = self.s.post(post, timeout=30)
            self._expect(r, 202, "POST upload")
            loc = r.headers["Location"]
            if mode == "chunked":
                n = self.rng.randint(1, 4)
                cuts = sorted(self.rng.sample(range(1, len(data)), n - 1)) if n > 1 else []
                bounds = [0] + cuts + [len(data)]
                # the last chunk goes with the PUT half of the time
                last_in_put = self.rng.random() < 0.5 and len(bounds) > 2
                patch_bounds = bounds[:-1] if last_in_put else bounds
                for a, b in zip(patch_bounds, patch_bounds[1:]):
                    r = self.s.patch(self.url(loc), data=data[a:b], timeout=30,
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Range": f"{a}-{b - 1}"})
                    self._expect(r, 202, f"PATCH {a}-{b - 1}")
                    assert r.headers["Range"] == f"0-{b - 1}", r.headers
                    loc = r.headers["Location"]
                rest = data[patch_bounds[-1]:]
            else:
                rest = data
            r = self.s.put(self.url(loc), params={"digest": d}, data=rest, timeout=30,
                           headers={"Content-Type": "application/octet-stream"})
            self._expect(r, 201, f"PUT {d}")
        assert r.headers["Docker-Content-Digest"] == d
        self.modes[mode] += 1
        self.acked_blobs[d] = len(data)
        del self.attempted_blobs[d]
        return d

    def run(self):
        n = 0
        try:
            while not self.stop.is_set():
                layers = []
                for _ in range(self.rng.randint(1, 3)):
                    size = self.rng.randint(64 * 1024, 4 * 1024 * 1024)
                    data = self.rng.randbytes(size)
                    layers.append({"mediaType": OCI_LAYER, "digest": self.push_blob(data), "size": size})
                cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": n, "t": self.idx,
                                  "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode()
                cfg_d = self.push_blob(cfg, mode="mono")
                man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                  "config": {"mediaType": OCI_CONFIG, "digest": cfg_d, "size": len(cfg)},
                                  "layers": layers}).encode()
                tag = f"n{n}"
                rec = (self.repo, tag, sha(man), man)
                self.attempted_manifests.append(rec)
                r = self.s.put(f"{self.base}/v2/{self.repo}/manifests/{tag}", data=man, timeout=30,
                               headers={"Content-Type": OCI_MANIFEST})
                self._expect(r, 201, f"PUT manifest {tag}")
                assert r.headers["Docker-Content-Digest"] == sha(man)
                self.attempted_manifests.pop()
                self.acked_manifests.append(rec)
                n += 1
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            self.error = e  # expected once the server is killed
        except BaseException as e:  # wrong answer from a live server: reported by the test
            self.error = e


def check_blob_files(data_dir):
    """Every file under <data>/blobs/<alg>/<xx>/<hex> is complete: it hashes to its name."""
    bad, count = [], 0
    root = data_dir / "blobs"
    assert root.is_dir(), f"{root} missing"
    for alg_dir in root.iterdir():
        assert alg_dir.name in ("sha256", "sha512"), f"unexpected {alg_dir}"
        for p in alg_dir.rglob("*"):
            if p.is_dir():
                continue
            count += 1
            h = hashlib.new(alg_dir.name, p.read_bytes()).hexdigest()
            rel = p.relative_to(alg_dir)
            if p.name != h or rel.parts[:1] != (h[:2],) or len(rel.parts) != 2:
                bad.append((str(p), h))
    assert not bad, f"partial or misplaced blob files: {bad[:5]}"
    return count


def verify_after_restart(b, pushers):
    s = requests.Session()
    n_blobs = n_mans = 0
    for p in pushers:
        for d, size in p.acked_blobs.items():
            r = s.get(f"{b.url}/v2/{p.repo}/blobs/{d}", timeout=30)
            assert r.status_code == 200, f"acknowledged blob {p.repo}@{d} lost: {r.status_code} {r.text[:200]}"
            assert len(r.content) == size and sha(r.content) == d, f"acknowledged blob {d} has wrong bytes"
            n_blobs += 1
        for d, size in p.attempted_blobs.items():
            h = s.head(f"{b.url}/v2/{p.repo}/blobs/{d}", timeout=30)
            # two answers by design: the kill -9 may land before or after this unacknowledged push committed
            assert h.status_code in (200, 404), (d, h.status_code)
            if h.status_code == 200:
                r = s.get(f"{b.url}/v2/{p.repo}/blobs/{d}", timeout=30)
                assert r.status_code == 200
                assert len(r.content) == size and sha(r.content) == d, f"unacknowledged blob {d} is partial"
                assert int(h.headers["Content-Length"]) == size
        for repo, tag, d, man in p.acked_manifests:
            for ref in (tag, d):
                r = s.get(f"{b.url}/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST}, timeout=30)
                assert r.status_code == 200, f"acknowledged manifest {repo}:{ref} lost: {r.status_code}"
                assert r.content == man, f"acknowledged manifest {repo}:{ref} has other bytes"
                assert r.headers["Docker-Content-Digest"] == d
            n_mans += 1
        for repo, tag, d, man in p.attempted_manifests:
            r = s.get(f"{b.url}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=30)
            # two answers by design, as for the blobs above: unacknowledged, so committed or not
            assert r.status_code in (200, 404), (repo, tag, r.status_code)
            if r.status_code == 200:
                assert r.content == man
        if p.acked_manifests:
            r = s.get(f"{b.url}/v2/{p.repo}/tags/list", timeout=30)
            assert r.status_code == 200
            tags = set(r.json()["tags"])
            assert {t for _, t, _, _ in p.acked_manifests} <= tags
    return n_blobs, n_mans


@pytest.mark.parametrize("kill_after", [0.6, 2.0, 3.5])
def test_kill9_during_concurrent_pushes(berth_factory, kill_after):
    b = berth_factory()
    stop = threading.Event()
    pushers = [Pusher(b.url, i, stop, seed=hash((kill_after, i))) for i in range(N_THREADS)]
    for p in pushers:
        p.start()
    time.sleep(kill_after)  # not a wait: the moment of the kill is the test's parameter
    b.kill9()
    for p in pushers:
        p.join(60)
    stop.set()
    assert not any(p.is_alive() for p in pushers), "pusher threads hang after the kill"
    # before the kill the server must have answered correctly; after it only connection errors are expected
    wrong = [(p.idx, repr(p.error)) for p in pushers
             if p.error is not None and not isinstance(p.error, (requests.ConnectionError, requests.Timeout,
                                                                 requests.exceptions.ChunkedEncodingError))]
    assert not wrong, f"server gave wrong answers before the kill: {wrong}"
    acked = sum(len(p.acked_blobs) for p in pushers)
    assert acked > 0, "no blob was acknowledged before the kill: the test proved nothing"

    files_before = check_blob_files(b.data_dir)
    b.restart()
    n_blobs, n_mans = verify_after_restart(b, pushers)
    assert n_blobs == acked
    # after recovery the blob store still holds only complete blobs, at least the acknowledged ones
    files_after = check_blob_files(b.data_dir)
    distinct = {d for p in pushers for d in p.acked_blobs}
    assert files_after >= len(distinct)
    assert files_before >= len(distinct)

    # and the restarted registry takes new pushes on the same repositories
    p = Pusher(b.url, 0, threading.Event(), seed=1)
    d = p.push_blob(os.urandom(100_000), mode="chunked")
    assert requests.get(f"{b.url}/v2/crash/t0/blobs/{d}").status_code == 200
    print(f"kill after {kill_after}s: {acked} blobs, {n_mans} manifests acknowledged; "
          f"modes {[q.modes for q in pushers][:2]}; {files_after} blob files")


def test_dropped_connection_mid_patch_keeps_serving(berth):
    host, port = berth.addr.rsplit(":", 1)
    repo = "crash/drop"
    r = requests.post(f"{berth.url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    loc = r.headers["Location"]
    path = urllib.parse.urlsplit(loc).path + (("?" + urllib.parse.urlsplit(loc).query) if "?" in loc else "")
    data = os.urandom(1024 * 1024)
    for _ in range(3):
        sock = socket.create_connection((host, int(port)), timeout=10)
        head = (f"PATCH {path} HTTP/1.1\r\nHost: {berth.addr}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(data)}\r\nContent-Range: 0-{len(data) - 1}\r\n\r\n").encode()
        sock.sendall(head + data[:300_000])
        time.sleep(0.2)  # not a wait: the server is reading the body when the client goes away
        sock.close()  # the client goes away mid-body
    # Not a wait for a condition: berth gets a moment to handle the hang-ups before it is checked to
    # be alive (a crash they caused has no other sign to wait for).
    time.sleep(0.5)
    assert berth.proc.poll() is None, "berth died after a dropped PATCH connection"
    assert requests.get(f"{berth.url}/v2/", timeout=10).status_code == 200

    # the half-sent data is never a blob
    assert requests.head(f"{berth.url}/v2/{repo}/blobs/{sha(data)}").status_code == 404
    assert requests.head(f"{berth.url}/v2/{repo}/blobs/{sha(data[:300_000])}").status_code == 404
    # the session is still there, and reports a consistent range (how much of a cut body is kept is timing)
    st = requests.get(f"{berth.url}{path}")
    assert st.status_code == 204, st.text
    m = re.fullmatch(r"0-(\d+)", st.headers["Range"])
    assert m and int(m.group(1)) < len(data) - 1, st.headers
    assert requests.delete(f"{berth.url}{path}").status_code == 204

    # a complete chunked upload of the same bytes works afterwards
    p = Pusher(berth.url, 0, threading.Event(), seed=2)
    p.repo = repo
    d = p.push_blob(data, mode="chunked")
    g = requests.get(f"{berth.url}/v2/{repo}/blobs/{d}")
    assert g.status_code == 200 and g.content == data
    check_blob_files(berth.data_dir)
