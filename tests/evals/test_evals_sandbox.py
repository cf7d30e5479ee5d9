"""run_code contains hostile programs and reports them as failures, promptly and without leftovers.

Hostile tests run with tight limits. The fork bomb runs only where a process limit really
applies (a uid of its own, or a non-root user); otherwise it is skipped, never run unbounded.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from ps_jax.evals import SandboxLimits, run_code, sandbox_isolation
from ps_jax.evals import sandbox

ISOLATION = sandbox_isolation()
SLACK_S = 5.0  # allowed beyond the timeout: start-up, kill, namespace teardown
TIGHT = SandboxLimits(max_processes=32, memory_bytes=512 << 20)


def _uid_tasks(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


@pytest.fixture
def fixed_uid(monkeypatch):
    """Pin the sandbox uid so the test can count (and find leftovers of) the run's processes."""
    if "fresh uid" not in ISOLATION:
        pytest.skip(f"needs the fresh-uid sandbox (root); have: {ISOLATION}")
    uid = sandbox._UID_BASE + sandbox._UID_SPAN - 1 - os.getpid() % 1000
    assert _uid_tasks(uid) == 0
    monkeypatch.setattr(sandbox, "_new_uid", lambda: uid)
    return uid


def _timed(program: str, timeout_s: float, limits: SandboxLimits = TIGHT):
    start = time.monotonic()
    passed, detail = run_code(program, timeout_s, limits)
    return passed, detail, time.monotonic() - start


def test_isolation_is_reported():
    passed, detail = run_code("print('hi')", 10)
    assert passed and detail.startswith("passed")
    assert f"[isolation: {ISOLATION}]" in detail
    assert "UNSAFE" not in ISOLATION, "no process limit is enforceable on this machine"


@pytest.mark.parametrize("program, expect", [
    ("", "passed"),
    ("import sys; sys.exit(3)", "failed (exit code 3)"),
    ("raise ValueError('boom')", "ValueError: boom"),
    ("def broken(:\n", "SyntaxError"),
    ("x = '\x00'", "failed"),
    ("assert 1 == 2, 'wrong answer'", "AssertionError: wrong answer"),
    ("import os; os.kill(os.getpid(), 9)", "killed by signal 9 (SIGKILL)"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "killed by signal 15"),
])
def test_outcomes(program, expect):
    passed, detail = run_code(program, 10)
    assert passed == (expect == "passed")
    assert expect in detail


def test_bad_inputs_never_raise():
    passed, detail = run_code("print('\udc80')", 5)  # lone surrogate: cannot even be written
    assert not passed and detail
    passed, detail = run_code("while True: pass", 0)
    assert not passed and "timed out" in detail


def test_infinite_loop_times_out():
    passed, detail, elapsed = _timed("while True:\n    pass\n", 2)
    assert not passed and "timed out after 2s" in detail
    assert elapsed < 2 + SLACK_S


def test_sleep_times_out():
    passed, detail, elapsed = _timed("import time\ntime.sleep(600)\n", 1.5)
    assert not passed and "timed out" in detail and elapsed < 1.5 + SLACK_S


def test_fork_bomb_is_contained_and_cleaned_up(fixed_uid):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _uid_tasks(fixed_uid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        passed, detail, elapsed = _timed(bomb, 3)
    finally:
        done.set()
        sampler.join()
    assert not passed and "timed out" in detail
    assert elapsed < 3 + SLACK_S
    assert 0 < peak[0] <= TIGHT.max_processes + 2, peak[0]
    time.sleep(0.2)
    assert _uid_tasks(fixed_uid) == 0, "fork bomb processes survived the run"


def test_escaped_children_are_killed(fixed_uid):
    # A child that leaves the process group and outlives a passing program.
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\n"
               "    os._exit(0)\ntime.sleep(0.2)\n")
    passed, detail, elapsed = _timed(program, 10)
    assert passed, detail
    time.sleep(0.2)
    assert _uid_tasks(fixed_uid) == 0, "a setsid() child survived the run"


def test_process_limit_applies():
    if "UNSAFE" in ISOLATION:
        pytest.skip(f"no enforceable process limit here: {ISOLATION}")
    program = ("import os, time\nkids = 0\nfor _ in range(100):\n    if os.fork() == 0:\n"
               "        time.sleep(20)\n        os._exit(0)\n    kids += 1\n")
    passed, detail, elapsed = _timed(program, 10, SandboxLimits(max_processes=16))
    assert not passed and "Resource temporarily unavailable" in detail
    assert elapsed < 10


def test_large_allocation_fails():
    passed, detail, elapsed = _timed("x = bytearray(8 << 30)\nprint(len(x))\n", 10)
    assert not passed and "MemoryError" in detail and elapsed < 10


@pytest.mark.parametrize("program", [
    "def f(n):\n    return f(n + 1)\nf(0)\n",
    # Recursion through C (__getattr__) with the guard lifted overflows the C stack.
    "import sys\nsys.setrecursionlimit(10**6)\nclass A:\n"
    "    def __getattr__(self, n):\n        return getattr(self, n)\nA().x\n",
])
def test_deep_recursion_fails(program):
    passed, detail, elapsed = _timed(program, 5)
    assert not passed and ("RecursionError" in detail or "signal" in detail or "timed out" in detail)
    assert elapsed < 5 + SLACK_S


def test_parent_environment_is_hidden(monkeypatch):
    secret = "ps-jax-secret-3f9c1e"
    monkeypatch.setenv("PS_JAX_TEST_SECRET", secret)
    program = f"""
import os
assert "PS_JAX_TEST_SECRET" not in os.environ, "env var leaked"
assert {secret!r} not in repr(os.environ), "value leaked"
for pid in os.listdir("/proc"):
    try:
        with open(f"/proc/{{pid}}/environ", "rb") as f:
            assert {secret!r}.encode() not in f.read(), "leaked via /proc/" + pid
    except OSError:
        pass
print("clean")
"""
    passed, detail = run_code(program, 10)
    assert passed, detail


def test_no_network():
    if "net" not in ISOLATION:
        pytest.skip(f"no network namespace on this machine (isolation: {ISOLATION})")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.1)
        port = server.getsockname()[1]
        program = f"""
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
except OSError as e:
    print("blocked:", e)
    sys.exit(0)
sys.exit("connected to the host")
"""
        passed, detail = run_code(program, 10)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the listener
    assert passed, detail


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_cut(stream):
    program = f"import sys\nchunk = 'x' * (1 << 20)\nwhile True:\n    sys.{stream}.write(chunk)\n"
    passed, detail, elapsed = _timed(program, 20)
    assert not passed and "output limit exceeded" in detail
    assert elapsed < 10


def test_file_size_and_disk_are_limited():
    passed, detail = run_code("open('big', 'wb').write(b'x' * (64 << 20))\n", 10, TIGHT)
    assert not passed and "File too large" in detail
    many = "for i in range(1000):\n    open(f'f{i}', 'wb').write(b'x' * (8 << 20))\n"
    passed, detail, elapsed = _timed(many, 10, TIGHT)
    assert not passed and elapsed < 10
    if "tmpfs" in ISOLATION:
        assert "No space left on device" in detail


def test_cannot_write_outside_workdir():
    if "fresh uid" not in ISOLATION and os.geteuid() == 0:
        pytest.skip(f"sandbox runs as root here: {ISOLATION}")
    target = os.path.join(os.path.dirname(__file__), f"_escape_{os.getpid()}")
    try:
        passed, detail = run_code(f"open({target!r}, 'w').write('x')\n", 10)
        assert not passed and ("Permission denied" in detail or "Read-only" in detail), detail
        assert not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.remove(target)


def test_fresh_working_directory():
    passed, detail = run_code("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())\n", 10)
    assert passed, detail
    passed, detail = run_code("import os\nassert not os.path.exists('left.txt')\n", 10)
    assert passed, detail


def test_concurrent_runs():
    from concurrent.futures import ThreadPoolExecutor

    programs = [f"assert {i} * 2 == {2 * i}" if i % 2 else "raise SystemExit(1)" for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: run_code(p, 10)[0], programs))
    assert results == [bool(i % 2) for i in range(12)]
