"""Shared fixtures for berth's end-to-end tests.

Every test here drives the real `berth` binary (BERTH_BIN, default target/release/berth)
started on an ephemeral loopback port. No mocks.
"""
import os
import pathlib
import signal
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BERTH_BIN = os.environ.get("BERTH_BIN", str(ROOT / "target" / "release" / "berth"))


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
