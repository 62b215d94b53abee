"""Failure is an exception, never an abort: impossible allocations, Ctrl-C, thread counts.

Each case that could take a process down runs in a child process of its own (real
subprocesses, real signals, a real address-space limit); the parent checks what the child
printed and that it exited normally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import bptt
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="rlimit and signals as on Linux")

# Guards against a child that hangs; never reached by a working build.
HANG_GUARD_S = 300


def run_child(code: str) -> dict:
    """Runs `code` in a fresh interpreter; it prints one JSON line last, returned here."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


LIMITED = """
import json, resource, time
import numpy as np
import bptt
GIB = 1 << 30
resource.setrlimit(resource.RLIMIT_AS, (4 * GIB, 4 * GIB))
results = {}
def attempt(name, make, call):
    model = make()
    t0 = time.perf_counter()
    try:
        call(model)
        results[name] = {"raised": None}
    except MemoryError as e:
        results[name] = {"raised": "MemoryError", "message": str(e),
                         "seconds": time.perf_counter() - t0}
    # The same model still works on a normal input, and gives what a fresh one gives.
    x = np.random.default_rng(0).standard_normal((5, 2, model.input_size)).astype(np.float32)
    out, _ = model(x)
    fresh = type(model)(model.input_size, model.hidden_size, seed=0)
    fresh.load_state_dict(model.state_dict())
    results[name]["usable_after"] = bool(np.array_equal(out, fresh(x)[0]))
"""


def test_impossible_allocations_raise_memory_error_and_leave_the_model_usable() -> None:
    res = run_child(LIMITED + """
attempt("rnn_164GB_out", lambda: bptt.RNN(1, 4096, seed=0),
        lambda m: m(np.zeros((10**4, 10**3, 1), np.float32)))
attempt("lstm_16GB_forward", lambda: bptt.LSTM(1, 64, seed=0),
        lambda m: m.forward(np.zeros((10**6, 64, 1), np.float32)))
attempt("gru_3GB_tape", lambda: bptt.GRU(8, 2048, seed=0),
        lambda m: m.forward(np.zeros((2000, 64, 8), np.float32)))
print(json.dumps(results))
""")
    for name, r in res.items():
        assert r["raised"] == "MemoryError", (name, r)
        assert "cannot allocate" in r["message"] and "bytes for" in r["message"], (name, r)
        assert r["usable_after"], (name, r)
    # The 164 GB request names the output and its exact size.
    assert res["rnn_164GB_out"]["message"] == "cannot allocate 163840000000 bytes for out"
    print({k: round(v["seconds"], 3) for k, v in res.items()})


INTERRUPTED = """
import json, signal, sys, time
import numpy as np
import bptt
# A test run started in the background by a shell without job control inherits SIGINT as
# ignored, and Python then installs no KeyboardInterrupt handler: install it.
signal.signal(signal.SIGINT, signal.default_int_handler)
bptt.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
m = bptt.LSTM(32, 256, seed=0)
rng = np.random.default_rng(0)
# How long this model takes per step, from a short call, to size the long one.
short = rng.standard_normal((2000, 4, 32)).astype(np.float32)
t0 = time.perf_counter(); m(short); per_step = (time.perf_counter() - t0) / 2000
# Inference: 200,000 steps (tens of seconds on one core); training: 20,000 steps with the
# full tape (about 0.4 GB) and backward, three times the work per step.
steps = 200_000 if MODE == "inference" else 20_000
work = 1 if MODE == "inference" else 3
x = rng.standard_normal((steps, 4, 32)).astype(np.float32)
before = {k: v.copy() for k, v in m.state_dict().items()}
print(json.dumps({"ready": time.monotonic(), "per_step": per_step}), flush=True)
out = None
try:
    if MODE == "inference":
        out = m(x)
    else:
        y, _, tape = m.forward(x)
        out = m.backward(tape, np.ones_like(y))
    caught = None
except KeyboardInterrupt:
    caught = time.monotonic()
small = rng.standard_normal((5, 2, 32)).astype(np.float32)
fresh = bptt.LSTM(32, 256, seed=0)
print(json.dumps({
    "caught": caught, "returned": out is not None, "expected_s": per_step * steps * work,
    "unchanged": all(np.array_equal(before[k], v) for k, v in m.state_dict().items()),
    "usable": bool(np.array_equal(m(small)[0], fresh(small)[0])),
}))
"""


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_ctrl_c_interrupts_a_long_call(mode: str) -> None:
    code = "MODE = " + repr(mode) + "\n" + INTERRUPTED
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        ready = json.loads(child.stdout.readline())
        time.sleep(0.3)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=HANG_GUARD_S)
    finally:
        child.kill()
    assert child.returncode == 0, err[-2000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["caught"] is not None and not res["returned"], res
    latency = res["caught"] - sent
    elapsed_when_sent = sent - ready["ready"]
    # The call stopped long before it would have ended (a ratio, not a time limit): the
    # whole call takes `expected_s`; without interrupts it would end only then.
    assert latency < 0.25 * (res["expected_s"] - elapsed_when_sent), (latency, res)
    assert res["unchanged"] and res["usable"], res
    print(f"{mode}: SIGINT -> KeyboardInterrupt in {latency * 1e3:.1f} ms "
          f"(the whole call: about {res['expected_s']:.1f} s)")


def test_set_num_threads_refuses_absurd_counts_and_reports_the_truth() -> None:
    before = bptt.get_num_threads()
    try:
        cap = 4 * max(os.cpu_count() or 1, 16)
        for bad in (0, -1, cap + 1, 10**5, 2**62):
            with pytest.raises(ValueError, match=r"^n: expected a number of threads from 1 to"):
                bptt.set_num_threads(bad)
            assert bptt.get_num_threads() == before
        bptt.set_num_threads(cap)
        assert bptt.get_num_threads() == cap
        x = np.ones((3, 2, 4), np.float32)
        m = bptt.GRU(4, 8, seed=0)
        out_cap, _ = m(x)
        bptt.set_num_threads(1)
        np.testing.assert_array_equal(m(x)[0], out_cap)
    finally:
        bptt.set_num_threads(before)


BUSY = "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nwhile True:\n    pass\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="idle CPUs are read from /proc")
def test_busy_machine_leaves_no_idle_cpu_and_calls_still_agree() -> None:
    """With as many busy processes as CPUs, bptt sees no idle CPU (so a call runs on one
    thread instead of waiting for threads without a core), and results stay the same."""
    online = bptt.build_info()["idle_cpus"]
    assert online is not None and 0 <= online <= os.cpu_count()
    model = bptt.LSTM(16, 128, dtype=np.float32, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 16, 16)).astype(np.float32)
    before = bptt.get_num_threads()
    bptt.set_num_threads(2)
    try:
        quiet, _ = model(x)
        procs = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
                 for _ in range(os.cpu_count() or 1)]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline() == "ready\n"
            readings = [bptt.build_info()["idle_cpus"] for _ in range(20)]
            busy, _ = model(x)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    finally:
        bptt.set_num_threads(before)
    assert readings == [0] * 20
    np.testing.assert_array_equal(busy, quiet)
