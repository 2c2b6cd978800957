"""berth's token auth (docs/AUTH.md) with the real Docker Engine: login over TLS and plain HTTP, push and
pull as a user, a robot refused outside its pattern, anonymous pull after logout.

Every docker command runs with its own DOCKER_CONFIG directory, so no credentials leak between tests.
127.0.0.0/8 is an insecure registry for dockerd: plain HTTP works there; for the TLS registry the test CA
is put at /etc/docker/certs.d/127.0.0.1:<port>/ca.crt (removed afterwards).
"""
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
import requests

import authkit as ak
from conftest import require_busybox, require_docker

CERTS_D = "/etc/docker/certs.d"


class Docker:
    """Runs docker with a private DOCKER_CONFIG; removes the images it was told about at the end."""

    def __init__(self, config_dir):
        self.config_dir = config_dir
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.refs = []

    def run(self, *args, check=True, input=None, timeout=300):
        env = dict(os.environ)
        env["DOCKER_CONFIG"] = str(self.config_dir)
        env["DOCKER_BUILDKIT"] = "0"
        p = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, input=input,
                           timeout=timeout)
        if check and p.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} failed (rc={p.returncode})\nstdout:\n{p.stdout}\n"
                        f"stderr:\n{p.stderr}")
        return p

    def out(self, *args, **kw):
        p = self.run(*args, check=False, **kw)
        return p.returncode, p.stdout + p.stderr

    def login(self, registry, user, password, check=True):
        return self.run("login", registry, "-u", user, "--password-stdin", input=password + "\n", check=check)

    def logout(self, registry):
        return self.run("logout", registry)

    def track(self, ref):
        self.refs.append(ref)
        return ref

    def rmi(self, *refs):
        self.run("rmi", "-f", *refs, check=False)

    def cleanup(self):
        if self.refs:
            self.rmi(*reversed(self.refs))

    def config_json(self):
        p = self.config_dir / "config.json"
        return json.loads(p.read_text()) if p.exists() else {}


@pytest.fixture
def docker(tmp_path):
    require_docker()
    d = Docker(tmp_path / "docker-config")
    yield d
    d.cleanup()


def make_image(docker, tmp_path, tag):
    """A one-layer busybox image with a unique id file, imported as `tag`. Returns the id text."""
    busybox = require_busybox()
    uid = uuid.uuid4().hex
    root = tmp_path / f"rootfs-{uid[:8]}"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "cat"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc").mkdir()
    (root / "etc" / "berth-e2e-id").write_text(uid + "\n")
    tar = tmp_path / f"rootfs-{uid[:8]}.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    docker.track(tag)
    docker.run("import", str(tar), tag)
    return uid + "\n"


def push_pull_roundtrip(docker, tmp_path, registry, repo):
    """Builds, pushes, removes locally, pulls and runs. Returns the pushed ref."""
    local = f"berth-e2e-auth-{uuid.uuid4().hex[:10]}:latest"
    ident = make_image(docker, tmp_path, local)
    ref = docker.track(f"{registry}/{repo}:v1")
    docker.run("tag", local, ref)
    p = docker.run("push", ref)
    assert "digest: sha256:" in p.stdout, p.stdout + p.stderr
    docker.rmi(ref, local)
    assert docker.run("image", "inspect", ref, check=False).returncode != 0
    docker.run("pull", ref)
    r = docker.run("run", "--rm", "--network", "none", ref, "cat", "/etc/berth-e2e-id")
    assert r.stdout == ident
    return ref


def users(berth):
    """admin + alice (pull,push on team/** and public/**). Returns {name: password}."""
    pws = {"admin": ak.add_user(berth, "admin", admin=True), "alice": ak.add_user(berth, "alice")}
    ak.grant(berth, "team/**", "pull,push", user="alice")
    ak.grant(berth, "public/**", "pull,push", user="alice")
    return pws


@pytest.fixture
def certs_d():
    """Registers a CA for a registry address in /etc/docker/certs.d; removes the directory afterwards."""
    made = []

    def put(addr, ca_path):
        d = os.path.join(CERTS_D, addr)
        os.makedirs(d, exist_ok=True)
        shutil.copy(ca_path, os.path.join(d, "ca.crt"))
        made.append(d)
        return d

    yield put
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def test_docker_login_push_pull_over_tls(berth_factory, docker, tmp_path, certs_d):
    tls = ak.make_ca_and_server_cert(tmp_path / "tls")
    b = berth_factory(config=ak.auth_config(tls=(tls["crt"], tls["key"])), name="tls")
    pws = users(b)
    certs_d(b.addr, tls["ca_crt"])

    # berth really serves HTTPS with a certificate from our CA for 127.0.0.1, and challenges with an https realm
    r = requests.get(f"https://{b.addr}/v2/", verify=str(tls["ca_crt"]), timeout=30)
    ak.assert_unauthorized(r, b, scheme="https")
    # and nothing in plain HTTP on that port: the answer is a TLS alert, no HTTP status line
    with pytest.raises(requests.exceptions.ConnectionError, match="BadStatusLine"):
        requests.get(f"http://{b.addr}/v2/", timeout=10)
    tok_r = requests.get(f"https://{b.addr}/auth/token", params={"service": "berth"}, auth=("alice", pws["alice"]),
                         verify=str(tls["ca_crt"]), timeout=30)
    assert tok_r.status_code == 200, tok_r.text

    p = docker.login(b.addr, "alice", pws["alice"] + "-wrong", check=False)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "unauthorized" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr

    p = docker.login(b.addr, "alice", pws["alice"])
    assert "Login Succeeded" in p.stdout, p.stdout + p.stderr
    assert b.addr in docker.config_json().get("auths", {}), docker.config_json()

    push_pull_roundtrip(docker, tmp_path, b.addr, "team/tls-app")
    # the registry has it, seen through a token of alice over HTTPS
    tok = ak.get_token(ak.HttpsBerth(b), ["repository:team/tls-app:pull"], "alice", pws["alice"],
                       verify=str(tls["ca_crt"]))
    r = requests.get(f"https://{b.addr}/v2/team/tls-app/tags/list", headers=ak.bearer(tok),
                     verify=str(tls["ca_crt"]), timeout=30)
    assert r.status_code == 200 and r.json()["tags"] == ["v1"], r.text


def test_docker_login_push_pull_plain_http(berth_factory, docker, tmp_path):
    b = berth_factory(config=ak.auth_config(), name="plain")
    pws = users(b)

    # without login, a push is refused
    local = f"berth-e2e-auth-{uuid.uuid4().hex[:10]}:latest"
    make_image(docker, tmp_path, local)
    ref = docker.track(f"{b.addr}/team/anon-push:v1")
    docker.run("tag", local, ref)
    rc, out = docker.out("push", ref)
    assert rc != 0, out
    assert "denied: requested access to the resource is denied" in out, out

    p = docker.login(b.addr, "alice", pws["alice"] + "x", check=False)
    assert p.returncode != 0 and "unauthorized" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    p = docker.login(b.addr, "alice", pws["alice"])
    assert "Login Succeeded" in p.stdout, p.stdout + p.stderr
    push_pull_roundtrip(docker, tmp_path, b.addr, "team/plain-app")

    # alice has no grant on other/**: docker says denied
    ref2 = docker.track(f"{b.addr}/other/app:v1")
    docker.run("tag", local, ref2)
    rc, out = docker.out("push", ref2)
    assert rc != 0, out
    assert "denied" in out.lower(), out

    tok = ak.get_token(b, ["repository:team/plain-app:pull"], "admin", pws["admin"])
    r = requests.get(f"{b.url}/v2/team/plain-app/tags/list", headers=ak.bearer(tok), timeout=30)
    assert r.json()["tags"] == ["v1"], r.text
    tok = ak.get_token(b, ["repository:other/app:pull"], "admin", pws["admin"])
    r = requests.get(f"{b.url}/v2/other/app/tags/list", headers=ak.bearer(tok), timeout=30)
    assert r.status_code == 404, (r.status_code, r.text)


def test_docker_robot_refused_outside_its_pattern(berth_factory, docker, tmp_path):
    b = berth_factory(config=ak.auth_config(), name="robot")
    pws = users(b)
    robot = ak.create_robot(b, "ci", ["team/*:pull,push"], expires="1d")
    p = docker.login(b.addr, robot.username, robot.secret)
    assert "Login Succeeded" in p.stdout, p.stdout + p.stderr

    push_pull_roundtrip(docker, tmp_path, b.addr, "team/robot-app")

    local = f"berth-e2e-auth-{uuid.uuid4().hex[:10]}:latest"
    make_image(docker, tmp_path, local)
    for repo in ("other/robot-app", "team/deeper/robot-app"):
        ref = docker.track(f"{b.addr}/{repo}:v1")
        docker.run("tag", local, ref)
        rc, out = docker.out("push", ref)
        assert rc != 0, out
        assert "denied" in out.lower(), out
        tok = ak.get_token(b, [f"repository:{repo}:pull"], "admin", pws["admin"])
        r = requests.get(f"{b.url}/v2/{repo}/tags/list", headers=ak.bearer(tok), timeout=30)
        assert r.status_code == 404, (repo, r.status_code, r.text)

    # an expired robot cannot log in
    old = ak.create_robot(b, "old", ["team/*:pull,push"], expires="1s")
    # Not a wait: the robot must actually expire (time passing is the case under test); polling with
    # logins would count against the failed-login limiter.
    time.sleep(2.5)
    p = docker.login(b.addr, old.username, old.secret, check=False)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "unauthorized" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr


def test_docker_anonymous_pull_after_logout(berth_factory, docker, tmp_path):
    b = berth_factory(config=ak.auth_config(anonymous_pull=["public/**"]), name="anon")
    pws = users(b)
    docker.login(b.addr, "alice", pws["alice"])
    local = f"berth-e2e-auth-{uuid.uuid4().hex[:10]}:latest"
    ident = make_image(docker, tmp_path, local)
    pub = docker.track(f"{b.addr}/public/tool:v1")
    priv = docker.track(f"{b.addr}/team/secret:v1")
    for ref in (pub, priv):
        docker.run("tag", local, ref)
        docker.run("push", ref)
    docker.rmi(pub, priv, local)

    docker.logout(b.addr)
    assert b.addr not in docker.config_json().get("auths", {}), docker.config_json()

    # public: anyone may pull
    docker.run("pull", pub)
    r = docker.run("run", "--rm", "--network", "none", pub, "cat", "/etc/berth-e2e-id")
    assert r.stdout == ident

    # private: refused without login
    rc, out = docker.out("pull", priv)
    assert rc != 0, out
    assert "denied: requested access to the resource is denied" in out, out
    assert docker.run("image", "inspect", priv, check=False).returncode != 0

    # and an anonymous docker cannot push into the public repository either
    docker.run("tag", pub, f"{b.addr}/public/tool:v2")
    docker.track(f"{b.addr}/public/tool:v2")
    rc, out = docker.out("push", f"{b.addr}/public/tool:v2")
    assert rc != 0, out
    assert "denied: requested access to the resource is denied" in out, out

    # logged in again, the private image pulls
    docker.login(b.addr, "alice", pws["alice"])
    docker.run("pull", priv)
