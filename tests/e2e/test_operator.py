"""Operator commands run offline against the metadata database (issue 17)."""
import os
import subprocess

from conftest import BERTH_BIN as BIN


def berth(*args, cwd=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_grant_refuses_unknown_user_and_robot(tmp_path):
    data = str(tmp_path / "data")
    p = berth("grant", "--user", "ghost", "--repo", "team/*", "--actions", "pull", "--data-dir", data)
    assert p.returncode != 0, p.stdout
    assert "ghost" in p.stderr and "no user" in p.stderr, p.stderr
    p = berth("grant", "--robot", "robot$ghost", "--repo", "team/*", "--actions", "pull", "--data-dir", data)
    assert p.returncode != 0, p.stdout
    assert "no robot" in p.stderr, p.stderr
    # groups may be granted before they have members
    p = berth("grant", "--group", "devs", "--repo", "team/*", "--actions", "pull", "--data-dir", data)
    assert p.returncode == 0, p.stderr
