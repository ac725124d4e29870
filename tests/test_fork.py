"""fork() safety: a child process calls compiled code after the parent's thread pool ran (with
1 to 8 threads), and while other parent threads were inside calls at the moment of the fork.
Each child must finish with the right answer within a time limit (a hang or crash fails)."""
import os
import signal
import threading
import time

import numpy as np
import pytest

import graphc

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
N = 1 << 20   # big enough that the kernel is split between threads


@pytest.fixture(scope="module")
def gelu():
    return graphc.compile(lambda x: graphc.gelu(x, approximate=True) * 2.0 + 1.0,
                          graphc.tensor((N,)))


def reference(x):
    inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
    return 0.5 * x * (1 + np.tanh(inner)) * 2.0 + 1.0


def run_in_child(fn, timeout=30.0) -> str:
    """Forks; the child runs fn() and exits 0 if it returns True. Returns the outcome."""
    pid = os.fork()
    if pid == 0:   # the child: never return into pytest
        code = 1
        try:
            code = 0 if fn() else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return f"killed by signal {os.WTERMSIG(status)}"
            return f"exit {os.WEXITSTATUS(status)}"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


@pytest.fixture
def threads():
    before = graphc.get_num_threads()
    yield graphc.set_num_threads
    graphc.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 4, 8])
def test_child_after_the_pool_ran_computes_correctly(gelu, threads, n_threads, rng):
    threads(n_threads)
    x = rng.standard_normal(N).astype(np.float32)
    want = reference(x.astype(np.float64))
    for _ in range(3):
        gelu(x)          # the parent's workers start and run jobs

    def child():
        for _ in range(3):
            if not np.allclose(gelu(x), want, rtol=1e-4, atol=1e-5):
                return False
        return True

    assert run_in_child(child) == "exit 0"
    np.testing.assert_allclose(gelu(x), want, rtol=1e-4, atol=1e-5)   # the parent still works


@pytest.mark.parametrize("n_threads", [2, 8])
def test_child_forked_while_other_threads_are_inside_calls(gelu, threads, n_threads, rng):
    threads(n_threads)
    x = rng.standard_normal(N).astype(np.float32)
    want = reference(x.astype(np.float64))
    stop = threading.Event()
    errors = []

    def busy():
        try:
            while not stop.is_set():
                gelu(x)
        except Exception as err:   # noqa: BLE001  (reported by the assert below)
            errors.append(err)

    workers = [threading.Thread(target=busy) for _ in range(2)]
    for t in workers:
        t.start()
    try:
        time.sleep(0.05)
        outcomes = [run_in_child(lambda: np.allclose(gelu(x), want, rtol=1e-4, atol=1e-5))
                    for _ in range(5)]
    finally:
        stop.set()
        for t in workers:
            t.join()
    assert outcomes == ["exit 0"] * 5
    assert not errors


def test_more_threads_after_jobs_ran_do_not_replay_an_old_job(gelu, threads, rng):
    """Workers added later start from the current job count (they once ran the last job)."""
    x = rng.standard_normal(N).astype(np.float32)
    want = reference(x.astype(np.float64))
    threads(2)
    for _ in range(3):
        gelu(x)
    threads(8)
    for _ in range(3):
        np.testing.assert_allclose(gelu(x), want, rtol=1e-4, atol=1e-5)


def test_child_forked_during_a_compile_in_another_thread_can_compile(rng):
    """The compiler's own lock (llvmlite is process-wide) is fresh in the child."""
    from graphc.backends import llvm as shared

    started, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with shared.LOCK:
            started.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    started.wait(10)
    x = rng.standard_normal(5).astype(np.float32)

    def child():
        f = graphc.compile(lambda v: graphc.exp(v) + 3.0, graphc.tensor((5,)), cache=False)
        return bool(np.allclose(f(x), np.exp(x.astype(np.float64)) + 3.0, rtol=1e-6))

    try:
        outcome = run_in_child(child, timeout=60)
    finally:
        release.set()
        holder.join()
    assert outcome == "exit 0"
