"""The figures of bench/gc.sh: online GC's mark rate, push latency beside GC, S3 calls per cycle.

  python bench/gc_driver.py --berth target/release/berth --moto /path/moto_server [--quick]

(a) mark: a registry filled through the HTTP API with small manifests sharing a few blobs
    (images by digest, grouped under tagged indexes), then one dry GC run: its report's
    `edges` / `mark_ms`.
(b) push p99: small image pushes (layer + config + manifest, tags rotating so every push
    makes garbage) by concurrent clients, once alone, once with GC runs back to back beside
    them (grace 2 s, so the runs do delete); p50/p99 and the ratio.
(c) S3: berth on moto with moto's request log in a file; N unreferenced blobs; one GC run;
    the S3 calls moto logged while it ran, by kind, against the targets 0 ListObjects and
    ceil(N/1000) DeleteObjects.
"""
import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def dg(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def canon(o):
    return json.dumps(o, separators=(",", ":")).encode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Berth:
    def __init__(self, binary, work, config="", env=None):
        self.dir = tempfile.mkdtemp(dir=work, prefix="berth-")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(config)
        full = dict(os.environ)
        full["RUST_LOG"] = "warn"
        full.update(env or {})
        self.log = open(os.path.join(self.dir, "berth.log"), "w")
        self.proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--config", cfg,
                                      "--data-dir", os.path.join(self.dir, "data")],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=full)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"berth did not start: {line!r} (see {self.log.name})")
        self.url = "http://" + line.split("listening on ", 1)[1].strip()
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_local = threading.local()


def session():
    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    return _local.s


def push_blob(url, repo, data):
    d = dg(data)
    r = session().post(f"{url}/v2/{repo}/blobs/uploads/", params={"digest": d}, data=data, timeout=120)
    assert r.status_code == 201, (r.status_code, r.text)
    return d


def put_manifest(url, repo, ref, body, media=OCI_MANIFEST):
    r = session().put(f"{url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media},
                      timeout=120)
    assert r.status_code == 201, (r.status_code, r.text)
    return dg(body)


def gc_run(url, dry_run=False):
    r = session().post(f"{url}/berth/v1/gc/runs", json={"dry_run": dry_run}, timeout=60)
    while r.status_code == 409:
        time.sleep(0.2)
        r = session().post(f"{url}/berth/v1/gc/runs", json={"dry_run": dry_run}, timeout=60)
    assert r.status_code == 202, (r.status_code, r.text)
    rid = r.json()["id"]
    while True:
        run = session().get(f"{url}/berth/v1/gc/runs/{rid}", timeout=60).json()
        if run["state"] != "running":
            assert run["state"] == "succeeded", run
            return run["report"]
        time.sleep(0.05)


# ---------------------------------------------------------------- (a) mark rate

def bench_mark(binary, work, n_manifests, repos=100, children=9, threads=8):
    b = Berth(binary, work, "[gc]\ngrace_secs = 3600\n[storage]\nfsync = false\n")
    try:
        per_repo = n_manifests // repos
        groups = per_repo // (children + 1)          # each group: `children` images + 1 index

        def fill(ri):
            repo = f"mark/r{ri:03d}"
            cfg = canon({"architecture": "amd64", "os": "linux", "repo": repo})
            l1, l2 = f"layer one {repo}".encode() * 30, f"layer two {ri % 5}".encode() * 30
            cd, d1, d2 = push_blob(b.url, repo, cfg), push_blob(b.url, repo, l1), push_blob(b.url, repo, l2)
            n = 0
            for g in range(groups):
                entries = []
                for k in range(children):
                    body = canon({
                        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd,
                                   "size": len(cfg)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                                    "size": len(x)} for d, x in ((d1, l1), (d2, l2))],
                        "annotations": {"n": f"{g}-{k}"},
                    })
                    entries.append({"mediaType": OCI_MANIFEST, "digest": put_manifest(b.url, repo, dg(body), body),
                                    "size": len(body)})
                    n += 1
                idx = canon({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
                put_manifest(b.url, repo, f"g{g}", idx, OCI_INDEX)
                n += 1
            return n

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(threads) as ex:
            total = sum(ex.map(fill, range(repos)))
        fill_s = time.monotonic() - t0
        reports = [gc_run(b.url, dry_run=True) for _ in range(3)]
        best = min(reports, key=lambda r: r["mark_ms"])
        return {"manifests": total, "fill_s": fill_s, "fill_rate": total / fill_s,
                "edges": best["edges"], "manifests_seen": best["manifests_seen"],
                "mark_ms": [r["mark_ms"] for r in reports],
                "edges_per_s": best["edges"] / max(best["mark_ms"], 1) * 1000}
    finally:
        b.stop()


# ---------------------------------------------------------------- (b) push latency beside GC

def push_image(url, repo, tag):
    layer = os.urandom(2048)
    cfg = canon({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex})
    t0 = time.monotonic()
    ld, cd = push_blob(url, repo, layer), push_blob(url, repo, cfg)
    body = canon({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
    })
    put_manifest(url, repo, tag, body)
    return time.monotonic() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1)]


def bench_push(binary, work, pushes, clients=4, with_gc=False, seed_manifests=0, gc_pause=0.0):
    b = Berth(binary, work, "[gc]\ngrace_secs = 2\n")
    stop = threading.Event()
    runs = []
    try:
        if seed_manifests:
            # Some standing content, so a run has a graph to read.
            with cf.ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda i: push_image(b.url, f"seed/r{i % 20}", f"t{i}"), range(seed_manifests)))

        def gc_loop():
            while not stop.is_set():
                runs.append(gc_run(b.url))
                stop.wait(gc_pause)

        g = threading.Thread(target=gc_loop, daemon=True)
        if with_gc:
            g.start()
        lat = []

        def client(k):
            out = []
            for i in range(pushes // clients):
                # Tags rotate over 5 names: every push leaves the previous image untagged.
                out.append(push_image(b.url, f"push/c{k}", f"t{i % 5}"))
            return out

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(clients) as ex:
            for xs in ex.map(client, range(clients)):
                lat.extend(xs)
        wall = time.monotonic() - t0
        stop.set()
        if with_gc:
            g.join(120)
        return {"n": len(lat), "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
                "wall_s": wall, "gc_runs": len(runs), "gc_blobs": sum(r["blobs"] for r in runs),
                "gc_manifests": sum(r["manifests"] for r in runs)}
    finally:
        stop.set()
        b.stop()


# ---------------------------------------------------------------- (c) S3 calls per cycle

CALL = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/[\d.]+"')


def classify(method, path, bucket):
    path, _, query = path.partition("?")
    key = path.lstrip("/")[len(bucket):].lstrip("/") if path.lstrip("/").startswith(bucket) else None
    q = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if method == "GET" and key == "" and "uploads" not in q and "location" not in q:
        return "ListObjects(prefix=%s)" % q.get("prefix", "") if q.get("prefix") else "ListObjects"
    if method == "POST" and "delete" in q:
        return "DeleteObjects"
    if method == "DELETE" and key:
        return "DeleteObject" if "uploadId" not in q else "AbortMultipartUpload"
    return f"{method} {'bucket' if key == '' else 'object'}" + (f" ?{'&'.join(sorted(q))}" if q else "")


def bench_s3(binary, work, moto, n_blobs):
    port = free_port()
    log_path = os.path.join(work, "moto.log")
    log = open(log_path, "w")
    m = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        bucket = "gcbench-" + uuid.uuid4().hex[:8]
        env = {"BERTH_STORAGE__BACKEND": "s3", "BERTH_STORAGE__S3__BUCKET": bucket,
               "BERTH_STORAGE__S3__ENDPOINT": f"http://127.0.0.1:{port}", "BERTH_STORAGE__S3__REGION": "us-east-1",
               "BERTH_STORAGE__S3__FORCE_PATH_STYLE": "true", "BERTH_STORAGE__S3__CREATE_BUCKET": "true",
               "BERTH_STORAGE__S3__REDIRECT": "false", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing"}
        b = Berth(binary, work, "[gc]\ngrace_secs = 1\n", env)
        try:
            with cf.ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda i: push_blob(b.url, f"s3/r{i % 10}", f"blob {i} {uuid.uuid4()}".encode()),
                            range(n_blobs)))
            push_image(b.url, "s3/keep", "v1")  # and an image that stays
            time.sleep(2.2)
            log.flush()
            start = os.path.getsize(log_path)
            report = gc_run(b.url)
            time.sleep(0.5)  # moto writes its log line after the response
            with open(log_path) as f:
                f.seek(start)
                lines = f.read().splitlines()
        finally:
            b.stop()
        calls = {}
        for line in lines:
            mm = CALL.search(line)
            if mm:
                k = classify(mm.group(1), mm.group(2), bucket)
                calls[k] = calls.get(k, 0) + 1
        return {"n": report["blobs"], "report_delete_calls": report["store_delete_calls"], "calls": calls,
                "target_delete_objects": math.ceil(report["blobs"] / 1000)}
    finally:
        m.terminate()
        m.wait(10)
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--berth", required=True)
    ap.add_argument("--moto", required=True)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    ap.add_argument("--only", default="mark,push,s3")
    ap.add_argument("--gc-pause", type=float, default=0.0,
                    help="seconds between the GC runs beside the pushes (default 0: back to back)")
    a = ap.parse_args()
    sizes = dict(manifests=10_000, pushes=200, blobs=1_500) if a.quick else \
        dict(manifests=100_000, pushes=800, blobs=2_500)
    work = tempfile.mkdtemp(prefix="berth-gcbench-")
    only = a.only.split(",")
    rows = []
    try:
        if "mark" in only:
            r = bench_mark(a.berth, work, sizes["manifests"])
            print(f"mark: {json.dumps(r)}", flush=True)
            rows += [("store (via the API)", f"{r['manifests']} manifests in {r['fill_s']:.0f} s "
                      f"({r['fill_rate']:.0f}/s)"),
                     ("mark: edges", f"{r['edges']} ({r['manifests_seen']} manifests)"),
                     ("mark: ms (3 dry runs)", " ".join(map(str, r["mark_ms"]))),
                     ("mark rate", f"{r['edges_per_s']:,.0f} edges/s")]
        if "push" in only:
            alone = bench_push(a.berth, work, sizes["pushes"], seed_manifests=200)
            beside = bench_push(a.berth, work, sizes["pushes"], with_gc=True, seed_manifests=200,
                                gc_pause=a.gc_pause)
            print(f"push alone: {json.dumps(alone)}\npush beside gc: {json.dumps(beside)}", flush=True)
            rows += [("push p50 / p99 alone", f"{alone['p50_ms']:.1f} / {alone['p99_ms']:.1f} ms ({alone['n']} pushes)"),
                     ("push p50 / p99 beside GC", f"{beside['p50_ms']:.1f} / {beside['p99_ms']:.1f} ms "
                      f"({beside['gc_runs']} runs removed {beside['gc_manifests']} manifests, "
                      f"{beside['gc_blobs']} blobs)"),
                     ("push p99 ratio (target <= 1.25)", f"{beside['p99_ms'] / alone['p99_ms']:.2f}")]
        if "s3" in only:
            r = bench_s3(a.berth, work, a.moto, sizes["blobs"])
            print(f"s3: {json.dumps(r)}", flush=True)
            lists = sum(v for k, v in r["calls"].items() if k.startswith("ListObjects"))
            rows += [("S3: blobs deleted by one run", str(r["n"])),
                     ("S3: ListObjects (target 0)", str(lists)),
                     (f"S3: DeleteObjects (target {r['target_delete_objects']})", str(r["calls"].get("DeleteObjects", 0))),
                     ("S3: DeleteObject (single)", str(r["calls"].get("DeleteObject", 0))),
                     ("S3: all calls during the run", ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items())))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    w = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
