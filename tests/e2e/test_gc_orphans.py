"""The opt-in orphan pass of garbage collection (docs/LIFECYCLE.md): bytes in the blob store that no
metadata row knows (a crash between storing and recording) are found only by listing the store, and
removed once older than the grace window; recorded blobs stay. Runs on the filesystem and on S3
(BERTH_TEST_BACKEND=s3): the planted object is a file with an old mtime, or an S3 object.
"""
import hashlib
import os
import subprocess
import time

from conftest import BACKEND, BERTH_BIN, S3_ENDPOINT
from helpers import Client, rand_bytes, wait_for

GC = "[gc]\ngrace_secs = 1\n"


def plant(b, data):
    """Stores `data` at its digest's place in b's blob store, behind berth's back."""
    hexd = hashlib.sha256(data).hexdigest()
    key = f"blobs/sha256/{hexd[:2]}/{hexd}"
    if BACKEND == "s3":
        import boto3

        s3 = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1")
        bucket = b._backend_env["BERTH_STORAGE__S3__BUCKET"]
        s3.put_object(Bucket=bucket, Key=key, Body=data)

        def exists():
            try:
                s3.head_object(Bucket=bucket, Key=key)
                return True
            except s3.exceptions.ClientError:
                return False

        time.sleep(2.2)  # older than the 1 s grace window
    else:
        p = b.data_dir / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        old = time.time() - 3600
        os.utime(p, (old, old))

        def exists():
            return p.exists()

    return "sha256:" + hexd, exists


def gc(c, **body):
    r = c.post("/berth/v1/gc/runs", json=body)
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    out = {}

    def done():
        v = c.get(f"/berth/v1/gc/runs/{run_id}").json()
        out.update(v)
        return v["state"] != "running"

    wait_for(done, 60, "the GC run to finish")
    assert out["state"] == "succeeded", out
    return out["report"]


def test_the_orphan_pass_removes_unrecorded_bytes_and_keeps_recorded_ones(berth_factory):
    b = berth_factory(config=GC)
    c = Client(b.url)
    img = c.push_image("team/app", tag="v1", layers=2)
    orphan, exists = plant(b, rand_bytes(3000))
    assert exists()

    # A run without the pass never lists the store and leaves the orphan.
    r = gc(c)
    assert r["orphans"] is None, r
    assert exists()

    r = gc(c, dry_run=True, orphans=True)
    o = r["orphans"]
    assert (o["found"], o["removed"], o["bytes"]) == (1, 0, 3000), o
    assert o["objects"] == [orphan], o
    assert o["listed"] == 1 + len(img.blobs()), o
    assert exists()

    r = gc(c, orphans=True)
    assert (r["orphans"]["found"], r["orphans"]["removed"]) == (1, 1), r
    assert not exists(), "the orphan is still in the store"
    for d, data in img.blobs().items():
        got = c.get(f"/v2/team/app/blobs/{d}")
        assert got.status_code == 200 and got.content == data, d
    assert c.get("/v2/team/app/manifests/v1").status_code == 200

    # The CLI through the admin API: nothing left to find.
    p = subprocess.run([BERTH_BIN, "gc", "--orphans", "--registry", b.url], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "orphan pass: listed" in p.stdout and "0 unknown to the metadata" in p.stdout, p.stdout
