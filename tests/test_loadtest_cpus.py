"""The harness's CPU sets and process accounting (issue 13: a node with media workers, Janus
with an event loop per CPU): CPU lists, their labels, foreign load per pinned set, and the
process tree whose CPU and memory are the server's."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from loadtest.procs import CLK_TCK, cpu_label, parse_cpus, process_tree, taskset
from loadtest.runner import other_load


def test_cpu_lists_parse_like_taskset() -> None:
    assert parse_cpus("0") == (0,)
    assert parse_cpus("0-3") == (0, 1, 2, 3)
    assert parse_cpus("4,0-1, 6") == (0, 1, 4, 6)
    assert parse_cpus("-1") is None and parse_cpus("") is None
    for bad in ("a", "3-1", "1-", "0,,1", "-2"):
        with pytest.raises(ValueError, match="CPU list"):
            parse_cpus(bad)
    assert taskset((0, 2)) == ["taskset", "-c", "0,2"] and taskset(None) == []


def test_cpu_labels() -> None:
    assert cpu_label((1,)) == "cpu1"
    assert cpu_label((0, 1, 2, 3)) == "cpu0-3"
    assert cpu_label((0, 2, 5)) == "cpu0,2,5"


def test_foreign_load_per_pinned_set_subtracts_our_processes() -> None:
    """Server on CPUs 0-1, generators on 2: over a 10 s window CPUs 0 and 1 were busy 8 s and
    6 s, our node used 12 s of them: 1 s of foreign load per CPU (0.1). CPU 2 busy 5 s, the
    generators 5 s: none. CPU 3, not ours, busy 2 s: 0.2."""
    t = CLK_TCK
    jif0 = {c: (0, 0) for c in range(4)}
    jif1 = {0: (8 * t, 0), 1: (6 * t, 0), 2: (5 * t, 0), 3: (2 * t, 0)}
    ours0 = {(0, 1): 100.0, (2,): 50.0}
    ours1 = {(0, 1): 112.0, (2,): 55.0}
    load = other_load(jif0, jif1, ours0, ours1, [(0, 1), (2,)], 10.0)
    assert load == pytest.approx({"cpu0-1": 0.1, "cpu2": 0.0, "cpu3": 0.2})
    # The server and the generators on one set: counted once, both subtracted.
    shared = other_load(jif0, jif1, {(0, 1): 0.0}, {(0, 1): 13.0}, [(0, 1), (0, 1)], 10.0)
    assert shared["cpu0-1"] == pytest.approx(0.05)
    assert set(shared) == {"cpu0-1", "cpu2", "cpu3"}


def test_process_tree_holds_a_server_and_its_workers() -> None:
    """A parent with two children and a grandchild, as a node and its media workers."""
    script = (
        "import subprocess, sys, time\n"
        "kids = [subprocess.Popen([sys.executable, '-c', "
        '\'import subprocess, sys, time; subprocess.Popen(["sleep", "30"]); time.sleep(30)\'])'
        ", subprocess.Popen(['sleep', '30'])]\n"
        "print('up', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 30
        while len(tree := process_tree(proc.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tree[0] == proc.pid and len(set(tree)) == 4, tree
    finally:
        for pid in process_tree(proc.pid)[1:]:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        proc.kill()
        proc.wait()
