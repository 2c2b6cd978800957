"""Blob uploads: POST, monolithic POST, chunked PATCH, status, closing PUT, cancel, mount, expiry."""
import time
import uuid

import pytest

from conftest import BACKEND
from helpers import (  # noqa: F401  (shared, c are fixtures)
    Client, assert_error, assert_spec_error_body, c, canon, digest, files_under, loc_path, rand_bytes,
    range_end, raw_http, shared, uniq, upload_uuid_from, wait_for, with_fs_files,
)


def upload_files(berth):
    return files_under(berth.data_dir / "uploads")


# ---------------------------------------------------------------- POST

def test_post_starts_upload(c):
    name = uniq()
    r = c.post(f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 202, r.text
    path = loc_path(r)
    prefix = f"/v2/{name}/blobs/uploads/"
    assert path.startswith(prefix) and len(path) > len(prefix)
    u = r.headers["Docker-Upload-UUID"]
    assert u and path == prefix + u
    assert r.headers["Range"] == "0-0"
    # status works straight away
    s = c.get(r.headers["Location"])
    assert s.status_code == 204
    assert s.headers["Docker-Upload-UUID"] == u


def test_post_gives_distinct_uploads(c):
    name = uniq()
    a = c.post(f"/v2/{name}/blobs/uploads/").headers["Docker-Upload-UUID"]
    b = c.post(f"/v2/{name}/blobs/uploads/").headers["Docker-Upload-UUID"]
    assert a != b


def test_monolithic_post(c):
    name = uniq()
    data = rand_bytes(5000)
    d = digest(data)
    r = c.post(f"/v2/{name}/blobs/uploads/", params={"digest": d}, data=data,
               headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert loc_path(r) == f"/v2/{name}/blobs/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    g = c.get(r.headers["Location"])
    assert g.status_code == 200 and g.content == data


@with_fs_files
def test_monolithic_post_digest_mismatch(berth, fs_files):
    c = Client(berth.url)
    name = uniq()
    data = rand_bytes(100)
    wrong = digest(b"other bytes")
    r = c.post(f"/v2/{name}/blobs/uploads/", params={"digest": wrong}, data=data,
               headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "DIGEST_INVALID")
    assert_error(c.get_blob(name, wrong), 404, "BLOB_UNKNOWN")
    assert_error(c.get_blob(name, digest(data)), 404, "BLOB_UNKNOWN")
    if fs_files:
        assert files_under(berth.data_dir / "blobs") == []
        assert upload_files(berth) == []


@pytest.mark.parametrize("bad", ["sha256:XYZ", "md5:" + "a" * 32, "sha256:abc", "sha256:" + "A" * 64])
def test_monolithic_post_bad_digest_syntax(c, bad):
    r = c.post(f"/v2/{uniq()}/blobs/uploads/", params={"digest": bad}, data=b"abc")
    assert_error(r, 400, "DIGEST_INVALID")


def test_monolithic_post_sha512(c):
    name = uniq()
    data = rand_bytes(333)
    d = digest(data, "sha512")
    r = c.post(f"/v2/{name}/blobs/uploads/", params={"digest": d}, data=data)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == d
    assert loc_path(r) == f"/v2/{name}/blobs/{d}"
    assert c.get_blob(name, d).content == data


# ---------------------------------------------------------------- PATCH / status / PUT

def test_chunked_upload_in_order(c):
    name = uniq()
    data = rand_bytes(3000)
    loc = c.start_upload(name)
    u = upload_uuid_from(loc)
    r = c.patch_chunk(loc, data[:1000], "0-999")
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-999"
    assert r.headers["Docker-Upload-UUID"] == u
    assert loc_path(r) == f"/v2/{name}/blobs/uploads/{u}"
    r = c.patch_chunk(r.headers["Location"], data[1000:2500], "1000-2499")
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == "0-2499"
    s = c.get(r.headers["Location"])
    assert s.status_code == 204
    assert s.headers["Range"] == "0-2499"
    assert s.headers["Docker-Upload-UUID"] == u
    assert loc_path(s) == f"/v2/{name}/blobs/uploads/{u}"
    r = c.patch_chunk(r.headers["Location"], data[2500:], "2500-2999")
    assert r.status_code == 202 and r.headers["Range"] == "0-2999"
    d = digest(data)
    p = c.put_upload(r.headers["Location"], d)
    assert p.status_code == 201, p.text
    assert loc_path(p) == f"/v2/{name}/blobs/{d}"
    assert p.headers["Docker-Content-Digest"] == d
    g = c.get_blob(name, d)
    assert g.status_code == 200 and g.content == data


def test_streamed_patch_without_content_range(c):
    name = uniq()
    data = rand_bytes(2048)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:1024])
    assert r.status_code == 202 and r.headers["Range"] == "0-1023"
    r = c.patch_chunk(r.headers["Location"], data[1024:])
    assert r.status_code == 202 and r.headers["Range"] == "0-2047"
    d = digest(data)
    assert c.put_upload(r.headers["Location"], d).status_code == 201
    assert c.get_blob(name, d).content == data


def test_streamed_patch_chunked_transfer_encoding(c):
    name = uniq()
    data = rand_bytes(300_000)

    def gen():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    loc = c.start_upload(name)
    r = c.patch(loc, data=gen(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    d = digest(data)
    assert c.put_upload(r.headers["Location"], d).status_code == 201
    assert c.get_blob(name, d).content == data


def test_put_with_last_chunk_in_body(c):
    name = uniq()
    data = rand_bytes(1500)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:1000], "0-999")
    assert r.status_code == 202
    d = digest(data)
    p = c.put_upload(r.headers["Location"], d, data[1000:])
    assert p.status_code == 201, p.text
    assert loc_path(p) == f"/v2/{name}/blobs/{d}"
    assert p.headers["Docker-Content-Digest"] == d
    assert c.get_blob(name, d).content == data


@pytest.mark.parametrize("cr", ["0-499", "1001-1499", "1000-1498", "abc"])
def test_closing_put_checks_content_range_before_writing(c, cr):
    # spec: a closing PUT may carry the last chunk; its Content-Range must continue the upload
    # (416 with the Range stored so far), checked before any byte is written, as PATCH does.
    name = uniq()
    data = rand_bytes(1500)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:1000], "0-999")
    assert r.status_code == 202
    loc = r.headers["Location"]
    p = c.put(loc, params={"digest": digest(data)}, data=data[1000:],
              headers={"Content-Type": "application/octet-stream", "Content-Range": cr})
    if cr == "abc":
        assert_error(p, 400, "BLOB_UPLOAD_INVALID")
    elif cr == "1000-1498":
        # the range covers 499 bytes, the body has 500
        assert_error(p, 400, "BLOB_UPLOAD_INVALID")
    else:
        assert_error(p, 416, "BLOB_UPLOAD_INVALID")
        assert p.headers["Range"] == "0-999"
    # nothing was appended: the upload still holds exactly the first chunk and can be finished
    s = c.get(loc)
    assert s.status_code == 204 and s.headers["Range"] == "0-999", (s.status_code, s.headers)
    p = c.put(loc, params={"digest": digest(data)}, data=data[1000:],
              headers={"Content-Type": "application/octet-stream", "Content-Range": "1000-1499"})
    assert p.status_code == 201, p.text
    assert c.get_blob(name, digest(data)).content == data


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_refused_chunk_is_read_before_the_answer(c, shared, method):
    # A chunk refused for its range (416) is answered only after its body was read (up to
    # 16 MiB): answering and closing while the client still sends resets the connection, and
    # the client never sees the 416 (seen as "broken pipe" from Go's client on S3).
    import socket
    name = uniq()
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, b"0123456789", "0-9")
    assert r.status_code == 202
    path = loc_path(r)
    body = rand_bytes(8 << 20)
    query = f"?digest={digest(b'x')}" if method == "PUT" else ""
    head = (f"{method} {path}{query} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: 100-{100 + len(body) - 1}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    host, port = shared.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
    try:
        s.sendall(head)
        # Not a wait: the pause is the case under test. The server sees the headers alone first, and
        # must not answer (and close) before it has read the body that follows.
        time.sleep(0.3)
        for i in range(0, len(body), 1 << 16):
            s.sendall(body[i:i + (1 << 16)])
        resp = b""
        while b"\r\n\r\n" not in resp:
            got = s.recv(65536)
            assert got, resp
            resp += got
    finally:
        s.close()
    assert resp.startswith(b"HTTP/1.1 416"), resp[:200]
    assert b"range: 0-9" in resp.lower(), resp[:400]


def test_post_then_put_whole_blob(c):
    name = uniq()
    data = rand_bytes(4321)
    loc = c.start_upload(name)
    d = digest(data)
    p = c.put_upload(loc, d, data)
    assert p.status_code == 201, p.text
    assert p.headers["Docker-Content-Digest"] == d
    assert c.get_blob(name, d).content == data


def test_put_sha512_after_chunks(c):
    name = uniq()
    data = rand_bytes(999)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:500], "0-499")
    assert r.status_code == 202
    d = digest(data, "sha512")
    p = c.put_upload(r.headers["Location"], d, data[500:])
    # on every backend: S3 cannot read an unfinished upload back, so its uploads are hashed by
    # sha256 and sha512 as the bytes arrive (CONTRACT.md)
    assert p.status_code == 201, p.text
    assert p.headers["Docker-Content-Digest"] == d
    assert c.get_blob(name, d).content == data


@pytest.mark.parametrize("chunks", [1, 3])
def test_sha512_post_then_put_or_patches(c, chunks):
    name = uniq()
    data = rand_bytes(3000)
    loc = c.start_upload(name)
    step = len(data) // chunks
    for i in range(chunks - 1):
        r = c.patch_chunk(loc, data[i * step:(i + 1) * step], f"{i * step}-{(i + 1) * step - 1}")
        assert r.status_code == 202, r.text
        loc = r.headers["Location"]
    d = digest(data, "sha512")
    p = c.put_upload(loc, d, data[(chunks - 1) * step:])
    assert p.status_code == 201, p.text
    assert c.get_blob(name, d).content == data


def test_upload_finished_is_gone(c):
    name = uniq()
    data = b"hello world"
    loc = c.start_upload(name)
    assert c.put_upload(loc, digest(data), data).status_code == 201
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.patch_chunk(loc, b"more"), 404, "BLOB_UPLOAD_UNKNOWN")


def test_patch_out_of_order(c):
    name = uniq()
    data = rand_bytes(40)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:10], "0-9")
    assert r.status_code == 202
    loc = r.headers["Location"]
    # a gap
    r = c.patch_chunk(loc, data[20:30], "20-29")
    assert r.status_code == 416, r.text
    assert r.headers["Range"] == "0-9"
    assert_spec_error_body(r)
    # a chunk that overlaps what is stored (resent)
    r = c.patch_chunk(loc, data[5:15], "5-14")
    assert r.status_code == 416
    assert r.headers["Range"] == "0-9"
    r = c.patch_chunk(loc, data[:10], "0-9")
    assert r.status_code == 416
    assert r.headers["Range"] == "0-9"
    # nothing was stored by the rejected chunks; continuing in order works
    s = c.get(loc)
    assert s.status_code == 204 and s.headers["Range"] == "0-9"
    r = c.patch_chunk(loc, data[10:], "10-39")
    assert r.status_code == 202 and r.headers["Range"] == "0-39"
    d = digest(data)
    assert c.put_upload(r.headers["Location"], d).status_code == 201
    assert c.get_blob(name, d).content == data


def test_first_chunk_not_at_zero(c):
    name = uniq()
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, b"0123456789", "5-14")
    assert r.status_code == 416, r.text


@pytest.mark.parametrize("bad", ["abc", "0-", "-9", "x-y", "0-9-", "bytes=0-9"])
def test_patch_malformed_content_range(c, bad):
    name = uniq()
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, b"0123456789", bad)
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")


@pytest.mark.parametrize("cr,body", [("0-9", b"01234"), ("0-4", b"0123456789")])
def test_patch_content_range_length_mismatch(c, cr, body):
    name = uniq()
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, body, cr)
    assert_error(r, 400, "BLOB_UPLOAD_INVALID")


@with_fs_files
def test_put_wrong_digest_discards_upload(berth, fs_files):
    c = Client(berth.url)
    name = uniq()
    data = rand_bytes(2000)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:1000], "0-999")
    assert r.status_code == 202
    loc = r.headers["Location"]
    wrong = digest(b"not the data")
    p = c.put_upload(loc, wrong, data[1000:])
    assert_error(p, 400, "DIGEST_INVALID")
    assert_error(c.get_blob(name, wrong), 404, "BLOB_UNKNOWN")
    assert_error(c.get_blob(name, digest(data)), 404, "BLOB_UNKNOWN")
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.put_upload(loc, digest(data), data[1000:]), 404, "BLOB_UPLOAD_UNKNOWN")
    if fs_files:
        assert files_under(berth.data_dir / "blobs") == []
        assert upload_files(berth) == []


@with_fs_files
def test_put_without_digest(berth, fs_files):
    c = Client(berth.url)
    name = uniq()
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, b"abcdef", "0-5")
    assert r.status_code == 202
    loc = r.headers["Location"]
    p = c.put_upload(loc, None)
    assert_error(p, 400, "DIGEST_INVALID")
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    if fs_files:
        assert files_under(berth.data_dir / "blobs") == []


@pytest.mark.parametrize("bad", ["sha256:XYZ", "md5:" + "a" * 32, "sha256:" + "0" * 63])
def test_put_bad_digest_syntax(c, bad):
    loc = c.start_upload(uniq())
    assert_error(c.put_upload(loc, bad, b"abc"), 400, "DIGEST_INVALID")


@with_fs_files
def test_cancel_upload(berth, fs_files):
    c = Client(berth.url)
    name = uniq()
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, b"some bytes", "0-9")
    assert r.status_code == 202
    loc = r.headers["Location"]
    if fs_files:
        assert upload_files(berth) != [], "in-progress bytes live under <data>/uploads"
    d = c.delete(loc)
    assert d.status_code == 204, d.text
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.patch_chunk(loc, b"more", "10-13"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.put_upload(loc, digest(b"some bytes")), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.delete(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    if fs_files:
        assert upload_files(berth) == []


@pytest.mark.parametrize("upload_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_upload(c, upload_id):
    name = uniq()
    loc = f"/v2/{name}/blobs/uploads/{upload_id}"
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.patch_chunk(loc, b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.put_upload(loc, digest(b"abc"), b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.delete(loc), 404, "BLOB_UPLOAD_UNKNOWN")


# An id with an (encoded) slash is no upload route at all; a plain name is an upload berth does not know.
@pytest.mark.parametrize("upload_id,code", [
    ("..%2Fberth.db", "NAME_UNKNOWN"), ("..%2F..%2Fberth.db", "NAME_UNKNOWN"),
    ("%2e%2e%2Fberth.db", "NAME_UNKNOWN"), ("berth.db", "BLOB_UPLOAD_UNKNOWN"),
])
def test_upload_id_path_traversal(berth, upload_id, code):
    c = Client(berth.url)
    name = uniq()
    db = berth.data_dir / "berth.db"
    assert db.is_file()
    size = db.stat().st_size
    loc = f"/v2/{name}/blobs/uploads/{upload_id}"
    for r in (c.get(loc), c.patch_chunk(loc, b"junk"), c.put_upload(loc, digest(b"junk"), b"junk"), c.delete(loc)):
        assert_error(r, 404, code)
    assert db.is_file() and db.stat().st_size >= size
    data = rand_bytes(10)
    assert c.get_blob(name, c.push_blob(name, data)).content == data


def test_upload_id_under_other_repo(c):
    a, b = uniq(), uniq()
    data = rand_bytes(64)
    loc = c.start_upload(a)
    u = upload_uuid_from(loc)
    r = c.patch_chunk(loc, data[:32], "0-31")
    assert r.status_code == 202
    other = f"/v2/{b}/blobs/uploads/{u}"
    assert_error(c.get(other), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.patch_chunk(other, data[32:], "32-63"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.put_upload(other, digest(data), data[32:]), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.delete(other), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(c.get_blob(b, digest(data)), 404, "BLOB_UNKNOWN")
    # the upload under its own name is untouched
    s = c.get(loc)
    assert s.status_code == 204 and s.headers["Range"] == "0-31"
    assert c.put_upload(loc, digest(data), data[32:]).status_code == 201
    assert c.get_blob(a, digest(data)).content == data


# ---------------------------------------------------------------- mount

def test_mount_from_repo_with_blob(c):
    src, dst = uniq(), uniq()
    data = rand_bytes(500)
    d = c.push_blob(src, data)
    r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": d, "from": src})
    assert r.status_code == 201, r.text
    assert loc_path(r) == f"/v2/{dst}/blobs/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    g = c.get_blob(dst, d)
    assert g.status_code == 200 and g.content == data


@pytest.mark.parametrize("case", ["other_repo_without_blob", "repo_missing", "digest_unknown", "unlinked_from_source"])
def test_mount_falls_back_to_upload(c, case):
    holder, src, dst = uniq(), uniq(), uniq()
    data = rand_bytes(500)
    d = c.push_blob(holder, data)
    if case == "other_repo_without_blob":
        c.push_blob(src, b"unrelated")
    if case == "unlinked_from_source":
        c.push_blob(src, data)
        assert c.delete(f"/v2/{src}/blobs/{d}").status_code == 202
    if case == "digest_unknown":
        data = rand_bytes(501)
        d = digest(data)
        src = holder
    r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": d, "from": src})
    assert r.status_code == 202, r.text
    path = loc_path(r)
    assert path.startswith(f"/v2/{dst}/blobs/uploads/")
    assert path == f"/v2/{dst}/blobs/uploads/" + r.headers["Docker-Upload-UUID"]
    assert_error(c.get_blob(dst, d), 404, "BLOB_UNKNOWN")
    # the new upload is a real one
    p = c.put_upload(r.headers["Location"], d, data)
    assert p.status_code == 201, p.text
    assert c.get_blob(dst, d).content == data


@pytest.mark.parametrize("bad", ["sha256:XYZ", "md5:" + "0" * 32, "sha256:" + "A" * 64])
def test_mount_bad_digest(c, bad):
    src = uniq()
    c.push_blob(src, b"abc")
    r = c.post(f"/v2/{uniq()}/blobs/uploads/", params={"mount": bad, "from": src})
    assert_error(r, 400, "DIGEST_INVALID")


def test_mount_sha512(c):
    src, dst = uniq(), uniq()
    data = rand_bytes(100)
    d = c.push_blob(src, data, alg="sha512")
    r = c.post(f"/v2/{dst}/blobs/uploads/", params={"mount": d, "from": src})
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == d
    assert c.get_blob(dst, d).content == data


def test_large_streamed_upload(c):
    name = uniq()
    data = rand_bytes(16 * 1024 * 1024 + 3)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, data[:10 * 1024 * 1024])
    assert r.status_code == 202 and range_end(r) == 10 * 1024 * 1024 - 1
    d = digest(data)
    p = c.put_upload(r.headers["Location"], d, data[10 * 1024 * 1024:])
    assert p.status_code == 201, p.text
    g = c.get_blob(name, d)
    assert g.status_code == 200 and g.content == data


# ---------------------------------------------------------------- robustness

def test_concurrent_patches_with_same_content_range(c):
    import concurrent.futures as cf
    name = uniq()
    chunk = rand_bytes(200_000)
    loc = c.start_upload(name)
    base = c.base

    def send(_):
        return Client(base).patch_chunk(loc, chunk, "0-199999").status_code

    with cf.ThreadPoolExecutor(8) as ex:
        codes = sorted(ex.map(send, range(8)))
    assert codes == [202] + [416] * 7, codes
    s = c.get(loc)
    assert s.headers["Range"] == "0-199999"
    assert c.put_upload(loc, digest(chunk)).status_code == 201
    assert c.get_blob(name, digest(chunk)).content == chunk


def test_concurrent_streamed_patches_append_whole_chunks(c):
    # appends may happen in any order, but each chunk must land whole, and each 202's Range
    # tells where that chunk ended: rebuilding the blob from those ends must give the stored bytes
    import concurrent.futures as cf
    name = uniq()
    chunks = [rand_bytes(150_000 + i) for i in range(8)]
    loc = c.start_upload(name)
    base = c.base

    def send(i):
        r = Client(base).patch_chunk(loc, chunks[i])
        assert r.status_code == 202, r.text
        return range_end(r), i

    with cf.ThreadPoolExecutor(8) as ex:
        ends = sorted(ex.map(send, range(8)))
    pos = 0
    data = b""
    for end, i in ends:
        assert end == pos + len(chunks[i]) - 1, (ends, pos)
        data += chunks[i]
        pos = end + 1
    s = c.get(loc)
    assert range_end(s) == len(data) - 1
    p = c.put_upload(loc, digest(data))
    assert p.status_code == 201, p.text
    assert c.get_blob(name, digest(data)).content == data


@with_fs_files
def test_connection_dropped_mid_monolithic_post(berth, fs_files):
    c = Client(berth.url)
    name = uniq()
    data = rand_bytes(1024 * 1024)
    d = digest(data)
    head = (f"POST /v2/{name}/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: {berth.addr}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n")
    raw_http(berth.addr, head.encode() + data[:len(data) // 2], read=False)
    # Not a wait for a condition: berth logs nothing for a hang-up, so it gets a moment to handle it
    # before the checks (the [files] variant then waits for the leftover bytes to go).
    time.sleep(0.5)
    assert c.get("/v2/").status_code == 200
    assert_error(c.get_blob(name, d), 404, "BLOB_UNKNOWN")
    if fs_files:
        assert files_under(berth.data_dir / "blobs") == []
        wait_for(lambda: upload_files(berth) == [], 5, "a dropped monolithic upload's bytes to be removed")
    assert c.push_blob(name, data) == d
    assert c.get_blob(name, d).content == data


def test_connection_dropped_mid_manifest_put(berth):
    c = Client(berth.url)
    name = uniq()
    cfg = b'{"os":"linux"}'
    cd = c.push_blob(name, cfg)
    body = canon({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd,
                             "size": len(cfg)},
                  "layers": [], "annotations": {"pad": "x" * 5000}})
    head = (f"PUT /v2/{name}/manifests/v1 HTTP/1.1\r\nHost: {berth.addr}\r\n"
            f"Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {len(body)}\r\n\r\n")
    raw_http(berth.addr, head.encode() + body[:len(body) // 2], read=False)
    time.sleep(0.5)  # not a wait for a condition: berth logs nothing for a hang-up (see above)
    assert_error(c.get(f"/v2/{name}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    r = c.put_manifest(name, "v1", body)
    assert r.status_code == 201
    assert c.get(f"/v2/{name}/manifests/v1").content == body


@pytest.mark.parametrize("with_content_range", [False, True])
def test_connection_dropped_mid_patch(berth, with_content_range):
    c = Client(berth.url)
    name = uniq()
    first = 1000
    mib = 1024 * 1024
    blob = rand_bytes(first + mib + 777)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, blob[:first], f"0-{first - 1}")
    assert r.status_code == 202
    loc = r.headers["Location"]
    path = loc_path(r)
    query = r.headers["Location"].split("?", 1)[1] if "?" in r.headers["Location"] else None
    target = path + ("?" + query if query else "")
    head = (f"PATCH {target} HTTP/1.1\r\nHost: {berth.addr}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {mib}\r\n")
    if with_content_range:
        head += f"Content-Range: {first}-{first + mib - 1}\r\n"
    head += "\r\n"
    half = blob[first:first + mib // 2]
    raw_http(berth.addr, head.encode() + half, read=False)

    # the registry keeps serving
    assert c.get("/v2/").status_code == 200
    # the upload status settles at a consistent offset (the same in three readings 0.2 s apart)
    offsets = []

    def settled():
        s = c.get(loc)
        assert s.status_code == 204, (s.status_code, s.text)
        offsets.append(range_end(s) + 1)
        return len(offsets) >= 3 and offsets[-1] == offsets[-2] == offsets[-3]
    wait_for(settled, 10, lambda: f"the upload offset to settle after the dropped PATCH (offsets {offsets})", 0.2)
    off = offsets[-1]
    assert first <= off <= first + len(half), off
    d = digest(blob)
    p = c.put_upload(loc, d, blob[off:])
    assert p.status_code == 201, (off, p.status_code, p.text)
    g = c.get_blob(name, d)
    assert g.status_code == 200 and g.content == blob


@pytest.mark.fs_only  # resumes the upload after the restart: S3 uploads in progress do not survive one
def test_kill9_mid_patch_then_restart(berth_factory):
    import socket
    b = berth_factory()
    c = Client(b.url)
    name = uniq()
    first = 5000
    mib = 1024 * 1024
    blob = rand_bytes(first + mib + 99)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, blob[:first], f"0-{first - 1}")
    assert r.status_code == 202
    loc = r.headers["Location"]
    head = (f"PATCH {loc_path(r)} HTTP/1.1\r\nHost: {b.addr}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {mib}\r\n\r\n")
    host, port = b.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        s.sendall(head.encode() + blob[first:first + mib // 2])
        # Not a wait: the kill must land while the PATCH body is in flight (the case under test);
        # the pause lets the half body reach the server first.
        time.sleep(0.3)
        b.kill9()
    finally:
        s.close()
    b.restart()
    c = Client(b.url)
    st = c.get(loc)
    assert st.status_code == 204, st.text
    off = range_end(st) + 1
    assert first <= off <= first + mib // 2, off
    d = digest(blob)
    p = c.put_upload(loc, d, blob[off:])
    assert p.status_code == 201, (off, p.status_code, p.text)
    assert c.get_blob(name, d).content == blob


@with_fs_files
def test_upload_expiry(berth_factory, fs_files):
    b = berth_factory(env={"BERTH_UPLOADS__TTL_SECS": "1", "BERTH_UPLOADS__PURGE_INTERVAL_SECS": "1"})
    c = Client(b.url)
    name = uniq()
    kept = rand_bytes(50)
    kept_d = c.push_blob(name, kept)
    loc = c.start_upload(name)
    r = c.patch_chunk(loc, rand_bytes(4096), "0-4095")
    assert r.status_code == 202
    assert c.get(loc).status_code == 204
    if fs_files:
        assert upload_files(b) != [], "upload bytes are kept under <data>/uploads"
    # an upload that keeps being written to is not "untouched" and survives
    busy = c.start_upload(name)
    busy_data = b""
    t0 = time.time()
    # Not a wait: three TTLs must pass while the busy upload is written to every 0.25 s (the case
    # under test), so the writes are paced in real time.
    while time.time() - t0 < 3:
        piece = rand_bytes(100)
        r = c.patch_chunk(busy, piece, f"{len(busy_data)}-{len(busy_data) + 99}")
        assert r.status_code == 202, (round(time.time() - t0, 2), r.status_code, r.text)
        busy_data += piece
        time.sleep(0.25)
    wait_for(lambda: c.get(loc).status_code == 404, 2, "the untouched upload to expire")
    assert_error(c.get(loc), 404, "BLOB_UPLOAD_UNKNOWN")
    wait_for(lambda: c.get(busy).status_code == 404, 3, "the busy upload to expire once left alone")
    assert_error(c.get(busy), 404, "BLOB_UPLOAD_UNKNOWN")
    if fs_files:
        assert upload_files(b) == []
    # complete blobs are not touched by the purge, and the registry still works
    assert c.get_blob(name, kept_d).content == kept
    data = rand_bytes(10)
    assert c.get_blob(name, c.push_blob(name, data)).content == data
