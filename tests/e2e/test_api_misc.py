"""/v2/, API version header, tags list, catalog, repository names, digests, 405s, check-config."""
import subprocess
import uuid

import pytest

from conftest import BERTH_BIN
from helpers import (  # noqa: F401  (shared, c are fixtures)
    API_VERSION, OCI_CONFIG, SPEC_CODES, keepalive_pair, OCI_LAYER, OCI_MANIFEST, Client, assert_error, c, canon, digest, loc_path,
    parse_link, rand_bytes, shared, uniq,
)


def small_manifest(c, name):
    cfg = canon({"os": "linux", "n": rand_bytes(4).hex()})
    layer = rand_bytes(16)
    return canon({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "config": {"mediaType": OCI_CONFIG, "digest": c.push_blob(name, cfg), "size": len(cfg)},
                  "layers": [{"mediaType": OCI_LAYER, "digest": c.push_blob(name, layer), "size": len(layer)}]})


# ---------------------------------------------------------------- /v2/ and the version header

def test_base(c):
    r = c.get("/v2/")
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    h = c.head("/v2/")
    assert h.status_code == 200
    assert h.headers["Docker-Distribution-API-Version"] == API_VERSION


def test_base_without_trailing_slash(c):
    r = c.get("/v2")
    # served directly (no redirect to /v2/), with the API version header (checked by the hook)
    assert r.status_code == 200, (r.status_code, r.headers.get("Location"))
    assert r.json() == {}


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/nosuch/repo/manifests/latest"),
    ("GET", "/v2/nosuch/blobs/" + digest(b"x")),
    ("GET", "/v2/BAD/tags/list"),
    ("GET", "/v2/x/blobs/sha256:XYZ"),
    ("PATCH", "/v2/x/manifests/latest"),
    ("GET", "/v2/x/blobs/uploads/00000000-0000-0000-0000-000000000000"),
])
def test_api_version_header_on_errors(c, method, path):
    r = c.request(method, path)
    assert r.status_code >= 400
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION


def test_api_version_header_on_success_responses(c):
    # the Client hook checks every response; this makes the set of checked kinds explicit
    name = uniq()
    d = c.push_blob(name, b"payload")
    for r in (c.get_blob(name, d), c.head(f"/v2/{name}/blobs/{d}"), c.post(f"/v2/{name}/blobs/uploads/"),
              c.get(f"/v2/{name}/referrers/{d}"), c.get("/v2/_catalog")):
        assert r.headers["Docker-Distribution-API-Version"] == API_VERSION


# ---------------------------------------------------------------- tags list

def push_tags(c, name, tags):
    body = small_manifest(c, name)
    for t in tags:
        r = c.put_manifest(name, t, body)
        assert r.status_code == 201, r.text
    return body


def collect(c, first_path, key):
    """Follows the Link chain; returns (items, pages)."""
    items, pages = [], []
    url = first_path
    seen = set()
    while url:
        assert url not in seen, f"Link loop at {url}"
        seen.add(url)
        r = c.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text)
        page = r.json()[key]
        pages.append(page)
        items.extend(page)
        url = parse_link(r)
        assert len(pages) < 100
    return items, pages


TAGS = ["latest", "1.0", "1.10", "1.2", "A", "_x", "b", "v2"]


def test_tags_list_sorted(c):
    name = uniq()
    push_tags(c, name, TAGS)
    r = c.get(f"/v2/{name}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": name, "tags": sorted(TAGS)}
    assert "Link" not in r.headers


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_tags_list_pagination(c, n):
    name = uniq()
    push_tags(c, name, TAGS)
    r = c.get(f"/v2/{name}/tags/list", params={"n": n})
    assert r.status_code == 200
    assert r.json()["tags"] == sorted(TAGS)[:n]
    link = parse_link(r)
    assert link is not None
    assert link.startswith(f"/v2/{name}/tags/list?")
    assert f"n={n}" in link and "last=" in link
    items, pages = collect(c, f"/v2/{name}/tags/list?n={n}", "tags")
    assert items == sorted(TAGS)
    assert all(0 < len(p) <= n for p in pages), pages


@pytest.mark.parametrize("n", [8, 9, 100])
def test_tags_list_n_covers_all(c, n):
    name = uniq()
    push_tags(c, name, TAGS)
    r = c.get(f"/v2/{name}/tags/list", params={"n": n})
    assert r.json()["tags"] == sorted(TAGS)
    assert "Link" not in r.headers


def test_tags_list_n_zero(c):
    name = uniq()
    push_tags(c, name, TAGS)
    r = c.get(f"/v2/{name}/tags/list", params={"n": 0})
    assert r.status_code == 200
    assert r.json() == {"name": name, "tags": []}
    assert "Link" not in r.headers


@pytest.mark.parametrize("last,expect", [
    ("b", ["latest", "v2"]),
    ("1.10", ["1.2", "A", "_x", "b", "latest", "v2"]),
    ("a", ["b", "latest", "v2"]),  # not a tag: still exclusive lexical position
    ("zzz", []),
])
def test_tags_list_last(c, last, expect):
    name = uniq()
    push_tags(c, name, TAGS)
    r = c.get(f"/v2/{name}/tags/list", params={"last": last})
    assert r.status_code == 200
    assert r.json()["tags"] == expect


def test_tags_list_n_and_last(c):
    name = uniq()
    push_tags(c, name, TAGS)
    r = c.get(f"/v2/{name}/tags/list", params={"n": 2, "last": "1.2"})
    assert r.json()["tags"] == ["A", "_x"]
    assert parse_link(r) is not None


def test_tags_list_unknown_repo(c):
    assert_error(c.get(f"/v2/{uniq()}/tags/list"), 404, "NAME_UNKNOWN")


# ---------------------------------------------------------------- catalog

REPOS = ["b", "a", "a/b", "a-b", "c/d/e", "library/busybox", "z9"]


def test_catalog(berth):
    c = Client(berth.url)
    for name in REPOS:
        push_tags(c, name, ["v1"])
    r = c.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.json() == {"repositories": sorted(REPOS)}
    assert "Link" not in r.headers

    for n in (1, 2, 3):
        r = c.get("/v2/_catalog", params={"n": n})
        assert r.json()["repositories"] == sorted(REPOS)[:n]
        link = parse_link(r)
        assert link and link.startswith("/v2/_catalog?") and f"n={n}" in link and "last=" in link
        items, pages = collect(c, f"/v2/_catalog?n={n}", "repositories")
        assert items == sorted(REPOS)
        assert all(0 < len(p) <= n for p in pages)

    r = c.get("/v2/_catalog", params={"n": len(REPOS)})
    assert r.json()["repositories"] == sorted(REPOS) and "Link" not in r.headers

    r = c.get("/v2/_catalog", params={"n": 0})
    assert r.status_code == 200
    assert r.json() == {"repositories": []}
    assert "Link" not in r.headers

    r = c.get("/v2/_catalog", params={"last": "a/b"})
    assert r.json()["repositories"] == [x for x in sorted(REPOS) if x > "a/b"]
    r = c.get("/v2/_catalog", params={"last": "a/b", "n": 2})
    assert r.json()["repositories"] == [x for x in sorted(REPOS) if x > "a/b"][:2]


def test_catalog_empty(berth):
    c = Client(berth.url)
    r = c.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.json() == {"repositories": []}


# ---------------------------------------------------------------- repository names

VALID_NAMES = [
    "a/b/c/d/e/f/g/h/i",
    "x/blobs/y",
    "x/manifests/y",
    "x/uploads/y",
    "x/tags/y",
    "x/referrers/y",
    "blobs",
    "manifests/list",
    "a/blobs/uploads",
    "v2",
    "mirror/mcr.microsoft.com/windows/servercore",
    "a__b/c-d/e--f.g",
    "a" * 255,
]


@pytest.mark.parametrize("name", VALID_NAMES, ids=lambda n: n if len(n) < 60 else f"len{len(n)}")
def test_valid_names(c, name):
    data = rand_bytes(40)
    d = c.push_blob(name, data)
    g = c.get_blob(name, d)
    assert g.status_code == 200 and g.content == data
    # chunked upload under this name
    loc = c.start_upload(name)
    assert loc_path(c.get(loc)).startswith(f"/v2/{name}/blobs/uploads/")
    data2 = rand_bytes(20)
    r = c.patch_chunk(loc, data2, "0-19")
    assert r.status_code == 202
    p = c.put_upload(r.headers["Location"], digest(data2))
    assert p.status_code == 201 and loc_path(p) == f"/v2/{name}/blobs/{digest(data2)}"
    # manifest, tags, referrers
    body = small_manifest(c, name)
    r = c.put_manifest(name, "t", body)
    assert r.status_code == 201, r.text
    assert loc_path(r) == f"/v2/{name}/manifests/{digest(body)}"
    g = c.get(f"/v2/{name}/manifests/t")
    assert g.status_code == 200 and g.content == body
    t = c.get(f"/v2/{name}/tags/list")
    assert t.status_code == 200 and t.json() == {"name": name, "tags": ["t"]}
    ref = c.get(f"/v2/{name}/referrers/{digest(body)}")
    assert ref.status_code == 200 and ref.json()["manifests"] == []
    assert c.delete(f"/v2/{name}/manifests/t").status_code == 202


def test_names_in_catalog(berth):
    c = Client(berth.url)
    names = ["x/blobs/y", "x/manifests/y", "a/b/c/d/e/f/g/h/i", "mirror/mcr.microsoft.com/windows/servercore"]
    for n in names:
        push_tags(c, n, ["v"])
    _, pages = collect(c, "/v2/_catalog?n=2", "repositories")
    assert [x for p in pages for x in p] == sorted(names)


INVALID_NAMES = ["UPPER", "a/B", "-lead", ".lead", "_lead", "a//b", "a/", "a/-b", "a_-b", "a..b", "a___b",
                 "a" * 256, "a/" + "b" * 254, "a b", "a%20b"]


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: n if len(n) < 60 else f"len{len(n)}")
def test_invalid_names(c, name):
    assert_error(c.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
    assert_error(c.post(f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")
    assert_error(c.get(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")
    assert_error(c.get(f"/v2/{name}/blobs/{digest(b'x')}"), 400, "NAME_INVALID")
    assert_error(c.put_manifest(name, "latest", b'{"schemaVersion":2}'), 400, "NAME_INVALID")
    assert_error(c.get(f"/v2/{name}/referrers/{digest(b'x')}"), 400, "NAME_INVALID")


# ---------------------------------------------------------------- digests

BAD_DIGESTS = ["sha256:XYZ", "md5:" + "d41d8cd98f00b204e9800998ecf8427e", "sha256:abc123", "sha256:" + "a" * 63,
               "sha256:" + "a" * 65, "sha256:" + "A" * 64, "sha512:" + "a" * 64, "sha256", "sha256:",
               "SHA256:" + "a" * 64]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_invalid_digests_blob(c, bad):
    name = uniq()
    c.push_blob(name, b"exists")
    assert_error(c.get(f"/v2/{name}/blobs/{bad}"), 400, "DIGEST_INVALID")
    assert_error(c.head(f"/v2/{name}/blobs/{bad}"), 400, "DIGEST_INVALID")
    assert_error(c.delete(f"/v2/{name}/blobs/{bad}"), 400, "DIGEST_INVALID")
    assert_error(c.post(f"/v2/{name}/blobs/uploads/", params={"digest": bad}, data=b"exists"),
                 400, "DIGEST_INVALID")


# ---------------------------------------------------------------- unsupported methods

@pytest.mark.parametrize("method,path", [
    ("PATCH", "/v2/{n}/manifests/latest"),
    ("PUT", "/v2/{n}/blobs/" + digest(b"x")),
    ("POST", "/v2/{n}/blobs/" + digest(b"x")),
    ("POST", "/v2/{n}/tags/list"),
    ("DELETE", "/v2/{n}/tags/list"),
    ("PUT", "/v2/{n}/referrers/" + digest(b"x")),
    ("POST", "/v2/_catalog"),
    ("PUT", "/v2/_catalog"),
    ("DELETE", "/v2/"),
    ("POST", "/v2/"),
])
def test_unsupported_method(c, method, path):
    name = uniq()
    c.push_blob(name, b"x")
    r = c.request(method, path.format(n=name), data=b"{}")
    assert_error(r, 405, "UNSUPPORTED")


@pytest.mark.parametrize("path", ["/v2/x/nonsense", "/v2/x/blobs", "/v2/x/manifests/", "/v2/x/tags",
                                  "/v2/x/blobs/uploads", "/nothing", "/v3/"])
def test_unknown_paths_get_json_errors(c, path):
    r = c.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "json" in r.headers.get("Content-Type", ""), r.headers
    body = r.json()
    assert body["errors"][0]["code"] in SPEC_CODES, body


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/v2/a%FFb/manifests/latest", 400, "NAME_INVALID"),
    ("PUT", "/v2/a%FFb/manifests/latest", 400, "NAME_INVALID"),
    ("POST", "/v2/%ED%A0%80/blobs/uploads/", 400, "NAME_INVALID"),
    ("GET", "/v2/x/manifests/%C3%28", 404, "MANIFEST_UNKNOWN"),
    ("DELETE", "/v2/x/manifests/%C3%28", 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/x/blobs/sha256%3A%FF", 400, "DIGEST_INVALID"),
    ("GET", "/v2/x/blobs/uploads/%FF", 404, "BLOB_UPLOAD_UNKNOWN"),
    ("GET", "/v2/x/tags/list%FE", 404, "NAME_UNKNOWN"),
])
def test_non_utf8_paths_get_spec_errors(c, method, path, status, code):
    # a path that percent-decodes to invalid UTF-8 is answered like every other bad path, with
    # the spec's JSON error body for the part that is wrong (the router's plain text before)
    assert_error(c.request(method, path, data=b""), status, code)


# ---------------------------------------------------------------- connection reuse after errors

@pytest.mark.parametrize("case", ["patch_unknown_upload", "post_invalid_name", "manifest_too_big",
                                  "put_unknown_upload"])
def test_keepalive_after_early_error(shared, case):
    # An error answered before the request body was read must either drain the body and keep the
    # connection usable, or say `Connection: close`. Closing silently breaks clients that reuse it.
    name = uniq()
    body = rand_bytes(200_000)
    if case == "patch_unknown_upload":
        line, expect = f"PATCH /v2/{name}/blobs/uploads/{uuid.uuid4()}", "404"
    elif case == "put_unknown_upload":
        line, expect = f"PUT /v2/{name}/blobs/uploads/{uuid.uuid4()}?digest={digest(body)}", "404"
    elif case == "post_invalid_name":
        line, expect = f"POST /v2/BAD/blobs/uploads/?digest={digest(body)}", "400"
    else:
        body = b'{"schemaVersion":2,"pad":"' + b"x" * (5 * 1024 * 1024) + b'"}'
        line, expect = f"PUT /v2/{name}/manifests/big", "413"
    req = (f"{line} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    status, headers, second = keepalive_pair(shared.addr, req)
    assert status.split()[1] == expect, status
    if headers.get("connection", "").lower() == "close":
        return
    assert isinstance(second, bytes) and second.startswith(b"HTTP/1.1 200"), (
        f"connection dropped after {status!r} without `Connection: close`: {second!r}")


# ---------------------------------------------------------------- restarts

@pytest.mark.parametrize("with_upload", [
    pytest.param(False, id="state"),
    # resumes an upload across the restart: S3 uploads in progress do not survive one (documented)
    pytest.param(True, id="upload", marks=pytest.mark.fs_only),
])
def test_state_survives_restart(berth_factory, with_upload):
    b = berth_factory()
    c = Client(b.url)
    name = uniq()
    body = small_manifest(c, name)
    _, d = c.push_manifest(name, "v1", body)
    blob = rand_bytes(5000)
    bd = c.push_blob(name, blob)
    if with_upload:
        loc = c.start_upload(name)
        part = rand_bytes(3000)
        assert c.patch_chunk(loc, part[:1000], "0-999").status_code == 202
    b.stop()
    b.restart()
    c = Client(b.url)
    g = c.get(f"/v2/{name}/manifests/v1")
    assert g.status_code == 200 and g.content == body and g.headers["Docker-Content-Digest"] == d
    assert c.get_blob(name, bd).content == blob
    if not with_upload:
        assert c.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]
        return
    s = c.get(loc)
    assert s.status_code == 204 and s.headers["Range"] == "0-999"
    p = c.put_upload(loc, digest(part), part[1000:])
    assert p.status_code == 201, p.text
    assert c.get_blob(name, digest(part)).content == part
    assert c.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]


def test_state_survives_kill9(berth_factory):
    b = berth_factory()
    c = Client(b.url)
    name = uniq()
    body = small_manifest(c, name)
    c.push_manifest(name, "v1", body)
    blob = rand_bytes(100)
    bd = c.push_blob(name, blob)
    b.kill9()
    b.restart()
    c = Client(b.url)
    assert c.get(f"/v2/{name}/manifests/v1").content == body
    assert c.get_blob(name, bd).content == blob


# ---------------------------------------------------------------- check-config

VALID_CONFIG = """
listen = "127.0.0.1:5000"
data_dir = "./berth-data"
[log]
format = "json"
level = "info"
[storage]
backend = "filesystem"
delete_enabled = true
[limits]
manifest_max_bytes = 4194304
[uploads]
ttl_secs = 86400
purge_interval_secs = 600
"""


def check_config(tmp_path, text):
    p = tmp_path / "berth.toml"
    p.write_text(text)
    return subprocess.run([BERTH_BIN, "check-config", str(p)], capture_output=True, text=True, timeout=30)


def test_check_config_valid(tmp_path):
    r = check_config(tmp_path, VALID_CONFIG)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_check_config_empty_file_uses_defaults(tmp_path):
    r = check_config(tmp_path, "")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


CONFIG_REJECTS = [
    (VALID_CONFIG + "\ncolour = \"blue\"\n", "colour"),
    (VALID_CONFIG.replace('level = "info"', 'level = "info"\nverbosity = 3'), "verbosity"),
    (VALID_CONFIG.replace("[uploads]", "[uploads]\nmax_parallel = 4"), "max_parallel"),
    ("[nosuchsection]\nx = 1\n", "nosuchsection"),
    (VALID_CONFIG.replace('format = "json"', 'format = "xml"'), "format"),
    (VALID_CONFIG.replace("manifest_max_bytes = 4194304", 'manifest_max_bytes = "big"'), "manifest_max_bytes"),
    (VALID_CONFIG.replace("delete_enabled = true", 'delete_enabled = "maybe"'), "delete_enabled"),
    (VALID_CONFIG.replace("ttl_secs = 86400", "ttl_secs = -5"), "ttl_secs"),
    (VALID_CONFIG.replace('backend = "filesystem"', 'backend = "floppy"'), "backend"),
    (VALID_CONFIG.replace('listen = "127.0.0.1:5000"', 'listen = "not-an-address"'), "listen"),
    (VALID_CONFIG.replace('listen = "127.0.0.1:5000"', "listen = 5000"), "listen"),
    (VALID_CONFIG.replace("manifest_max_bytes = 4194304", "manifest_max_bytes = 0"), "manifest_max_bytes"),
    (VALID_CONFIG.replace("purge_interval_secs = 600", "purge_interval_secs = 0"), "purge_interval_secs"),
    (VALID_CONFIG.replace('level = "info"', 'level = "[[["'), "level"),
]


@pytest.mark.parametrize("text,key", CONFIG_REJECTS, ids=[f"{i}-{k}" for i, (_, k) in enumerate(CONFIG_REJECTS)])
def test_check_config_rejects(tmp_path, text, key):
    r = check_config(tmp_path, text)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert key in out, out
    assert r.stdout.strip() != "ok"


def test_check_config_not_toml(tmp_path):
    r = check_config(tmp_path, "this is = = not toml [")
    assert r.returncode == 1
    assert r.stdout.strip() != "ok"


def test_check_config_missing_file(tmp_path):
    r = subprocess.run([BERTH_BIN, "check-config", str(tmp_path / "absent.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert r.stdout.strip() != "ok"
