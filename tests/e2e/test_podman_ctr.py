"""berth with podman and with containerd's ctr.

podman (private --root/--runroot): load an image from an OCI layout, push it to berth, remove it
locally, pull it back and run it with runc. ctr (a private containerd): pull an image pushed with
skopeo, check the digest it records is the one berth serves, then push it to another repository.

The host quirks these flags work around are in docs/TESTING-NOTES.md §4: podman needs
--tls-verify=false (plain HTTP), --runtime runc (crun fails on this host's hybrid cgroups) and
--ulimit nofile/nproc 1024:1024 (no CAP_SYS_RESOURCE); the host's containerd belongs to dockerd,
so a private one is started on its own socket.
"""
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import uuid

import pytest
import requests

from conftest import require_busybox, require_tool
from helpers import wait_for

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_V2S2, DOCKER_LIST])
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def run(args, timeout=300, check=True):
    args = [str(a) for a in args]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"command failed (rc={p.returncode}): {' '.join(args)}\n"
                    f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def write_layout(tmp_path, marker, tag="src"):
    """An OCI layout of a busybox-static rootfs with /marker holding `marker`."""
    busybox = require_busybox()
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "echo"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "marker").write_text(marker + "\n")

    out = tmp_path / "layout"
    (out / "blobs" / "sha256").mkdir(parents=True)

    def put(b):
        d = sha(b)
        (out / "blobs" / "sha256" / d[7:]).write_bytes(b)
        return d

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.add(str(rootfs), arcname=".")
    gz = gzip.compress(raw.getvalue(), mtime=0)
    layer = put(gz)
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "cat /marker"]},
                      "rootfs": {"type": "layers", "diff_ids": [sha(raw.getvalue())]}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": put(cfg), "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": layer, "size": len(gz)}]}).encode()
    (out / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": put(man), "size": len(man),
                                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return out, tag


def served_digest(berth, repo, ref):
    r = requests.get(f"{berth.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == sha(r.content)
    return r.headers["Docker-Content-Digest"]


# ---------------------------------------------------------------------------------------- podman


@pytest.fixture
def podman(tmp_path):
    exe = require_tool("podman", "run tests/setup.sh (installs podman with apt)")
    require_tool("runc", "runc comes with docker.io: run tests/setup.sh")
    # short paths: podman's runroot holds sockets, which have a length limit
    base = pathlib.Path(f"/tmp/berth-podman-{uuid.uuid4().hex[:8]}")
    root, runroot = base / "root", base / "run"
    root.mkdir(parents=True)
    runroot.mkdir(parents=True)
    cmd = [exe, "--root", str(root), "--runroot", str(runroot)]
    yield cmd
    subprocess.run(cmd + ["rmi", "-a", "-f"], capture_output=True, timeout=120)
    # overlay storage may leave mounts: unmount what podman left, then remove the tree
    subprocess.run(cmd + ["system", "reset", "-f"], capture_output=True, timeout=120)
    shutil.rmtree(base, ignore_errors=True)


def test_podman_push_pull_run(berth, tmp_path, podman):
    marker = "podman-marker-" + uuid.uuid4().hex
    layout, tag = write_layout(tmp_path, marker)
    local = "localhost/berth-e2e-src:latest"
    run(podman + ["pull", f"oci:{layout}:{tag}"])
    run(podman + ["tag", run(podman + ["images", "-q", "--no-trunc"]).stdout.split()[0], local])

    remote = f"{berth.addr}/e2e/podman:v1"
    run(podman + ["tag", local, remote])
    run(podman + ["push", "--tls-verify=false", remote])
    digest = served_digest(berth, "e2e/podman", "v1")
    tags = requests.get(f"{berth.url}/v2/e2e/podman/tags/list").json()
    assert tags == {"name": "e2e/podman", "tags": ["v1"]}

    # remove every local image, so the pull must fetch from berth
    run(podman + ["rmi", "-a", "-f"])
    assert run(podman + ["image", "exists", remote], check=False).returncode != 0

    run(podman + ["pull", "--tls-verify=false", remote])
    got = run(podman + ["image", "inspect", "--format", "{{.Digest}}", remote]).stdout.strip()
    assert got == digest

    r = run(podman + ["run", "--rm", "--runtime", "runc", *ULIMITS, "--network", "none",
                      remote, "/bin/sh", "-c", "cat /marker"])
    assert r.stdout == marker + "\n"


# ------------------------------------------------------------------------------------------- ctr


@pytest.fixture
def containerd():
    exe = require_tool("containerd", "run tests/setup.sh (containerd comes with docker.io)")
    ctr = require_tool("ctr", "run tests/setup.sh (ctr comes with docker.io)")
    base = pathlib.Path(f"/tmp/berth-ctrd-{uuid.uuid4().hex[:8]}")
    base.mkdir()
    sock = base / "containerd.sock"
    cfg = base / "config.toml"
    cfg.write_text("version = 2\n")  # not the host's /etc/containerd/config.toml
    log = open(base / "containerd.log", "w")
    proc = subprocess.Popen([exe, "--config", str(cfg), "--root", str(base / "root"), "--state",
                             str(base / "state"), "--address", str(sock)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"containerd exited rc={proc.returncode}:\n{(base / 'containerd.log').read_text()}")
            return sock.exists() and subprocess.run([ctr, "--address", str(sock), "version"],
                                                    capture_output=True, timeout=10).returncode == 0
        wait_for(ready, 30, lambda: f"containerd to be ready:\n{(base / 'containerd.log').read_text()}")
        yield [ctr, "--address", str(sock)]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        # snapshots may still be mounted under root: unmount before removing
        mounts = [l.split()[1] for l in open("/proc/mounts") if l.split()[1].startswith(str(base))]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_ctr_pull_and_push(berth, tmp_path, containerd):
    skopeo = require_tool("skopeo", "run tests/setup.sh (installs skopeo with apt)")
    ctr = containerd
    layout, tag = write_layout(tmp_path, "ctr-marker-" + uuid.uuid4().hex)
    ref = f"{berth.addr}/e2e/ctr:v1"
    run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{ref}"])
    digest = served_digest(berth, "e2e/ctr", "v1")

    run(ctr + ["images", "pull", "--plain-http", ref])
    ls = run(ctr + ["images", "ls"]).stdout
    rows = [l.split() for l in ls.splitlines()[1:] if l.strip()]
    row = [r for r in rows if r[0] == ref]
    assert row, ls
    assert digest in row[0], ls  # columns: REF TYPE DIGEST SIZE PLATFORMS LABELS
    assert row[0][2] == digest, ls

    # push the pulled image to another repository: berth serves the same manifest there
    copy = f"{berth.addr}/e2e/ctr-copy:v2"
    run(ctr + ["images", "push", "--plain-http", copy, ref])
    assert served_digest(berth, "e2e/ctr-copy", "v2") == digest
    tags = requests.get(f"{berth.url}/v2/e2e/ctr-copy/tags/list").json()
    assert tags == {"name": "e2e/ctr-copy", "tags": ["v2"]}
