"""Online garbage collection against the real binary, on the filesystem and on S3
(BERTH_TEST_BACKEND=s3; tests/run-all.sh runs this file in both passes).

What issue #14 asks it to show:
- GC with a 2 s grace window in a loop while clients push multi-arch indexes, referrers,
  by-digest manifests tagged later, chunked and monolithic blobs, cross-repo mounts, and untag
  and delete: no client gets BLOB_UNKNOWN / MANIFEST_BLOB_UNKNOWN for content it had pushed
  (within the window the server promises), every acknowledged and still-tagged manifest pulls
  with every blob, and once the pushes stop and the window passes, the store holds exactly what
  the tags reach (files under the data dir's blobs/, or objects in the bucket).
- real docker: two tags sharing a base, one deleted, GC: the store shrinks by exactly the
  unshared layers and config (manifests are rows in the metadata database, not blobs); the other
  tag pulls and runs.
- kill -9 in the middle of a run: nothing referenced is lost, the next run completes, nothing
  unreferenced is left.
- `berth gc --dry-run --json` on a stopped registry's data dir reports what the applied run then
  removes; `berth gc --registry` drives a running one.

The grace window is enforced at one-second resolution: an upload (or manifest push) is safe for
`grace_secs` after it started, a blob a HEAD found for half of that (a HEAD touches only links
older than half the window). A client that needs something longer than that after it made it
may legitimately find it gone; the stress clients count those cases ("expired") and redo the
work, and fail on any loss inside the promised window or of anything still tagged.
"""
import json
import random
import re
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import BERTH_BIN
from gckit import GcApi, MANIFEST_ACCEPT, assert_store_is_reachable, reachable, stored
from test_docker import images  # noqa: F401  (the fixture)
from helpers import EMPTY_JSON, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Client, canon, digest

GRACE = 2
CONFIG = f"[gc]\ngrace_secs = {GRACE}\n"
LOST_CODES = {"BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"}
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def error_code(r):
    try:
        return r.json()["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# ---------------------------------------------------------------- the stress clients

class Published:
    """Blobs pushers have made visible in their repositories (sources for cross-repo mounts)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, repo, d, data):
        with self.lock:
            self.items.append((repo, d, data))
            del self.items[:-200]

    def pick(self, rng, not_repo):
        with self.lock:
            cands = [x for x in self.items if x[0] != not_repo]
            return rng.choice(cands) if cands else None


SHARED_POOL = [(f"shared layer {k} ".encode() * (40 + 7 * k)) for k in range(10)]


class Expired(Exception):
    """Something the client made earlier than the grace window allows was (legitimately) gone."""


class Pusher(threading.Thread):
    """One client on its own repository. Records every manifest it was told is stored and still
    tagged; collects failures instead of raising, so the main thread reports all of them."""

    def __init__(self, url, idx, published, stop_at, seed):
        super().__init__(daemon=True)
        self.url = url
        self.c = Client(url)
        self.repo = f"stress/p{idx}-{uuid.uuid4().hex[:6]}"
        self.idx = idx
        self.published = published
        self.stop_at = stop_at
        self.rng = random.Random(seed)
        self.tags = {}          # tag -> {"digest", "body", "media", "blobs": {d: size}, "children", "referrers"}
        self.failures = []
        self.expired = 0
        self.counts = {}
        self.holders = {}       # per operation: digest -> [(t0, window)]

    # -- bookkeeping --------------------------------------------------------
    def fail(self, what):
        self.failures.append(f"{self.repo}: {what}")

    def count(self, k):
        self.counts[k] = self.counts.get(k, 0) + 1

    def hold(self, d, t0, window):
        self.holders.setdefault(d, []).append((t0, window))

    def lost(self, r, what):
        """A push answered that something is unknown: legitimate only if every hold on the
        thing named (or, when none is named, on something the push needs) had run out."""
        now = time.monotonic()
        expired = lambda d: all(now - t0 > w for t0, w in self.holders.get(d, [(now, 0)]))  # noqa: E731
        named = [d for d in DIGEST_RE.findall(r.text) if d in self.holders]
        if (any(expired(d) for d in named) if named else any(expired(d) for d in self.holders)):
            self.expired += 1
            raise Expired(what)
        ages = {d[:19]: [round(now - t0, 2) for t0, _ in hs] for d, hs in self.holders.items()}
        self.fail(f"{what}: {r.status_code} {error_code(r)} within the grace window "
                  f"(ages of holds, s: {ages}) {r.text[:300]}")
        raise Expired(what)

    # -- blobs ----------------------------------------------------------------
    def upload(self, data, chunked=None):
        """Uploads `data` whole (POST ?digest) or in chunks (POST, PATCH..., PUT ?digest)."""
        d = digest(data)
        if chunked is None:
            chunked = self.rng.random() < 0.4
        if not chunked:
            t0 = time.monotonic()
            r = self.c.post(f"/v2/{self.repo}/blobs/uploads/", params={"digest": d}, data=data,
                            headers={"Content-Type": "application/octet-stream"})
            if r.status_code != 201:
                self.fail(f"monolithic upload {d}: {r.status_code} {r.text[:300]}")
                raise Expired("upload failed")
            self.count("monolithic")
        else:
            r = self.c.post(f"/v2/{self.repo}/blobs/uploads/")
            if r.status_code != 202:
                self.fail(f"start upload: {r.status_code} {r.text[:300]}")
                raise Expired("upload failed")
            loc = r.headers["Location"]
            n = max(1, len(data) // 3)
            pieces = [data[i:i + n] for i in range(0, len(data), n)]
            off = 0
            for p in pieces:
                r = self.c.patch_chunk(loc, p, f"{off}-{off + len(p) - 1}")
                if r.status_code != 202:
                    self.fail(f"PATCH chunk at {off}: {r.status_code} {r.text[:300]}")
                    self.c.delete(loc)
                    raise Expired("upload failed")
                loc = r.headers["Location"]
                off += len(p)
            t0 = time.monotonic()
            r = self.c.put_upload(loc, d)
            if r.status_code != 201:
                self.fail(f"chunked upload PUT {d}: {r.status_code} {r.text[:300]}")
                self.c.delete(loc)
                raise Expired("upload failed")
            self.count("chunked")
        self.hold(d, t0, GRACE)
        return d

    def ensure(self, data):
        """docker's way: HEAD, upload only if absent."""
        d = digest(data)
        t0 = time.monotonic()
        r = self.c.head(f"/v2/{self.repo}/blobs/{d}")
        if r.status_code == 200:
            self.hold(d, t0, GRACE / 2)
            self.count("head-hit")
            return d
        return self.upload(data)

    # -- manifests ------------------------------------------------------------
    def image(self, arch="amd64", mounted=None):
        """Uploads an image's blobs (a config, a layer from the shared pool, one of its own or
        `mounted`: (digest, size) already in the repository); returns its manifest bytes and
        {digest: size} of its blobs."""
        cfg = canon({"architecture": arch, "os": "linux", "nonce": uuid.uuid4().hex,
                     "rootfs": {"type": "layers", "diff_ids": []}})
        shared = self.rng.choice(SHARED_POOL)
        if mounted is None:
            unique = self.rng.randbytes(self.rng.randrange(200, 3000))
            own = (self.upload(unique), len(unique))
            self.published.add(self.repo, own[0], unique)
        else:
            own = mounted
        cd = self.upload(cfg)
        layers = [(self.ensure(shared), len(shared)), own]
        body = canon({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(cfg)},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": n} for d, n in layers],
        })
        return body, {cd: len(cfg), **dict(layers)}

    def put(self, ref, body, media, what):
        t0 = time.monotonic()
        r = self.c.put_manifest(self.repo, ref, body, media)
        if r.status_code == 201:
            d = digest(body)
            if r.headers.get("Docker-Content-Digest") != d:
                self.fail(f"{what}: digest {r.headers.get('Docker-Content-Digest')} != {d}")
            self.hold(d, t0, GRACE)
            return d
        if error_code(r) in LOST_CODES:
            self.lost(r, what)
        self.fail(f"{what}: {r.status_code} {r.text[:300]}")
        raise Expired(what)

    def pull_check(self, tag, rec, what):
        """Right after a 201: the tag serves this manifest and every blob pulls whole."""
        r = self.c.get(f"/v2/{self.repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        if r.status_code != 200 or r.headers.get("Docker-Content-Digest") != rec["digest"]:
            self.fail(f"{what}: tag {tag} -> {r.status_code} {r.headers.get('Docker-Content-Digest')}, "
                      f"pushed {rec['digest']}: {r.text[:200]}")
            return
        self.check_blobs(rec, what)

    def check_blobs(self, rec, what):
        for d, size in rec["blobs"].items():
            g = self.c.get(f"/v2/{self.repo}/blobs/{d}")
            if g.status_code != 200 or digest(g.content) != d or len(g.content) != size:
                self.fail(f"{what}: blob {d} of a tagged manifest -> {g.status_code} "
                          f"{error_code(g)} ({len(g.content)} bytes)")
        for cd in rec["children"]:
            g = self.c.get(f"/v2/{self.repo}/manifests/{cd}", headers={"Accept": MANIFEST_ACCEPT})
            if g.status_code != 200 or digest(g.content) != cd:
                self.fail(f"{what}: child {cd} of a tagged index -> {g.status_code} {g.text[:200]}")
        for ref in rec["referrers"]:
            g = self.c.get(f"/v2/{self.repo}/manifests/{ref['digest']}", headers={"Accept": MANIFEST_ACCEPT})
            if g.status_code != 200 or digest(g.content) != ref["digest"]:
                self.fail(f"{what}: referrer {ref['digest']} of a tagged manifest -> {g.status_code}")
            for d, size in ref["blobs"].items():
                g = self.c.get(f"/v2/{self.repo}/blobs/{d}")
                if g.status_code != 200 or digest(g.content) != d:
                    self.fail(f"{what}: blob {d} of a referrer of a tagged manifest -> {g.status_code}")

    def tagged(self, tag, digest_, body, media, blobs, children=()):
        rec = {"digest": digest_, "body": body, "media": media, "blobs": dict(blobs),
               "children": list(children), "referrers": []}
        self.tags[tag] = rec
        self.pull_check(tag, rec, f"push of {tag}")

    # -- operations -----------------------------------------------------------
    def op_image(self):
        body, blobs = self.image()
        tag = f"img-{self.rng.randrange(4)}"
        d = self.put(tag, body, OCI_MANIFEST, f"image {tag}")
        self.tagged(tag, d, body, OCI_MANIFEST, blobs)

    def op_digest_then_tag(self):
        body, blobs = self.image()
        d = self.put(digest(body), body, OCI_MANIFEST, "image by digest")
        for b in blobs:
            self.hold(b, self.holders[d][-1][0], GRACE)
        time.sleep(self.rng.uniform(0, 0.8))
        tag = f"late-{self.rng.randrange(3)}"
        self.put(tag, body, OCI_MANIFEST, f"tagging {d} as {tag}")
        self.tagged(tag, d, body, OCI_MANIFEST, blobs)

    def op_multiarch(self):
        children, blobs, entries = [], {}, []
        for arch in ("amd64", "arm64"):
            body, bl = self.image(arch)
            cd = self.put(digest(body), body, OCI_MANIFEST, f"child {arch}")
            children.append(cd)
            blobs.update(bl)
            entries.append({"mediaType": OCI_MANIFEST, "digest": cd, "size": len(body),
                            "platform": {"architecture": arch, "os": "linux"}})
        idx = canon({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        tag = f"multi-{self.rng.randrange(3)}"
        d = self.put(tag, idx, OCI_INDEX, f"index {tag}")
        self.tagged(tag, d, idx, OCI_INDEX, blobs, children)
        self.count("index")

    def op_referrer(self):
        subjects = [(t, r) for t, r in self.tags.items() if r["media"] == OCI_MANIFEST]
        if not subjects:
            return self.op_image()
        tag, rec = self.rng.choice(subjects)
        ed = self.ensure(EMPTY_JSON)
        sig = self.rng.randbytes(120)
        sd = self.upload(sig, chunked=False)
        body = canon({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": OCI_EMPTY, "digest": ed, "size": 2},
            "layers": [{"mediaType": "application/vnd.example.sig", "digest": sd, "size": len(sig)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": rec["digest"], "size": len(rec["body"])},
        })
        d = self.put(digest(body), body, OCI_MANIFEST, f"referrer of {tag}")
        ref = {"digest": d, "blobs": {ed: 2, sd: len(sig)}}
        if self.tags.get(tag) is rec:
            rec["referrers"].append(ref)
            self.check_blobs({"blobs": {}, "children": [], "referrers": [ref]}, f"referrer of {tag}")
        self.count("referrer")

    def op_mount_image(self):
        src = self.published.pick(self.rng, self.repo)
        if src is None:
            return self.op_image()
        ud = self._mount_from(src)
        body, blobs = self.image(mounted=(ud, len(src[2])))
        tag = f"mnt-{self.rng.randrange(3)}"
        d = self.put(tag, body, OCI_MANIFEST, f"image with a mounted layer {tag}")
        self.tagged(tag, d, body, OCI_MANIFEST, blobs)

    def _mount_from(self, src):
        from_repo, d, data = src
        t0 = time.monotonic()
        r = self.c.post(f"/v2/{self.repo}/blobs/uploads/", params={"mount": d, "from": from_repo})
        if r.status_code == 201:
            self.hold(d, t0, GRACE)
            self.count("mounted")
            return d
        if r.status_code != 202:
            self.fail(f"mount {d} from {from_repo}: {r.status_code} {r.text[:300]}")
            raise Expired("mount failed")
        self.count("mount-fallback")
        t0 = time.monotonic()
        p = self.c.put_upload(r.headers["Location"], d, data)
        if p.status_code != 201:
            self.fail(f"upload after a refused mount {d}: {p.status_code} {p.text[:300]}")
            raise Expired("upload failed")
        self.hold(d, t0, GRACE)
        return d

    def op_untag(self):
        if not self.tags:
            return self.op_image()
        tag = self.rng.choice(sorted(self.tags))
        r = self.c.delete(f"/v2/{self.repo}/manifests/{tag}")
        if r.status_code != 202:
            self.fail(f"untag {tag}: {r.status_code} {r.text[:300]}")
        del self.tags[tag]
        self.count("untag")

    def op_delete_digest(self):
        if not self.tags:
            return self.op_image()
        tag = self.rng.choice(sorted(self.tags))
        d = self.tags[tag]["digest"]
        r = self.c.delete(f"/v2/{self.repo}/manifests/{d}")
        if r.status_code != 202:
            self.fail(f"delete {d}: {r.status_code} {r.text[:300]}")
        for t in [t for t, rec in self.tags.items() if rec["digest"] == d]:
            del self.tags[t]
        self.count("delete")

    OPS = [("op_image", 3), ("op_digest_then_tag", 2), ("op_multiarch", 2), ("op_referrer", 2),
           ("op_mount_image", 2), ("op_untag", 1), ("op_delete_digest", 1)]

    def run(self):
        names = [n for n, w in self.OPS for _ in range(w)]
        try:
            while time.monotonic() < self.stop_at:
                self.holders = {}
                name = self.rng.choice(names)
                try:
                    getattr(self, name)()
                    self.count(name)
                except Expired:
                    pass
        except Exception as e:  # an exception is a failure to report, not a dead thread
            self.fail(f"{type(e).__name__}: {e}")

    def final_check(self):
        """Every manifest it still has tagged pulls whole."""
        for tag, rec in sorted(self.tags.items()):
            self.pull_check(tag, rec, f"final pull of {tag}")


class GcLoop(threading.Thread):
    """Runs collections back to back through the API, each to its end."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.api = GcApi(url)
        self.stop = threading.Event()
        self.runs = []
        self.failures = []

    def run(self):
        try:
            while not self.stop.is_set():
                run = self.api.wait(self.api.start(busy_for=30), timeout=300)
                if run["state"] != "succeeded":
                    self.failures.append(f"gc run {run['id']}: {run}")
                    return
                self.runs.append(run["report"])
        except BaseException as e:
            self.failures.append(f"gc loop: {type(e).__name__}: {e}")


def test_gc_loop_racing_pushes_loses_nothing_acknowledged_and_then_leaves_nothing_unreferenced(berth_factory):
    b = berth_factory(config=CONFIG)
    published = Published()
    gc = GcLoop(b.url)
    gc.start()
    stop_at = time.monotonic() + 25
    pushers = [Pusher(b.url, i, published, stop_at, seed=1000 + i) for i in range(4)]
    for p in pushers:
        p.start()
    for p in pushers:
        p.join(120)
        assert not p.is_alive(), f"{p.repo}: pusher hung"
    gc.stop.set()
    gc.join(300)
    assert not gc.is_alive(), "the gc loop hung"

    failures = gc.failures + [f for p in pushers for f in p.failures]
    assert not failures, "\n".join(failures[:30])
    for p in pushers:
        p.final_check()
    failures = [f for p in pushers for f in p.failures]
    assert not failures, "\n".join(failures[:30])

    counts = {}
    for p in pushers:
        for k, v in p.counts.items():
            counts[k] = counts.get(k, 0) + v
    removed = {k: sum(r[k] for r in gc.runs) for k in ("manifests", "links", "blobs", "bytes")}
    print(f"\nstress: {len(gc.runs)} gc runs removed {removed}; client ops {counts}; "
          f"expired holds redone: {sum(p.expired for p in pushers)}")
    # The race was exercised: collections ran during the pushes and removed things.
    assert len(gc.runs) >= 3, gc.runs
    assert removed["manifests"] > 0 and removed["blobs"] > 0, removed
    for k in ("op_image", "op_multiarch", "op_referrer", "op_digest_then_tag", "op_mount_image", "chunked",
              "monolithic"):
        assert counts.get(k, 0) > 0, (k, counts)

    # No pushes; the window passes; one run takes everything no tag reaches.
    time.sleep(GRACE + 1.5)
    report = GcApi(b.url).run()
    assert report["blobs"] > 0, report
    assert_store_is_reachable(b, "after the pushes stopped and one more run")
    for p in pushers:
        p.final_check()
    failures = [f for p in pushers for f in p.failures]
    assert not failures, "\n".join(failures[:30])
    # A run with nothing left to do removes nothing.
    again = GcApi(b.url).run()
    assert (again["manifests"], again["links"], again["blobs"]) == (0, 0, 0), again


# ---------------------------------------------------------------- real docker

@pytest.mark.usefixtures("docker_ok")
def test_docker_two_tags_sharing_layers_delete_one_gc_shrinks_by_its_own_layers(berth_factory, tmp_path,
                                                                              docker_ok, images):
    from test_docker import build_image, push, push_digest, run

    b = berth_factory(config="[gc]\ngrace_secs = 1\n")
    uid = uuid.uuid4().hex[:10]
    app, base, payload, _generated = build_image(tmp_path, docker_ok, images, uid)
    ctx = tmp_path / "ctx2"
    ctx.mkdir()
    (ctx / "other.bin").write_bytes(uuid.uuid4().bytes * 5000)
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY other.bin /data/other.bin\n"
                                    'CMD ["/bin/ls", "/data"]\n')
    other = images.add(f"berth-e2e-other-{uid}:latest")
    run(["docker", "build", "-t", other, str(ctx)], env={"DOCKER_BUILDKIT": "0"})

    repo = f"e2e/gc-{uid}"
    one = images.add(f"{b.addr}/{repo}:one")
    two = images.add(f"{b.addr}/{repo}:two")
    run(["docker", "tag", app, one])
    run(["docker", "tag", other, two])
    d1, _ = push_digest(push(one), "one")
    d2, _ = push_digest(push(two), "two")

    def blobs_of(d):
        r = requests.get(f"{b.url}/v2/{repo}/manifests/{d}", headers={"Accept": MANIFEST_ACCEPT})
        assert r.status_code == 200, r.text
        m = r.json()
        return {x["digest"]: x["size"] for x in [m["config"]] + m["layers"]}

    b1, b2 = blobs_of(d1), blobs_of(d2)
    shared = set(b1) & set(b2)
    assert shared, "the two images share their base layer"
    own = {d: s for d, s in b1.items() if d not in b2}
    assert len(own) >= 4, own  # three layers of its own and its config
    count0, bytes0, _ = stored(b)
    assert (count0, bytes0) == (len(set(b1) | set(b2)), sum({**b1, **b2}.values()))

    r = requests.delete(f"{b.url}/v2/{repo}/manifests/{d1}")
    assert r.status_code == 202, r.text
    assert requests.get(f"{b.url}/v2/{repo}/manifests/one").status_code == 404
    time.sleep(2.2)
    report = GcApi(b.url).run()
    count1, bytes1, _ = stored(b)
    # Manifests are rows in berth.db, not blobs: the store shrinks by the unshared layers and
    # the config, exactly.
    assert (count0 - count1, bytes0 - bytes1) == (len(own), sum(own.values())), (report, own)
    assert report["blobs"] == len(own) and report["bytes"] == sum(own.values()), report
    assert set(report["blob_digests"]) == set(own), report
    assert report["repositories"][repo]["manifests"] == 0, report  # deleted by the API already
    assert report["repositories"][repo]["links"] == len(own), report

    images.rmi(one, two, app, other, base)
    p = run(["docker", "pull", two])
    assert f"Digest: {d2}" in p.stdout + p.stderr
    out = run(["docker", "run", "--rm", "--network", "none", two]).stdout.split()
    assert "other.bin" in out, out
    assert_store_is_reachable(b, "after the docker GC")


# ---------------------------------------------------------------- kill -9 during a run

def seed_garbage(url, n_blobs, tag_images=8, threads=6):
    """Tagged images (which must survive), and n_blobs small unreferenced blobs plus untagged
    manifests over many repositories (garbage once the window passes)."""
    c = Client(url)
    kept = []
    for i in range(tag_images):
        repo = f"keep/r{i % 3}"
        img = c.push_image(repo, tag=f"t{i}", layers=2,
                           layer_data=[SHARED_POOL[i % 4], uuid.uuid4().bytes * 20])
        kept.append((repo, f"t{i}", img.digest))
    errors = []

    def work(k):
        cl = Client(url)
        try:
            for j in range(k, n_blobs, threads):
                repo = f"junk/r{j % 40}"
                data = f"junk {j} {uuid.uuid4().hex}".encode()
                if j % 10 == 0:
                    # an untagged manifest over it (and a shared layer also kept elsewhere)
                    cl.push_image(repo, tag=None, layers=2, layer_data=[data, SHARED_POOL[j % 4]])
                else:
                    cl.push_blob(repo, data)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    return kept


def test_kill9_during_a_gc_run_loses_nothing_referenced_and_the_next_run_finishes(berth_factory):
    # fsync off: a process kill (not a power loss) keeps every write; seeding is faster.
    b = berth_factory(config=CONFIG + "[storage]\nfsync = false\n")
    api = GcApi(b.url)
    killed_in = None
    n = 3000
    for attempt in range(4):
        kept = seed_garbage(b.url, n)
        time.sleep(GRACE + 1.5)
        before = stored(b)
        run_id = api.start()
        seen = None
        while True:
            run = api.get(run_id)
            p = run.get("progress")
            if run["state"] != "running":
                break
            # In the blob phase: some blobs' bytes and rows gone, the rest not.
            if p and p["phase"] == "blobs" and p["done"] > 0:
                seen = p
                b.kill9()
                break
            time.sleep(0.005)
        if seen:
            killed_in = (run_id, seen, before)
            break
        # The run finished before it could be caught there: more garbage, a longer run.
        assert run["state"] == "succeeded", run
        n *= 2
    assert killed_in, "no run could be caught in its sweep"
    run_id, seen, before = killed_in
    print(f"\nkilled run {run_id} at {seen} (store before it: {before[:2]})")

    b.restart()
    # Nothing referenced lost.
    s = requests.Session()
    for repo, tag, d in kept:
        r = s.get(f"{b.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == d, (repo, tag, r.status_code)
    reachable(b.url)  # every blob of every tag pulls, digest checked
    # The next run completes (a 409 while the killed run's lease expires).
    report = api.run(busy_for=90, timeout=300)
    print(f"next run: {json.dumps({k: report[k] for k in ('manifests', 'links', 'blobs', 'resumed_blobs', 'bytes')})}")
    assert report["blobs"] > 0, report
    assert_store_is_reachable(b, "after the run that followed the kill")
    for repo, tag, d in kept:
        r = s.get(f"{b.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == d, (repo, tag, r.status_code)
    # The killed run is not left reported as running.
    states = {r["id"]: r["state"] for r in api.runs()}
    assert states[run_id] != "running", states


# ---------------------------------------------------------------- the CLI

def berth_cli(b, *args, timeout=300):
    env = dict(__import__("os").environ)
    env.update(getattr(b, "_backend_env", {}) or {})
    p = subprocess.run([BERTH_BIN, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"berth {' '.join(args)}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def make_garbage(url, tag):
    """A tagged image that stays, an image whose tag moves away, an untagged manifest and a
    lone blob in a second repository."""
    c = Client(url)
    keep = c.push_image("cli/app", tag=tag, layers=2, layer_data=[SHARED_POOL[0], uuid.uuid4().bytes * 30])
    c.push_image("cli/app", tag="moving", layers=2, layer_data=[SHARED_POOL[0], uuid.uuid4().bytes * 31])
    c.push_image("cli/app", tag="moving", layers=1)
    c.push_image("cli/other", tag=None, layers=2)
    c.push_blob("cli/other", uuid.uuid4().bytes * 7)
    return keep


def test_cli_dry_run_on_a_stopped_registry_reports_what_the_applied_run_removes(berth_factory):
    b = berth_factory(config=CONFIG)
    make_garbage(b.url, "keep")
    time.sleep(GRACE + 1.5)
    b.stop()
    cfg = str(b.data_dir.parent / (b.data_dir.name + "-config.toml"))
    before = stored(b)
    dry = json.loads(berth_cli(b, "gc", "--dry-run", "--json", "--config", cfg, "--data-dir", str(b.data_dir)))
    assert dry["report"]["dry_run"] is True
    assert stored(b) == before, "a dry run removed something"
    applied = json.loads(berth_cli(b, "gc", "--json", "--config", cfg, "--data-dir", str(b.data_dir)))
    d, a = dry["report"], applied["report"]
    assert a["dry_run"] is False
    keys = ("manifests", "links", "blobs", "bytes")
    assert {k: d[k] for k in keys} == {k: a[k] for k in keys}, (d, a)
    # the image the tag moved from (its config and own layer; the shared layer stays), the
    # untagged image (config, two layers) and the lone blob
    assert (a["manifests"], a["links"], a["blobs"]) == (2, 6, 6), a
    assert sorted(d["blob_digests"]) == sorted(a["blob_digests"])
    assert {r: (x["manifests"], x["links"], x["link_bytes"]) for r, x in d["repositories"].items()} == \
        {r: (x["manifests"], x["links"], x["link_bytes"]) for r, x in a["repositories"].items()}
    assert before[1] - stored(b)[1] == a["bytes"]
    # a summary without --json
    again = berth_cli(b, "gc", "--dry-run", "--config", cfg, "--data-dir", str(b.data_dir))
    assert "would remove 0 manifests, 0 blob links, 0 blobs" in again, again

    b.restart()
    assert_store_is_reachable(b, "after the CLI's run")
    # --registry: through the admin API of the running server.
    make_garbage(b.url, "keep2")
    time.sleep(GRACE + 1.5)
    before = stored(b)
    out = json.loads(berth_cli(b, "gc", "--json", "--registry", b.url))
    r = out["report"]
    # now also the image "moving" pointed at after the first round (config and one layer)
    assert (r["manifests"], r["links"], r["blobs"]) == (3, 8, 8), r
    assert before[1] - stored(b)[1] == r["bytes"]
    runs = GcApi(b.url).runs()
    assert runs[0]["id"] == out["id"] and runs[0]["trigger"] == "api" and runs[0]["state"] == "succeeded"
    assert_store_is_reachable(b, "after berth gc --registry")
