"""Manifests (OCI, Docker schema2, indexes, artifacts), delete, size limits and referrers."""
import json

import pytest

from helpers import (  # noqa: F401  (shared, c are fixtures)
    DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, EMPTY_JSON, OCI_CONFIG, OCI_EMPTY,
    OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Client, assert_error, assert_spec_error_body, c, canon, digest,
    header_list, loc_path, rand_bytes, shared, uniq,
)


def check_get(c, name, ref, body, media_type):
    d = digest(body)
    r = c.get(f"/v2/{name}/manifests/{ref}")
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.content == body
    assert r.headers["Content-Type"] == media_type
    assert r.headers["Docker-Content-Digest"] == d
    assert r.headers["Content-Length"] == str(len(body))
    h = c.head(f"/v2/{name}/manifests/{ref}")
    assert h.status_code == 200
    assert h.content == b""
    assert h.headers["Content-Type"] == media_type
    assert h.headers["Docker-Content-Digest"] == d
    assert h.headers["Content-Length"] == str(len(body))


def tags_of(c, name):
    r = c.get(f"/v2/{name}/tags/list")
    if r.status_code == 404:
        assert_error(r, 404, "NAME_UNKNOWN")
        return []
    assert r.status_code == 200
    return r.json()["tags"] or []


def image_manifest(c, name, config_media=OCI_CONFIG, layer_media=OCI_LAYER, media=OCI_MANIFEST, **extra):
    cfg = canon({"architecture": "amd64", "os": "linux", "n": rand_bytes(4).hex()})
    layer = rand_bytes(100)
    m = {"schemaVersion": 2, "mediaType": media,
         "config": {"mediaType": config_media, "digest": c.push_blob(name, cfg), "size": len(cfg)},
         "layers": [{"mediaType": layer_media, "digest": c.push_blob(name, layer), "size": len(layer)}]}
    m.update(extra)
    return m


# ---------------------------------------------------------------- kinds of manifests

def test_oci_image_manifest_by_tag(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    d = digest(body)
    r = c.put_manifest(name, "v1", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert loc_path(r) == f"/v2/{name}/manifests/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    assert "OCI-Subject" not in r.headers
    check_get(c, name, "v1", body, OCI_MANIFEST)
    check_get(c, name, d, body, OCI_MANIFEST)
    assert tags_of(c, name) == ["v1"]


def test_oci_image_manifest_by_digest(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    d = digest(body)
    r = c.put_manifest(name, d, body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert loc_path(r) == f"/v2/{name}/manifests/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    check_get(c, name, d, body, OCI_MANIFEST)


def test_oci_index(c):
    name = uniq()
    children = []
    for arch in ("amd64", "arm64"):
        m = canon(image_manifest(c, name))
        body, d = c.push_manifest(name, digest(m), m)
        children.append({"mediaType": OCI_MANIFEST, "digest": d, "size": len(body),
                         "platform": {"architecture": arch, "os": "linux"}})
    idx = canon({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    r = c.put_manifest(name, "multi", idx, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest(idx)
    check_get(c, name, "multi", idx, OCI_INDEX)
    check_get(c, name, digest(idx), idx, OCI_INDEX)


def test_oci_index_of_indexes(c):
    name = uniq()
    m = canon(image_manifest(c, name))
    _, md = c.push_manifest(name, digest(m), m)
    inner = canon({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": len(m)}]})
    _, inner_d = c.push_manifest(name, digest(inner), inner, OCI_INDEX)
    outer = canon({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [{"mediaType": OCI_INDEX, "digest": inner_d, "size": len(inner)}]})
    c.push_manifest(name, "nested", outer, OCI_INDEX)
    check_get(c, name, "nested", outer, OCI_INDEX)


def test_docker_schema2_manifest(c):
    name = uniq()
    m = image_manifest(c, name, config_media=DOCKER_CONFIG, layer_media=DOCKER_LAYER, media=DOCKER_MANIFEST)
    body = json.dumps(m, indent=3).encode()
    r = c.put_manifest(name, "latest", body, DOCKER_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest(body)
    check_get(c, name, "latest", body, DOCKER_MANIFEST)


def test_docker_manifest_list(c):
    name = uniq()
    children = []
    for plat in ({"architecture": "amd64", "os": "linux"},
                 {"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2340"}):
        m = canon(image_manifest(c, name, config_media=DOCKER_CONFIG, layer_media=DOCKER_LAYER,
                                 media=DOCKER_MANIFEST))
        _, d = c.push_manifest(name, digest(m), m, DOCKER_MANIFEST)
        children.append({"mediaType": DOCKER_MANIFEST, "size": len(m), "digest": d, "platform": plat})
    lst = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": children}, indent=3).encode()
    r = c.put_manifest(name, "ltsc2022", lst, DOCKER_LIST)
    assert r.status_code == 201, r.text
    check_get(c, name, "ltsc2022", lst, DOCKER_LIST)
    check_get(c, name, digest(lst), lst, DOCKER_LIST)


@pytest.mark.parametrize("layers_kind", ["payload", "empty"])
def test_oci_artifact_with_empty_config(c, layers_kind):
    name = uniq()
    empty_d = c.push_blob(name, EMPTY_JSON)
    assert empty_d == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    empty_desc = {"mediaType": OCI_EMPTY, "digest": empty_d, "size": 2, "data": "e30="}
    if layers_kind == "payload":
        payload = b'{"sbom": true}'
        layers = [{"mediaType": "application/vnd.example.sbom.v1+json",
                   "digest": c.push_blob(name, payload), "size": len(payload)}]
    else:
        layers = [empty_desc]
    body = canon({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                  "artifactType": "application/vnd.example.sbom.v1", "config": empty_desc, "layers": layers})
    r = c.put_manifest(name, "sbom", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    check_get(c, name, "sbom", body, OCI_MANIFEST)


def test_byte_exact_round_trip(c):
    name = uniq()
    cfg = b'{"os":"linux"}'
    layer = rand_bytes(10)
    cd, ld = c.push_blob(name, cfg), c.push_blob(name, layer)
    body = (
        '{\n  "layers" : [ {"size":%d,  "digest":"%s",\t"mediaType":"%s"} ],\r\n'
        '\t"config":{"digest":"%s","mediaType":"%s","size":%d},"mediaType":"%s",   '
        '"schemaVersion":2 , "annotations":{"k":"caf\\u00e9 \u00e9 \\/ ","z":"","a":"1"}}\n\n'
        % (len(layer), ld, OCI_LAYER, cd, OCI_CONFIG, len(cfg), OCI_MANIFEST)
    ).encode("utf-8")
    d = digest(body)
    assert digest(canon(json.loads(body))) != d
    r = c.put_manifest(name, "exact", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == d
    check_get(c, name, "exact", body, OCI_MANIFEST)
    check_get(c, name, d, body, OCI_MANIFEST)


def test_manifest_without_media_type_field_uses_content_type(c):
    name = uniq()
    m = image_manifest(c, name)
    del m["mediaType"]
    body = canon(m)
    r = c.put_manifest(name, "nomt", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    check_get(c, name, "nomt", body, OCI_MANIFEST)


def test_get_with_accept_header(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    c.push_manifest(name, "acc", body)
    r = c.get(f"/v2/{name}/manifests/acc",
              headers={"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])})
    assert r.status_code == 200 and r.content == body
    assert r.headers["Content-Type"] == OCI_MANIFEST


def test_retag_moves_tag(c):
    name = uniq()
    a = canon(image_manifest(c, name))
    b = canon(image_manifest(c, name))
    c.push_manifest(name, "t", a)
    c.push_manifest(name, "t", b)
    check_get(c, name, "t", b, OCI_MANIFEST)
    check_get(c, name, digest(a), a, OCI_MANIFEST)  # the old one is still there by digest


def test_same_manifest_pushed_twice(c):
    name = uniq()
    a = canon(image_manifest(c, name))
    c.push_manifest(name, "one", a)
    c.push_manifest(name, "one", a)
    c.push_manifest(name, "two", a)
    assert tags_of(c, name) == ["one", "two"]


def test_manifest_not_visible_in_other_repo(c):
    name, other = uniq(), uniq()
    body = canon(image_manifest(c, name))
    c.push_manifest(name, "v1", body)
    c.push_blob(other, b"x")
    assert_error(c.get(f"/v2/{other}/manifests/{digest(body)}"), 404, "MANIFEST_UNKNOWN")


# ---------------------------------------------------------------- PUT by digest, tags

def test_put_by_sha512_digest(c):
    # the spec: Docker-Content-Digest on a manifest PUT MUST equal the digest the client used
    name = uniq()
    body = canon(image_manifest(c, name))
    d512 = digest(body, "sha512")
    r = c.put_manifest(name, d512, body)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == d512
    assert loc_path(r) == f"/v2/{name}/manifests/{d512}"
    g = c.get(f"/v2/{name}/manifests/{d512}")
    assert g.status_code == 200 and g.content == body
    assert g.headers["Docker-Content-Digest"] == d512


def test_put_by_digest_wrong_digest(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    wrong = digest(body + b" ")
    assert_error(c.put_manifest(name, wrong, body), 400, "DIGEST_INVALID")
    assert_error(c.get(f"/v2/{name}/manifests/{wrong}"), 404, "MANIFEST_UNKNOWN")


def test_put_by_digest_with_tags(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    d = digest(body)
    r = c.put_manifest(name, d, body, params=[("tag", "a"), ("tag", "b")])
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == d
    assert loc_path(r) == f"/v2/{name}/manifests/{d}"
    assert sorted(header_list(r, "OCI-Tag")) == ["a", "b"]
    assert tags_of(c, name) == ["a", "b"]
    check_get(c, name, "a", body, OCI_MANIFEST)
    check_get(c, name, "b", body, OCI_MANIFEST)


def test_put_by_tag_has_no_oci_tag(c):
    # OCI-Tag is about ?tag= query parameters; a PUT by tag claims no tag at all (berth sends none)
    name = uniq()
    body = canon(image_manifest(c, name))
    r = c.put_manifest(name, "only", body)
    assert r.status_code == 201
    assert header_list(r, "OCI-Tag") == []


def test_tag_name_limits(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    ok = "A_" + "x" * 126
    assert c.put_manifest(name, ok, body).status_code == 201
    check_get(c, name, ok, body, OCI_MANIFEST)
    for bad in ("x" * 129, ".dot", "-dash"):
        r = c.put_manifest(name, bad, body)
        assert r.status_code == 400, (bad, r.status_code)
        assert_spec_error_body(r)


# ---------------------------------------------------------------- invalid manifests

def test_missing_layer_blob(c):
    name = uniq()
    m = image_manifest(c, name)
    m["layers"].append({"mediaType": OCI_LAYER, "digest": digest(b"not pushed"), "size": 10})
    assert_error(c.put_manifest(name, "x", canon(m)), 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(c.get(f"/v2/{name}/manifests/x"), 404, "MANIFEST_UNKNOWN")


def test_missing_config_blob(c):
    name = uniq()
    m = image_manifest(c, name)
    m["config"]["digest"] = digest(b"config not pushed")
    assert_error(c.put_manifest(name, "x", canon(m)), 400, "MANIFEST_BLOB_UNKNOWN")


def test_descriptor_size_disagrees_with_blob(c):
    name = uniq()
    m = image_manifest(c, name)
    m["layers"][0]["size"] += 1
    r = c.put_manifest(name, "x", canon(m))
    assert r.status_code == 400, r.text
    assert_error(r, 400, "MANIFEST_INVALID")
    assert_error(c.get(f"/v2/{name}/manifests/x"), 404, "MANIFEST_UNKNOWN")


def test_layer_blob_deleted_from_repo(c):
    name = uniq()
    m = image_manifest(c, name)
    assert c.delete(f"/v2/{name}/blobs/{m['layers'][0]['digest']}").status_code == 202
    assert_error(c.put_manifest(name, "x", canon(m)), 400, "MANIFEST_BLOB_UNKNOWN")


def test_layer_blob_only_in_other_repo(c):
    name, other = uniq(), uniq()
    m = image_manifest(c, name)
    data = rand_bytes(70)
    m["layers"].append({"mediaType": OCI_LAYER, "digest": c.push_blob(other, data), "size": len(data)})
    assert_error(c.put_manifest(name, "x", canon(m)), 400, "MANIFEST_BLOB_UNKNOWN")


def test_docker_manifest_missing_layer(c):
    name = uniq()
    m = image_manifest(c, name, config_media=DOCKER_CONFIG, layer_media=DOCKER_LAYER, media=DOCKER_MANIFEST)
    m["layers"][0]["digest"] = digest(b"absent")
    assert_error(c.put_manifest(name, "x", canon(m), DOCKER_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize("media,child_media", [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)])
def test_index_missing_child(c, media, child_media):
    name = uniq()
    good = canon(image_manifest(c, name, media=child_media))
    _, gd = c.push_manifest(name, digest(good), good, child_media)
    idx = canon({"schemaVersion": 2, "mediaType": media, "manifests": [
        {"mediaType": child_media, "digest": gd, "size": len(good)},
        {"mediaType": child_media, "digest": digest(b"no such manifest"), "size": 99}]})
    assert_error(c.put_manifest(name, "idx", idx, media), 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(c.get(f"/v2/{name}/manifests/idx"), 404, "MANIFEST_UNKNOWN")


def test_index_child_only_in_other_repo(c):
    name, other = uniq(), uniq()
    child = canon(image_manifest(c, other))
    _, cd = c.push_manifest(other, digest(child), child)
    c.push_blob(name, b"make repo exist")
    idx = canon({"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": cd, "size": len(child)}]})
    assert_error(c.put_manifest(name, "idx", idx, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


def _invalid_bodies(c, name):
    good = image_manifest(c, name)
    out = {
        "not_json": (b'{"schemaVersion": 2, "mediaType": ', OCI_MANIFEST),
        "empty": (b"", OCI_MANIFEST),
        "json_array": (b"[]", OCI_MANIFEST),
        "json_string": (b'"manifest"', OCI_MANIFEST),
    }
    m = dict(good, schemaVersion=1)
    out["schema_version_1"] = (canon(m), OCI_MANIFEST)
    m = {k: v for k, v in good.items() if k != "schemaVersion"}
    out["schema_version_missing"] = (canon(m), OCI_MANIFEST)
    m = json.loads(canon(good))
    m["layers"][0]["digest"] = "sha256:xyz"
    out["layer_bad_digest"] = (canon(m), OCI_MANIFEST)
    m = json.loads(canon(good))
    m["config"]["digest"] = "md5:" + "0" * 32
    out["config_bad_digest"] = (canon(m), OCI_MANIFEST)
    m = json.loads(canon(good))
    m["layers"][0]["digest"] = "sha256:" + m["layers"][0]["digest"].split(":")[1].upper()
    out["layer_uppercase_digest"] = (canon(m), OCI_MANIFEST)
    m = {k: v for k, v in good.items() if k != "config"}
    out["config_missing"] = (canon(m), OCI_MANIFEST)
    # image-spec schema: "required": ["schemaVersion", "config", "layers"]
    m = {k: v for k, v in good.items() if k != "layers"}
    out["layers_missing"] = (canon(m), OCI_MANIFEST)
    out["layers_null"] = (canon(dict(good, layers=None)), OCI_MANIFEST)
    out["layers_not_list"] = (canon(dict(good, layers={"a": 1})), OCI_MANIFEST)
    out["index_manifests_missing"] = (canon({"schemaVersion": 2, "mediaType": OCI_INDEX}), OCI_INDEX)
    schema1 = canon({"schemaVersion": 1, "name": name, "tag": "v1", "architecture": "amd64",
                     "fsLayers": [{"blobSum": good["layers"][0]["digest"]}], "history": [{"v1Compatibility": "{}"}]})
    out["docker_schema1"] = (schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws")
    out["docker_schema1_json"] = (schema1, "application/vnd.docker.distribution.manifest.v1+json")
    m = json.loads(canon(good))
    m["subject"] = {"mediaType": OCI_MANIFEST, "digest": "sha256:nothex", "size": 10}
    out["subject_bad_digest"] = (canon(m), OCI_MANIFEST)
    m = json.loads(canon(good))
    m["config"]["size"] = -1
    out["negative_size"] = (canon(m), OCI_MANIFEST)
    idx = {"schemaVersion": 2, "mediaType": OCI_INDEX,
           "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:123", "size": 5}]}
    out["index_child_bad_digest"] = (canon(idx), OCI_INDEX)
    return out


INVALID_CASES = ["not_json", "empty", "json_array", "json_string", "schema_version_1", "schema_version_missing",
                 "layer_bad_digest", "config_bad_digest", "layer_uppercase_digest", "config_missing",
                 "layers_missing", "layers_null", "layers_not_list", "index_manifests_missing", "negative_size", "subject_bad_digest", "docker_schema1", "docker_schema1_json",
                 "index_child_bad_digest"]


@pytest.mark.parametrize("case", INVALID_CASES)
def test_manifest_invalid(c, case):
    name = uniq()
    body, media = _invalid_bodies(c, name)[case]
    assert_error(c.put_manifest(name, "bad", body, media), 400, "MANIFEST_INVALID")
    assert_error(c.get(f"/v2/{name}/manifests/bad"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("body_media,header_media", [
    (OCI_MANIFEST, DOCKER_MANIFEST),
    (DOCKER_MANIFEST, OCI_MANIFEST),
    (OCI_MANIFEST, OCI_INDEX),
])
def test_content_type_disagrees_with_media_type(c, body_media, header_media):
    name = uniq()
    if body_media == DOCKER_MANIFEST:
        m = image_manifest(c, name, config_media=DOCKER_CONFIG, layer_media=DOCKER_LAYER, media=DOCKER_MANIFEST)
    else:
        m = image_manifest(c, name, media=body_media)
    assert_error(c.put_manifest(name, "mismatch", canon(m), header_media), 400, "MANIFEST_INVALID")


def test_index_content_type_disagrees(c):
    name = uniq()
    child = canon(image_manifest(c, name))
    _, cd = c.push_manifest(name, digest(child), child)
    lst = canon({"schemaVersion": 2, "mediaType": DOCKER_LIST,
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": cd, "size": len(child)}]})
    assert_error(c.put_manifest(name, "mismatch", lst, OCI_INDEX), 400, "MANIFEST_INVALID")


# ---------------------------------------------------------------- size limits

def padded_manifest(c, name, size):
    m = image_manifest(c, name)
    m["annotations"] = {"pad": ""}
    base = len(canon(m))
    assert size >= base
    m["annotations"]["pad"] = "p" * (size - base)
    body = canon(m)
    assert len(body) == size
    return body


def test_manifest_at_default_limit_accepted(c):
    name = uniq()
    body = padded_manifest(c, name, 4 * 1024 * 1024)
    r = c.put_manifest(name, "big", body)
    assert r.status_code == 201, (r.status_code, r.text[:300])
    assert c.get(f"/v2/{name}/manifests/big").content == body


def test_manifest_over_default_limit(c):
    name = uniq()
    body = padded_manifest(c, name, 4 * 1024 * 1024 + 1)
    assert_error(c.put_manifest(name, "big", body), 413, "SIZE_INVALID")
    assert_error(c.get(f"/v2/{name}/manifests/big"), 404, "MANIFEST_UNKNOWN")


def test_manifest_far_over_default_limit(c):
    name = uniq()
    body = padded_manifest(c, name, 9 * 1024 * 1024)
    assert_error(c.put_manifest(name, "huge", body), 413, "SIZE_INVALID")


def test_manifest_small_configured_limit(berth_factory):
    b = berth_factory(env={"BERTH_LIMITS__MANIFEST_MAX_BYTES": "1024"})
    c = Client(b.url)
    name = uniq()
    ok = padded_manifest(c, name, 1024)
    assert c.put_manifest(name, "ok", ok).status_code == 201
    over = padded_manifest(c, name, 1025)
    assert_error(c.put_manifest(name, "over", over), 413, "SIZE_INVALID")

    def chunks():
        yield over[:500]
        yield over[500:]

    # without a Content-Length (chunked transfer encoding) the limit still holds
    r = c.put(f"/v2/{name}/manifests/over2", data=chunks(), headers={"Content-Type": OCI_MANIFEST})
    assert_error(r, 413, "SIZE_INVALID")
    assert_error(c.get(f"/v2/{name}/manifests/over"), 404, "MANIFEST_UNKNOWN")
    assert_error(c.get(f"/v2/{name}/manifests/over2"), 404, "MANIFEST_UNKNOWN")


# ---------------------------------------------------------------- delete, unknown

def test_delete_by_tag(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    d = digest(body)
    c.push_manifest(name, "gone", body)
    c.push_manifest(name, "stays", body)
    r = c.delete(f"/v2/{name}/manifests/gone")
    assert r.status_code == 202, r.text
    assert_error(c.get(f"/v2/{name}/manifests/gone"), 404, "MANIFEST_UNKNOWN")
    assert_error(c.head(f"/v2/{name}/manifests/gone"), 404, "MANIFEST_UNKNOWN")
    check_get(c, name, d, body, OCI_MANIFEST)
    check_get(c, name, "stays", body, OCI_MANIFEST)
    assert tags_of(c, name) == ["stays"]
    assert_error(c.delete(f"/v2/{name}/manifests/gone"), 404, "MANIFEST_UNKNOWN")


def test_delete_by_digest(c):
    name = uniq()
    body = canon(image_manifest(c, name))
    other = canon(image_manifest(c, name))
    d = digest(body)
    c.push_manifest(name, "t1", body)
    c.push_manifest(name, "t2", body)
    c.push_manifest(name, "keep", other)
    r = c.delete(f"/v2/{name}/manifests/{d}")
    assert r.status_code == 202, r.text
    for ref in (d, "t1", "t2"):
        assert_error(c.get(f"/v2/{name}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        assert_error(c.head(f"/v2/{name}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
    assert tags_of(c, name) == ["keep"]
    check_get(c, name, "keep", other, OCI_MANIFEST)
    assert_error(c.delete(f"/v2/{name}/manifests/{d}"), 404, "MANIFEST_UNKNOWN")
    # it can be pushed again
    c.push_manifest(name, "t1", body)
    check_get(c, name, "t1", body, OCI_MANIFEST)


def test_manifest_unknown(c):
    name = uniq()
    c.push_manifest(name, "exists", canon(image_manifest(c, name)))
    d = digest(b"no such manifest")
    for ref in ("nope", d):
        assert_error(c.get(f"/v2/{name}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        assert_error(c.head(f"/v2/{name}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        assert_error(c.delete(f"/v2/{name}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("bad", [".INVALID_MANIFEST_NAME", "-dash", "x" * 129, "tag with space"])
def test_invalid_tag_reference_is_manifest_unknown(c, bad):
    # distribution-spec: GET/HEAD/DELETE of a manifest list only 404 MANIFEST_UNKNOWN for a
    # reference the registry does not have; a string that cannot be a tag is one of those.
    name = uniq()
    c.push_manifest(name, "exists", canon(image_manifest(c, name)))
    assert_error(c.get(f"/v2/{name}/manifests/{bad}"), 404, "MANIFEST_UNKNOWN")
    assert_error(c.head(f"/v2/{name}/manifests/{bad}"), 404, "MANIFEST_UNKNOWN")
    assert_error(c.delete(f"/v2/{name}/manifests/{bad}"), 404, "MANIFEST_UNKNOWN")
    # a PUT under such a name is the client's mistake (v1.1 has no TAG_INVALID code)
    assert_error(c.put_manifest(name, bad, canon(image_manifest(c, name))), 400, "MANIFEST_INVALID")


def test_manifest_unknown_repo(c):
    # berth does not tell an unknown repository from an unknown tag
    assert_error(c.get(f"/v2/{uniq()}/manifests/latest"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("bad", ["sha256:XYZ", "sha256:" + "A" * 64, "sha256:abc", "sha512:" + "0" * 64])
def test_manifest_bad_digest_reference(c, bad):
    name = uniq()
    c.push_blob(name, b"x")
    assert_error(c.get(f"/v2/{name}/manifests/{bad}"), 400, "DIGEST_INVALID")
    assert_error(c.put_manifest(name, bad, canon(image_manifest(c, name))), 400, "DIGEST_INVALID")


def test_patch_on_manifest_unsupported(c):
    name = uniq()
    c.push_manifest(name, "v", canon(image_manifest(c, name)))
    assert_error(c.patch(f"/v2/{name}/manifests/v", data=b"{}"), 405, "UNSUPPORTED")
    assert_error(c.post(f"/v2/{name}/manifests/v", data=b"{}"), 405, "UNSUPPORTED")


# ---------------------------------------------------------------- delete disabled

def test_delete_disabled(berth_factory):
    b = berth_factory(env={"BERTH_STORAGE__DELETE_ENABLED": "false"})
    c = Client(b.url)
    name = uniq()
    body = canon(image_manifest(c, name))
    d = digest(body)
    c.push_manifest(name, "v1", body)
    blob = c.push_blob(name, b"a blob")
    assert_error(c.delete(f"/v2/{name}/blobs/{blob}"), 405, "UNSUPPORTED")
    assert_error(c.delete(f"/v2/{name}/manifests/v1"), 405, "UNSUPPORTED")
    assert_error(c.delete(f"/v2/{name}/manifests/{d}"), 405, "UNSUPPORTED")
    assert c.get_blob(name, blob).status_code == 200
    check_get(c, name, "v1", body, OCI_MANIFEST)
    check_get(c, name, d, body, OCI_MANIFEST)


# ---------------------------------------------------------------- subject / referrers

def referrers(c, name, d, artifact_type=None):
    params = {"artifactType": artifact_type} if artifact_type is not None else None
    r = c.get(f"/v2/{name}/referrers/{d}", params=params)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["Content-Type"] == OCI_INDEX
    idx = r.json()
    assert idx["schemaVersion"] == 2
    assert idx["mediaType"] == OCI_INDEX
    assert isinstance(idx["manifests"], list)
    for m in idx["manifests"]:
        if m.get("annotations") == {}:
            del m["annotations"]  # image-spec: absent or an empty map
    return r, idx["manifests"]


def push_artifact(c, name, subject, artifact_type="application/vnd.example.sig.v1", annotations=None,
                  config_media=OCI_EMPTY, with_artifact_type=True, tag=None):
    if config_media == OCI_EMPTY:
        cfg = EMPTY_JSON
    else:
        cfg = canon({"kind": config_media, "n": rand_bytes(4).hex()})
    cd = c.push_blob(name, cfg)
    payload = rand_bytes(32)
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if with_artifact_type:
        m["artifactType"] = artifact_type
    m["config"] = {"mediaType": config_media, "digest": cd, "size": len(cfg)}
    m["layers"] = [{"mediaType": "application/octet-stream", "digest": c.push_blob(name, payload),
                    "size": len(payload)}]
    m["subject"] = subject
    if annotations:
        m["annotations"] = annotations
    body = canon(m)
    r = c.put_manifest(name, tag or digest(body), body)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest(body)
    assert r.headers.get("OCI-Subject") == subject["digest"]
    return body


def test_subject_and_referrers(c):
    name = uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}
    ann = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "x": "y"}
    art = push_artifact(c, name, subject, "application/vnd.example.sig.v1", ann)
    r, ms = referrers(c, name, sd)
    assert "OCI-Filters-Applied" not in r.headers
    assert ms == [{"mediaType": OCI_MANIFEST, "digest": digest(art), "size": len(art),
                   "artifactType": "application/vnd.example.sig.v1", "annotations": ann}]
    # the subject itself still reads back unchanged
    check_get(c, name, "app", subj_body, OCI_MANIFEST)


def test_referrers_filter(c):
    name = uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}
    sig = push_artifact(c, name, subject, "application/vnd.example.sig.v1")
    sbom1 = push_artifact(c, name, subject, "application/vnd.example.sbom.v1")
    sbom2 = push_artifact(c, name, subject, "application/vnd.example.sbom.v1")
    _, ms = referrers(c, name, sd)
    assert sorted(m["digest"] for m in ms) == sorted(digest(x) for x in (sig, sbom1, sbom2))
    r, ms = referrers(c, name, sd, "application/vnd.example.sbom.v1")
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert sorted(m["digest"] for m in ms) == sorted(digest(x) for x in (sbom1, sbom2))
    assert all(m["artifactType"] == "application/vnd.example.sbom.v1" for m in ms)
    r, ms = referrers(c, name, sd, "application/vnd.example.none")
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert ms == []


def test_referrers_filter_with_plus_in_type(c):
    name = uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}
    t = "application/vnd.example.sbom.v1+json"
    art = push_artifact(c, name, subject, t)
    push_artifact(c, name, subject, "application/vnd.example.other")
    r, ms = referrers(c, name, sd, t)  # requests sends the '+' as %2B
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [m["digest"] for m in ms] == [digest(art)]
    assert ms[0]["artifactType"] == t


def test_subject_not_yet_pushed(c):
    name = uniq()
    future = canon(image_manifest(c, name))
    fd = digest(future)
    subject = {"mediaType": OCI_MANIFEST, "digest": fd, "size": len(future)}
    art = push_artifact(c, name, subject, tag="early-sig")
    assert_error(c.get(f"/v2/{name}/manifests/{fd}"), 404, "MANIFEST_UNKNOWN")
    _, ms = referrers(c, name, fd)
    assert [m["digest"] for m in ms] == [digest(art)]
    c.push_manifest(name, fd, future)
    _, ms = referrers(c, name, fd)
    assert [m["digest"] for m in ms] == [digest(art)]


def test_referrers_unknown_digest(c):
    name = uniq()
    c.push_manifest(name, "v", canon(image_manifest(c, name)))
    r, ms = referrers(c, name, digest(b"nothing refers to this"))
    assert ms == []


def test_referrers_artifact_type_falls_back_to_config_media_type(c):
    name = uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}
    cfg_type = "application/vnd.example.config.v1+json"
    art = push_artifact(c, name, subject, config_media=cfg_type, with_artifact_type=False)
    _, ms = referrers(c, name, sd)
    assert len(ms) == 1
    assert ms[0]["digest"] == digest(art)
    assert ms[0]["artifactType"] == cfg_type
    _, ms = referrers(c, name, sd, cfg_type)
    assert [m["digest"] for m in ms] == [digest(art)]


def test_referrers_index_with_subject(c):
    name = uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    child = canon(image_manifest(c, name))
    _, cd = c.push_manifest(name, digest(child), child)
    idx = canon({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.example.bundle",
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": cd, "size": len(child)}],
                 "subject": {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}})
    r = c.put_manifest(name, digest(idx), idx, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers.get("OCI-Subject") == sd
    _, ms = referrers(c, name, sd)
    assert ms == [{"mediaType": OCI_INDEX, "digest": digest(idx), "size": len(idx),
                   "artifactType": "application/vnd.example.bundle"}]


def test_referrers_gone_after_delete(c):
    name = uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}
    art = push_artifact(c, name, subject)
    assert c.delete(f"/v2/{name}/manifests/{digest(art)}").status_code == 202
    _, ms = referrers(c, name, sd)
    assert ms == []


def test_referrers_are_per_repo(c):
    name, other = uniq(), uniq()
    subj_body = canon(image_manifest(c, name))
    _, sd = c.push_manifest(name, "app", subj_body)
    subject = {"mediaType": OCI_MANIFEST, "digest": sd, "size": len(subj_body)}
    push_artifact(c, other, subject)
    _, ms = referrers(c, name, sd)
    assert ms == []


@pytest.mark.parametrize("bad", ["sha256:XYZ", "md5:" + "0" * 32, "sha256:" + "F" * 64])
def test_referrers_bad_digest(c, bad):
    name = uniq()
    c.push_blob(name, b"x")
    assert_error(c.get(f"/v2/{name}/referrers/{bad}"), 400, "DIGEST_INVALID")
