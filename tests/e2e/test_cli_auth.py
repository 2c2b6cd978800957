"""The client commands (`berth inspect`, `berth resolve`, `berth verify`) against a registry with token
auth, and the failed-login throttle (issue #17).

- Credentials: `--username` with `--password-stdin`, BERTH_USERNAME/BERTH_PASSWORD, or docker's own
  credential file (`$DOCKER_CONFIG/config.json`: `auth` user:pass, or the `identitytoken` docker login
  stores), as skopeo reads it.
- Anonymous access: a repository docker pulls anonymously (`auth.anonymous_pull`, or `berth grant
  --anonymous` through an anonymous token) works from these commands without credentials.
- Messages: no credentials, wrong credentials and access denied are told apart.
- The throttle: wrong passwords are counted per (account, client IP); other accounts on the same IP,
  admins and requests carrying a valid token are never refused because of them.

Every CLI run gets a clean environment: no BERTH_* variables and an empty DOCKER_CONFIG unless the test
sets them.
"""
import base64
import json
import os
import subprocess
import uuid

import pytest
import requests

import authkit as ak
from conftest import BERTH_BIN, require_docker
from helpers import Client

NO_CREDS = "no credentials given (use --username/--password-stdin, BERTH_USERNAME/BERTH_PASSWORD or docker login)"


# ---------------------------------------------------------------- helpers

def client(berth, tok=None):
    c = Client(berth.url)
    if tok:
        c.s.headers["Authorization"] = f"Bearer {tok}"
    return c


def seed(berth, admin_pw, repo, tag="v1"):
    tok = ak.get_token(berth, [f"repository:{repo}:pull,push"], "admin", admin_pw)
    return client(berth, tok).push_image(repo, tag)


def run_cli(tmp_path, *args, env=None, input=None, docker_config=None):
    """`berth <args>` with no BERTH_* variables and DOCKER_CONFIG at an empty directory (or the given)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") and k != "DOCKER_CONFIG"}
    if docker_config is None:
        docker_config = tmp_path / ("empty-docker-" + uuid.uuid4().hex[:6])
        docker_config.mkdir()
    e["DOCKER_CONFIG"] = str(docker_config)
    e["HOME"] = str(tmp_path)
    e.update(env or {})
    return subprocess.run([BERTH_BIN, *args], capture_output=True, text=True, env=e, input=input, timeout=60)


def ok(p):
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def write_docker_config(directory, entries):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": entries}))
    return directory


def b64(s):
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def reg(berth_factory):
    b = berth_factory(config=ak.auth_config(anonymous_pull=["public/**"], failed_login_limit=1000),
                      name="cliauth")
    b.admin_pw = ak.add_user(b, "admin", admin=True)
    return b


def private_repo(reg, user=None):
    repo = "team" + uuid.uuid4().hex[:8] + "/app"
    img = seed(reg, reg.admin_pw, repo)
    if user:
        ak.grant(reg, repo, "pull", user=user)
    return repo, img


def inspect(tmp_path, reg, ref, *extra, **kw):
    return run_cli(tmp_path, "inspect", ref, "--registry", reg.url, "--json", *extra, **kw)


def resolve(tmp_path, reg, ref, *extra, **kw):
    return run_cli(tmp_path, "resolve", ref, "--registry", reg.url, "--platform", "linux/amd64", "--json",
                   *extra, **kw)


def verify_status(tmp_path, reg, ref, *extra, **kw):
    return run_cli(tmp_path, "verify", "status", ref, "--registry", reg.url, "--json", *extra, **kw)


def assert_answered(p, img):
    """The command got the registry's answer (verify status exits 1 when checks did not pass)."""
    assert p.returncode in (0, 1), f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert img.digest in p.stdout, p.stdout + p.stderr


# ---------------------------------------------------------------- --help

@pytest.mark.parametrize("cmd", [["inspect"], ["resolve"], ["verify"], ["verify", "status"], ["verify", "wait"]])
def test_help_names_every_credential_source(cmd):
    out = subprocess.run([BERTH_BIN, *cmd, "--help"], capture_output=True, text=True, timeout=30).stdout
    for word in ("--username", "--password-stdin", "BERTH_USERNAME", "BERTH_PASSWORD", "config.json"):
        assert word in out, f"`berth {' '.join(cmd)} --help` does not mention {word}:\n{out}"


# ---------------------------------------------------------------- credentials

def test_username_and_password_stdin(tmp_path, reg):
    user, pw = "alice", ak.add_user(reg, "alice")
    repo, img = private_repo(reg, user)
    creds = ["--username", user, "--password-stdin"]
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1", *creds, input=pw + "\n")), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1", *creds, input=pw + "\n")), img)
    assert_answered(verify_status(tmp_path, reg, f"{repo}:v1", *creds, input=pw + "\n"), img)


def test_environment_variables(tmp_path, reg):
    pw = ak.add_user(reg, "envuser")
    repo, img = private_repo(reg, "envuser")
    env = {"BERTH_USERNAME": "envuser", "BERTH_PASSWORD": pw}
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1", env=env)), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1", env=env)), img)
    assert_answered(verify_status(tmp_path, reg, f"{repo}:v1", env=env), img)


@pytest.mark.parametrize("key", ["{addr}", "http://{addr}", "http://{addr}/v2/"])
def test_docker_config_auth_entry(tmp_path, reg, key):
    pw = ak.add_user(reg, "bob")
    repo, img = private_repo(reg, "bob")
    cfg = write_docker_config(tmp_path / "dockercfg", {
        "other.example:5000": {"auth": b64("mallory:nope")},
        key.format(addr=reg.addr): {"auth": b64(f"bob:{pw}")},
    })
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1", docker_config=cfg)), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1", docker_config=cfg)), img)
    assert_answered(verify_status(tmp_path, reg, f"{repo}:v1", docker_config=cfg), img)


def test_docker_config_identity_token(tmp_path, reg):
    """docker login against berth stores a refresh token as `identitytoken` (and no password)."""
    pw = ak.add_user(reg, "carol")
    repo, img = private_repo(reg, "carol")
    r = ak.post_token(reg, grant_type="password", username="carol", password=pw, service="berth",
                      client_id="e2e", access_type="offline")
    assert r.status_code == 200, r.text
    refresh = r.json()["refresh_token"]
    cfg = write_docker_config(tmp_path / "dockercfg", {
        reg.addr: {"auth": b64("carol:"), "identitytoken": refresh},
    })
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1", docker_config=cfg)), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1", docker_config=cfg)), img)
    assert_answered(verify_status(tmp_path, reg, f"{repo}:v1", docker_config=cfg), img)


def test_after_a_real_docker_login(tmp_path, reg):
    require_docker()
    pw = ak.add_user(reg, "dora")
    repo, img = private_repo(reg, "dora")
    cfg = tmp_path / "docker-login"
    cfg.mkdir()
    env = dict(os.environ, DOCKER_CONFIG=str(cfg))
    p = subprocess.run(["docker", "login", reg.addr, "-u", "dora", "--password-stdin"], input=pw + "\n",
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    stored = json.loads((cfg / "config.json").read_text())
    print("docker stored:", {k: sorted(v) for k, v in stored.get("auths", {}).items()})
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1", docker_config=cfg)), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1", docker_config=cfg)), img)


def test_flags_win_over_docker_config(tmp_path, reg):
    pw = ak.add_user(reg, "erin")
    repo, img = private_repo(reg, "erin")
    cfg = write_docker_config(tmp_path / "dockercfg", {reg.addr: {"auth": b64("erin:stale-password")}})
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1", "--username", "erin", "--password-stdin",
                               input=pw, docker_config=cfg)), img)


# ---------------------------------------------------------------- anonymous access

def test_anonymous_pull_repository_without_credentials(tmp_path, reg):
    repo = "public/app" + uuid.uuid4().hex[:6]
    img = seed(reg, reg.admin_pw, repo)
    # docker's view: an anonymous pull works with no token at all
    assert client(reg).get(f"/v2/{repo}/manifests/v1").status_code == 200
    # berth's own API follows the same rule
    r = requests.get(f"{reg.url}/berth/v1/inspect", params={"repository": repo, "reference": "v1"}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1")), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1")), img)
    assert_answered(verify_status(tmp_path, reg, f"{repo}:v1"), img)


def test_anonymous_grant_through_the_anonymous_token(tmp_path, reg):
    """`berth grant --anonymous`: docker pulls with an anonymous token (401, GET /auth/token without
    credentials, retry with Bearer); the CLI does the same."""
    repo = "open" + uuid.uuid4().hex[:8] + "/app"
    img = seed(reg, reg.admin_pw, repo)
    ak.grant(reg, repo, "pull", anonymous=True)
    tok = ak.get_token(reg, [f"repository:{repo}:pull"])
    assert client(reg, tok).get(f"/v2/{repo}/manifests/v1").status_code == 200
    assert_answered(ok(inspect(tmp_path, reg, f"{repo}:v1")), img)
    assert_answered(ok(resolve(tmp_path, reg, f"{repo}:v1")), img)
    assert_answered(verify_status(tmp_path, reg, f"{repo}:v1"), img)


# ---------------------------------------------------------------- messages

def test_no_credentials_message(tmp_path, reg):
    repo, _ = private_repo(reg)
    for p in (inspect(tmp_path, reg, f"{repo}:v1"), resolve(tmp_path, reg, f"{repo}:v1"),
              verify_status(tmp_path, reg, f"{repo}:v1")):
        assert p.returncode not in (0,), p.stdout
        assert NO_CREDS in p.stderr, p.stderr


def test_wrong_credentials_message(tmp_path, reg):
    ak.add_user(reg, "frank")
    repo, _ = private_repo(reg, "frank")
    want = f"wrong username or password for {reg.addr}"
    creds = ["--username", "frank", "--password-stdin"]
    for p in (inspect(tmp_path, reg, f"{repo}:v1", *creds, input="bad\n"),
              resolve(tmp_path, reg, f"{repo}:v1", *creds, input="bad\n"),
              verify_status(tmp_path, reg, f"{repo}:v1", *creds, input="bad\n")):
        assert p.returncode != 0, p.stdout
        assert want in p.stderr, p.stderr
        assert NO_CREDS not in p.stderr, p.stderr
    # a stale docker login says the same
    cfg = write_docker_config(tmp_path / "dockercfg", {reg.addr: {"auth": b64("frank:old")}})
    p = inspect(tmp_path, reg, f"{repo}:v1", docker_config=cfg)
    assert p.returncode != 0 and want in p.stderr, p.stderr


def test_access_denied_message(tmp_path, reg):
    pw = ak.add_user(reg, "grace")
    repo, _ = private_repo(reg)          # no grant for grace
    creds = ["--username", "grace", "--password-stdin"]
    for p in (inspect(tmp_path, reg, f"{repo}:v1", *creds, input=pw),
              resolve(tmp_path, reg, f"{repo}:v1", *creds, input=pw),
              verify_status(tmp_path, reg, f"{repo}:v1", *creds, input=pw)):
        assert p.returncode != 0, p.stdout
        assert f"access denied to {repo}" in p.stderr, p.stderr
        assert "wrong username or password" not in p.stderr and NO_CREDS not in p.stderr, p.stderr


# ---------------------------------------------------------------- the failed-login throttle

def test_one_accounts_wrong_passwords_lock_out_only_that_account(berth_factory):
    b = berth_factory(config=ak.auth_config(failed_login_limit=3), name="throttle1")
    admin_pw = ak.add_user(b, "admin", admin=True)
    alice_pw = ak.add_user(b, "alice")
    bob_pw = ak.add_user(b, "bob")
    repo = "team/app"
    seed(b, admin_pw, repo)
    ak.grant(b, repo, "pull", user="alice")
    alice_tok = ak.get_token(b, [f"repository:{repo}:pull"], "alice", alice_pw)
    codes = [ak.get_token_response(b, [], "bob", f"wrong-{i}").status_code for i in range(40)]
    assert codes[:3] == [401] * 3 and set(codes[3:]) == {429}, codes
    # bob's pair is throttled, even with the right password
    assert ak.get_token_response(b, [], "bob", bob_pw).status_code == 429
    # nobody else on this IP is
    assert client(b, alice_tok).get(f"/v2/{repo}/manifests/v1").status_code == 200
    assert ak.get_token(b, [f"repository:{repo}:pull"], "alice", alice_pw)
    assert ak.get_token(b, [], "admin", admin_pw)
    r = requests.get(f"{b.url}/berth/v1/users", auth=("admin", admin_pw), timeout=30)
    assert r.status_code == 200, r.text


def test_many_accounts_failing_from_one_ip_do_not_lock_out_valid_logins(berth_factory):
    """Wrong passwords for many names from one IP (a misconfigured CI fleet behind one NAT, or a spray):
    the other accounts' valid logins, admins' logins and valid tokens keep working."""
    b = berth_factory(config=ak.auth_config(failed_login_limit=2), name="throttle2")
    admin_pw = ak.add_user(b, "admin", admin=True)
    alice_pw = ak.add_user(b, "alice")
    repo = "team/app"
    seed(b, admin_pw, repo)
    ak.grant(b, repo, "pull", user="alice")
    alice_tok = ak.get_token(b, [f"repository:{repo}:pull"], "alice", alice_pw)
    codes = []
    for i in range(30):
        for _ in range(3):
            codes.append(ak.get_token_response(b, [], f"ci{i}", "wrong").status_code)
    assert set(codes) <= {401, 429}, codes
    assert client(b, alice_tok).get(f"/v2/{repo}/manifests/v1").status_code == 200
    r = ak.get_token_response(b, [f"repository:{repo}:pull"], "alice", alice_pw)
    assert r.status_code == 200, (r.status_code, r.text)
    r = ak.get_token_response(b, [], "admin", admin_pw)
    assert r.status_code == 200, (r.status_code, r.text)
    r = requests.get(f"{b.url}/berth/v1/users", auth=("admin", admin_pw), timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    r = ak.post_token(b, grant_type="password", username="alice", password=alice_pw, service="berth",
                      client_id="e2e")
    assert r.status_code == 200, (r.status_code, r.text)
