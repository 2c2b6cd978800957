"""The verifier's sandbox, attacked end to end (issue 12, items 8-11): a real `berth` in token
mode, real `berth-verifier` workers with the oci-runtime runner (runc) booting images these
tests build, and a local attacker played by an unprivileged host user (`runuser -u nobody`).

- the work directory: a pre-created world-writable or other-owned one is refused, as is a
  runtime-state directory planted as a symlink;
- setuid files: a setuid-root binary of an image cannot be run as root from the host while the
  job runs (the bundle is 0700 and owned by the mapped id range, the file by the mapped root);
- unpack caps: a gzip bomb fails within its cap (bytes on disk measured), on the Linux and the
  HCS (test double) unpackers, and an entry-count bomb fails too;
- limits: a memory hog and a fork bomb are killed by their cgroup limits; a bad WorkingDir is
  refused before runc sees it; a pull larger than the cap fails; ENOSPC on the worker is
  `error` (retried), not the image's `failed`;
- a re-queue keeps the last result (and the pull gate open) until the new one arrives.
"""
import gzip
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import tarfile
import threading
import time
import uuid

import pytest

from conftest import Berth, require_busybox
from authkit import auth_config, add_user, create_robot
from helpers import canon, digest, wait_for, OCI_MANIFEST, OCI_CONFIG
from test_verify import Verifier, Env, VERIFIER_BIN, OCI_LAYER_GZ, one_job

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root; CI runs as root")

MAPPED_ROOT = 0x60000000

CONFIG = auth_config(extra="""
[verify]
lease_secs = 10
retry_backoff_secs = 1
max_attempts = 2

[[verify.policies]]
name = "sandbox"
repositories = ["sbx/**"]
timeout_secs = 60

[[verify.policies]]
name = "gated"
repositories = ["sbxgate/**"]
pull_gate = true
timeout_secs = 60

[[verify.policies]]
name = "windows"
repositories = ["sbxwin/**"]
windows_hosts = ["ltsc2022"]
probe_windows = ["cmd", "/c", "ver"]
timeout_secs = 30
""")


# ---------------------------------------------------------------- images

def tar_gz(build):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        build(t)
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=6, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


def add_dir(t, name, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    t.addfile(ti)


def add_file(t, name, data, mode=0o644, uid=0, gid=0):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    t.addfile(ti, io.BytesIO(data))


def add_link(t, name, target):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.SYMTYPE
    ti.linkname = target
    t.addfile(ti)


APPLETS = ("sh", "echo", "sleep", "cat", "ls", "true", "false", "id", "dd", "seq", "head")


def base_layer(extra=None):
    def build(t):
        for x in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            add_dir(t, x, 0o1777 if x == "tmp" else 0o755)
        add_file(t, "bin/busybox", pathlib.Path(require_busybox()).read_bytes(), 0o755)
        for a in APPLETS:
            add_link(t, f"bin/{a}", "busybox")
        add_file(t, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        add_file(t, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        if extra:
            extra(t)
    return tar_gz(build)


BASE = base_layer()


def push_image(env, repo, ref, cmd, layers=(BASE,), working_dir="/", user=None):
    c = env.client(repo)
    config = {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": working_dir,
              "Labels": {"nonce": uuid.uuid4().hex}}
    if user is not None:
        config["User"] = user
    cfg = canon({"architecture": "amd64", "os": "linux", "config": config,
                 "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}})
    man = canon({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": OCI_CONFIG, "digest": digest(cfg), "size": len(cfg)},
                 "layers": [{"mediaType": OCI_LAYER_GZ, "digest": digest(b), "size": len(b)} for b, _ in layers]})
    c.push_blob(repo, cfg)
    for b, _ in layers:
        c.push_blob(repo, b)
    r = c.put_manifest(repo, ref, man)
    assert r.status_code == 201, r.text
    return digest(man)


# ---------------------------------------------------------------- the setup

def fresh_base():
    """A directory under /var/tmp (sticky, searchable) for work dirs: pytest's tmp dirs are
    0700, which the user-namespaced container could not traverse."""
    d = pathlib.Path("/var/tmp") / ("berth-sbx-" + uuid.uuid4().hex[:10])
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    reg = Berth(base / "data", config=CONFIG).start()
    admin_pw = add_user(reg, "admin", admin=True)
    robot = create_robot(reg, "verifier", ["sbx/**:verify", "sbxgate/**:verify"])
    e = Env(reg, admin_pw, [])
    e.robot = robot
    e.winrobot = create_robot(reg, "winverifier", ["sbxwin/**:verify"])
    e.bases = []
    yield e
    for w in e.workers:
        w.stop()
    reg.stop()
    for b in e.bases:
        subprocess.run(["umount", "-l", str(b / "small")], capture_output=True)
        shutil.rmtree(b, ignore_errors=True)


def worker(env, *extra, work_dir=None, runner="oci-runtime", robot=None):
    """Starts a worker (stopping the previous ones: each test owns the queue)."""
    for w in env.workers:
        w.stop()
    env.workers.clear()
    if os.environ.get("SBX_BASELINE_NO_FLAGS"):
        # Only to watch these tests fail on a worker that has none of the new flags: run the
        # same attack without them.
        extra = tuple(x for i, x in enumerate(extra) if not (x.startswith("--max") or x.startswith("--memory")
                      or x.startswith("--pids") or x.startswith("--blob"))
                      and not (i > 0 and extra[i - 1].startswith(("--max", "--memory", "--pids", "--blob"))))
    if work_dir is None:
        b = fresh_base()
        env.bases.append(b)
        work_dir = b / "work"
    w = Verifier(env.reg, "sbx-" + uuid.uuid4().hex[:6], robot or env.robot, work_dir,
                 extra=list(extra), runner=runner).start()
    env.workers.append(w)
    return w


def plain_worker(env):
    """The running worker when it has default settings, else a fresh one."""
    if env.workers and env.workers[0].runner == "oci-runtime" and not env.workers[0].extra \
            and env.workers[0].proc.poll() is None and "small" not in str(env.workers[0].work_dir):
        return env.workers[0]
    return worker(env)


def refused(env, work_dir, timeout=20):
    """Starts a worker on work_dir and expects it to refuse (exit non-zero before registering)."""
    args = [VERIFIER_BIN, "run", "--registry", env.reg.url, "--username", env.robot.username,
            "--password", env.robot.secret, "--name", "refused", "--work-dir", str(work_dir),
            "--runner", "oci-runtime", "--wait-secs", "2"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"the worker accepted {work_dir} and ran: {out!r} {err[-2000:]!r}")
    assert p.returncode != 0, (out, err)
    assert "registered as worker" not in out, (out, err)
    return err


def job_of(env, ref, timeout=120):
    st = env.wait_state(ref, lambda s: s["complete"], timeout=timeout)
    return env.job(one_job(st)["job"])


# ---------------------------------------------------------------- 8. the work directory

def test_world_writable_work_dir_is_refused(env):
    b = fresh_base()
    env.bases.append(b)
    w = b / "work"
    w.mkdir()
    w.chmod(0o777)
    err = refused(env, w)
    assert "writable" in err and str(w) in err, err


def test_work_dir_owned_by_another_user_is_refused(env):
    b = fresh_base()
    env.bases.append(b)
    w = b / "work"
    w.mkdir(mode=0o700)
    os.chown(w, 65534, 65534)   # as if the local user had pre-created it
    err = refused(env, w)
    assert "owned by uid 65534" in err, err


def test_symlinked_work_dir_and_runtime_state_are_refused(env):
    b = fresh_base()
    env.bases.append(b)
    # The attacker's own directory, where they would like root to write.
    theirs = b / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)
    os.chown(theirs, 65534, 65534)
    link = b / "work-link"
    link.symlink_to(theirs)
    err = refused(env, link)
    assert "is not a directory (a symlink or a file); refusing to use it" in err, err
    # A root-owned work dir with runtime-state planted as a link to the attacker's directory:
    # runc's state (which the start-up sweep acts on) must not live there.
    w = b / "work"
    w.mkdir(mode=0o711)
    (w / "runtime-state").symlink_to(theirs)
    err = refused(env, w)
    assert "runtime-state" in err, err
    assert list(theirs.iterdir()) == []


# ---------------------------------------------------------------- 9. setuid files

def test_setuid_root_binary_cannot_be_run_as_root_from_the_host(env):
    w = worker(env)
    idbin = pathlib.Path(shutil.which("id")).read_bytes()
    layer = base_layer(lambda t: add_file(t, "bin/suid-id", idbin, mode=0o4755))
    ref = "sbx/setuid:candidate"
    push_image(env, "sbx/setuid", "candidate", ["sh", "-c", "id -u; sleep 8"], layers=(layer,))
    # While the job runs, the attacker looks for the image's setuid binary on the host.
    found = wait_for(lambda: next(w.work_dir.glob("job-*/bundle/rootfs/bin/suid-id"), None), 60,
                     "the job's rootfs to appear", 0.2)
    # unpacked and shifted: the container runs only after that
    wait_for(lambda: subprocess.run(["runc", "--root", str(w.work_dir / "runtime-state"), "list", "-q"],
                                    capture_output=True, text=True).stdout.strip(), 30, "the job's container to start")
    bundle = found.parents[2]
    st = os.lstat(found)
    assert st.st_uid == MAPPED_ROOT and st.st_mode & 0o4000, (st.st_uid, oct(st.st_mode))
    bst = os.lstat(bundle)
    assert bst.st_mode & 0o777 == 0o700 and bst.st_uid == MAPPED_ROOT, (oct(bst.st_mode), bst.st_uid)
    p = subprocess.run(["runuser", "-u", "nobody", "--", str(found), "-u"], capture_output=True, text=True)
    assert not (p.returncode == 0 and p.stdout.strip() == "0"), "a local user ran the image's setuid binary as root"
    assert p.returncode != 0 and "denied" in p.stderr.lower(), (p.returncode, p.stdout, p.stderr)
    # Inside, the image's root is still root, and the job passes.
    job = job_of(env, ref)
    assert job["state"] == "passed", job
    assert job["log_tail"].strip().splitlines()[0] == "0", job


# ---------------------------------------------------------------- 10. unpack caps

CAP = 16 << 20


def bomb_layer(size=128 << 20, name="zeros"):
    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.n = n

        def readinto(self, b):
            k = min(len(b), self.n)
            b[:k] = bytes(k)
            self.n -= k
            return k

    def build(t):
        ti = tarfile.TarInfo(name)
        ti.size = size
        ti.mode = 0o644
        t.addfile(ti, Zeros(size))
    return tar_gz(build)


def disk_watch(root):
    """Samples the bytes allocated under root until stopped; returns (stop, max)."""
    peak = [0]
    stop = threading.Event()

    def run():
        while not stop.is_set():
            n = 0
            for dirpath, dirs, files in os.walk(root):
                for f in files:
                    try:
                        n += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                    except OSError:
                        pass
            peak[0] = max(peak[0], n)
            time.sleep(0.02)  # the sampling period of the disk-use probe, not a wait

    threading.Thread(target=run, daemon=True).start()
    return stop, peak


def test_gzip_bomb_fails_within_its_cap(env):
    w = worker(env, "--max-unpack-bytes", str(CAP))
    bomb = bomb_layer()
    assert len(bomb[0]) < 1 << 20   # ~128 KiB of gzip for 128 MiB of zeros
    stop, peak = disk_watch(w.work_dir)
    try:
        push_image(env, "sbx/bomb", "candidate", ["true"], layers=(BASE, bomb))
        job = job_of(env, "sbx/bomb:candidate")
    finally:
        stop.set()
    assert job["state"] == "failed", job
    assert "layer expands beyond the limit" in job["message"], job
    assert job["attempts"] == 1, job
    # The blobs (~1.2 MiB) plus what was unpacked before the cap: never the 128 MiB.
    assert peak[0] <= CAP + (2 << 20), peak[0]


def test_too_many_entries_fail(env):
    worker(env, "--max-unpack-entries", "500")

    def many(t):
        add_dir(t, "many")
        for i in range(2000):
            add_file(t, f"many/f{i}", b"")
    push_image(env, "sbx/entries", "candidate", ["true"], layers=(BASE, tar_gz(many)))
    job = job_of(env, "sbx/entries:candidate")
    assert job["state"] == "failed" and "layer expands beyond the limit" in job["message"], job


def test_gzip_bomb_fails_within_its_cap_on_the_hcs_unpacker(env):
    worker(env, "--os-version", "10.0.20348.2527", "--max-unpack-bytes", str(CAP),
           runner="hcs-double", robot=env.winrobot)

    def build(t):
        add_file(t, "Files/Windows/System32/config/SYSTEM", b"regf")
        add_file(t, "Hives/SYSTEM_Delta", b"regf")
    bomb = bomb_layer(64 << 20, name="Files/zeros")
    base = tar_gz(build)
    repo = "sbxwin/bomb"
    c = env.client(repo)
    cfg = canon({"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2527",
                 "config": {"Cmd": ["cmd", "/c", "ver"]},
                 "rootfs": {"type": "layers", "diff_ids": [base[1], bomb[1]]}})
    man = canon({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": OCI_CONFIG, "digest": digest(cfg), "size": len(cfg)},
                 "layers": [{"mediaType": OCI_LAYER_GZ, "digest": digest(b), "size": len(b)} for b, _ in (base, bomb)]})
    c.push_blob(repo, cfg)
    for b, _ in (base, bomb):
        c.push_blob(repo, b)
    assert c.put_manifest(repo, "candidate", man).status_code == 201
    st = env.wait_state(f"{repo}:candidate", lambda s: s["complete"], timeout=60)
    for chk in st["checks"]:
        job = env.job(chk["job"])
        assert job["state"] == "failed", job
        assert "layer expands beyond the limit" in job["message"], job


# ---------------------------------------------------------------- 11. limits

def test_memory_hog_is_killed_by_its_limit(env):
    worker(env, "--memory-limit-mb", "64")
    # dd allocates and fills a 256 MiB buffer.
    push_image(env, "sbx/memhog", "candidate",
               ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=268435456 count=1 && echo survived"])
    job = job_of(env, "sbx/memhog:candidate")
    assert job["state"] == "failed", job
    assert "survived" not in job["log_tail"], job
    assert job["exit_code"] == 137, job   # 128 + SIGKILL, from the memory cgroup's OOM kill
    assert "timed out" not in job["message"], job


def test_fork_bomb_is_stopped_by_the_pids_limit(env):
    worker(env, "--pids-limit", "20")
    push_image(env, "sbx/forkbomb", "candidate",
               ["sh", "-c", "for i in $(seq 1 100); do sleep 30 & done; echo forked-100"])
    job = job_of(env, "sbx/forkbomb:candidate")
    assert job["state"] == "failed", job
    assert "forked-100" not in job["log_tail"], job
    assert "fork" in job["log_tail"].lower(), job


@pytest.mark.parametrize("wd,why", [
    ("/proc/self/fd/7", "runtime mount"),
    ("/app", "runtime mount"),          # /app -> /proc/self/cwd in the image
    ("/../../../etc", ".."),
    ("relative", "not absolute"),
])
def test_bad_working_dir_is_refused_before_runc(env, wd, why):
    plain_worker(env)
    layer = base_layer(lambda t: add_link(t, "app", "/proc/self/cwd"))
    repo = "sbx/wd-" + uuid.uuid4().hex[:6]
    push_image(env, repo, "candidate", ["true"], layers=(layer,), working_dir=wd)
    job = job_of(env, f"{repo}:candidate")
    assert job["state"] == "failed", job
    assert "WorkingDir" in job["message"] and why in job["message"], job


def test_good_working_dir_still_runs(env):
    plain_worker(env)
    layer = base_layer(lambda t: (add_dir(t, "srv"), add_link(t, "data", "srv")))
    push_image(env, "sbx/wd-ok", "candidate", ["sh", "-c", "pwd"], layers=(layer,), working_dir="/data")
    job = job_of(env, "sbx/wd-ok:candidate")
    assert job["state"] == "passed" and job["log_tail"].strip() == "/srv", job


def test_pull_cap_fails_the_image(env):
    worker(env, "--max-pull-bytes", str(200 << 10))
    big = tar_gz(lambda t: add_file(t, "random", os.urandom(400 << 10)))
    push_image(env, "sbx/bigpull", "candidate", ["true"], layers=(BASE, big))
    job = job_of(env, "sbx/bigpull:candidate")
    assert job["state"] == "failed" and "pull cap" in job["message"], job


def test_disk_full_on_the_worker_is_an_error_not_the_images_failure(env):
    b = fresh_base()
    env.bases.append(b)
    small = b / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0711", "tmpfs", str(small)], check=True)
    worker(env, work_dir=small)
    # 32 MiB of zeros: a small blob that does not fit once unpacked.
    z = bomb_layer(32 << 20)
    push_image(env, "sbx/enospc", "candidate", ["true"], layers=(BASE, z))
    job = job_of(env, "sbx/enospc:candidate", timeout=90)
    assert job["state"] == "error", job
    assert job["attempts"] == 2, job    # retried (max_attempts = 2)
    assert "space" in job["message"], job


# ---------------------------------------------------------------- re-queue keeps the last result

def test_requeue_keeps_the_last_result_until_the_new_one_arrives(env):
    worker(env)
    repo = "sbxgate/svc"
    d = push_image(env, repo, "latest", ["sh", "-c", "sleep 4"])
    env.wait_state(f"{repo}:latest", lambda s: s["ok"], timeout=90)
    c = env.client(repo, "pull")
    assert c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST}).status_code == 200
    p = env.verify_cli(f"{repo}:latest")
    assert p.returncode == 0 and "1 checks queued" in p.stdout, (p.stdout, p.stderr)
    st = env.status(f"{repo}:latest")
    chk = one_job(st)
    # two answers by timing: a worker may claim the re-queued check before this look
    assert chk["state"] in ("queued", "running"), st
    assert chk["last_state"] == "passed" and chk["satisfied"], st
    assert st["ok"] and not st["complete"], st
    # The pull gate still honours the pass while the check runs again.
    r = c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == d
    st = env.wait_state(f"{repo}:latest", lambda s: s["complete"], timeout=90)
    assert st["ok"] and "last_state" not in one_job(st), st


# ---------------------------------------------------------------- a stalled blob download

class StallingProxy:
    """An HTTP proxy in front of berth that forwards everything, except that the body of one
    blob stops after its first 1000 bytes (the connection stays open)."""

    def __init__(self, upstream, stall_digest):
        import http.server
        import requests as rq
        proxy = self
        self.stalled = threading.Event()
        self.release = threading.Event()

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                hdrs["Host"] = self.headers.get("Host", "")
                r = rq.request(self.command, upstream + self.path, headers=hdrs, data=body,
                               allow_redirects=False, stream=True, timeout=60)
                data = r.raw.read(decode_content=False)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "GET" and stall_digest in self.path and r.status_code == 200:
                    self.wfile.write(data[:1000])
                    self.wfile.flush()
                    proxy.stalled.set()
                    proxy.release.wait(120)
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


def test_stalled_blob_download_fails_after_the_stall_timeout(env):
    big = tar_gz(lambda t: add_file(t, "random", os.urandom(64 << 10)))
    proxy = StallingProxy(env.reg.url, digest(big[0]))
    try:
        for w in env.workers:
            w.stop()
        env.workers.clear()
        b = fresh_base()
        env.bases.append(b)
        w = Verifier(type("R", (), {"url": proxy.url})(), "sbx-stall", env.robot, b / "work",
                     extra=["--blob-stall-secs", "2"],
                     # The proxy is another origin than the registry's token realm.
                     env={"BERTH_VERIFIER_TRUSTED_REALMS": env.reg.url}).start()
        env.workers.append(w)
        t0 = time.time()
        push_image(env, "sbx/stall", "candidate", ["true"], layers=(BASE, big))
        assert proxy.stalled.wait(60), "the worker never fetched the blob"
        st = env.wait_state("sbx/stall:candidate",
                            lambda s: one_job(s)["state"] != "running" and one_job(s)["attempts"] >= 1
                            and "stalled" in one_job(s)["message"], timeout=60)
        assert time.time() - t0 < 40
        chk = one_job(st)
        # two answers by timing: re-queued after a stall, or already out of attempts if the polls
        # above missed the queued windows between the retries
        assert chk["state"] in ("queued", "error"), st
    finally:
        for w in env.workers:
            w.stop()
        env.workers.clear()
        proxy.close()
