"""Issue 17: causes hidden behind a generic verification message (the cause from the log tail in
`verify status`, `verify logs`, `verify wait` naming platforms no worker serves, and a re-queued
check not showing the previous run's exit code as current)."""
from test_verify import env, manual, one_job  # noqa: F401  (module fixtures, reused)


def test_status_shows_the_cause_and_logs_prints_the_tail(env):
    repo = "app/nocause"
    r, _, _ = env.push(repo, "candidate", ["/bin/no-such-program", "--serve"])
    assert r.status_code == 201, r.text
    env.wait_state(f"{repo}:candidate", lambda s: s["complete"], timeout=120)
    p = env.verify_cli("status", f"{repo}:candidate")
    assert p.returncode == 1, p.stdout
    assert "cause:" in p.stdout and "no-such-program" in p.stdout, p.stdout
    p = env.verify_cli("logs", f"{repo}:candidate")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "no-such-program" in p.stdout, p.stdout
    job = one_job(env.status(f"{repo}:candidate"))["job"]
    p = env.verify_cli("logs", str(job))
    assert p.returncode == 0 and "no-such-program" in p.stdout, (p.stdout, p.stderr)


def test_requeued_check_does_not_show_the_old_exit_code(env, manual):
    repo = "manual/requeue-exit"
    env.push(repo, "candidate", ["true"])
    a = manual.claim(wait=10)
    assert a is not None and a["repository"] == repo
    assert manual.report(a["id"], a["lease"], status="failed", exit_code=3, message="exit 3").status_code == 200
    assert one_job(env.status(f"{repo}:candidate"))["exit_code"] == 3
    r = env.api("POST", "/berth/v1/verify/jobs", json={"reference": f"{repo}:candidate"})
    assert r.status_code == 202, r.text
    c = one_job(env.status(f"{repo}:candidate"))
    assert c["state"] in ("queued", "running"), c
    assert "exit_code" not in c and c.get("previous_exit_code") == 3, c
    p = env.verify_cli("status", f"{repo}:candidate")
    assert "previous attempt: exit 3" in p.stdout and " exit 3 " not in p.stdout.replace("previous attempt: exit 3", ""), p.stdout


def test_idle_verifier_stops_at_once_and_logs_without_colour(env):
    """SIGTERM ends the claim long-poll at once (it used to wait the poll out, ~21 s with the
    default), and a log that is not a terminal carries no ANSI colour codes."""
    import time
    from test_verify import Verifier
    w = Verifier(env.reg, "idle-term", env.robot, env.work / "idle-term", wait_secs=60).start()
    time.sleep(2)  # inside the long-poll now
    t0 = time.monotonic()
    w.stop()
    took = time.monotonic() - t0
    assert w.proc.returncode == 0, (w.proc.returncode, "".join(w.log))
    assert took < 10, f"the idle verifier took {took:.1f}s to stop on SIGTERM"
    log = "".join(w.log)
    assert "registered" in log and "\x1b[" not in log, repr(log[:500])
