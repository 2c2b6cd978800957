"""Multi-arch done right: Windows and Linux images side by side in one list.

Covers index entry validation against image configs (reject / warn / off), foreign layers and their
URL policy, sparse indexes, content negotiation for clients that take no lists, the variant table
(`/berth/v1/inspect`, `berth inspect`) and the host resolver (`/berth/v1/resolve`, `berth resolve`),
with Windows-shaped images built by winimages.py, pushed through the API, by skopeo and by docker.

Expected resolver answers are derived from ../shared/docs/WINDOWS.md and the sources it names,
not from berth's own table (oci/src/platform/resolve.rs).
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import uuid

import pytest
import requests

from conftest import BERTH_BIN, Berth
from helpers import Client, assert_error, uniq
import winimages as wi
from winimages import (ALL_MANIFEST_TYPES, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                       DOCKER_FOREIGN, OCI_NONDIST, sha256)

POLICY_TOML = r"""
[validation]
platform_check = "warn"
sparse_index = false
foreign_layer_allow = ['^https://mcr\.microsoft\.com/', '^https://go\.microsoft\.com/']
foreign_layer_deny = ['^https://mcr\.microsoft\.com/v2/denied/']

[[validation.repositories]]
pattern = "strict/**"
platform_check = "reject"
sparse_index = true

[[validation.repositories]]
pattern = "quiet/*"
platform_check = "off"
"""


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """berth on embedded defaults (platform_check=warn, any https foreign-layer URL, no sparse indexes)."""
    b = Berth(tmp_path_factory.mktemp("ma-default") / "data").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """berth with the validation policy above."""
    b = Berth(tmp_path_factory.mktemp("ma-policy") / "data", config=POLICY_TOML).start()
    yield b
    b.stop()


@pytest.fixture
def c(reg):
    return Client(reg.url)


@pytest.fixture
def pc(policy):
    return Client(policy.url)


def run(args, timeout=300, check=True, env=None):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and p.returncode != 0:
        pytest.fail(f"command failed (rc={p.returncode}): {' '.join(map(str, args))}\n"
                    f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def berth_cli(*args, check=True):
    return run([BERTH_BIN, *args], timeout=60, check=check)


def warnings_of(resp):
    return resp.raw.headers.getlist("Warning")


def check_variants(ins, imgs, list_digest, list_type):
    """inspect's variant table matches the images pushed, position by position, with no findings."""
    assert ins["digest"] == list_digest
    assert ins["mediaType"] == list_type
    assert ins["findings"] == []
    assert len(ins["variants"]) == len(imgs), ins
    for i, (v, im) in enumerate(zip(ins["variants"], imgs)):
        assert v["position"] == i, v
        assert v["digest"] == im.digest, (i, v)
        assert v["mediaType"] == im.media_type, (i, v)
        assert v["platform"] == im.platform, (i, v)
        assert v["present"] is True, (i, v)
        assert v["layers"] == len(im.layers), (i, v)
        assert v["size"] == im.size, (i, v)
        assert v["config"] == im.config_digest, (i, v)
        assert v["findings"] == [], (i, v)


def test_policy_config_is_accepted(tmp_path):
    cfg = tmp_path / "policy.toml"
    cfg.write_text(POLICY_TOML)
    p = berth_cli("check-config", cfg)
    assert p.stdout.strip() == "ok"
    cfg.write_text(POLICY_TOML.replace('platform_check = "off"', 'platform_check = "sometimes"'))
    p = berth_cli("check-config", cfg, check=False)
    assert p.returncode == 1 and "platform_check" in p.stderr + p.stdout, (p.stdout, p.stderr)


# ---------------------------------------------------------------- 1. a servercore-like list

@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_servercore_like_list_via_api_and_inspect(reg, c, fmt):
    repo = uniq("mcr/windows/servercore")
    imgs = wi.servercore_like(fmt)
    body, dgst = wi.push_list(c, repo, "ltsc", imgs, fmt=fmt)
    list_type = DOCKER_LIST if fmt == "docker" else OCI_INDEX

    r = c.get(f"/v2/{repo}/manifests/ltsc", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["Content-Type"] == list_type
    assert r.headers["Docker-Content-Digest"] == dgst
    for im in imgs:
        r = c.get(f"/v2/{repo}/manifests/{im.digest}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 200 and r.content == im.manifest
        assert r.headers["Content-Type"] == im.media_type

    ins = wi.inspect(c, repo, "ltsc")
    assert ins["repository"] == repo and ins["reference"] == "ltsc"
    check_variants(ins, imgs, dgst, list_type)
    # the Windows entries keep their 4-part os.version and os.features byte-exact
    assert [v["platform"].get("os.version") for v in ins["variants"]] == wi.SERVERCORE_BUILDS + [None, None]
    assert [v["platform"].get("os.features") for v in ins["variants"][:3]] == [["win32k"]] * 3
    assert ins["variants"][4]["platform"]["variant"] == "v8"
    # the same table by digest
    assert wi.inspect(c, repo, dgst)["variants"] == ins["variants"]

    # `berth inspect --json` is the API's answer; the table prints one row per variant
    out = berth_cli("inspect", f"{repo}:ltsc", "--registry", reg.url, "--json").stdout
    assert json.loads(out) == ins
    out = berth_cli("inspect", f"{repo}:ltsc", "--registry", reg.url).stdout
    lines = out.splitlines()
    assert lines[0].split() == [f"{repo}:ltsc", dgst, list_type], out
    rows = [l.split() for l in lines[2:] if re.match(r"^\d+\s", l)]
    assert len(rows) == 5, out
    for i, (row, im) in enumerate(zip(rows, imgs)):
        p = im.platform
        plat = f"{p['os']}/{p['architecture']}" + (f"/{p['variant']}" if "variant" in p else "")
        want = [str(i), plat] + ([p["os.version"]] if "os.version" in p else []) + \
            [str(im.size), str(len(im.layers)), im.digest[:19], "0"]
        assert row == want, out
    assert "finding:" not in out


def test_servercore_like_skopeo_copy_all_is_byte_identical(reg, c, tmp_path, skopeo):
    imgs = wi.servercore_like("oci")
    lay = wi.OCILayout(tmp_path / "layout")
    body, dgst = lay.add_index("ltsc", imgs, fmt="oci")
    repo = uniq("mirror/servercore")
    dest = f"docker://{reg.addr}/{repo}:ltsc"
    run([skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", f"oci:{lay.root}:ltsc", dest])

    r = c.get(f"/v2/{repo}/manifests/ltsc", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == dgst
    assert r.content == body
    for im in imgs:
        r = c.get(f"/v2/{repo}/manifests/{im.digest}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 200 and r.content == im.manifest
        for d, b in im.blobs().items():
            got = c.get_blob(repo, d)
            assert got.status_code == 200 and got.content == b, d
    raw = run([skopeo, "inspect", "--raw", "--tls-verify=false", dest]).stdout.encode()
    assert raw == body
    check_variants(wi.inspect(c, repo, "ltsc"), imgs, dgst, OCI_INDEX)


# ---------------------------------------------------------------- 2. docker manifest

def test_docker_manifest_mixed_linux_windows_list(reg, c, tmp_path, docker_ok):
    uid = uuid.uuid4().hex[:10]
    repo = f"team/app-{uid}"
    base = f"{reg.addr}/{repo}"
    local = f"berth-e2e-ma-{uid}:latest"
    refs = [local, f"{base}:linux-amd64", f"{base}:multi"]
    list_ref = f"{base}:multi"
    try:
        # a Linux image built here and pushed by docker
        rootfs = tmp_path / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(docker_ok, rootfs / "bin" / "busybox")
        os.symlink("busybox", rootfs / "bin" / "cat")
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "berth-e2e-id").write_text(uid + "\n")
        run(["tar", "-C", rootfs, "-cf", tmp_path / "rootfs.tar", "."])
        run(["docker", "import", "--change", 'CMD ["/bin/cat", "/etc/berth-e2e-id"]', tmp_path / "rootfs.tar", local])
        linux_id = run(["docker", "image", "inspect", "-f", "{{.Id}}", local]).stdout.strip()
        run(["docker", "tag", local, f"{base}:linux-amd64"])
        run(["docker", "push", f"{base}:linux-amd64"])

        # Windows-shaped images (and a linux/arm64 one) pushed through the API
        w17 = wi.windows_image("10.0.17763.5936")
        w20 = wi.windows_image("10.0.20348.2527")
        arm = wi.linux_image("arm64", variant="v8")
        wi.push_image(c, repo, w17, "win-17763")
        wi.push_image(c, repo, w20, "win-20348")
        wi.push_image(c, repo, arm, "linux-arm64")

        run(["docker", "manifest", "rm", list_ref], check=False)
        run(["docker", "manifest", "create", "--insecure", list_ref, f"{base}:linux-amd64", f"{base}:linux-arm64",
             f"{base}:win-17763", f"{base}:win-20348"])
        for img, tag in ((w17, "win-17763"), (w20, "win-20348")):
            run(["docker", "manifest", "annotate", "--os", "windows", "--arch", "amd64",
                 "--os-version", img.platform["os.version"], "--os-features", "win32k", list_ref, f"{base}:{tag}"])
        run(["docker", "manifest", "annotate", "--os", "linux", "--arch", "arm64", "--variant", "v8",
             list_ref, f"{base}:linux-arm64"])
        out = run(["docker", "manifest", "push", "--insecure", list_ref]).stdout
        m = re.search(r"sha256:[0-9a-f]{64}", out)
        assert m, out
        list_digest = m.group(0)

        shown = json.loads(run(["docker", "manifest", "inspect", "--insecure", list_ref]).stdout)
        assert shown["mediaType"] == DOCKER_LIST
        plats = {(e["platform"]["os"], e["platform"]["architecture"], e["platform"].get("os.version"),
                  tuple(e["platform"].get("os.features") or ()), e["platform"].get("variant")): e["digest"]
                 for e in shown["manifests"]}
        assert plats[("windows", "amd64", "10.0.17763.5936", ("win32k",), None)] == w17.digest, shown
        assert plats[("windows", "amd64", "10.0.20348.2527", ("win32k",), None)] == w20.digest, shown
        assert plats[("linux", "arm64", None, (), "v8")] == arm.digest, shown
        assert len(shown["manifests"]) == 4

        # the registry holds exactly that list, and its entries agree with their images
        r = c.get(f"/v2/{repo}/manifests/multi", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 200 and r.headers["Content-Type"] == DOCKER_LIST
        assert r.headers["Docker-Content-Digest"] == list_digest == sha256(r.content)
        assert json.loads(r.content)["manifests"] == shown["manifests"]
        ins = wi.inspect(c, repo, "multi")
        assert [v["present"] for v in ins["variants"]] == [True] * 4
        assert all(v["findings"] == [] for v in ins["variants"]), ins
        by_digest = {v["digest"]: v for v in ins["variants"]}
        assert by_digest[w20.digest]["platform"]["os.version"] == "10.0.20348.2527"
        assert by_digest[w17.digest]["layers"] == 2

        # docker on this Linux host pulls the list and gets the linux/amd64 image
        run(["docker", "rmi", "-f", local, f"{base}:linux-amd64"], check=False)
        p = run(["docker", "pull", list_ref])
        assert f"Digest: {list_digest}" in p.stdout + p.stderr, p.stdout
        assert run(["docker", "image", "inspect", "-f", "{{.Id}}", list_ref]).stdout.strip() == linux_id
        assert run(["docker", "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", list_ref]).stdout.strip() \
            == "linux/amd64"
        r = run(["docker", "run", "--rm", "--network", "none", list_ref])
        assert r.stdout == uid + "\n"
    finally:
        run(["docker", "manifest", "rm", list_ref], check=False)
        run(["docker", "rmi", "-f", *refs], check=False)


# ---------------------------------------------------------------- 3. entries that lie about their image

def lying_list(fmt="docker"):
    """[linux/amd64, windows entry saying 20348.2527 over a 17763.5936 config, honest windows 26100]."""
    lin = wi.linux_image("amd64", fmt=fmt)
    liar = wi.windows_image("10.0.20348.2527", config_os_version="10.0.17763.5936", fmt=fmt)
    ok = wi.windows_image("10.0.26100.1742", fmt=fmt)
    return [lin, liar, ok]


def push_children(client, repo, imgs):
    for im in imgs:
        wi.push_image(client, repo, im)
    return wi.index_body([im.entry() for im in imgs], wi.fmt_of(imgs[0]))


def test_platform_lie_rejected(pc):
    repo = uniq("strict/lie")
    imgs = lying_list()
    body, mt = push_children(pc, repo, imgs)
    r = pc.put_manifest(repo, "v1", body, mt)
    assert_error(r, 400, "MANIFEST_INVALID")
    msg = r.json()["errors"][0]["message"]
    assert "manifests[1]" in msg, msg
    assert imgs[1].digest in msg, msg
    assert "os.version" in msg and "10.0.20348.2527" in msg and "10.0.17763.5936" in msg, msg
    assert "windows/amd64" in msg, msg  # the entry's platform is named
    assert "manifests[0]" not in msg and "manifests[2]" not in msg, msg
    assert pc.get(f"/v2/{repo}/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 404
    assert pc.get(f"/v2/{repo}/manifests/{sha256(body)}", headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 404
    # the same list told the truth is accepted in the same repository
    honest, mt = wi.index_body([im.entry() for im in imgs[::2]], "docker")
    r = pc.put_manifest(repo, "v1", honest, mt)
    assert r.status_code == 201, r.text
    assert warnings_of(r) == []


@pytest.mark.parametrize("which", ["default", "policy"])
def test_platform_lie_warned(reg, policy, which):
    b = reg if which == "default" else policy
    cl = Client(b.url)
    repo = uniq("warn/lie")
    imgs = lying_list("oci")
    body, mt = push_children(cl, repo, imgs)
    r = cl.put_manifest(repo, "v1", body, mt)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(body)
    ws = warnings_of(r)
    assert len(ws) == 1, ws
    assert re.match(r'^299 - ".*"$', ws[0]), ws
    assert "manifests[1]" in ws[0] and imgs[1].digest in ws[0] and "os.version" in ws[0], ws
    # stored byte-exact, and the finding sits on that variant
    g = cl.get(f"/v2/{repo}/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES})
    assert g.status_code == 200 and g.content == body
    ins = wi.inspect(cl, repo, "v1")
    f = [v["findings"] for v in ins["variants"]]
    assert f[0] == [] and f[2] == [], ins
    assert len(f[1]) == 1 and "os.version" in f[1][0] and "10.0.17763.5936" in f[1][0], ins
    assert ins["findings"] == []
    # the CLI prints the finding
    out = berth_cli("inspect", f"{repo}:v1", "--registry", b.url).stdout
    assert re.search(r"^finding: .*os\.version", out, re.M), out


def test_platform_lie_not_checked_when_off(pc):
    repo = "quiet/" + uuid.uuid4().hex[:12]
    imgs = lying_list()
    body, mt = push_children(pc, repo, imgs)
    r = pc.put_manifest(repo, "v1", body, mt)
    assert r.status_code == 201, r.text
    assert warnings_of(r) == []
    ins = wi.inspect(pc, repo, "v1")
    assert all(v["findings"] == [] for v in ins["variants"]) and ins["findings"] == [], ins
    # one component deeper is not "quiet/*": checked again (warn by default)
    repo2 = "quiet/" + uuid.uuid4().hex[:12] + "/sub"
    body, mt = push_children(pc, repo2, imgs)
    r = pc.put_manifest(repo2, "v1", body, mt)
    assert r.status_code == 201 and len(warnings_of(r)) == 1, (r.text, warnings_of(r))


def test_diff_ids_count_mismatch(reg, pc):
    # config names one diff_id, the manifest has two layers; the entry's platform is otherwise right
    bad = wi.windows_image("10.0.20348.2527", layers=2, diff_ids=1)
    lin = wi.linux_image("amd64")
    repo = uniq("strict/diffids")
    body, mt = push_children(pc, repo, [lin, bad])
    r = pc.put_manifest(repo, "v1", body, mt)
    assert_error(r, 400, "MANIFEST_INVALID")
    msg = r.json()["errors"][0]["message"]
    assert "manifests[1]" in msg and bad.digest in msg and "rootfs.diff_ids" in msg, msg
    assert "os.version" not in msg, msg

    cl = Client(reg.url)
    repo = uniq("warn/diffids")
    body, mt = push_children(cl, repo, [lin, bad])
    r = cl.put_manifest(repo, "v1", body, mt)
    assert r.status_code == 201, r.text
    ws = warnings_of(r)
    assert len(ws) == 1 and ws[0].startswith("299 ") and "rootfs.diff_ids" in ws[0], ws
    ins = wi.inspect(cl, repo, "v1")
    assert ins["variants"][0]["findings"] == []
    assert len(ins["variants"][1]["findings"]) == 1 and "rootfs.diff_ids" in ins["variants"][1]["findings"][0]

    # more diff_ids than layers is just as wrong
    bad3 = wi.windows_image("10.0.20348.2527", layers=1, diff_ids=3)
    repo = uniq("strict/diffids")
    body, mt = push_children(pc, repo, [bad3])
    assert_error(pc.put_manifest(repo, "v1", body, mt), 400, "MANIFEST_INVALID")


def test_other_fields_checked_and_normalised(pc):
    repo = uniq("strict/fields")
    # architecture: entry says arm64, the image is amd64
    amd = wi.linux_image("amd64")
    wi.push_image(pc, repo, amd)
    body, mt = wi.index_body([amd.entry(wi.platform_dict("linux", "arm64"))])
    r = pc.put_manifest(repo, "arch", body, mt)
    assert_error(r, 400, "MANIFEST_INVALID")
    msg = r.json()["errors"][0]["message"]
    assert "manifests[0]" in msg and amd.digest in msg and "architecture" in msg, msg
    # os.features: entry drops win32k that the config declares
    w = wi.windows_image("10.0.20348.2527")
    wi.push_image(pc, repo, w)
    body, mt = wi.index_body([w.entry(wi.platform_dict("windows", "amd64", os_version="10.0.20348.2527"))])
    r = pc.put_manifest(repo, "feat", body, mt)
    assert_error(r, 400, "MANIFEST_INVALID")
    assert "os.features" in r.json()["errors"][0]["message"]
    # os: a Windows image listed as linux
    body, mt = wi.index_body([w.entry(dict(w.platform, os="linux"))])
    r = pc.put_manifest(repo, "os", body, mt)
    assert_error(r, 400, "MANIFEST_INVALID")
    assert re.search(r"\bos\b", r.json()["errors"][0]["message"])
    # normalisation: an entry arm64/v8 over a config without variant, aarch64 over arm64, agree
    arm = wi.linux_image("arm64")  # config: no variant
    wi.push_image(pc, repo, arm)
    body, mt = wi.index_body([arm.entry(wi.platform_dict("linux", "arm64", variant="v8")),
                              arm.entry(wi.platform_dict("linux", "aarch64"))])
    r = pc.put_manifest(repo, "norm", body, mt)
    assert r.status_code == 201, r.text
    assert warnings_of(r) == []


def test_every_disagreeing_entry_gets_its_own_warning(c):
    repo = uniq("warn/two-liars")
    lin = wi.linux_image("amd64")
    liar1 = wi.windows_image("10.0.20348.2527", config_os_version="10.0.17763.5936")
    honest = wi.windows_image("10.0.26100.1742")
    liar2 = wi.windows_image("10.0.26100.1742", layers=2, diff_ids=1)
    imgs = [lin, liar1, honest, liar2]
    body, mt = push_children(c, repo, imgs)
    r = c.put_manifest(repo, "v1", body, mt)
    assert r.status_code == 201, r.text
    ws = warnings_of(r)
    assert len(ws) == 2, ws
    assert all(w.startswith("299 - \"") and w.endswith("\"") for w in ws), ws
    assert "manifests[1]" in ws[0] and "os.version" in ws[0], ws
    assert "manifests[3]" in ws[1] and "rootfs.diff_ids" in ws[1], ws
    ins = wi.inspect(c, repo, "v1")
    assert [len(v["findings"]) for v in ins["variants"]] == [0, 1, 0, 1], ins
    # pushing the same list again (another tag) neither loses nor duplicates the findings
    r = c.put_manifest(repo, "v2", body, mt)
    assert r.status_code == 201 and len(warnings_of(r)) == 2
    assert [len(v["findings"]) for v in wi.inspect(c, repo, "v2")["variants"]] == [0, 1, 0, 1]


def test_inspect_single_windows_image(reg, c):
    repo = uniq("win/single")
    w = wi.windows_image("10.0.20348.2527", layers=3)
    wi.push_image(c, repo, w, "ltsc2022")
    ins = wi.inspect(c, repo, "ltsc2022")
    assert ins["digest"] == w.digest and ins["mediaType"] == DOCKER_MANIFEST
    assert len(ins["variants"]) == 1
    v = ins["variants"][0]
    assert v["position"] is None and v["digest"] == w.digest and v["present"] is True
    # the platform comes from the image config
    assert v["platform"] == w.platform
    assert (v["size"], v["layers"], v["config"]) == (w.size, 3, w.config_digest)
    # and the resolver answers for it as a one-entry list
    for platform, want in (("windows/amd64:10.0.26100.1", w.digest), ("windows/amd64:10.0.17763.1", None),
                           ("linux/amd64", None)):
        r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
            "repository": repo, "reference": "ltsc2022", "platform": platform})
        assert r.status_code == 200 and r.json()["chosen"] == want, (platform, r.text)


# ---------------------------------------------------------------- 4. foreign layers

MCR_URL = "https://mcr.microsoft.com/v2/windows/servercore/blobs/"


def mcr(d):
    return [MCR_URL + d]


def test_foreign_layer_url_policy(reg, c):
    # image-spec: registries accept existing images with non-distributable layers. By default any
    # https URL is taken, the blob never pushed; Docker and OCI media types alike.
    repo = uniq("win/foreign")
    for n, (fmt, urls) in enumerate((("docker", mcr), ("oci", mcr),
                                     ("docker", ["https://go.microsoft.com/fwlink/?linkid=837858"]),
                                     ("oci", ["https://store.example.com/blobs/base.tar.gz"]),
                                     ("oci", lambda d: mcr(d) + ["https://example.com/mirror/x"]))):
        img = wi.windows_image("10.0.17763.5936", fmt=fmt, foreign_urls=urls)
        base = img.layers[0]
        assert base.media_type == (DOCKER_FOREIGN if fmt == "docker" else OCI_NONDIST)
        assert base.urls and base.digest not in img.blobs()
        wi.push_image(c, repo, img)
        ins = wi.inspect(c, repo, img.digest)
        assert ins["variants"][0]["layers"] == len(img.layers) and ins["variants"][0]["size"] == img.size, ins
        # never pushed: not served here (the client fetches it from the URL)
        assert_error(c.get_blob(repo, base.digest), 404, "BLOB_UNKNOWN")
        # and usable in a list, whose diff_ids check counts the foreign layer
        body, mt = wi.index_body([img.entry()], fmt)
        r = c.put_manifest(repo, f"list-{n}", body, mt)
        assert r.status_code == 201 and warnings_of(r) == [], (r.text, warnings_of(r))

    # refused by default: plain http and other schemes, also one among good URLs; the spec's
    # answer for a layer the registry will not take is MANIFEST_BLOB_UNKNOWN
    for urls in (["http://mcr.microsoft.com/v2/windows/servercore/blobs/x"],
                 ["file:///etc/passwd"],
                 lambda d: mcr(d) + ["http://example.com/mirror/x"]):
        assert_foreign_refused(c, repo, urls, lambda u: not u.startswith("https://"))


def assert_foreign_refused(client, repo, urls, is_bad):
    for fmt in ("docker", "oci"):
        img = wi.windows_image("10.0.17763.5936", fmt=fmt, foreign_urls=urls)
        for b in img.blobs().values():
            client.push_blob(repo, b)
        r = client.put_manifest(repo, img.digest, img.manifest, img.media_type)
        assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
        bad = [u for u in img.layers[0].urls if is_bad(u)][0]
        err = r.json()["errors"][0]
        assert bad in err["message"] and err["detail"]["digest"] == img.layers[0].digest, r.text
        assert client.get(f"/v2/{repo}/manifests/{img.digest}",
                          headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 404


def test_foreign_layer_allow_rule(pc):
    # an opt-in allowlist (a Windows mirror keeping only Microsoft's URLs) refuses the rest
    repo = uniq("win/allow")
    wi.push_image(pc, repo, wi.windows_image("10.0.17763.5936", foreign_urls=mcr), "allowed")
    for urls in (["https://example.com/layers/base.tar.gz"],
                 ["https://mcr.microsoft.com.evil.example/x"],
                 lambda d: mcr(d) + ["https://example.com/mirror/x"]):
        assert_foreign_refused(pc, repo, urls, lambda u: not u.startswith("https://mcr.microsoft.com/"))


def test_urls_on_a_distributable_layer_do_not_exempt_it(c):
    # image-spec: "the presence of urls does not by itself make a layer non-distributable"
    repo = uniq("win/urls")
    for fmt in ("docker", "oci"):
        img = wi.windows_image("10.0.20348.2527", fmt=fmt)
        base = img.layers[0]
        base.urls = mcr(base.digest)
        img.rebuild()
        assert "urls" in img.manifest_obj["layers"][0]
        for d, b in img.blobs().items():
            if d != base.digest:
                c.push_blob(repo, b)
        assert_error(c.put_manifest(repo, f"v-{fmt}", img.manifest, img.media_type), 400, "MANIFEST_BLOB_UNKNOWN")
        c.push_blob(repo, base.blob)
        r = c.put_manifest(repo, f"v-{fmt}", img.manifest, img.media_type)
        assert r.status_code == 201, r.text


def test_foreign_layer_deny_rule(pc):
    repo = uniq("win/deny")
    ok = wi.windows_image("10.0.17763.5936", foreign_urls=mcr)
    wi.push_image(pc, repo, ok, "allowed")
    denied = wi.windows_image("10.0.17763.5936", foreign_urls=lambda d: [
        f"https://mcr.microsoft.com/v2/denied/servercore/blobs/{d}"])
    for b in denied.blobs().values():
        pc.push_blob(repo, b)
    r = pc.put_manifest(repo, "denied", denied.manifest, denied.media_type)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    msg = r.json()["errors"][0]["message"]
    assert "deny" in msg and "/v2/denied/" in msg, msg
    assert pc.get(f"/v2/{repo}/manifests/denied", headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 404


def test_foreign_layer_pushed_blob_is_served(c):
    repo = uniq("win/foreign-present")
    for fmt in ("docker", "oci"):
        img = wi.windows_image("10.0.20348.2527", fmt=fmt, foreign_urls=mcr, push_foreign=True)
        base = img.layers[0]
        assert base.digest in img.blobs()
        wi.push_image(c, repo, img, f"v-{fmt}")
        g = c.get_blob(repo, base.digest)
        assert g.status_code == 200, g.text
        assert g.content == base.blob
        assert g.headers["Docker-Content-Digest"] == base.digest
        h = c.head(f"/v2/{repo}/blobs/{base.digest}")
        assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(base.blob)
        m = c.get(f"/v2/{repo}/manifests/v-{fmt}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert m.status_code == 200 and m.content == img.manifest


# ---------------------------------------------------------------- 5. sparse indexes

def test_sparse_index(policy, pc, c):
    present = [wi.linux_image("amd64", fmt="oci"), wi.windows_image("10.0.20348.2527", fmt="oci")]
    absent = [wi.windows_image("10.0.17763.5936", fmt="oci"), wi.linux_image("arm64", variant="v8", fmt="oci")]
    order = [present[0], absent[0], present[1], absent[1]]
    body, mt = wi.index_body([im.entry() for im in order], "oci")

    repo = uniq("strict/mirror/servercore")
    wi.push_images(pc, repo, present)
    r = pc.put_manifest(repo, "ltsc", body, mt)
    assert r.status_code == 201, r.text
    ins = wi.inspect(pc, repo, "ltsc")
    assert [v["present"] for v in ins["variants"]] == [True, False, True, False], ins
    assert [v["digest"] for v in ins["variants"]] == [im.digest for im in order]
    assert [v["platform"] for v in ins["variants"]] == [im.platform for im in order]
    for v, im in zip(ins["variants"], order):
        if v["present"]:
            assert (v["size"], v["layers"], v["config"]) == (im.size, len(im.layers), im.config_digest)
        else:
            assert v["size"] is None and v["layers"] is None and v["config"] is None, v
    g = pc.get(f"/v2/{repo}/manifests/ltsc", headers={"Accept": OCI_INDEX})
    assert g.status_code == 200 and g.content == body
    out = berth_cli("inspect", f"{repo}:ltsc", "--registry", policy.url).stdout
    rows = [l.split() for l in out.splitlines() if re.match(r"^\d+\s", l)]
    assert len(rows) == 4, out
    for row, im in zip(rows, order):
        if im in present:
            assert row[-4:] == [str(im.size), str(len(im.layers)), im.digest[:19], "0"], out
        else:
            assert row[-3:] == ["absent", im.digest[:19], "0"], out
    assert_error(pc.get(f"/v2/{repo}/manifests/{absent[0].digest}", headers={"Accept": ALL_MANIFEST_TYPES}),
                 404, "MANIFEST_UNKNOWN")

    # outside the pattern (same server, and the defaults): MANIFEST_BLOB_UNKNOWN
    for cl, repo in ((pc, uniq("lax/servercore")), (c, uniq("strict/servercore"))):
        wi.push_images(cl, repo, present)
        r = cl.put_manifest(repo, "ltsc", body, mt)
        assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
        assert cl.get(f"/v2/{repo}/manifests/ltsc", headers={"Accept": OCI_INDEX}).status_code == 404


def test_sparse_index_from_skopeo_index_only(reg, policy, tmp_path, skopeo):
    """`skopeo copy --multi-arch index-only` pushes the index without its children: a sparse index."""
    imgs = wi.servercore_like("oci")
    lay = wi.OCILayout(tmp_path / "layout")
    body, dgst = lay.add_index("ltsc", imgs, fmt="oci")
    src = f"oci:{lay.root}:ltsc"
    repo = uniq("strict/mirror/servercore")
    run([skopeo, "copy", "--multi-arch", "index-only", "--preserve-digests", "--dest-tls-verify=false", src,
         f"docker://{policy.addr}/{repo}:ltsc"])
    pc = Client(policy.url)
    r = pc.get(f"/v2/{repo}/manifests/ltsc", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200 and r.content == body and r.headers["Docker-Content-Digest"] == dgst
    ins = wi.inspect(pc, repo, "ltsc")
    assert [v["present"] for v in ins["variants"]] == [False] * 5, ins
    assert [v["platform"] for v in ins["variants"]] == [im.platform for im in imgs]
    # a later `--all` copy fills it in, same digest
    run([skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", src,
         f"docker://{policy.addr}/{repo}:ltsc"])
    check_variants(wi.inspect(pc, repo, "ltsc"), imgs, dgst, OCI_INDEX)
    # where sparse indexes are not allowed, skopeo's push fails
    repo2 = uniq("mirror/servercore")
    p = run([skopeo, "--debug", "copy", "--multi-arch", "index-only", "--preserve-digests",
             "--dest-tls-verify=false", src, f"docker://{reg.addr}/{repo2}:ltsc"], check=False)
    assert p.returncode != 0
    # skopeo then tries a Docker list, which --preserve-digests forbids; its debug log keeps the first error
    assert "manifest blob unknown" in p.stderr.lower(), p.stderr[-3000:]
    assert Client(reg.url).get(f"/v2/{repo2}/manifests/ltsc", headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 404


# ---------------------------------------------------------------- 6. content negotiation

def test_content_negotiation(c):
    repo = uniq("neg/app")
    imgs = wi.servercore_like("docker")
    body, dgst = wi.push_list(c, repo, "v1", imgs)
    amd = imgs[3]
    assert amd.platform == {"architecture": "amd64", "os": "linux"}

    # a client that takes only image manifests gets the linux/amd64 entry (by tag: see the next test
    # for digests)
    for ref in ("v1",):
        for accept in ([DOCKER_MANIFEST], [f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"], [OCI_MANIFEST]):
            for method in ("GET", "HEAD"):
                r = c.request(method, f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept[0]})
                assert r.status_code == 200, (ref, accept, r.text)
                assert r.headers["Docker-Content-Digest"] == amd.digest, (ref, accept)
                assert r.headers["Content-Type"] == DOCKER_MANIFEST
                assert int(r.headers["Content-Length"]) == len(amd.manifest)
                if method == "GET":
                    assert r.content == amd.manifest

    # a client that names a list type (or */*, or nothing) gets the list
    for accept in (DOCKER_LIST, OCI_INDEX, f"{DOCKER_MANIFEST}, {DOCKER_LIST}",
                   f"{DOCKER_MANIFEST};q=0.9, {DOCKER_LIST};q=0.5", "*/*", None):
        headers = {"Accept": accept} if accept is not None else {}
        r = c.get(f"/v2/{repo}/manifests/v1", headers=headers)
        assert r.status_code == 200, (accept, r.text)
        assert r.headers["Docker-Content-Digest"] == dgst, accept
        assert r.headers["Content-Type"] == DOCKER_LIST and r.content == body, accept
    # list types in a second Accept header line count too
    host, port = c.base.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", f"/v2/{repo}/manifests/v1")
    conn.putheader("Accept", DOCKER_MANIFEST)
    conn.putheader("Accept", DOCKER_LIST)
    conn.endheaders()
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("Docker-Content-Digest") == dgst and data == body

    # several linux/amd64 entries, none first: the first of them by position (an OCI index, OCI client)
    oimgs = [wi.windows_image("10.0.20348.2527", fmt="oci"), wi.linux_image("arm64", variant="v8", fmt="oci"),
             wi.linux_image("amd64", fmt="oci"), wi.linux_image("amd64", fmt="oci")]
    body3, dgst3 = wi.push_list(c, repo, "oci", oimgs, fmt="oci")
    r = c.get(f"/v2/{repo}/manifests/oci", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == oimgs[2].digest
    assert r.headers["Content-Type"] == OCI_MANIFEST and r.content == oimgs[2].manifest
    r = c.get(f"/v2/{repo}/manifests/oci", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == dgst3 and r.content == body3

    # an image manifest is served as itself whatever the client accepts
    r = c.get(f"/v2/{repo}/manifests/{imgs[0].digest}", headers={"Accept": DOCKER_MANIFEST})
    assert r.status_code == 200 and r.content == imgs[0].manifest

    # a list without a linux/amd64 entry: MANIFEST_UNKNOWN for such a client, the list for others
    win_only = [wi.windows_image(v) for v in wi.SERVERCORE_BUILDS] + [wi.linux_image("arm64", variant="v8")]
    body2, dgst2 = wi.push_list(c, repo, "windows", win_only)
    for method in ("GET", "HEAD"):
        r = c.request(method, f"/v2/{repo}/manifests/windows", headers={"Accept": DOCKER_MANIFEST})
        assert_error(r, 404, "MANIFEST_UNKNOWN")
    r = c.get(f"/v2/{repo}/manifests/windows", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200 and r.content == body2 and r.headers["Docker-Content-Digest"] == dgst2


def test_content_negotiation_by_digest_never_rewrites(c):
    """A manifest fetched by digest must be the bytes of that digest, whatever the Accept header.

    distribution (registry/handlers/manifests.go GetManifest): "Only rewrite manifests lists when they
    are being fetched by tag. If they are being fetched by digest, we can't return something not
    matching the digest." berth's manifest_for_accept says it picks linux/amd64 "as distribution
    does", and CONTRACT.md promises GET/HEAD of a manifest is byte-exact.
    """
    repo = uniq("neg/by-digest")
    imgs = wi.servercore_like("docker")
    body, dgst = wi.push_list(c, repo, "v1", imgs)
    win_only = [wi.windows_image(v) for v in wi.SERVERCORE_BUILDS]
    body2, dgst2 = wi.push_list(c, repo, "windows", win_only)
    for d, b in ((dgst, body), (dgst2, body2)):
        for method in ("GET", "HEAD"):
            r = c.request(method, f"/v2/{repo}/manifests/{d}", headers={"Accept": DOCKER_MANIFEST})
            assert r.status_code == 200, (method, d, r.status_code, r.text)
            assert r.headers["Docker-Content-Digest"] == d, (method, d, r.headers["Docker-Content-Digest"])
            assert int(r.headers["Content-Length"]) == len(b)
            if method == "GET":
                assert sha256(r.content) == d


# ---------------------------------------------------------------- 7. the resolver

# The list, in this order. 20348 has two revisions, the newer one first (newest-first inside a
# build, as ../shared/docs/WINDOWS.md "Registry consequences" recommends); "999" vs "1000" differ
# in digit count.
RESOLVER_ENTRIES = [
    ("w14393", "10.0.14393.7159"),
    ("w17763", "10.0.17763.5936"),
    ("w19041", "10.0.19041.1415"),
    ("w20348.1000", "10.0.20348.1000"),
    ("w20348.999", "10.0.20348.999"),
    ("w22621", "10.0.22621.3007"),
    ("w25398", "10.0.25398.700"),
    ("w26100", "10.0.26100.3000"),
    ("linux-amd64", None),
    ("linux-arm64", None),
]

# Sources (../shared/docs/WINDOWS.md §2.1):
CD = "containerd/platforms platform_windows_compat.go checkWindowsHostAndContainerCompat (+#34), platforms.go Match (win32k stripped, #31)"
CD_ORDER = "containerd/platforms platform_windows_compat.go windowsMatchComparer.Less: os.version string compare (#25)"
CD_ONLY = "containerd/platforms compare.go Only/platformVector"
MOBY = "moby/moby daemon/internal/distribution/pull_v2_windows.go filterManifests+checkImageCompatibility (build <= host)"
MOBY_ORDER = "moby/moby pull_v2_windows.go manifestsByVersion (sort.Stable, '<build>.' prefix first, list order)"
MS = "MicrosoftDocs version-compatibility.md (process isolation: same build, 14393 same revision; WS2022+ window)"

# Host versions. Hosts' UBRs differ from the images' (allowed from 17763 on, MS) except on 14393,
# where process isolation needs the same revision (MS): that host matches the 14393 entry exactly.
HOSTS = {b: f"windows/amd64:10.0.{b}.{u}" for b, u in
         [(14393, 7159), (17763, 5458), (19041, 1415), (20348, 2340), (22621, 3007), (25398, 700),
          (26100, 3000), (26200, 100)]}

# (platform, isolation, rule, expected entry key or None, process_mismatch, source)
RESOLVER_TABLE = []
for _b, _cd, _moby in [
    # build  containerd (isolation is not part of its matcher)   moby (isolation ignored too)
    (14393, "w14393", "w14393"),          # CD: host < 20348 needs the same build | MOBY_ORDER: prefix 10.0.14393.
    (17763, "w17763", "w17763"),          # CD: same build                        | MOBY_ORDER: prefix match first
    (19041, "w19041", "w19041"),          # CD: same build                        | MOBY_ORDER
    (20348, "w20348.999", "w20348.1000"),  # CD_ORDER: "…999" > "…1000"            | MOBY_ORDER: list order, .1000 first
    (22621, "w22621", "w22621"),          # CD: window [20348, 22621], CD_ORDER   | MOBY_ORDER: prefix match
    (25398, "w25398", "w25398"),          # CD: window [20348, 25398], CD_ORDER   | MOBY_ORDER
    (26100, "w26100", "w26100"),          # CD: window [20348, 26100], CD_ORDER   | MOBY_ORDER
    (26200, "w26100", "w14393"),          # CD: #34 window [20348, 26200]; newest is 26100 | MOBY: all builds <= host
                                          # kept, no '10.0.26200.' prefix, so list order: 14393 first
]:
    for _iso in ("process", "hyperv"):
        # process_mismatch (MS): the chosen image cannot run under process isolation on this host.
        # moby on 26200 pulls 14393: outside the [20348, 26200] stable-ABI window.
        _mm_moby = _iso == "process" and _b == 26200
        RESOLVER_TABLE.append((HOSTS[_b], _iso, "containerd", _cd, False, CD if _b < 20348 else f"{CD}; {CD_ORDER}"))
        RESOLVER_TABLE.append((HOSTS[_b], _iso, "moby", _moby, _mm_moby, f"{MOBY}; {MOBY_ORDER}; {MS}"))
RESOLVER_TABLE += [
    # 1903 host, no 18362 entry. containerd: same build required -> nothing (CD).
    ("windows/amd64:10.0.18362.1", "hyperv", "containerd", None, False, CD),
    # moby keeps 14393 and 17763 (<= 18362), neither has the prefix: list order -> 14393 (MOBY_ORDER);
    # under process isolation it will not start (MS).
    ("windows/amd64:10.0.18362.1", "process", "moby", "w14393", True, MOBY_ORDER),
    # WS2016 host one revision behind the image: containerd pulls it (build only), but process
    # isolation needs the same revision on 14393 (MS).
    ("windows/amd64:10.0.14393.6000", "process", "containerd", "w14393", True, MS),
    ("windows/amd64:10.0.14393.6000", "hyperv", "containerd", "w14393", False, MS),
    # Windows on arm64: no arm64 Windows entry (CD; MOBY: architecture == runtime.GOARCH)
    ("windows/arm64:10.0.26100.3000", "process", "containerd", None, False, CD),
    ("windows/arm64:10.0.26100.3000", "process", "moby", None, False, MOBY),
    # Linux hosts: platforms.Only for both clients (CD_ONLY; moby pull_v2_unix.go)
    ("linux/amd64", "process", "containerd", "linux-amd64", False, CD_ONLY),
    ("linux/amd64", "process", "moby", "linux-amd64", False, CD_ONLY),
    ("linux/amd64/v3", "process", "containerd", "linux-amd64", False, CD_ONLY),  # v3 -> v2 -> v1 -> 386
    ("linux/arm64", "process", "containerd", "linux-arm64", False, CD_ONLY),     # arm64 == arm64/v8
    ("linux/arm64/v8", "hyperv", "moby", "linux-arm64", False, CD_ONLY),
    ("linux/aarch64", "process", "containerd", "linux-arm64", False, CD_ONLY),   # normalised
    ("linux/arm/v7", "process", "containerd", None, False, CD_ONLY),             # arm/v7..v5 only
    ("linux/386", "process", "moby", None, False, CD_ONLY),                      # 386 does not run amd64
]


@pytest.fixture(scope="module")
def resolver_list(reg):
    cl = Client(reg.url)
    repo = uniq("resolve/servercore")
    imgs = {}
    for key, ver in RESOLVER_ENTRIES:
        if ver:
            imgs[key] = wi.windows_image(ver, layers=1)
        elif key == "linux-amd64":
            imgs[key] = wi.linux_image("amd64", layers=1)
        else:
            imgs[key] = wi.linux_image("arm64", variant="v8", layers=1)
    body, dgst = wi.push_list(cl, repo, "multi", [imgs[k] for k, _ in RESOLVER_ENTRIES])
    return repo, dgst, {k: im.digest for k, im in imgs.items()}


def test_resolver_table_is_big_enough():
    assert len(RESOLVER_TABLE) >= 25
    for b in (14393, 17763, 19041, 20348, 22621, 25398, 26100, 26200):
        for iso in ("process", "hyperv"):
            for rule in ("containerd", "moby"):
                assert any(r[0] == HOSTS[b] and r[1] == iso and r[2] == rule for r in RESOLVER_TABLE)


@pytest.mark.parametrize("platform,isolation,rule,want,mismatch,source", RESOLVER_TABLE,
                         ids=[f"{r[0].replace('/', '_')}-{r[1]}-{r[2]}" for r in RESOLVER_TABLE])
def test_resolver(reg, resolver_list, platform, isolation, rule, want, mismatch, source):
    repo, list_digest, digests = resolver_list
    want_digest = digests[want] if want else None
    names = {d: k for k, d in digests.items()}

    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": "multi", "platform": platform, "isolation": isolation, "rule": rule})
    assert r.status_code == 200, r.text
    a = r.json()
    ctx = f"{platform} {isolation} {rule} (source: {source}); got {names.get(a.get('chosen'))}: " \
          f"{json.dumps(a['resolution'], indent=1)}"
    assert a["repository"] == repo and a["reference"] == "multi" and a["digest"] == list_digest
    assert a["host"]["isolation"] == isolation and a["host"]["rule"] == rule
    assert a["chosen"] == want_digest, ctx
    res = a["resolution"]
    assert (res["chosen_compat"] is None) == (want is None), ctx   # a verdict exactly when there is a choice
    assert res["process_mismatch"] == mismatch, ctx
    assert len(res["verdicts"]) == len(RESOLVER_ENTRIES)
    assert [v["index"] for v in res["verdicts"]] == list(range(len(RESOLVER_ENTRIES)))
    assert [v["digest"] for v in res["verdicts"]] == [digests[k] for k, _ in RESOLVER_ENTRIES]
    for v in res["verdicts"]:
        assert v["reason"], v
        assert (v["rank"] == 0) == (v["digest"] == want_digest), (v, ctx)
        assert (v["rank"] is not None) == v["kept"], v
    if want:
        assert res["chosen"]["digest"] == want_digest
    else:
        assert res["chosen"] is None and not any(v["kept"] for v in res["verdicts"]), ctx

    # the CLI asks the same question: exit 0 with a choice, 3 without; --json is the API's answer
    ref = f"{repo}:multi"
    p = berth_cli("resolve", ref, "--platform", platform, "--isolation", isolation, "--rule", rule,
                  "--registry", reg.url, "--json", check=False)
    assert p.returncode == (0 if want else 3), (p.returncode, p.stdout, p.stderr)
    assert json.loads(p.stdout)["chosen"] == want_digest
    p = berth_cli("resolve", ref, "--platform", platform, "--isolation", isolation, "--rule", rule,
                  "--registry", reg.url, check=False)
    assert p.returncode == (0 if want else 3), (p.returncode, p.stdout, p.stderr)
    if want:
        assert any(l.startswith(f"chosen: {want_digest} (") for l in p.stdout.splitlines()), p.stdout
        assert re.search(rf"^=> \[\d+\] {re.escape(want_digest)} ", p.stdout, re.M), p.stdout
    else:
        assert "chosen: none (no matching manifest)" in p.stdout.splitlines(), p.stdout
    if mismatch:
        assert "cannot run under process isolation" in p.stdout, p.stdout


@pytest.mark.parametrize("host,isolation,rule,want,missed", [
    # containerd/platforms#34 (../shared/docs/WINDOWS.md 2.1 (a) 5.): floor = previous LTSC of the
    # host's generation
    (HOSTS[26200], "process", "containerd", "w20348", []),     # before #34 the floor was 26100: nothing
    (HOSTS[26100], "process", "containerd", "w20348", []),
    (HOSTS[22621], "process", "containerd", "w20348", []),
    (HOSTS[20348], "process", "containerd", "w20348", []),
    # Hyper-V could run 17763 on these hosts, but the containerd matcher ignores isolation
    # (../shared/docs/WINDOWS.md: containerd#6862, KEP-4216): 17763 is a runnable entry the client
    # drops
    (HOSTS[26200], "hyperv", "containerd", "w20348", ["w17763"]),
    (HOSTS[19041], "hyperv", "containerd", None, ["w17763"]),
    # moby keeps both (builds <= host) and, with no prefix match on 26200, takes list order: 17763
    (HOSTS[26200], "hyperv", "moby", "w17763", []),
    (HOSTS[19041], "hyperv", "moby", "w17763", []),
])
def test_resolver_ltsc_floor_and_missed_runnable(reg, c, host, isolation, rule, want, missed):
    repo = "resolve/floor"
    imgs = {"w17763": wi.windows_image("10.0.17763.5936", layers=1),
            "w20348": wi.windows_image("10.0.20348.2527", layers=1)}
    # the images are generated afresh per row; a tag per row keeps them apart
    tag = uuid.uuid4().hex[:12]
    wi.push_list(c, repo, tag, [imgs["w17763"], imgs["w20348"]])
    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": tag, "platform": host, "isolation": isolation, "rule": rule})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["chosen"] == (imgs[want].digest if want else None), json.dumps(a, indent=1)
    pos = {"w17763": 0, "w20348": 1}
    assert a["resolution"]["missed_runnable"] == [pos[k] for k in missed], json.dumps(a, indent=1)


def test_resolver_ubr_note_and_errors(reg, resolver_list):
    repo, _, digests = resolver_list
    # containerd on 20348 takes .999 over .1000 (string order) and the answer says so
    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": "multi", "platform": HOSTS[20348], "rule": "containerd"})
    a = r.json()
    assert a["chosen"] == digests["w20348.999"]
    assert any(digests["w20348.1000"] in n for n in a["resolution"]["notes"]), a["resolution"]["notes"]
    # defaults: process isolation, containerd rules
    assert a["host"]["isolation"] == "process" and a["host"]["rule"] == "containerd"
    # the CLI by digest, with its defaults (process, containerd)
    p = berth_cli("resolve", f"{repo}@{a['digest']}", "--platform", HOSTS[20348], "--registry", reg.url, "--json")
    assert json.loads(p.stdout)["chosen"] == digests["w20348.999"]
    # a bad platform is a 400 with a JSON error; an unknown tag is MANIFEST_UNKNOWN
    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": "multi", "platform": "windows"})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "UNSUPPORTED", r.text
    assert "invalid platform" in r.json()["errors"][0]["message"], r.text
    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": "nope", "platform": "linux/amd64"})
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN", r.text
    p = berth_cli("resolve", f"{repo}:nope", "--platform", "linux/amd64", "--registry", reg.url, check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)   # an error; not 3 (no match)
    assert "404 Not Found MANIFEST_UNKNOWN" in p.stderr, p.stderr


def test_berth_api_bad_query_is_a_json_error(reg, resolver_list):
    """CONTRACT.md: every 4xx is JSON {"errors":[{code,message,detail}]} with a spec code."""
    repo, _, _ = resolver_list
    base = {"repository": repo, "reference": "multi", "platform": "linux/amd64"}
    for path, params in (("/berth/v1/resolve", dict(base, isolation="bogus")),
                         ("/berth/v1/resolve", dict(base, rule="bogus")),
                         ("/berth/v1/resolve", {"repository": repo, "reference": "multi"}),
                         ("/berth/v1/inspect", {"repository": repo})):
        r = requests.get(reg.url + path, params=params, timeout=30)
        assert r.status_code == 400, (params, r.status_code, r.text)
        assert "json" in r.headers.get("Content-Type", ""), (path, params, r.headers.get("Content-Type"), r.text)
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED", (params, r.text)
    # so the CLI can say what was wrong
    p = berth_cli("resolve", f"{repo}:multi", "--platform", "linux/amd64", "--isolation", "bogus",
                  "--registry", reg.url, check=False)
    assert p.returncode == 1 and "isolation" in p.stderr, (p.returncode, p.stderr)


def test_berth_api_malformed_digest_is_digest_invalid(reg, resolver_list):
    """CONTRACT.md: a digest not of the form sha256:<64 hex> is 400 DIGEST_INVALID (as /v2/ answers)."""
    repo, _, _ = resolver_list
    v2 = requests.get(f"{reg.url}/v2/{repo}/manifests/sha256:zz", timeout=30)
    assert v2.status_code == 400 and v2.json()["errors"][0]["code"] == "DIGEST_INVALID", v2.text
    for path, extra in (("/berth/v1/inspect", {}), ("/berth/v1/resolve", {"platform": "linux/amd64"})):
        r = requests.get(reg.url + path, params=dict(extra, repository=repo, reference="sha256:zz"), timeout=30)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID", (path, r.text)


def test_resolver_entry_without_platform(reg, c):
    """An index entry may omit `platform` (image-spec: OPTIONAL). containerd keeps such entries and ranks
    them last, then checks the image config's platform (containerd core/images/image.go Manifest():
    `d.Platform == nil || platform.Match(*d.Platform)`, sort.SliceStable nil-last, ConfigPlatform match);
    moby's Linux filterManifests (pull_v2_unix.go) keeps `descP == nil` entries likewise."""
    repo = uniq("resolve/no-platform")
    arm = wi.linux_image("arm64", variant="v8", fmt="oci")
    amd = wi.linux_image("amd64", fmt="oci")
    wi.push_images(c, repo, [arm, amd])
    bare = {k: v for k, v in amd.entry().items() if k != "platform"}
    body, mt = wi.index_body([arm.entry(), bare], "oci")
    r = c.put_manifest(repo, "v1", body, mt)
    assert r.status_code == 201, r.text
    ins = wi.inspect(c, repo, "v1")
    assert [v["digest"] for v in ins["variants"]] == [arm.digest, amd.digest]
    assert ins["variants"][1]["platform"] is None and ins["variants"][1]["present"] is True
    # arm64 host: the arm64 entry (a platform match ranks before the platform-less one)
    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": "v1", "platform": "linux/arm64"})
    assert r.status_code == 200 and r.json()["chosen"] == arm.digest, r.text
    # amd64 host: only the platform-less entry can match, and its image is linux/amd64
    r = requests.get(f"{reg.url}/berth/v1/resolve", timeout=30, params={
        "repository": repo, "reference": "v1", "platform": "linux/amd64"})
    a = r.json()
    assert r.status_code == 200
    assert a["chosen"] == amd.digest, json.dumps(a, indent=1)
    assert len(a["resolution"]["verdicts"]) == 2, a


def test_resolve_takes_named_builds_names_the_chosen_version_and_says_what_it_hides(reg, c):
    """Issue 17: `--platform windows/amd64:ltsc2022` was read as a host without os.version and chose
    the 10.0.26100 entry; the chosen line named only a digest; a lying entry was chosen silently;
    containerd's disregard of isolation went unmentioned under --isolation hyperv."""
    repo = "resolve/named"
    w17 = wi.windows_image("10.0.17763.5936", layers=1)
    w20 = wi.windows_image("10.0.20348.2527", layers=1)
    w26 = wi.windows_image("10.0.26100.1000", layers=1)
    wi.push_list(c, repo, "multi", [w17, w20, w26])
    ref = f"{repo}:multi"
    p = berth_cli("resolve", ref, "--platform", "windows/amd64:ltsc2022", "--registry", reg.url)
    assert f"chosen: {w20.digest} (windows/amd64, os.version 10.0.20348.2527)" in p.stdout.splitlines(), p.stdout
    p = berth_cli("resolve", ref, "--platform", "windows/amd64:ltsc2022", "--registry", reg.url, "--json")
    a = json.loads(p.stdout)
    assert a["host"]["platform"]["os.version"] == "10.0.20348", a["host"]
    # A name berth does not know is refused, not read as "no os.version".
    p = berth_cli("resolve", ref, "--platform", "windows/amd64:ltsc2099", "--registry", reg.url, check=False)
    assert p.returncode == 1 and "named build" in p.stderr, (p.returncode, p.stdout, p.stderr)
    # containerd under Hyper-V isolation: the note says the matcher ignores isolation and what
    # Hyper-V would also run (17763 on a 20348 host).
    p = berth_cli("resolve", ref, "--platform", "windows/amd64:10.0.20348.2527", "--isolation", "hyperv",
                  "--rule", "containerd", "--registry", reg.url)
    notes = [l for l in p.stdout.splitlines() if l.startswith("note: containerd's platform matcher ignores isolation")]
    assert notes and "[0] windows/amd64:10.0.17763.5936" in notes[0], p.stdout
    # An entry whose config contradicts its os.version: the finding is shown beside the choice.
    liar = wi.windows_image("10.0.20348.2527", layers=1, config_os_version="10.0.17763.5936")
    wi.push_list(c, repo, "liar", [liar])
    p = berth_cli("resolve", f"{repo}:liar", "--platform", "windows/amd64:ltsc2022", "--registry", reg.url)
    assert f"chosen: {liar.digest} (windows/amd64, os.version 10.0.20348.2527)" in p.stdout.splitlines(), p.stdout
    assert "warning: the chosen entry has a finding:" in p.stdout and "10.0.17763.5936" in p.stdout, p.stdout
