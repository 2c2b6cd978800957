"""Byte quotas per repository pattern (docs/LIFECYCLE.md): each distinct blob counts once per
namespace; a blob upload or mount that would pass the limit is 403 DENIED with usage and limit in
the message; failed and cancelled uploads never count; concurrent pushers never overshoot; `berth
quota recompute` agrees with the running counters; bad `[[quotas]]` entries fail check-config.
"""
import concurrent.futures
import json
import subprocess

import pytest

from conftest import BERTH_BIN
from helpers import Client, assert_error, digest, rand_bytes, uniq
from test_docker import build_image, images, run  # noqa: F401 (images is a fixture)


def quota_config(pattern, limit):
    return f'[[quotas]]\npattern = "{pattern}"\nlimit = {json.dumps(limit)}\n'


def usage(c, pattern):
    r = c.get("/berth/v1/quotas")
    assert r.status_code == 200, r.text
    q = [q for q in r.json()["quotas"] if q["pattern"] == pattern]
    assert q, r.text
    return q[0]["used"], q[0]["blobs"]


def berth_cli(*args, check=True):
    p = subprocess.run([BERTH_BIN, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def test_a_namespace_counts_each_blob_once_and_denies_what_would_exceed_it(berth_factory):
    b = berth_factory(config=quota_config("team/**", 1000))
    c = Client(b.url)
    shared = rand_bytes(400)
    d = c.push_blob("team/a", shared)
    # The same bytes uploaded again into another repository of the namespace count once.
    c.push_blob("team/b", shared)
    r = c.post("/v2/team/c/blobs/uploads/", params={"mount": d, "from": "team/a"})
    assert r.status_code == 201, r.text
    assert usage(c, "team/**") == (400, 1)
    # Outside the namespace nothing is counted.
    c.push_blob("other/x", rand_bytes(5000))
    assert usage(c, "team/**") == (400, 1)

    # 400 + 700 > 1000: monolithic, chunked and mounted uploads are refused.
    big = rand_bytes(700)
    r = c.post("/v2/team/b/blobs/uploads/", params={"digest": digest(big)}, data=big,
               headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 403, "DENIED")
    msg = r.json()["errors"][0]["message"]
    assert "quota team/** exceeded" in msg and "400 of 1000 bytes" in msg and digest(big) in msg, msg
    loc = c.start_upload("team/b")
    r = c.patch_chunk(loc, big[:300], "0-299")
    assert r.status_code == 202, r.text
    r = c.patch_chunk(r.headers["Location"], big[300:], "300-699")
    assert r.status_code == 202, r.text
    r = c.put_upload(r.headers["Location"], digest(big))
    assert_error(r, 403, "DENIED")
    other = c.push_blob("other/y", big)
    r = c.post("/v2/team/a/blobs/uploads/", params={"mount": other, "from": "other/y"})
    assert_error(r, 403, "DENIED")
    assert c.head(f"/v2/team/b/blobs/{digest(big)}").status_code == 404
    assert usage(c, "team/**") == (400, 1)

    # A cancelled upload never counts.
    loc = c.start_upload("team/a")
    r = c.patch_chunk(loc, rand_bytes(500), "0-499")
    assert r.status_code == 202
    assert c.delete(r.headers["Location"]).status_code == 204
    assert usage(c, "team/**") == (400, 1)

    # What fits is accepted, exactly up to the limit.
    c.push_blob("team/a", rand_bytes(600))
    assert usage(c, "team/**") == (1000, 2)
    r = c.post("/v2/team/a/blobs/uploads/", params={"digest": digest(b"x")}, data=b"x",
               headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 403, "DENIED")

    # Deleting a blob from every repository that links it gives its bytes back.
    for repo in ("team/a", "team/b", "team/c"):
        assert c.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    assert usage(c, "team/**") == (600, 1)
    c.push_blob("team/b", rand_bytes(400))
    assert usage(c, "team/**") == (1000, 2)

    # The recount agrees with the counters, through the API and on the stopped data dir.
    r = c.post("/berth/v1/quotas/recount", json={})
    assert r.status_code == 200, r.text
    for q in r.json()["quotas"]:
        assert (q["counted"], q["counted_blobs"]) == (q["recounted"], q["recounted_blobs"]), q
    p = berth_cli("quota", "recompute", "--registry", b.url)
    assert "same" in p.stdout, p.stdout
    b.stop()
    cfg = b.data_dir.parent / (b.data_dir.name + "-config.toml")
    p = berth_cli("quota", "recompute", "--json", "--config", str(cfg), "--data-dir", str(b.data_dir))
    (q,) = json.loads(p.stdout)["quotas"]
    assert q["counted"] == q["recounted"] == 1000 and q["recounted_blobs"] == 2, q
    p = berth_cli("quota", "status", "--config", str(cfg), "--data-dir", str(b.data_dir))
    assert "team/**:" in p.stdout and "2 blobs" in p.stdout, p.stdout


def test_a_manifest_is_refused_while_the_namespace_is_over_a_lowered_limit(berth_factory):
    b = berth_factory(config=quota_config("team/**", 10_000))
    c = Client(b.url)
    c.push_image("team/app", tag="v1", layers=2)
    used, _ = usage(c, "team/**")
    b.stop()
    b.config = quota_config("team/**", used - 1)
    b.restart()
    body = c.get("/v2/team/app/manifests/v1",
                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content
    r = c.put_manifest("team/app", "v2", body)
    assert_error(r, 403, "DENIED")
    assert "refused until usage is below the limit" in r.json()["errors"][0]["message"]
    assert c.get("/v2/team/app/manifests/v1").status_code == 200


def test_concurrent_pushers_just_under_the_limit_overshoot_it_by_zero_bytes(berth_factory):
    size, pushers, fit = 1000, 100, 37
    limit = fit * size + size - 1
    b = berth_factory(config=quota_config("crowd/**", limit))
    c = Client(b.url)
    blobs = [rand_bytes(size) for _ in range(pushers)]

    def push(i):
        cl = Client(b.url)
        data = blobs[i]
        r = cl.post(f"/v2/crowd/r{i % 10}/blobs/uploads/", params={"digest": digest(data)}, data=data,
                    headers={"Content-Type": "application/octet-stream"})
        assert r.status_code in (201, 403), (r.status_code, r.text)
        if r.status_code == 403:
            assert r.json()["errors"][0]["code"] == "DENIED", r.text
        return r.status_code == 201

    with concurrent.futures.ThreadPoolExecutor(max_workers=pushers) as ex:
        ok = sum(ex.map(push, range(pushers)))
    assert ok == fit
    assert usage(c, "crowd/**") == (fit * size, fit)
    p = berth_cli("quota", "recompute", "--registry", b.url)
    assert "same" in p.stdout, p.stdout


def test_docker_push_over_quota_fails_with_the_quota_message(berth_factory, tmp_path, docker_ok, images):
    b = berth_factory(config=quota_config("small/**", "300 KiB"))
    app, _, _, _ = build_image(tmp_path, docker_ok, images, uniq("q"))
    ref = images.add(f"{b.addr}/small/app:v1")
    run(["docker", "tag", app, ref])
    p = run(["docker", "push", ref], check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "denied" in out and "quota small/** exceeded" in out, out
    c = Client(b.url)
    used, _ = usage(c, "small/**")
    assert used <= 300 * 1024


@pytest.mark.parametrize("entry, expect", [
    ('[[quotas]]\npattern = "team/**"\nlimit = 0\n', "quotas[0].limit"),
    ('[[quotas]]\npattern = "team/**"\nlimit = "10 parsecs"\n', "is not a size"),
    ('[[quotas]]\npattern = "team/**"\nlimit = 5\n[[quotas]]\npattern = "team/**"\nlimit = 6\n',
     "quotas[1].pattern"),
    ('[[quotas]]\npattern = "team/**"\nlimit = 5\nlimt = 6\n', "limt"),
    ('[[quotas]]\nlimit = 5\n', "pattern"),
])
def test_bad_quota_entries_fail_check_config(tmp_path, entry, expect):
    f = tmp_path / "c.toml"
    f.write_text(entry)
    p = berth_cli("check-config", str(f), check=False)
    assert p.returncode != 0, p.stdout
    assert expect in p.stderr, p.stderr
