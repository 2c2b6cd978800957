"""Immutable tags and retention (docs/LIFECYCLE.md), against the real binary.

- `[[tags.immutable]]`: a move, a tag delete and a delete by digest are 403 DENIED naming the
  rule; a re-push of the same manifest is fine; of 256 racing PUTs of one new immutable tag
  exactly one is acknowledged; docker shows the refusal.
- `[retention]`: rules applied end to end through the API and `berth retention` (remote and
  in-process), the dry run listing exactly what the applied run then removes; keep_windows_builds
  on a synthetic servercore mirror; bad rules refused by check-config and serve.
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import BERTH_BIN, require_docker
from helpers import Client, Image, Layer, assert_error, canon, digest, rand_bytes, OCI_CONFIG, OCI_MANIFEST
import winimages

IMMUTABLE = """
[[tags.immutable]]
pattern = "release/**"
tags = ["v*", "stable"]
"""


def small_image(c, repo, tag, nonce=None):
    """Pushes a one-layer image under `tag`; returns its digest."""
    cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
           "nonce": nonce or uuid.uuid4().hex}
    img = Image(cfg, [Layer(rand_bytes(100))])
    return c.push(repo, img, tag), img


def cli(*args, timeout=60):
    return subprocess.run([BERTH_BIN, *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- immutable tags

def test_an_immutable_tag_cannot_be_moved_or_deleted(berth_factory):
    b = berth_factory(config=IMMUTABLE)
    c = Client(b.url)
    d1, img1 = small_image(c, "release/app", "v1")
    # The same manifest again: idempotent.
    r = c.put_manifest("release/app", "v1", img1.manifest, img1.media_type)
    assert r.status_code == 201, r.text

    _, img2 = small_image(c, "release/app", None)  # pushed by digest only
    r = c.put_manifest("release/app", "v1", img2.manifest, img2.media_type)
    assert_error(r, 403, "DENIED")
    msg = r.json()["errors"][0]["message"]
    assert "immutable" in msg and "tags.immutable[0]" in msg and "release/**" in msg, msg
    assert d1 in msg, msg

    r = c.delete("/v2/release/app/manifests/v1")
    assert_error(r, 403, "DENIED")
    assert "cannot delete tag v1" in r.json()["errors"][0]["message"]
    r = c.delete(f"/v2/release/app/manifests/{d1}")
    assert_error(r, 403, "DENIED")
    assert f"cannot delete manifest {d1}" in r.json()["errors"][0]["message"]
    # ?tag= on a digest PUT is checked too.
    r = c.put_manifest("release/app", img2.digest, img2.manifest, img2.media_type, params={"tag": "stable"})
    assert r.status_code == 201, r.text
    r = c.put_manifest("release/app", img1.digest, img1.manifest, img1.media_type, params={"tag": "stable"})
    assert_error(r, 403, "DENIED")

    r = c.get("/v2/release/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == d1

    # Other tags and other repositories stay mutable.
    small_image(c, "release/app", "latest")
    small_image(c, "release/app", "latest")
    assert c.delete("/v2/release/app/manifests/latest").status_code == 202
    small_image(c, "dev/app", "v1")
    small_image(c, "dev/app", "v1")
    assert c.delete("/v2/dev/app/manifests/v1").status_code == 202


def test_the_children_of_an_index_under_an_immutable_tag_cannot_be_deleted(berth_factory):
    b = berth_factory(config=IMMUTABLE)
    c = Client(b.url)
    imgs = [winimages.windows_image("10.0.20348.2227", layers=1), winimages.linux_image(layers=1)]
    _, index = winimages.push_list(c, "release/multi", "v2", imgs)
    r = c.delete(f"/v2/release/multi/manifests/{imgs[0].digest}")
    assert_error(r, 403, "DENIED")
    msg = r.json()["errors"][0]["message"]
    assert f"cannot delete manifest {imgs[0].digest}" in msg and "tag v2" in msg and index in msg, msg
    r = c.get(f"/v2/release/multi/manifests/{imgs[0].digest}", headers={"Accept": imgs[0].media_type})
    assert r.status_code == 200


def test_of_racing_puts_of_an_immutable_tag_exactly_one_is_acknowledged(berth_factory):
    b = berth_factory(config=IMMUTABLE)
    c = Client(b.url)
    config = canon({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    cd = c.push_blob("release/race", config)
    bodies = [canon({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(config)},
        "layers": [], "annotations": {"n": str(i)},
    }) for i in range(256)]

    def put(body):
        s = Client(b.url)
        return s.put_manifest("release/race", "v1", body, OCI_MANIFEST), digest(body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as ex:
        results = list(ex.map(put, bodies))
    won = [d for r, d in results if r.status_code == 201]
    refused = [r for r, _ in results if r.status_code != 201]
    assert len(won) == 1, [(r.status_code, r.text[:200]) for r, _ in results if r.status_code != 403][:5]
    for r in refused:
        assert_error(r, 403, "DENIED")
    r = c.head("/v2/release/race/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.headers["Docker-Content-Digest"] == won[0]


def test_docker_push_of_an_immutable_tag_with_new_content_shows_the_refusal(berth_factory, tmp_path, docker_ok):
    b = berth_factory(config=IMMUTABLE)
    ref = f"{b.addr}/release/docker:v1"
    made = []
    try:
        for i in range(2):
            root = tmp_path / f"root{i}"
            root.mkdir()
            (root / "hello.txt").write_text(f"{uuid.uuid4().hex} {i}\n")
            tar = tmp_path / f"r{i}.tar"
            subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
            local = f"berth-e2e-immutable-{uuid.uuid4().hex[:12]}:{i}"
            subprocess.run(["docker", "import", str(tar), local], check=True, capture_output=True)
            made.append(local)
            subprocess.run(["docker", "tag", local, ref], check=True)
            p = subprocess.run(["docker", "push", ref], capture_output=True, text=True, timeout=120)
            if i == 0:
                assert p.returncode == 0, p.stderr
            else:
                assert p.returncode != 0, p.stdout
                out = p.stdout + p.stderr
                assert "denied" in out.lower() and "immutable" in out, out
    finally:
        subprocess.run(["docker", "rmi", "-f", ref, *made], capture_output=True)


# ---------------------------------------------------------------- retention

RETENTION = """
[[retention.rules]]
pattern = "apps/**"
keep_last = 2
keep_tags = ["prod"]
keep_pulled_days = 1
"""


def runs_api(c, dry_run):
    r = c.post("/berth/v1/retention/runs", json={"dry_run": dry_run})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.time() + 30
    while time.time() < deadline:
        v = c.get(f"/berth/v1/retention/runs/{rid}").json()
        if v["state"] != "running":
            assert v["state"] == "succeeded", v
            return v["report"]
        time.sleep(0.1)
    raise AssertionError("retention run did not finish")


def tags_of(c, repo):
    r = c.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    return sorted(r.json()["tags"] or [])


def test_retention_rules_end_to_end_dry_run_equals_applied(berth_factory):
    b = berth_factory(config=RETENTION)
    c = Client(b.url)
    # Pushed a second apart, oldest first: keep_last = 2 keeps t4, t5.
    for t in ["prod", "t1", "t2", "t3", "t4", "t5"]:
        small_image(c, "apps/web", t)
        time.sleep(1.05)
    small_image(c, "other/web", "t0")
    # A pull of t2 by tag (HEAD, as containerd does) keeps it for a day.
    r = c.head("/v2/apps/web/manifests/t2", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    want = ["t1", "t3"]

    dry = runs_api(c, True)
    assert dry["dry_run"] is True
    assert dry["repositories"]["apps/web"]["removed"] == want, dry
    kept = dry["repositories"]["apps/web"]["kept"]
    assert kept["prod"] == ['rules[0].keep_tags "prod"'], kept
    assert kept["t2"] == ["rules[0].keep_pulled_days = 1"], kept
    assert kept["t5"] == ["rules[0].keep_last = 2"], kept
    assert "other/web" not in dry["repositories"]
    assert tags_of(c, "apps/web") == ["prod", "t1", "t2", "t3", "t4", "t5"]

    p = cli("retention", "--dry-run", "--json", "--registry", b.url)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["report"]["repositories"]["apps/web"]["removed"] == want

    # In-process on the data directory (the server writes its pull times when it stops).
    cfg = b.data_dir.parent / (b.data_dir.name + "-config.toml")
    b.stop()
    p = cli("retention", "--dry-run", "--json", "--config", str(cfg), "--data-dir", str(b.data_dir))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["report"]["repositories"]["apps/web"]["removed"] == want
    b.restart()

    applied = runs_api(c, False)
    assert applied["repositories"]["apps/web"]["removed"] == want, applied
    assert applied["tags_removed"] == 2
    assert tags_of(c, "apps/web") == ["prod", "t2", "t4", "t5"]
    assert tags_of(c, "other/web") == ["t0"]
    runs = c.get("/berth/v1/retention/runs").json()["runs"]
    assert [r["dry_run"] for r in runs[:2]] == [False, True]

    p = cli("retention", "--registry", b.url)
    assert p.returncode == 0, p.stderr
    assert "removed 0 of 4 tags" in p.stdout, p.stdout


def test_retention_keeps_the_newest_windows_builds_per_line(berth_factory):
    b = berth_factory(config="""
[[retention.rules]]
pattern = "mirror/**"
keep_windows_builds = 2
""")
    c = Client(b.url)
    repo = "mirror/windows/servercore"
    builds = {
        "ltsc2019": ["10.0.17763.5122", "10.0.17763.5206", "10.0.17763.5329"],
        "ltsc2022": ["10.0.20348.2113", "10.0.20348.2159", "10.0.20348.2227"],
        "ltsc2025": ["10.0.26100.2314"],
    }
    for line, versions in builds.items():
        for v in versions:
            img = winimages.windows_image(v, layers=1)
            winimages.push_list(c, repo, f"{line}-{v.rsplit('.', 1)[1]}", [img, winimages.linux_image(layers=1)])
    # A multi-line tag of the oldest builds: kept only if one of its lines keeps it.
    old = [winimages.windows_image(builds["ltsc2019"][0], layers=1),
           winimages.windows_image(builds["ltsc2022"][0], layers=1)]
    winimages.push_list(c, repo, "multi-old", old)
    # A Linux-only tag: keep_windows_builds does not keep it.
    winimages.push_list(c, repo, "linux", [winimages.linux_image(layers=1)])

    want = sorted(["ltsc2019-5122", "ltsc2022-2113", "multi-old", "linux"])
    dry = runs_api(c, True)
    assert dry["repositories"][repo]["removed"] == want, dry
    assert dry["repositories"][repo]["kept"]["ltsc2025-2314"] == [
        "rules[0].keep_windows_builds = 2: 10.0.26100.2314"]
    applied = runs_api(c, False)
    assert applied["repositories"][repo]["removed"] == want
    assert tags_of(c, repo) == sorted(["ltsc2019-5206", "ltsc2019-5329", "ltsc2022-2159", "ltsc2022-2227",
                                       "ltsc2025-2314"])


def test_retention_never_removes_immutable_tags(berth_factory):
    b = berth_factory(config=IMMUTABLE + """
[[retention.rules]]
pattern = "release/**"
keep_last = 1
""")
    c = Client(b.url)
    for t in ["v1", "a", "b"]:
        small_image(c, "release/app", t)
        time.sleep(1.05)
    rep = runs_api(c, False)["repositories"]["release/app"]
    assert rep["removed"] == ["a"], rep
    assert rep["kept"]["v1"][0].startswith("immutable (rule tags.immutable[0]"), rep


# ---------------------------------------------------------------- configuration errors

BAD = [
    ("[[retention.rules]]\nkeep_last = 3\n", "pattern"),
    ("[[retention.rules]]\npattern = \"a/**\"\nkeep_last = 0\n", "keeps no tag"),
    ("[[retention.rules]]\npattern = \"a/**\"\nkeep_last = 3\nkeep_lats = 1\n", "keep_lats"),
    ("[[retention.rules]]\npattern = \"a/[b]\"\nkeep_last = 3\n", "rules[0].pattern"),
    ("[[retention.rules]]\npattern = \"a/**\"\nkeep_tags = [\"x/y\"]\n", "keep_tags[0]"),
    ("[retention]\nschedule = \"whenever\"\n", "schedule"),
    ("[[tags.immutable]]\ntags = [\"v*\"]\n", "pattern"),
    ("[[tags.immutable]]\npattern = \"a/**\"\n", "tags"),
    ("[[tags.immutable]]\npattern = \"a/***\"\ntags = [\"v*\"]\n", "immutable[0].pattern"),
    ("[[tags.immutable]]\npattern = \"a/**\"\ntags = [\"v*\"]\nmutable = true\n", "mutable"),
]


@pytest.mark.parametrize("text,want", BAD)
def test_bad_lifecycle_config_is_a_clear_error(tmp_path, text, want):
    f = tmp_path / "c.toml"
    f.write_text(text)
    p = cli("check-config", str(f))
    assert p.returncode != 0, p.stdout
    assert want in p.stderr, p.stderr
    p = cli("serve", "--config", str(f), "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), timeout=30)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert want in p.stderr, p.stderr


def test_good_lifecycle_config_checks(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(IMMUTABLE + "[retention]\nschedule = \"6h\"\n" + RETENTION)
    p = cli("check-config", str(f))
    assert p.returncode == 0, p.stderr
