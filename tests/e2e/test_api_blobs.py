"""Blob GET/HEAD/Range/DELETE, per-repository linking and dedupe (docs/CONTRACT.md)."""
import pytest

from helpers import (  # noqa: F401  (shared, c are fixtures)
    Client, assert_error, assert_spec_error_body, c, digest, files_under, rand_bytes, shared, uniq,
    with_fs_files,
)


def test_get_blob(c):
    name = uniq()
    data = rand_bytes(1000)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Length"] == "1000"
    assert r.headers["Docker-Content-Digest"] == d
    assert r.headers["Accept-Ranges"] == "bytes"


def test_head_blob(c):
    name = uniq()
    data = rand_bytes(777)
    d = c.push_blob(name, data)
    r = c.head(f"/v2/{name}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Length"] == "777"
    assert r.headers["Docker-Content-Digest"] == d
    assert r.headers["Accept-Ranges"] == "bytes"


def test_empty_blob(c):
    name = uniq()
    d = c.push_blob(name, b"")
    assert d == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    r = c.get_blob(name, d)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == "0"


@pytest.mark.parametrize("rng,start,end", [
    ("bytes=0-9", 0, 9),
    ("bytes=10-19", 10, 19),
    ("bytes=99-99", 99, 99),
    ("bytes=90-", 90, 99),
    ("bytes=0-", 0, 99),
    ("bytes=-10", 90, 99),
    ("bytes=-1", 99, 99),
    ("bytes=-100", 0, 99),
])
def test_blob_range(c, rng, start, end):
    name = uniq()
    data = rand_bytes(100)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d, headers={"Range": rng})
    assert r.status_code == 206, (rng, r.status_code, r.text)
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/100"
    assert r.content == data[start:end + 1]
    assert r.headers["Content-Length"] == str(end - start + 1)


def test_blob_range_end_past_length_is_clamped(c):
    # RFC 9110 14.1.2: a last-pos at or beyond the length means "to the end".
    name = uniq()
    data = rand_bytes(100)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d, headers={"Range": "bytes=95-500"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "bytes 95-99/100"
    assert r.content == data[95:]


def test_blob_suffix_range_longer_than_blob(c):
    name = uniq()
    data = rand_bytes(100)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d, headers={"Range": "bytes=-500"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "bytes 0-99/100"
    assert r.content == data


@pytest.mark.parametrize("rng", ["bytes=100-", "bytes=100-200", "bytes=1000-1001", "bytes=-0"])
def test_blob_range_unsatisfiable(c, rng):
    name = uniq()
    data = rand_bytes(100)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d, headers={"Range": rng})
    assert r.status_code == 416, (rng, r.status_code)
    assert r.headers["Content-Range"] == "bytes */100"
    assert_spec_error_body(r)


@pytest.mark.parametrize("rng", ["bytes=0-", "bytes=0-0", "bytes=-5"])
def test_range_on_empty_blob_unsatisfiable(c, rng):
    name = uniq()
    d = c.push_blob(name, b"")
    r = c.get_blob(name, d, headers={"Range": rng})
    assert r.status_code == 416, (rng, r.status_code)
    assert r.headers["Content-Range"] == "bytes */0"


def test_head_with_range(c):
    name = uniq()
    d = c.push_blob(name, rand_bytes(100))
    r = c.head(f"/v2/{name}/blobs/{d}", headers={"Range": "bytes=10-29"})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == "bytes 10-29/100"
    assert r.headers["Content-Length"] == "20"
    assert r.content == b""


def test_blob_unknown(c):
    name = uniq()
    c.push_blob(name, b"something")
    d = digest(b"never pushed")
    assert_error(c.get_blob(name, d), 404, "BLOB_UNKNOWN")
    assert_error(c.head(f"/v2/{name}/blobs/{d}"), 404, "BLOB_UNKNOWN")


def test_blob_unknown_repo(c):
    d = digest(b"never pushed anywhere")
    assert_error(c.get_blob(uniq(), d), 404, "BLOB_UNKNOWN")


def test_blob_not_linked_to_other_repo(c):
    a, b, other = uniq(), uniq(), uniq()
    data = rand_bytes(300)
    d = c.push_blob(a, data)
    c.push_blob(other, rand_bytes(10))  # 'other' exists but does not have d
    assert_error(c.get_blob(b, d), 404, "BLOB_UNKNOWN")
    assert_error(c.get_blob(other, d), 404, "BLOB_UNKNOWN")
    assert_error(c.head(f"/v2/{other}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert c.get_blob(a, d).content == data


def test_delete_blob(c):
    name = uniq()
    data = rand_bytes(50)
    d = c.push_blob(name, data)
    r = c.delete(f"/v2/{name}/blobs/{d}")
    assert r.status_code == 202, (r.status_code, r.text)
    assert_error(c.get_blob(name, d), 404, "BLOB_UNKNOWN")
    assert_error(c.head(f"/v2/{name}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert_error(c.delete(f"/v2/{name}/blobs/{d}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_unknown(c):
    name = uniq()
    c.push_blob(name, b"x")
    assert_error(c.delete(f"/v2/{name}/blobs/{digest(b'nope')}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_only_unlinks_this_repo(c):
    a, b = uniq(), uniq()
    data = rand_bytes(123)
    d = c.push_blob(a, data)
    assert c.push_blob(b, data) == d
    assert c.delete(f"/v2/{a}/blobs/{d}").status_code == 202
    assert_error(c.get_blob(a, d), 404, "BLOB_UNKNOWN")
    r = c.get_blob(b, d)
    assert r.status_code == 200 and r.content == data


def test_delete_blob_not_linked_to_repo(c):
    a, b = uniq(), uniq()
    d = c.push_blob(a, rand_bytes(20))
    c.push_blob(b, rand_bytes(21))
    assert_error(c.delete(f"/v2/{b}/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert c.get_blob(a, d).status_code == 200


@with_fs_files
def test_cross_repo_dedupe(berth, fs_files):
    c = Client(berth.url)
    data = rand_bytes(4096)
    d = c.push_blob("dedupe/one", data)
    assert c.push_blob("dedupe/two", data) == d
    for name in ("dedupe/one", "dedupe/two"):
        r = c.get_blob(name, d)
        assert r.status_code == 200 and r.content == data
    # a third copy through a chunked upload is stored once as well
    loc = c.start_upload("dedupe/three")
    r = c.patch_chunk(loc, data[:100], "0-99")
    assert c.put_upload(r.headers["Location"], d, data[100:]).status_code == 201
    assert c.get_blob("dedupe/three", d).content == data
    if not fs_files:
        return
    files = files_under(berth.data_dir / "blobs")
    assert len(files) == 1, files
    hexd = d.split(":")[1]
    assert files[0] == berth.data_dir / "blobs" / "sha256" / hexd[:2] / hexd
    assert files[0].read_bytes() == data


@with_fs_files
def test_sha512_blob(berth, fs_files):
    c = Client(berth.url)
    name = uniq()
    data = rand_bytes(2000)
    d = c.push_blob(name, data, alg="sha512")
    assert len(d) == len("sha512:") + 128
    r = c.get_blob(name, d)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Docker-Content-Digest"] == d
    r = c.get_blob(name, d, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    # the same bytes under sha256 are a different digest the repo does not have
    assert_error(c.get_blob(name, digest(data)), 404, "BLOB_UNKNOWN")
    if fs_files:
        hexd = d.split(":")[1]
        p = berth.data_dir / "blobs" / "sha512" / hexd[:2] / hexd
        assert p.is_file() and p.read_bytes() == data


def test_blob_get_after_push_large(c):
    name = uniq()
    data = rand_bytes(3 * 1024 * 1024 + 17)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d)
    assert r.status_code == 200
    assert r.content == data
    r = c.get_blob(name, d, headers={"Range": "bytes=2097152-"})
    assert r.status_code == 206 and r.content == data[2097152:]


@pytest.mark.parametrize("rng", ["items=0-5", "bytes=abc", "bytes=5-2", "bytes=", "0-5"])
def test_blob_range_unusable_header(c, rng):
    # RFC 9110: an unknown unit or an invalid range set is ignored (200, whole blob). A server may
    # instead answer 416 with Content-Range; berth ignores the header, for every one of these.
    name = uniq()
    data = rand_bytes(100)
    d = c.push_blob(name, data)
    r = c.get_blob(name, d, headers={"Range": rng})
    assert r.status_code == 200, (rng, r.status_code)
    assert r.content == data
    assert "Content-Range" not in r.headers, (rng, r.headers)


@with_fs_files
def test_concurrent_pushes_of_one_blob(berth, fs_files):
    import concurrent.futures as cf
    data = rand_bytes(1024 * 1024)
    names = [f"conc/r{i}" for i in range(6)] + ["conc/same"] * 4

    def push(name):
        return Client(berth.url).push_blob(name, data)

    with cf.ThreadPoolExecutor(len(names)) as ex:
        ds = list(ex.map(push, names))
    assert set(ds) == {digest(data)}
    c = Client(berth.url)
    for name in set(names):
        r = c.get_blob(name, ds[0])
        assert r.status_code == 200 and r.content == data
    if fs_files:
        files = files_under(berth.data_dir / "blobs")
        assert len(files) == 1, files
