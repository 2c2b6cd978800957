"""Shared fixtures for berth's end-to-end tests.

Every test here drives the real `berth` binary (BERTH_BIN, default target/release/berth)
started on an ephemeral loopback port. No mocks.
"""
import os
import pathlib
import shutil
import signal
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BERTH_BIN = os.environ.get("BERTH_BIN", str(ROOT / "target" / "release" / "berth"))
# BERTH_TEST_BACKEND=s3 runs the same tests with blobs in S3 (BERTH_TEST_S3_ENDPOINT names the
# server; tests/run-all.sh starts moto). Each registry gets a bucket of its own.
BACKEND = os.environ.get("BERTH_TEST_BACKEND", "filesystem")
S3_ENDPOINT = os.environ.get("BERTH_TEST_S3_ENDPOINT")
S3_REDIRECT = os.environ.get("BERTH_TEST_S3_REDIRECT", "false")
# berth reads every BERTH_* variable as configuration and rejects unknown keys, so the test
# harness's own variables must not reach it (nor the CLI runs, docker, skopeo... that the
# tests start with os.environ): read above, then removed from this process's environment.
for _k in [k for k in os.environ if k == "BERTH_BIN" or k.startswith("BERTH_TEST_")]:
    del os.environ[_k]


def backend_env():
    if BACKEND != "s3":
        return {}
    import uuid

    endpoint = S3_ENDPOINT
    if not endpoint:
        raise RuntimeError("BERTH_TEST_BACKEND=s3 needs BERTH_TEST_S3_ENDPOINT (an S3 server's URL)")
    return {
        "BERTH_STORAGE__BACKEND": "s3",
        "BERTH_STORAGE__S3__BUCKET": "berth-" + uuid.uuid4().hex[:16],
        "BERTH_STORAGE__S3__ENDPOINT": endpoint,
        "BERTH_STORAGE__S3__REGION": "us-east-1",
        "BERTH_STORAGE__S3__FORCE_PATH_STYLE": "true",
        "BERTH_STORAGE__S3__CREATE_BUCKET": "true",
        # Stream through berth so the API tests see berth's own headers; redirects have
        # their own tests.
        "BERTH_STORAGE__S3__REDIRECT": S3_REDIRECT,
        "BERTH_STORAGE__S3__PART_SIZE": str(5 << 20),
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    }


def pytest_configure(config):
    config.addinivalue_line("markers", "fs_only: inspects the filesystem backend's files; not run on S3")


# ---------------------------------------------------------------- external tools
# The clients the e2e tests drive (docker, skopeo, podman, containerd/ctr, runc, busybox-static) are
# installed by tests/setup.sh. A missing one FAILS the test that needs it, never skips it, so a CI run
# (CI=true) cannot go green without having exercised them; locally the message says what to install.

SETUP_HINT = "run tests/setup.sh"


def require_tool(tool, hint=SETUP_HINT):
    """The path of `tool` on PATH; fails the calling test if it is not installed."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} not found: {hint}")
    return exe


def require_busybox():
    """The path of a static busybox (copied into image rootfs by several tests)."""
    exe = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(exe):
        pytest.fail(f"busybox not found: {SETUP_HINT} (installs busybox-static)")
    return exe


def require_docker():
    """The docker CLI, with a reachable daemon."""
    exe = require_tool("docker", f"{SETUP_HINT} (installs docker.io and starts dockerd)")
    p = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.fail(f"docker daemon not reachable: {SETUP_HINT} first\n{p.stderr}")
    return exe


@pytest.fixture(scope="session")
def busybox():
    return require_busybox()


@pytest.fixture(scope="session")
def skopeo():
    return require_tool("skopeo", f"{SETUP_HINT} (installs it with apt)")


@pytest.fixture(scope="session")
def docker_ok(busybox):
    """docker CLI and daemon are there; returns the busybox path the docker tests build images from."""
    require_docker()
    return busybox


class Berth:
    """One running `berth serve` process with its own data directory."""

    def __init__(self, data_dir, config=None, env=None, listen="127.0.0.1:0"):
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.env = env or {}
        self.listen = listen
        self.proc = None
        self.addr = None
        self.log = []

    @property
    def url(self):
        return f"http://{self.addr}"

    def start(self, timeout=30):
        args = [BERTH_BIN, "serve", "--listen", self.listen, "--data-dir", str(self.data_dir)]
        if self.config is not None:
            cfg = self.data_dir.parent / (self.data_dir.name + "-config.toml")
            cfg.write_text(self.config)
            args += ["--config", str(cfg)]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        if not hasattr(self, "_backend_env"):
            self._backend_env = backend_env()
        env.update(self._backend_env)
        env.update(self.env)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        deadline = time.time() + timeout
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("listening on "):
                self.addr = line.split("listening on ", 1)[1].strip()
                break
        if self.addr is None:
            self.proc.kill()
            err = self.proc.stderr.read()
            raise RuntimeError(f"berth did not start: {line!r}\n{err}")
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self):
        proc = self.proc
        for line in proc.stderr:
            self.log.append(line)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        """Starts again on the same address and data directory."""
        self.listen = self.addr
        self.addr = None
        return self.start()


@pytest.fixture
def berth_factory(tmp_path):
    started = []

    def make(config=None, env=None, name="data", listen="127.0.0.1:0"):
        b = Berth(tmp_path / name, config=config, env=env, listen=listen).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def berth(berth_factory):
    """A registry on embedded defaults (plus an ephemeral port and a temp data dir)."""
    return berth_factory()
