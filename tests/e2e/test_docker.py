"""berth with the real Docker Engine: build, push, pull, pull by digest, layer reuse and cross-repo mounts.

Needs a running dockerd (tests/setup.sh starts one). No public registry is used: the base image is a
`docker import` of a busybox-static rootfs, and the app image is built on it with the legacy builder.
127.0.0.0/8 is an insecure registry by default, so docker talks plain HTTP to berth.
"""
import hashlib
import os
import re
import shutil
import subprocess
import uuid

import pytest
import requests

DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def run(args, timeout=300, check=True, env=None, input=None):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, input=input)
    if check and p.returncode != 0:
        pytest.fail(f"command failed (rc={p.returncode}): {' '.join(args)}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


class Images:
    """Tracks every local image reference a test creates, so they can be removed at the end."""

    def __init__(self):
        self.refs = []

    def add(self, ref):
        self.refs.append(ref)
        return ref

    def rmi(self, *refs):
        run(["docker", "rmi", "-f", *refs], check=False)

    def cleanup(self):
        if self.refs:
            self.rmi(*reversed(self.refs))


@pytest.fixture
def images(docker_ok):
    im = Images()
    yield im
    im.cleanup()


def build_image(tmp_path, busybox, images, uid):
    """Imports a unique busybox base and builds an app image on it with 3 extra layers.

    Returns (app_ref, base_ref, payload_text, generated_text).
    """
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "echo", "mkdir", "ls", "sha256sum"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc").mkdir()
    # unique content in the base layer too, so no layer is shared with another test's image
    (rootfs / "etc" / "berth-e2e-id").write_text(uid + "\n")
    base_tar = tmp_path / "base.tar"
    run(["tar", "-C", str(rootfs), "-cf", str(base_tar), "."])
    base_ref = images.add(f"berth-e2e-base-{uid}:latest")
    run(["docker", "import", str(base_tar), base_ref])

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    payload = f"payload {uid} " + os.urandom(16).hex() + "\n"
    generated = f"generated {uid}"
    (ctx / "payload.txt").write_text(payload)
    (ctx / "second.bin").write_bytes(os.urandom(200_000))
    (ctx / "Dockerfile").write_text(
        f"FROM {base_ref}\n"
        "COPY payload.txt /data/payload.txt\n"
        f"RUN echo '{generated}' > /data/generated.txt && mkdir -p /data/more\n"
        "COPY second.bin /data/more/second.bin\n"
        'CMD ["/bin/cat", "/data/payload.txt"]\n'
    )
    app_ref = images.add(f"berth-e2e-app-{uid}:latest")
    run(["docker", "build", "-t", app_ref, str(ctx)], env={"DOCKER_BUILDKIT": "0"})
    return app_ref, base_ref, payload, generated + "\n"


def image_id(ref):
    return run(["docker", "image", "inspect", "-f", "{{.Id}}", ref]).stdout.strip()


def image_layers(ref):
    out = run(["docker", "image", "inspect", "-f", "{{range .RootFS.Layers}}{{println .}}{{end}}", ref]).stdout
    return [l for l in out.split() if l]


def push(ref):
    p = run(["docker", "push", ref])
    return p.stdout + p.stderr


def push_digest(output, tag):
    m = re.search(rf"^{re.escape(tag)}: digest: (sha256:[0-9a-f]{{64}}) size: (\d+)", output, re.M)
    assert m, f"no digest line for {tag!r} in push output:\n{output}"
    return m.group(1), int(m.group(2))


def layer_statuses(output):
    """Final status per layer id from `docker push` output."""
    st = {}
    for line in output.splitlines():
        m = re.match(r"^([0-9a-f]{12}): (Pushed|Layer already exists|Mounted from \S+)\s*$", line.strip())
        if m:
            st[m.group(1)] = m.group(2)
    return st


def check_registry_image(berth, repo, ref, digest, size, img_id, n_layers):
    """The registry serves the manifest byte-exact for the digest, plus every blob it references."""
    r = requests.get(f"{berth.url}/v2/{repo}/manifests/{ref}", headers={"Accept": f"{DOCKER_V2S2}, {OCI_MANIFEST}"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == DOCKER_V2S2
    assert r.headers["Docker-Content-Digest"] == digest
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    assert len(r.content) == size
    m = r.json()
    assert m["mediaType"] == DOCKER_V2S2
    assert len(m["layers"]) == n_layers
    cfg = requests.get(f"{berth.url}/v2/{repo}/blobs/{m['config']['digest']}")
    assert cfg.status_code == 200
    # the image id is the digest of the config blob
    assert "sha256:" + hashlib.sha256(cfg.content).hexdigest() == m["config"]["digest"] == img_id
    for layer in m["layers"]:
        h = requests.head(f"{berth.url}/v2/{repo}/blobs/{layer['digest']}")
        assert h.status_code == 200, (layer, h.status_code)
        assert int(h.headers["Content-Length"]) == layer["size"]
        assert h.headers["Docker-Content-Digest"] == layer["digest"]
    return m


def test_docker_push_pull_run_and_pull_by_digest(berth, tmp_path, docker_ok, images):
    uid = uuid.uuid4().hex[:10]
    app, base, payload, generated = build_image(tmp_path, docker_ok, images, uid)
    layers = image_layers(app)
    assert len(layers) >= 3, layers
    orig_id = image_id(app)

    repo = f"e2e/app-{uid}"
    remote = images.add(f"{berth.addr}/{repo}:v1")
    run(["docker", "tag", app, remote])
    out = push(remote)
    digest, size = push_digest(out, "v1")
    st = layer_statuses(out)
    assert len(st) == len(layers), out
    assert all(s == "Pushed" for s in st.values()), out

    check_registry_image(berth, repo, "v1", digest, size, orig_id, len(layers))
    check_registry_image(berth, repo, digest, digest, size, orig_id, len(layers))
    tags = requests.get(f"{berth.url}/v2/{repo}/tags/list").json()
    assert tags == {"name": repo, "tags": ["v1"]}

    # remove everything locally (app, base and the pushed tag) so the pull must fetch every layer
    images.rmi(remote, app, base)
    assert run(["docker", "image", "inspect", remote], check=False).returncode != 0

    p = run(["docker", "pull", remote])
    pulled = p.stdout + p.stderr
    assert f"Digest: {digest}" in pulled, pulled
    assert pulled.count("Pull complete") == len(layers), pulled
    assert image_id(remote) == orig_id
    assert image_layers(remote) == layers

    r = run(["docker", "run", "--rm", "--network", "none", remote, "cat", "/data/payload.txt", "/data/generated.txt"])
    assert r.stdout == payload + generated
    # the image's CMD works too
    r = run(["docker", "run", "--rm", "--network", "none", remote])
    assert r.stdout == payload

    # pull by digest
    images.rmi(remote)
    by_digest = images.add(f"{berth.addr}/{repo}@{digest}")
    p = run(["docker", "pull", by_digest])
    assert f"Digest: {digest}" in p.stdout + p.stderr
    assert image_id(by_digest) == orig_id
    repo_digests = run(["docker", "image", "inspect", "-f", "{{json .RepoDigests}}", by_digest]).stdout
    assert f"{berth.addr}/{repo}@{digest}" in repo_digests
    r = run(["docker", "run", "--rm", "--network", "none", by_digest, "cat", "/data/generated.txt"])
    assert r.stdout == generated


def test_docker_push_existing_layers_and_cross_repo_mount(berth, tmp_path, docker_ok, images):
    uid = uuid.uuid4().hex[:10]
    app, _base, _payload, _generated = build_image(tmp_path, docker_ok, images, uid)
    layers = image_layers(app)
    assert len(layers) >= 3
    img = image_id(app)

    repo_a = f"e2e/first-{uid}"
    repo_b = f"e2e/second-{uid}"
    a1 = images.add(f"{berth.addr}/{repo_a}:v1")
    a2 = images.add(f"{berth.addr}/{repo_a}:again")
    b1 = images.add(f"{berth.addr}/{repo_b}:v1")
    for ref in (a1, a2, b1):
        run(["docker", "tag", app, ref])

    out1 = push(a1)
    d1, s1 = push_digest(out1, "v1")
    st1 = layer_statuses(out1)
    assert len(st1) == len(layers) and set(st1.values()) == {"Pushed"}, out1

    # same image, another tag: every layer already exists
    out2 = push(a2)
    d2, s2 = push_digest(out2, "again")
    st2 = layer_statuses(out2)
    assert st2.keys() == st1.keys(), out2
    assert set(st2.values()) == {"Layer already exists"}, out2
    assert (d2, s2) == (d1, s1)

    # another repository: docker mounts every layer from the first one
    out3 = push(b1)
    d3, s3 = push_digest(out3, "v1")
    st3 = layer_statuses(out3)
    assert st3.keys() == st1.keys(), out3
    assert set(st3.values()) == {f"Mounted from {repo_a}"}, out3
    assert (d3, s3) == (d1, s1)

    for repo, ref in ((repo_a, "v1"), (repo_a, "again"), (repo_b, "v1")):
        check_registry_image(berth, repo, ref, d1, s1, img, len(layers))
    assert requests.get(f"{berth.url}/v2/{repo_a}/tags/list").json()["tags"] == ["again", "v1"]
    assert requests.get(f"{berth.url}/v2/{repo_b}/tags/list").json()["tags"] == ["v1"]
    cat = requests.get(f"{berth.url}/v2/_catalog").json()["repositories"]
    assert repo_a in cat and repo_b in cat

    # the mounted copy pulls and runs on its own
    images.rmi(a1, a2, b1, app)
    run(["docker", "pull", b1])
    assert image_id(b1) == img
    r = run(["docker", "run", "--rm", "--network", "none", b1, "ls", "/data/more"])
    assert r.stdout.split() == ["second.bin"]
