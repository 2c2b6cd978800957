"""Helpers for the garbage collection end-to-end tests (test_gc.py) and bench/gc_driver.py.

What a registry stores and what its tags reach, both measured from outside: the blob store's
bytes (files under `<data_dir>/blobs` on the filesystem; objects in the registry's bucket on
S3, read with boto3) and the closure of the remaining tags over the HTTP API (index children,
referrers of kept manifests, configs and layers). Manifests live in the metadata database, not
in the blob store, so only configs and layers count as blob bytes.
"""
import json
import time

import pytest
import requests

import conftest
from helpers import files_under

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


class GcApi:
    """The admin API under /berth/v1/gc of one registry (auth is off in these tests: open)."""

    def __init__(self, url, auth=None):
        self.base = url.rstrip("/") + "/berth/v1/gc"
        self.s = requests.Session()
        self.auth = auth

    def start(self, dry_run=False, busy_for=0.0):
        """POST a run; retries a 409 for up to `busy_for` seconds. Returns the run id."""
        deadline = time.monotonic() + busy_for
        while True:
            r = self.s.post(self.base + "/runs", json={"dry_run": dry_run}, auth=self.auth, timeout=60)
            if r.status_code == 202:
                body = r.json()
                assert body["state"] == "running" and body["dry_run"] == dry_run, body
                assert r.headers["Location"] == f"/berth/v1/gc/runs/{body['id']}", r.headers
                return body["id"]
            if r.status_code == 409 and time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            raise AssertionError(f"POST gc/runs -> {r.status_code} {r.text[:500]}")

    def get(self, run_id):
        r = self.s.get(f"{self.base}/runs/{run_id}", auth=self.auth, timeout=60)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def wait(self, run_id, timeout=120):
        """Polls the run until it is no longer running; returns it (any final state)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(run_id)
            if run["state"] != "running":
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"gc run {run_id} still running after {timeout} s: {run}")
            time.sleep(0.05)

    def run(self, dry_run=False, busy_for=0.0, timeout=120):
        """One whole run that must succeed; returns its report."""
        run = self.wait(self.start(dry_run, busy_for), timeout)
        assert run["state"] == "succeeded", run
        return run["report"]

    def runs(self, n=50):
        r = self.s.get(self.base + "/runs", params={"n": n}, auth=self.auth, timeout=60)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()["runs"]


# ---------------------------------------------------------------- the blob store, from outside

def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=conftest.S3_ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def stored(berth):
    """(object count, total bytes, names) of the registry's blob store: files under
    <data_dir>/blobs, or every object in its own S3 bucket (uploads in progress included, so
    a marker or a stray object left behind shows up as a difference)."""
    env = getattr(berth, "_backend_env", {}) or {}
    if env.get("BERTH_STORAGE__BACKEND") == "s3":
        s3 = s3_client()
        bucket = env["BERTH_STORAGE__S3__BUCKET"]
        names, total = [], 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                names.append(o["Key"])
                total += o["Size"]
        return len(names), total, names
    files = files_under(berth.data_dir / "blobs")
    return len(files), sum(f.stat().st_size for f in files), [str(f) for f in files]


def on_s3(berth):
    return (getattr(berth, "_backend_env", {}) or {}).get("BERTH_STORAGE__BACKEND") == "s3"


# ---------------------------------------------------------------- what the tags reach

def get_manifest(s, url, repo, ref):
    r = s.get(f"{url}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, timeout=60)
    return r


def catalog(s, url):
    r = s.get(f"{url}/v2/_catalog", params={"n": 10000}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["repositories"] or []


def tags_of(s, url, repo):
    r = s.get(f"{url}/v2/{repo}/tags/list", params={"n": 10000}, timeout=60)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, (repo, r.status_code, r.text)
    return r.json().get("tags") or []


def reachable(url, check_bytes=True):
    """Every blob the remaining tags reach: {digest: size}, and the manifests per repository.

    Walks tags -> manifests -> index children, and the referrers of every kept manifest
    (recursively). With check_bytes, GETs every blob and checks its digest and size: what
    is reachable must pull whole."""
    import hashlib

    s = requests.Session()
    blobs, manifests = {}, {}
    for repo in catalog(s, url):
        seen = set()
        queue = []
        for t in tags_of(s, url, repo):
            r = get_manifest(s, url, repo, t)
            assert r.status_code == 200, (repo, t, r.status_code, r.text)
            queue.append(r.headers["Docker-Content-Digest"])
        while queue:
            d = queue.pop()
            if d in seen:
                continue
            seen.add(d)
            r = get_manifest(s, url, repo, d)
            assert r.status_code == 200, (repo, d, r.status_code, r.text)
            assert "sha256:" + hashlib.sha256(r.content).hexdigest() == d
            m = json.loads(r.content)
            if "manifests" in m:
                queue.extend(c["digest"] for c in m["manifests"])
            descs = ([m["config"]] if "config" in m else []) + m.get("layers", [])
            for b in descs:
                if check_bytes and b["digest"] not in blobs:
                    g = s.get(f"{url}/v2/{repo}/blobs/{b['digest']}", timeout=60)
                    assert g.status_code == 200, (repo, d, b, g.status_code, g.text[:300])
                    assert "sha256:" + hashlib.sha256(g.content).hexdigest() == b["digest"], (repo, b)
                    assert len(g.content) == b["size"], (repo, b)
                blobs[b["digest"]] = b["size"]
            rr = s.get(f"{url}/v2/{repo}/referrers/{d}", timeout=60)
            assert rr.status_code == 200, (repo, d, rr.status_code, rr.text)
            queue.extend(x["digest"] for x in rr.json().get("manifests", []))
        manifests[repo] = seen
    return blobs, manifests


def assert_store_is_reachable(berth, what=""):
    """The blob store holds exactly the bytes the tags reach: 100% of the rest is gone."""
    blobs, _ = reachable(berth.url)
    count, total, names = stored(berth)
    want_bytes = sum(blobs.values())
    assert (count, total) == (len(blobs), want_bytes), (
        f"{what}: the store holds {count} objects, {total} bytes; the tags reach {len(blobs)} "
        f"blobs, {want_bytes} bytes (unreferenced bytes left: {total - want_bytes}); "
        f"first names: {sorted(names)[:10]}")
    if not on_s3(berth):
        # Files are named by digest: the same set, not just the same sums.
        got = {"sha256:" + pathlib_name(n) for n in names}
        assert got == set(blobs), (what, sorted(got ^ set(blobs))[:10])
    return blobs


def pathlib_name(p):
    return p.rsplit("/", 1)[1]
