"""The verification gate end to end: a real `berth` in token mode, two real `berth-verifier`
workers with the oci-runtime runner (runc) booting a busybox image these tests build, the
`berth verify` CLI, the referrers API, protected tags, the pull gate, and the queue protocol
(leases, heartbeats, retries, idempotent results) driven over HTTP.

No mocks: the images really boot under runc, in their own namespaces.
"""
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import uuid

import pytest
import requests

from conftest import BERTH_BIN, Berth, require_busybox
from authkit import auth_config, add_user, create_robot, get_token, bearer
from helpers import Client, canon, digest, wait_for, OCI_MANIFEST, OCI_CONFIG, OCI_INDEX

VERIFIER_BIN = str(pathlib.Path(BERTH_BIN).with_name("berth-verifier"))
ARTIFACT_TYPE = "application/vnd.berth.verification.v1+json"
RESULT_MEDIA = "application/vnd.berth.verification.result.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"

LEASE = 6

CONFIG = auth_config(extra=f"""
[verify]
lease_secs = {LEASE}
retry_backoff_secs = 1
max_attempts = 3

[[verify.policies]]
name = "linux-boot"
repositories = ["app/**"]
timeout_secs = 30
protected_tags = ["prod", "release-*"]

[[verify.policies]]
name = "gated"
repositories = ["gated/**"]
pull_gate = true
timeout_secs = 30

[[verify.policies]]
name = "slow"
repositories = ["slow/**"]
timeout_secs = 2

[[verify.policies]]
name = "windows"
repositories = ["win/**"]
windows_hosts = ["ltsc2022"]
probe_windows = ["cmd", "/c", "ver"]
protected_tags = ["prod"]
timeout_secs = 30

[[verify.policies]]
name = "manual"
repositories = ["manual/**"]
probe_linux = ["/bin/true"]
timeout_secs = 30
""")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root; CI runs as root")


# ---------------------------------------------------------------- images

def busybox_layer():
    """A gzip layer with a static busybox and a few applets, /etc/passwd, and /tmp."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        def d(name, mode=0o755):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE
            ti.mode = mode
            t.addfile(ti)

        def f(name, data, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = mode
            t.addfile(ti, io.BytesIO(data))

        for x in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            d(x, 0o1777 if x == "tmp" else 0o755)
        f("bin/busybox", pathlib.Path(require_busybox()).read_bytes(), 0o755)
        for applet in ("sh", "echo", "sleep", "cat", "ls", "true", "false", "id"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "busybox"
            t.addfile(ti)
        f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        f("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


LAYER, DIFF_ID = busybox_layer()


def image_parts(cmd, arch="amd64", entrypoint=None, user=None, nonce=None):
    cfg = {"architecture": arch, "os": "linux",
           "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
           "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]},
           "created": "2026-11-28T00:00:00Z"}
    if entrypoint is not None:
        cfg["config"]["Entrypoint"] = entrypoint
    if user is not None:
        cfg["config"]["User"] = user
    if nonce:
        cfg["config"]["Labels"] = {"nonce": nonce}
    cfg_b = canon(cfg)
    man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": digest(cfg_b), "size": len(cfg_b)},
           "layers": [{"mediaType": OCI_LAYER_GZ, "digest": digest(LAYER), "size": len(LAYER)}]}
    return cfg_b, canon(man)


# ---------------------------------------------------------------- the setup

class Verifier:
    def __init__(self, reg, name, robot, work_dir, extra=(), runner="oci-runtime", env=None, wait_secs=5):
        self.reg, self.name, self.robot, self.work_dir = reg, name, robot, pathlib.Path(work_dir)
        self.wait_secs = wait_secs
        self.extra = list(extra)
        self.env = dict(env or {})
        self.runner = runner
        self.proc = None
        self.log = []
        self.id = None

    def start(self):
        args = [VERIFIER_BIN, "run", "--registry", self.reg.url, "--username", self.robot.username,
                "--password", self.robot.secret, "--name", self.name, "--work-dir", str(self.work_dir),
                "--runner", self.runner, "--wait-secs", str(self.wait_secs), *self.extra]
        env = dict(os.environ, RUST_LOG="info", **self.env)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("registered as worker "):
            # Closed stdout: the worker is exiting; wait for it so its stderr says why.
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            rc = self.proc.poll()
            raise AssertionError(f"worker did not register (exit {rc}): {line!r}\n"
                                 + (self.proc.stderr.read() if rc is not None else ""))
        self.id = line.split()[-1]
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _drain(self, f):
        for line in f:
            self.log.append(line)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Env:
    def __init__(self, reg, admin_pw, workers):
        self.reg = reg
        self.admin_pw = admin_pw
        self.workers = workers

    def client(self, repo, actions="pull,push"):
        c = Client(self.reg.url)
        tok = get_token(self.reg, scopes=[f"repository:{repo}:{actions}"], user="admin", password=self.admin_pw)
        c.s.headers.update(bearer(tok))
        return c

    def api(self, method, path, **kw):
        kw.setdefault("timeout", 90)
        kw.setdefault("auth", ("admin", self.admin_pw))
        return requests.request(method, self.reg.url + path, **kw)

    def push(self, repo, ref, cmd, **kw):
        c = self.client(repo)
        cfg, man = image_parts(cmd, **kw)
        c.push_blob(repo, cfg)
        c.push_blob(repo, LAYER)
        r = c.put_manifest(repo, ref, man)
        return r, man, digest(man)

    def verify_cli(self, *args, timeout=180):
        argv = [BERTH_BIN, "verify", *args, "--registry", self.reg.url,
                "--username", "admin", "--password", self.admin_pw]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def status(self, ref):
        r = self.api("GET", "/berth/v1/verify/status", params={"reference": ref})
        assert r.status_code == 200, r.text
        return r.json()

    def wait_state(self, ref, pred, timeout=90):
        last = [None]

        def met():
            last[0] = self.status(ref)
            return last[0] if pred(last[0]) else None
        return wait_for(met, timeout, lambda: f"{ref} to reach the state: {json.dumps(last[0], indent=1)}\n"
                        + "".join(l for w in self.workers for l in w.log[-30:]), 0.5)

    def job(self, job_id):
        r = self.api("GET", f"/berth/v1/verify/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()


def work_base():
    """Where the workers' work directories go: the worker refuses directories others could
    tamper with, and the user-namespaced container must be able to traverse the directories
    above its bundle, which pytest's 0700 tmp dirs are not. /var/tmp is sticky and searchable."""
    d = pathlib.Path("/var/tmp") / ("berth-e2e-" + uuid.uuid4().hex[:10])
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    work = work_base()
    reg = Berth(base / "data", config=CONFIG).start()
    admin_pw = add_user(reg, "admin", admin=True)
    robot = create_robot(reg, "verifier", ["app/**:verify", "gated/**:verify", "slow/**:verify"])
    workers = [Verifier(reg, f"w{i}", robot, work / f"work{i}").start() for i in (1, 2)]
    e = Env(reg, admin_pw, workers)
    e.base = base
    e.work = work
    e.robot = robot
    yield e
    for w in workers:
        w.stop()
    reg.stop()
    shutil.rmtree(work, ignore_errors=True)


def one_job(st):
    assert len(st["checks"]) == 1, st
    return st["checks"][0]


# ---------------------------------------------------------------- tests

def test_passing_image_boots_and_passes(env):
    repo = "app/hello"
    r, man, d = env.push(repo, "candidate", ["sh", "-c", "echo hello from berth; id -u"])
    assert r.status_code == 201, r.text
    p = env.verify_cli("wait", f"{repo}:candidate", "--timeout", "120s", "--interval", "500ms")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "every required check passed" in p.stdout
    st = env.status(f"{repo}:candidate")
    assert st["ok"] and st["complete"] and st["required"] == 1 and st["passed"] == 1
    check = one_job(st)
    assert check["digest"] == d and check["state"] == "passed" and check["isolation"] == "process"
    job = env.job(check["job"])
    assert job["exit_code"] == 0 and job["runner"] == "oci-runtime" and not job["simulated"]
    assert "hello from berth" in job["log_tail"], job
    assert job["log_tail"].strip().endswith("0"), job   # id -u inside the container: root
    t = job["timings"]
    for k in ("pull_ms", "unpack_ms", "create_ms", "start_ms", "exit_ms"):
        assert isinstance(t.get(k), int), (k, t)
    assert job["host"]["platform"]["os"] == "linux"
    assert job["worker"] in {w.id for w in env.workers}

    # The result is a referrer of the image: berth's artifactType, subject = the manifest.
    c = env.client(repo, "pull")
    rr = c.get(f"/v2/{repo}/referrers/{d}")
    assert rr.status_code == 200, rr.text
    found = [m for m in rr.json()["manifests"] if m.get("artifactType") == ARTIFACT_TYPE]
    assert len(found) == 1, rr.json()
    ann = found[0]["annotations"]
    assert ann["dev.berth.verification.status"] == "passed"
    assert ann["dev.berth.verification.isolation"] == "process"
    assert ann["dev.berth.verification.simulated"] == "false"
    assert found[0]["digest"] == job["result"]
    # Filtered by artifactType too; and the document itself is readable.
    rr2 = c.get(f"/v2/{repo}/referrers/{d}", params={"artifactType": ARTIFACT_TYPE})
    assert [m["digest"] for m in rr2.json()["manifests"]] == [found[0]["digest"]]
    m = c.get(f"/v2/{repo}/manifests/{found[0]['digest']}", headers={"Accept": OCI_MANIFEST}).json()
    assert m["subject"]["digest"] == d and m["artifactType"] == ARTIFACT_TYPE
    doc = c.get(f"/v2/{repo}/blobs/{m['layers'][0]['digest']}").json()
    assert m["layers"][0]["mediaType"] == RESULT_MEDIA
    assert doc["status"] == "passed" and doc["exit_code"] == 0 and doc["digest"] == d
    assert "hello from berth" in doc["log_tail"]


def test_missing_entrypoint_fails_with_log_tail(env):
    repo = "app/broken"
    r, _, d = env.push(repo, "candidate", ["/bin/no-such-program", "--serve"])
    assert r.status_code == 201, r.text
    p = env.verify_cli("wait", f"{repo}:candidate", "--timeout", "120s", "--interval", "500ms")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "verification did not pass" in p.stdout
    st = env.status(f"{repo}:candidate")
    check = one_job(st)
    assert check["state"] == "failed" and not st["ok"] and st["complete"]
    job = env.job(check["job"])
    assert "no-such-program" in job["log_tail"], job
    assert job["attempts"] == 1, "the image's fault is not retried"
    # `berth verify status` agrees, with a non-zero exit.
    p = env.verify_cli("status", f"{repo}:candidate")
    assert p.returncode == 1 and "failed" in p.stdout, p.stdout


def test_nonzero_exit_fails(env):
    repo = "app/exit3"
    r, _, _ = env.push(repo, "candidate", ["sh", "-c", "echo about to fail >&2; exit 3"])
    assert r.status_code == 201
    st = env.wait_state(f"{repo}:candidate", lambda s: s["complete"])
    check = one_job(st)
    assert check["state"] == "failed" and check["exit_code"] == 3
    assert "about to fail" in env.job(check["job"])["log_tail"]


def test_timeout_kills_the_container(env):
    repo = "slow/sleeper"
    r, _, _ = env.push(repo, "candidate", ["sleep", "600"])
    assert r.status_code == 201
    st = env.wait_state(f"{repo}:candidate", lambda s: s["complete"], timeout=120)
    check = one_job(st)
    job = env.job(check["job"])
    assert check["state"] == "failed" and "timed out" in job["message"], job


def test_protected_tag_refuses_failing_and_accepts_passing(env):
    repo = "app/gate"
    _, good, good_d = env.push(repo, "good", ["true"])
    _, bad, bad_d = env.push(repo, "bad", ["false"])
    env.wait_state(f"{repo}:good", lambda s: s["ok"])
    env.wait_state(f"{repo}:bad", lambda s: s["complete"] and not s["ok"])
    c = env.client(repo)
    r = c.put_manifest(repo, "prod", bad)
    assert r.status_code == 403, r.text
    err = r.json()["errors"][0]
    assert err["code"] == "DENIED"
    assert "prod" in err["message"] and bad_d in err["message"]
    assert any("failed" in m for m in err["detail"]["missing"]), err
    assert c.get(f"/v2/{repo}/manifests/prod").status_code == 404
    r = c.put_manifest(repo, "prod", good)
    assert r.status_code == 201, r.text
    assert c.get(f"/v2/{repo}/manifests/prod").headers["Docker-Content-Digest"] == good_d
    # `release-*` is protected too; other tags are not.
    assert c.put_manifest(repo, "release-1", bad).status_code == 403
    assert c.put_manifest(repo, "scratch", bad).status_code == 201


def test_nested_index_children_are_checked_too(env):
    """An index [A verified, N -> [B failing]] must not pass the gate on A alone: containerd
    follows N."""
    repo = "app/nested"
    _, good, good_d = env.push(repo, "good", ["true"])
    _, bad, bad_d = env.push(repo, "bad", ["false"])
    env.wait_state(f"{repo}:good", lambda s: s["ok"])
    env.wait_state(f"{repo}:bad", lambda s: s["complete"] and not s["ok"])
    c = env.client(repo)
    plat = {"os": "linux", "architecture": "amd64"}
    inner = canon({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": bad_d, "size": len(bad), "platform": plat}]})
    r = c.put_manifest(repo, digest(inner), inner, media_type=OCI_INDEX)
    assert r.status_code == 201, r.text
    outer = canon({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": good_d, "size": len(good), "platform": plat},
        {"mediaType": OCI_INDEX, "digest": digest(inner), "size": len(inner)}]})
    r = c.put_manifest(repo, "prod", outer, media_type=OCI_INDEX)
    assert r.status_code == 403, r.text
    assert r.json()["errors"][0]["detail"]["missing"] == ["linux/amd64 process -: failed (exit 1)"], r.text
    st = env.status(f"{repo}@{digest(outer)}")
    assert {c["digest"] for c in st["checks"]} == {good_d, bad_d}, st
    assert st["complete"] and not st["ok"] and st["passed"] == 1 and st["failed"] == 1, st


def test_protected_tag_on_first_push_queues_then_accepts(env):
    """A manifest pushed straight to a protected tag is refused, stored untagged and verified;
    the same push succeeds once its checks passed."""
    repo = "app/direct"
    r, man, d = env.push(repo, "release-7", ["echo", "ok"])
    assert r.status_code == 403, r.text
    missing = r.json()["errors"][0]["detail"]["missing"]
    assert missing and "missing" in missing[0], missing
    st = env.wait_state(f"{repo}@{d}", lambda s: s["ok"])
    assert st["passed"] == 1
    c = env.client(repo)
    assert c.put_manifest(repo, "release-7", man).status_code == 201


def test_pull_gate(env):
    repo = "gated/svc"
    r, _, d = env.push(repo, "latest", ["sleep", "2"])
    assert r.status_code == 201
    c = env.client(repo, "pull")
    r = c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
    if r.status_code == 403:   # not verified yet (it takes ~2 s)
        assert r.json()["errors"][0]["code"] == "DENIED"
    assert c.get(f"/v2/{repo}/manifests/{d}", headers={"Accept": OCI_MANIFEST}).status_code == 200
    env.wait_state(f"{repo}:latest", lambda s: s["ok"])
    assert c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST}).status_code == 200
    # A failing image stays unpullable by tag.
    env.push(repo, "broken", ["false"])
    env.wait_state(f"{repo}:broken", lambda s: s["complete"])
    r = c.get(f"/v2/{repo}/manifests/broken", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"


def test_verify_wait_times_out_when_no_worker_can_run_it(env):
    repo = "app/arm"
    r, _, _ = env.push(repo, "candidate", ["true"], arch="arm64")
    assert r.status_code == 201
    p = env.verify_cli("wait", f"{repo}:candidate", "--timeout", "3s", "--interval", "500ms")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "timed out" in p.stdout and "queued" in p.stdout
    # named at the start and again at the timeout
    assert p.stderr.count("no worker registered for linux/arm64") == 2, p.stderr


def test_verify_requeues_on_demand(env):
    repo = "app/again"
    env.push(repo, "candidate", ["true"])
    first = env.wait_state(f"{repo}:candidate", lambda s: s["ok"])
    job1 = one_job(first)["job"]
    p = env.verify_cli(f"{repo}:candidate")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "1 checks queued" in p.stdout
    # Same job row, run again: attempts restart, a second result referrer appears.
    def passed_again():
        j = env.job(job1)
        return j["state"] == "passed" and j["result"] != one_job(first)["result"]
    wait_for(passed_again, 60, lambda: f"the job to pass again with a new result: {env.job(job1)}", 0.5)
    d = first["digest"]
    refs = env.client(repo, "pull").get(f"/v2/{repo}/referrers/{d}").json()["manifests"]
    assert len([m for m in refs if m.get("artifactType") == ARTIFACT_TYPE]) == 2


def test_worker_killed_mid_job_loses_its_lease(env):
    repo = "app/longrun"
    r, _, d = env.push(repo, "candidate", ["sh", "-c", "sleep 8; echo finished"])
    assert r.status_code == 201
    st = env.wait_state(f"{repo}:candidate", lambda s: one_job(s)["state"] == "running")
    job_id = one_job(st)["job"]
    holder_id = env.job(job_id)["worker"]
    holder = next(w for w in env.workers if w.id == holder_id)
    other = next(w for w in env.workers if w.id != holder_id)
    runtime_state = holder.work_dir / "runtime-state"

    def container_up():
        return subprocess.run(["runc", "--root", str(runtime_state), "list", "-q"],
                              capture_output=True, text=True).stdout.strip()
    # killed with its container up, so that the crash leaves a container and a run directory behind
    wait_for(container_up, 30, "the holder's container to be up")
    holder.kill9()
    st = env.wait_state(f"{repo}:candidate", lambda s: s["complete"], timeout=120)
    job = env.job(job_id)
    assert job["state"] == "passed", job
    assert job["worker"] == other.id, (job, holder_id)
    assert job["attempts"] == 2, job
    assert "finished" in job["log_tail"]
    # The killed worker starts again and removes what its crash left behind.
    holder.start()

    def job_dirs():
        return [p.name for p in holder.work_dir.iterdir() if p.name.startswith("job-")]
    wait_for(lambda: not job_dirs(), 20, lambda: f"the restarted worker to remove {job_dirs()}", 0.5)
    out = subprocess.run(["runc", "--root", str(holder.work_dir / "runtime-state"), "list", "-q"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "", out.stdout


def test_run_directories_are_removed(env):
    repo = "app/clean"
    env.push(repo, "candidate", ["true"])
    env.wait_state(f"{repo}:candidate", lambda s: s["complete"])
    for w in env.workers:
        def clean(w=w):
            left = [p.name for p in w.work_dir.iterdir() if p.name.startswith("job-")]
            busy = [j for j in env.api("GET", "/berth/v1/verify/jobs", params={"state": "running"}).json()["jobs"]
                    if j["worker"] == w.id]
            return not left or busy
        wait_for(clean, 5, f"{w.name} to remove its finished run directories")


# ---------------------------------------------------------------- the queue protocol over HTTP

class Fake:
    """The test acting as a worker (a robot with verify on manual/**), to drive the protocol."""

    def __init__(self, env, robot):
        self.env, self.robot = env, robot
        r = requests.post(env.reg.url + "/berth/v1/verify/workers", auth=(robot.username, robot.secret),
                          json={"name": "manual-" + uuid.uuid4().hex[:6],
                                "platform": {"os": "linux", "architecture": "amd64"},
                                "isolation": ["process"], "runners": ["manual"]}, timeout=30)
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]

    def post(self, path, body):
        return requests.post(self.env.reg.url + path, auth=(self.robot.username, self.robot.secret),
                             json=body, timeout=90)

    def claim(self, wait=3):
        r = self.post("/berth/v1/verify/claim", {"worker": self.id, "wait_secs": wait})
        assert r.status_code in (200, 204), r.text   # a job, or none within the wait: both are answers
        return r.json() if r.status_code == 200 else None

    def report(self, job, lease, status="passed", **kw):
        body = {"lease": lease, "status": status, "runner": "manual",
                "host": {"worker": self.id, "name": "manual", "platform": {"os": "linux", "architecture": "amd64"}}}
        body.update(kw)
        return self.post(f"/berth/v1/verify/jobs/{job}/result", body)


@pytest.fixture(scope="module")
def manual(env):
    robot = create_robot(env.reg, "manual", ["manual/**:verify"])
    return Fake(env, robot)


def test_protocol_lease_heartbeat_result(env, manual):
    repo = "manual/p1"
    env.push(repo, "candidate", ["true"])
    a = manual.claim()
    assert a is not None and a["repository"] == repo and a["attempt"] == 1
    assert a["probe"] == ["/bin/true"] and a["lease_secs"] == LEASE
    # Heartbeats: the right lease extends, a wrong one is 409.
    assert manual.post(f"/berth/v1/verify/jobs/{a['id']}/heartbeat", {"lease": a["lease"]}).status_code == 200
    r = manual.post(f"/berth/v1/verify/jobs/{a['id']}/heartbeat", {"lease": "not-mine"})
    assert r.status_code == 409 and r.json()["errors"][0]["code"] == "DENIED"
    # Completion is idempotent for the same lease; another lease is refused.
    r1 = manual.report(a["id"], a["lease"], exit_code=0, message="ok", timings={"pull_ms": 5})
    assert r1.status_code == 200, r1.text
    r2 = manual.report(a["id"], a["lease"], exit_code=0, message="ok", timings={"pull_ms": 5})
    assert r2.status_code == 200 and r2.json()["result"] == r1.json()["result"]
    assert manual.report(a["id"], "other", status="failed").status_code == 409
    assert manual.report(a["id"], a["lease"], status="queued").status_code == 400
    st = env.status(f"{repo}:candidate")
    assert st["ok"]


def test_protocol_retry_with_backoff_then_error(env, manual):
    repo = "manual/p2"
    env.push(repo, "candidate", ["true"])
    for attempt in (1, 2, 3):
        a = manual.claim(wait=10)
        assert a is not None and a["attempt"] == attempt, a
        r = manual.report(a["id"], a["lease"], status="error", message=f"disk full {attempt}")
        assert r.status_code == 200, r.text
    j = r.json()
    assert j["state"] == "error" and j["attempts"] == 3, j
    st = env.status(f"{repo}:candidate")
    assert st["complete"] and not st["ok"] and st["failed"] == 1


def test_protocol_expired_lease_goes_to_the_next_claim(env, manual):
    repo = "manual/p3"
    env.push(repo, "candidate", ["true"])
    a = manual.claim()
    assert a is not None
    assert manual.claim(wait=1) is None   # still leased
    # Not a wait: the lease must actually run out (time passing is the case under test); polling
    # claim would take the job as soon as it does and change what is tested.
    time.sleep(LEASE + 1.5)
    b = manual.claim(wait=3)
    assert b is not None and b["id"] == a["id"] and b["attempt"] == 2 and b["lease"] != a["lease"]
    assert manual.report(a["id"], a["lease"]).status_code == 409
    assert manual.report(b["id"], b["lease"]).status_code == 200


def test_protocol_expired_lease_cannot_report_even_before_a_reclaim(env, manual):
    """Issue 12 #7: a worker whose lease ran out gets 409 on heartbeat and report, even while no other
    worker has claimed the job yet; the next claim gets it."""
    repo = "manual/p-expired"
    env.push(repo, "candidate", ["true"])
    a = manual.claim()
    assert a is not None and a["repository"] == repo
    # Not a wait: the lease must run out with nobody claiming the job (the case under test), so
    # there is nothing to poll without changing it.
    time.sleep(LEASE + 1.5)
    r = manual.post(f"/berth/v1/verify/jobs/{a['id']}/heartbeat", {"lease": a["lease"]})
    assert r.status_code == 409, (r.status_code, r.text)
    r = manual.report(a["id"], a["lease"])
    assert r.status_code == 409, (r.status_code, r.text)
    assert manual.report(a["id"], a["lease"], status="error", message="").status_code == 409
    b = manual.claim(wait=3)
    assert b is not None and b["id"] == a["id"] and b["attempt"] == 2
    assert manual.report(b["id"], b["lease"]).status_code == 200


def test_job_of_another_repository_answers_like_a_missing_one(env, manual):
    """Issue 12 #7: GET verify/jobs/{id} is 404 alike for a missing job and one the caller may not pull
    (no existence oracle)."""
    env.push("manual/p-oracle", "candidate", ["true"])
    jobs = env.api("GET", "/berth/v1/verify/jobs", params={"repository": "manual/p-oracle"}).json()["jobs"]
    assert jobs
    outsider = create_robot(env.reg, "outsider" + uuid.uuid4().hex[:6], ["elsewhere/**:pull"])
    auth = (outsider.username, outsider.secret)
    hidden = requests.get(f"{env.reg.url}/berth/v1/verify/jobs/{jobs[0]['id']}", auth=auth, timeout=30)
    missing = requests.get(f"{env.reg.url}/berth/v1/verify/jobs/987654321", auth=auth, timeout=30)
    assert hidden.status_code == missing.status_code == 404, (hidden.text, missing.text)
    assert hidden.json()["errors"][0]["code"] == missing.json()["errors"][0]["code"]
    assert "manual/p-oracle" not in hidden.text
    # The worker protocol's job routes answer alike too (found in review: 403 naming the
    # repository for an existing job, 404 for a missing one).
    for path, body in [("heartbeat", {"lease": "x", "phase": "x"}), ("result", {"lease": "x", "status": "passed", "runner": "manual", "host": {
            "worker": "w", "name": "manual", "platform": {"os": "linux", "architecture": "amd64"}}})]:
        hidden = requests.post(f"{env.reg.url}/berth/v1/verify/jobs/{jobs[0]['id']}/{path}", json=body,
                               auth=auth, timeout=30)
        missing = requests.post(f"{env.reg.url}/berth/v1/verify/jobs/987654321/{path}", json=body,
                                auth=auth, timeout=30)
        assert hidden.status_code == missing.status_code == 404, (path, hidden.text, missing.text)
        assert "manual/p-oracle" not in hidden.text, hidden.text
    # the admin sees it
    assert env.api("GET", f"/berth/v1/verify/jobs/{jobs[0]['id']}").status_code == 200


def test_worker_list_is_not_for_anonymous_callers(env):
    """Issue 12 #7: no worker list for an anonymous token or no credentials; a principal other than an
    admin sees only its own workers."""
    anon = get_token(env.reg, scopes=["repository:app/hello:pull"])
    r = requests.get(env.reg.url + "/berth/v1/verify/workers", headers=bearer(anon), timeout=30)
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED", (r.status_code, r.text)
    assert "w1" not in r.text
    r = requests.get(env.reg.url + "/berth/v1/verify/workers", timeout=30)
    assert r.status_code == 401, (r.status_code, r.text)
    other = create_robot(env.reg, "lister" + uuid.uuid4().hex[:6], ["app/**:pull"])
    r = requests.get(env.reg.url + "/berth/v1/verify/workers", auth=(other.username, other.secret), timeout=30)
    assert r.status_code == 200 and r.json()["workers"] == [], r.text
    r = requests.get(env.reg.url + "/berth/v1/verify/workers", auth=(env.robot.username, env.robot.secret),
                     timeout=30)
    assert {"w1", "w2"} <= {w["name"] for w in r.json()["workers"]}, r.text


def test_protocol_needs_the_verify_permission(env):
    # A robot with pull only sees no jobs, and may not report on app/** jobs.
    robot = create_robot(env.reg, "puller", ["app/**:pull", "manual/**:pull"])
    fake = Fake(env, robot)
    env.push("manual/p4", "candidate", ["true"])
    assert fake.claim(wait=1) is None
    jobs = env.api("GET", "/berth/v1/verify/jobs", params={"repository": "manual/p4"}).json()["jobs"]
    assert jobs
    r = fake.report(jobs[0]["id"], "x")
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
    # Unauthenticated callers are challenged.
    r = requests.post(env.reg.url + "/berth/v1/verify/claim", json={"worker": fake.id}, timeout=10)
    assert r.status_code == 401


def test_workers_listed_with_their_platform(env):
    r = env.api("GET", "/berth/v1/verify/workers")
    assert r.status_code == 200
    names = {w["name"]: w for w in r.json()["workers"]}
    assert {"w1", "w2"} <= set(names)
    assert names["w1"]["platform"]["os"] == "linux"
    assert names["w1"]["runners"] == ["oci-runtime"] and names["w1"]["isolation"] == ["process"]


# ---------------------------------------------------------------- Windows through the HCS test double

def windows_base_layer():
    """A tiny stand-in for a Windows base layer: `Files/` with the SYSTEM hive that marks a base
    layer, `Hives/`, and `UtilityVM/Files/` for Hyper-V isolation. Only the HCS test double
    ever reads it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("Files/Windows/System32/config/SYSTEM", b"regf"),
                           ("Files/Windows/System32/cmd.exe", b"MZ"),
                           ("Hives/SYSTEM_Delta", b"regf"),
                           ("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi", b"efi")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


WIN_LAYER, WIN_DIFF_ID = windows_base_layer()


def push_windows(env, repo, ref, os_version):
    cfg = canon({"architecture": "amd64", "os": "windows", "os.version": os_version,
                 "config": {"Cmd": ["cmd", "/c", "ver"]},
                 "rootfs": {"type": "layers", "diff_ids": [WIN_DIFF_ID]}})
    man = canon({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": OCI_CONFIG, "digest": digest(cfg), "size": len(cfg)},
                 "layers": [{"mediaType": OCI_LAYER_GZ, "digest": digest(WIN_LAYER), "size": len(WIN_LAYER)}]})
    c = env.client(repo)
    c.push_blob(repo, cfg)
    c.push_blob(repo, WIN_LAYER)
    r = c.put_manifest(repo, ref, man)
    return r, man, digest(man)


@pytest.fixture(scope="module")
def win_worker(env):
    robot = create_robot(env.reg, "winverifier", ["win/**:verify"])
    w = Verifier(env.reg, "win-double", robot, env.work / "work-win", runner="hcs-double",
                 extra=["--os-version", "10.0.20348.2527"]).start()
    yield w
    w.stop()


def test_hcs_double_worker_results_are_simulated_and_never_satisfy_the_gate(env, win_worker):
    repo = "win/app"
    r, _, d = push_windows(env, repo, "candidate", "10.0.20348.2527")
    assert r.status_code == 201, r.text
    st = env.wait_state(f"{repo}:candidate", lambda s: s["complete"], timeout=60)
    by_iso = {c["isolation"]: c for c in st["checks"]}
    assert set(by_iso) == {"process", "hyperv"}, st
    for iso, c in by_iso.items():
        job = env.job(c["job"])
        assert job["state"] == "passed" and job["simulated"] and job["runner"] == "hcs-double", job
        assert job["worker"] == win_worker.id
        assert job["host"]["platform"]["os.version"] == "10.0.20348.2527", job
    # Simulated passes do not count: not ok, and the protected tag refuses the digest.
    assert not st["ok"], st
    c = env.client(repo)
    r = c.put_manifest(repo, "prod", c.get(f"/v2/{repo}/manifests/{d}", headers={"Accept": OCI_MANIFEST}).content)
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED", r.text
    # The referrer says simulated too.
    rr = c.get(f"/v2/{repo}/referrers/{d}", params={"artifactType": ARTIFACT_TYPE}).json()["manifests"]
    assert len(rr) == 2 and all(m["annotations"]["dev.berth.verification.simulated"] == "true" for m in rr), rr
    # Nothing of the runs is left in the work directory.
    wait_for(lambda: not [p.name for p in win_worker.work_dir.iterdir() if p.name.startswith("job-")], 5,
             "the worker to remove its run directories")


def test_ltsc2019_image_on_ltsc2022_host_is_incompatible_in_process_isolation(env, win_worker):
    repo = "win/old"
    r, _, d = push_windows(env, repo, "candidate", "10.0.17763.5936")
    assert r.status_code == 201, r.text
    st = env.wait_state(f"{repo}:candidate", lambda s: s["complete"], timeout=60)
    by_iso = {c["isolation"]: c for c in st["checks"]}
    assert set(by_iso) == {"process", "hyperv"}, st
    proc = env.job(by_iso["process"]["job"])
    assert proc["state"] == "incompatible", proc
    assert "17763" in proc["message"] and "20348" in proc["message"], proc
    hv = env.job(by_iso["hyperv"]["job"])
    assert hv["state"] == "passed" and hv["simulated"], hv


def test_inspect_and_resolve_need_pull_on_the_repository(env):
    """berth's own read API is no side door around auth: pull on the repository is needed."""
    repo = "app/private"
    env.push(repo, "v1", ["true"])
    params = {"repository": repo, "reference": "v1"}
    url = env.reg.url + "/berth/v1/inspect"
    assert requests.get(url, params=params, timeout=30).status_code == 401
    outsider = create_robot(env.reg, "outsider", ["other/**:pull"])
    r = requests.get(url, params=params, auth=(outsider.username, outsider.secret), timeout=30)
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED", r.text
    r = requests.get(env.reg.url + "/berth/v1/resolve", auth=(outsider.username, outsider.secret),
                     params=dict(params, platform="linux/amd64"), timeout=30)
    assert r.status_code == 403, r.text
    assert env.api("GET", "/berth/v1/inspect", params=params).status_code == 200
    # The CLI takes credentials from the environment.
    cli = [BERTH_BIN, "inspect", f"{repo}:v1", "--registry", env.reg.url]
    p = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "no credentials given" in p.stderr, (p.stdout, p.stderr)
    p = subprocess.run(cli, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, BERTH_USERNAME="admin", BERTH_PASSWORD=env.admin_pw))
    assert p.returncode == 0, (p.stdout, p.stderr)


def test_pull_gate_answers_for_the_digest_it_checked_while_the_tag_moves(env):
    """A gated pull by tag resolves the tag once: a tag moved between the gate's check and the
    read must never serve the manifest the gate refuses (the push side flips the tag between a
    passing and a failing image as fast as it can while the pull side reads it)."""
    repo = "gated/race"
    _, good, good_d = env.push(repo, "good", ["true"])
    _, bad, bad_d = env.push(repo, "bad", ["false"])
    env.wait_state(f"{repo}:good", lambda s: s["ok"])
    env.wait_state(f"{repo}:bad", lambda s: s["complete"] and not s["ok"])
    pusher, puller = env.client(repo), env.client(repo, "pull")
    assert pusher.put_manifest(repo, "flip", good).status_code == 201
    stop = threading.Event()
    push_failures = []

    def flip():
        while not stop.is_set():
            for m in (bad, good):
                r = pusher.put_manifest(repo, "flip", m)
                if r.status_code != 201:
                    push_failures.append((r.status_code, r.text))

    t = threading.Thread(target=flip)
    t.start()
    served, refused = 0, 0
    try:
        for _ in range(1500):
            r = puller.get(f"/v2/{repo}/manifests/flip", headers={"Accept": OCI_MANIFEST})
            if r.status_code == 200:
                assert r.headers["Docker-Content-Digest"] == good_d, \
                    f"the gate refused {bad_d} but its bytes were served"
                assert digest(r.content) == good_d
                served += 1
            else:
                assert r.status_code == 403, r.text
                assert r.json()["errors"][0]["code"] == "DENIED"
                refused += 1
    finally:
        stop.set()
        t.join()
    assert not push_failures, push_failures[:3]
    # Both outcomes were seen, so the tag really moved under the pulls.
    assert served and refused, (served, refused)
