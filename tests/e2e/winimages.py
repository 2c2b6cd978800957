"""Builders for Windows-shaped (and Linux) images, for berth's multi-arch end-to-end tests.

A Windows image here looks like one from MCR as far as a registry can tell:
- its config has `os: windows`, `os.version` (major.minor.build.UBR), `os.features` (["win32k"] for
  Server Core) and `rootfs.diff_ids` naming exactly its layers (the sha256 of each uncompressed tar);
- its layers are real tar+gzip in the hcsshim layout (internal/wclayer/legacy.go): `Files/` is the
  C:\\ tree (Files/Windows/System32/...), `Hives/` holds registry hive deltas, the base layer also has
  `UtilityVM/Files/EFI/Microsoft/Boot/...`; entries carry `MSWINDOWS.fileattr` PAX records;
- foreign (non-distributable) base layers can be described by `urls` instead of being pushed.

Images and layers are helpers.Image / helpers.Layer (the one image builder of the e2e tests).

JSON is written compactly in Go struct field order (as skopeo/docker serialise it), so an OCI layout
written here survives `skopeo copy --all --preserve-digests` byte for byte.

Nothing here asserts on berth's behaviour except that pushes the caller expects to succeed do.
"""
import hashlib
import io
import json
import os
import pathlib
import tarfile
import uuid

from helpers import Image, Layer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ALL_MANIFEST_TYPES = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

FORMATS = {
    # fmt: (list type, manifest type, config type, layer type, foreign layer type)
    "docker": (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_FOREIGN),
    "oci": (OCI_INDEX, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_NONDIST),
}


def gojson(obj):
    """Compact JSON, keys in insertion order (the dicts here are built in Go struct field order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- layer tarballs

def _tar(entries):
    """entries: (path, bytes | None for a directory | ('link', target)). Returns the raw tar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, content in entries:
            ti = tarfile.TarInfo(path)
            ti.mtime = 0
            ti.uname = ti.gname = ""
            if content is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                ti.pax_headers = {"MSWINDOWS.fileattr": "16"}  # FILE_ATTRIBUTE_DIRECTORY
                t.addfile(ti)
            elif isinstance(content, tuple) and content[0] == "link":
                ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, content[1], 0o644
                ti.pax_headers = {"MSWINDOWS.fileattr": "32"}
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(content), 0o644
                ti.pax_headers = {"MSWINDOWS.fileattr": "32"}  # FILE_ATTRIBUTE_ARCHIVE
                t.addfile(ti, io.BytesIO(content))
    return raw.getvalue()


def windows_base_layer_tar(os_version, nonce):
    """A (tiny) base layer: Files/, Hives/ and UtilityVM/ as hcsshim's baseLayerWriter expects."""
    sysdir = "Files/Windows/System32"
    return _tar([
        ("Files", None),
        ("Files/Windows", None),
        (sysdir, None),
        (f"{sysdir}/config", None),
        (f"{sysdir}/config/SYSTEM", b"regf" + os.urandom(512)),
        (f"{sysdir}/config/SOFTWARE", b"regf" + os.urandom(512)),
        (f"{sysdir}/config/SAM", b"regf" + os.urandom(128)),
        (f"{sysdir}/config/SECURITY", b"regf" + os.urandom(128)),
        (f"{sysdir}/config/DEFAULT", b"regf" + os.urandom(128)),
        (f"{sysdir}/cmd.exe", b"MZ" + os.urandom(2048)),
        (f"{sysdir}/kernel32.dll", b"MZ" + os.urandom(1024)),
        (f"{sysdir}/ver.txt", f"Microsoft Windows [Version {os_version}] {nonce}\r\n".encode()),
        ("Hives", None),
        ("Hives/System_Base", ("link", f"{sysdir}/config/SYSTEM")),
        ("Hives/Software_Base", ("link", f"{sysdir}/config/SOFTWARE")),
        ("UtilityVM", None),
        ("UtilityVM/Files", None),
        ("UtilityVM/Files/EFI/Microsoft/Boot/BCD", os.urandom(256)),
        ("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi", b"MZ" + os.urandom(512)),
    ])


def windows_update_layer_tar(os_version, nonce, i):
    """A servicing/app layer: changed files plus differencing hives."""
    return _tar([
        ("Files/Windows/System32/drivers/etc/hosts", f"# {os_version} {nonce} layer {i}\r\n".encode()),
        (f"Files/app/layer{i}.bin", os.urandom(700 + 37 * i)),
        ("Hives/Software_Delta", b"regf" + os.urandom(300)),
        ("Hives/System_Delta", b"regf" + os.urandom(200)),
    ])


def linux_layer_tar(arch, nonce, i):
    return _tar([
        ("etc", None),
        ("etc/berth-e2e", f"{arch} {nonce} {i}\n".encode()),
        (f"usr/lib/layer{i}.bin", os.urandom(500 + 13 * i)),
    ])


# ---------------------------------------------------------------- images

def image(platform, config, layers, fmt):
    """A helpers.Image in `fmt` ("docker" or "oci") media types, with the platform its index entry carries."""
    _, man_type, cfg_type, _, _ = FORMATS[fmt]
    return Image(config, layers, media_type=man_type, config_media_type=cfg_type, platform=platform)


def fmt_of(img):
    """"docker" or "oci": the format an image (and a list over it) is written in."""
    return "docker" if img.media_type == DOCKER_MANIFEST else "oci"


def platform_dict(os_, arch, variant=None, os_version=None, os_features=None):
    """An image-spec platform object in Go field order."""
    p = {"architecture": arch, "os": os_}
    if os_version:
        p["os.version"] = os_version
    if os_features:
        p["os.features"] = list(os_features)
    if variant:
        p["variant"] = variant
    return p


def windows_image(os_version, arch="amd64", features=("win32k",), fmt="docker", layers=2,
                  config_os_version=None, diff_ids=None, foreign_urls=None, push_foreign=False):
    """A Windows-shaped image.

    config_os_version: what the config says (default: os_version), to make an index entry lie.
    diff_ids: override the number of rootfs.diff_ids in the config (default: one per layer).
    foreign_urls: make the base layer foreign/non-distributable with these URLs, or a function of the
    layer's digest returning them (the layer is not pushed unless push_foreign).
    """
    _, _, _, layer_type, foreign_type = FORMATS[fmt]
    nonce = uuid.uuid4().hex
    ls = []
    base_raw = windows_base_layer_tar(os_version, nonce)
    if foreign_urls:
        base = Layer.tar_gz(base_raw, foreign_type, push=push_foreign)
        base.urls = list(foreign_urls(base.digest) if callable(foreign_urls) else foreign_urls)
        ls.append(base)
    else:
        ls.append(Layer.tar_gz(base_raw, layer_type))
    for i in range(1, layers):
        ls.append(Layer.tar_gz(windows_update_layer_tar(os_version, nonce, i), layer_type))
    cfg_version = config_os_version if config_os_version is not None else os_version
    ids = [l.diff_id for l in ls]
    if diff_ids is not None:
        ids = (ids * (diff_ids // max(len(ids), 1) + 1))[:diff_ids]
    config = {
        "architecture": arch,
        "config": {"Env": ["PATH=C:\\Windows\\system32;C:\\Windows"],
                   "Cmd": ["c:\\windows\\system32\\cmd.exe"], "WorkingDir": "C:\\"},
        "created": "2024-06-11T00:00:00Z",
        "history": [{"created": "2024-06-11T00:00:00Z", "created_by": f"Apply image {os_version}"}]
        + [{"created": "2024-06-11T00:00:00Z", "created_by": f"Install update {os_version} #{i}"}
           for i in range(1, layers)],
        "os": "windows",
    }
    if cfg_version:
        config["os.version"] = cfg_version
    if features:
        config["os.features"] = list(features)
    config["rootfs"] = {"type": "layers", "diff_ids": ids}
    plat = platform_dict("windows", arch, os_version=os_version, os_features=features)
    return image(plat, config, ls, fmt)


def linux_image(arch="amd64", variant=None, fmt="docker", layers=2):
    _, _, _, layer_type, _ = FORMATS[fmt]
    nonce = uuid.uuid4().hex
    ls = [Layer.tar_gz(linux_layer_tar(arch, nonce, i), layer_type) for i in range(layers)]
    config = {"architecture": arch,
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
              "created": "2024-06-11T00:00:00Z",
              "os": "linux"}
    if variant:
        config["variant"] = variant
    config["rootfs"] = {"type": "layers", "diff_ids": [l.diff_id for l in ls]}
    return image(platform_dict("linux", arch, variant=variant), config, ls, fmt)


def index_body(entries, fmt="docker", annotations=None):
    """A manifest list (docker) or image index (oci) over entry dicts. Returns (bytes, media type)."""
    list_type = FORMATS[fmt][0]
    obj = {"schemaVersion": 2, "mediaType": list_type, "manifests": list(entries)}
    if annotations:
        obj["annotations"] = annotations
    return gojson(obj), list_type


SERVERCORE_BUILDS = ["10.0.17763.5936", "10.0.20348.2527", "10.0.26100.1742"]


def servercore_like(fmt="docker"):
    """Three Windows builds (ltsc2019, ltsc2022, ltsc2025) plus linux/amd64 and linux/arm64/v8."""
    imgs = [windows_image(v, fmt=fmt, layers=2 + (i % 2)) for i, v in enumerate(SERVERCORE_BUILDS)]
    imgs.append(linux_image("amd64", fmt=fmt, layers=2))
    imgs.append(linux_image("arm64", variant="v8", fmt=fmt, layers=1))
    return imgs


# ---------------------------------------------------------------- pushing through the API

def push_image(client, repo, img, tag=None):
    """Pushes the image's blobs (foreign layers only if marked) and its manifest; returns the digest."""
    return client.push(repo, img, tag)


def push_images(client, repo, imgs):
    for img in imgs:
        push_image(client, repo, img)


def put_index(client, repo, ref, body, media_type):
    """PUT a list; returns the response (callers assert on status / headers)."""
    return client.put_manifest(repo, ref, body, media_type)


def push_list(client, repo, tag, imgs, fmt="docker", platforms=None):
    """Pushes every image and a list over them; returns (list bytes, list digest)."""
    push_images(client, repo, imgs)
    entries = [im.entry(platforms[i] if platforms else None) for i, im in enumerate(imgs)]
    body, mt = index_body(entries, fmt)
    r = client.put_manifest(repo, tag, body, mt)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers.get("Docker-Content-Digest") == sha256(body)
    return body, sha256(body)


def inspect(client, repo, ref):
    r = client.get("/berth/v1/inspect", params={"repository": repo, "reference": ref})
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


# ---------------------------------------------------------------- OCI layouts for skopeo

class OCILayout:
    def __init__(self, root):
        self.root = pathlib.Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs = []

    def put(self, data):
        d = sha256(data)
        (self.root / "blobs" / "sha256" / d[7:]).write_bytes(data)
        return d

    def add_image(self, img):
        for b in img.blobs().values():
            self.put(b)
        self.put(img.manifest)

    def add_index(self, name, imgs, fmt="oci"):
        """Writes every image and an index over them, tagged `name`; returns (index bytes, digest)."""
        for im in imgs:
            self.add_image(im)
        body, mt = index_body([im.entry() for im in imgs], fmt)
        d = self.put(body)
        self.refs.append({"mediaType": mt, "digest": d, "size": len(body),
                          "annotations": {"org.opencontainers.image.ref.name": name}})
        (self.root / "index.json").write_bytes(gojson({"schemaVersion": 2, "manifests": self.refs}))
        return body, d
