"""Ceph client work of the fault tests that runs in child processes.

librados was seen to abort its process while every OSD was being killed or
had just come back: ``terminate`` after a ``std::system_error`` ("Invalid
argument") five times under full CPU load, and once on an idle CI machine a
glibc assertion on a mutex (``__pthread_tpp_change_priority``), all in one of
its own threads, all in the clone-batch test.  In the test process that ended
the whole session.  Here it ends one child: the batch runs in one, the judge
and the rerun in another, so that a batch the abort killed is judged as the
crashed client it is.

librbd was also seen to hang for good in ``rbd_clone3`` once every OSD was
gone, past every Ceph timeout (a gdb backtrace: the call blocked at 0 CPU-s
for the test's whole 600 s).  A batch whose worker is still in librbd two
minutes after the kill records that and ends its process with ``HUNG``: a hung
client is judged as the crashed one it amounts to, and said.

``python -m tests.integration.fault_clients SCENARIO LAB_ROOT QUICK_CONF STEADY_CONF STATE [die]``
``clones-batch`` records its plan and, if it lives, its outcome in the STATE
file (``die``: it aborts right after killing the OSDs); ``clones-inspect``
and then ``clones-rerun`` each print one JSON object with what the test judges.
librados has also aborted a judge's process once, the OSDs just back: each
of the two runs in a process of its own, so that one librados kills can be
run again (the inspection only reads; a rerun must converge after any crash,
its own included).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from virtrbd import Storage, config, errors
from virtrbd.lab import Lab, faults
from virtrbd.lab.domains import BOOT_SECTOR

MiB = 1 << 20
OSDS = ["osd.0", "osd.1", "osd.2"]
HUNG = 70                    # the batch's exit code when librbd never returned
HANG_AFTER = 120             # seconds after the kill that a clone call still running counts as hung


def kill_all_osds(flab: Lab) -> None:
    for name in OSDS:
        faults.stop(flab, name, kill=True)


def start_all_osds(flab: Lab) -> None:
    faults.start(flab, *OSDS)


def fill(storage, image: str, size: int, data: int) -> None:
    storage.create_image(image, size)
    chunk = os.urandom(MiB)
    with storage.cluster.image("rbd", image) as img:
        img.write(BOOT_SECTOR, 0)
        for offset in range(MiB, data, MiB):
            img.write(chunk, offset)


def clones_batch(flab: Lab, quick: config.Config, state: Path, *, die: bool = False) -> None:
    """60 clones, 4 at a time; every OSD killed once a few exist.  The OSDs stay down: the test restarts them.

    ``die``: abort the process right after the kill, as librados has done on its own.
    """
    tag = uuid.uuid4().hex[:6]
    children = [f"rbd/c{tag}-{i:02d}" for i in range(60)]
    outcome = {}
    with Storage(quick) as storage:
        fill(storage, f"c{tag}", 16 * MiB, 2 * MiB)
        golden = str(storage.make_golden(f"c{tag}"))
        _write(state, {"golden": golden, "children": children})

        def batch():
            try:
                storage.clone_many(golden, children, workers=4)
                outcome["error"] = None
            except errors.VirtrbdError as exc:
                outcome["error"] = str(exc)

        worker = threading.Thread(target=batch)
        worker.start()
        _wait_until(lambda: sum(storage.image_exists(c) for c in children[:20]) >= 3)
        kill_all_osds(flab)
        if die:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))    # no core file in the checkout
            os.abort()
        worker.join(timeout=HANG_AFTER)
        if worker.is_alive():        # closing the connection would wait for the hung call: end here
            sys.stderr.write(f"the clone batch's worker was still in librbd {HANG_AFTER} s after the kill\n")
            sys.stderr.flush()
            os._exit(HUNG)
    _write(state, {"golden": golden, "children": children, "error": outcome.get("error")})


def clones_inspect(steady: config.Config, state: Path) -> dict:
    """What the batch left, judged once the OSDs are back, before any rerun; kept in STATE for the rerun.

    A batch that lived must have named every clone it left half made.  One
    that librados killed could name nothing: then its remains must simply hold
    no data.  Only reads: run again, it finds the same.
    """
    plan = json.loads(state.read_text())
    golden, children = plan["golden"], plan["children"]
    crashed = "error" not in plan
    error = plan.get("error")
    with Storage(steady) as storage:
        existing = [c for c in children if storage.image_exists(c)]
        whole = {c: storage.info(c).id for c in existing if _is_clone_of(storage, c, golden)}
        # anything else is the remains of a clone librbd could not roll back with the OSDs gone: it must
        # be one the batch reported as failed, and hold no data a rerun could lose
        remains = [c for c in existing if c not in whole]
        hidden = [c for c in remains if (not crashed and c not in str(error)) or not _holds_no_data(storage, c)]
    _write(state.with_suffix(".inspected"), {"whole": whole})
    return {"crashed": crashed, "error": error, "existing": len(existing), "whole": len(whole),
            "hidden": hidden, "children": len(children)}


def clones_rerun(steady: config.Config, state: Path) -> dict:
    """The rerun after the inspection: every clone made, the whole ones the batch made kept (same image, not
    a new one of the same name).  Run again after a rerun that died, it must still converge."""
    plan = json.loads(state.read_text())
    golden, children = plan["golden"], plan["children"]
    whole = json.loads(state.with_suffix(".inspected").read_text())["whole"]
    with Storage(steady) as storage:
        rerun = _rerun_until_stale_watches_expire(storage, golden, children)
        converged = all(_is_clone_of(storage, c, golden) for c in children)
        replaced = [c for c, image_id in whole.items() if storage.info(c).id != image_id]
    return {"converged": converged, "rerun": len(rerun), "replaced": replaced}


def _write(path: Path, data: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def _is_clone_of(storage, image: str, golden: str) -> bool:
    try:
        info = storage.info(image)
    except errors.OperationTimeoutError:
        raise                     # the judge could not look: that says nothing about the clone
    except errors.VirtrbdError:
        return False
    return [str(p) for p in info.parent_chain[:1]] == [golden]


def _rerun_until_stale_watches_expire(storage, golden: str, children: list[str], timeout: float = 60):
    """The rerun; a half-made clone keeps the watch of the client that made it until the OSDs expire
    it (30 s by default), and exist_ok rightly refuses to replace an image a client has open.  A
    refused attempt may have made other clones already, so only the last attempt's results count."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return storage.clone_many(golden, children, exist_ok=True, workers=4)
        except errors.AlreadyExistsError as exc:
            if "a client has it open" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _holds_no_data(storage, image: str) -> bool:
    extents = []
    with storage.cluster.image("rbd", image.split("/")[1], read_only=True) as img:
        img.diff_iterate(0, img.size(), None, lambda o, n, e: extents.append(e), include_parent=False)
    return not any(extents)


def _wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never met")
        time.sleep(0.02)


# --- run from the test process ---------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
#: runs of a judge's step that librados may abort (the OSDs just back) before the test gives up
JUDGE_RUNS = 3


class JudgeDied(Exception):
    """A judge's step died other than by librados' known abort, or was aborted on every run."""


def run_client(scenario: str, flab: Lab, conf, steady, state: Path, *how: str) -> subprocess.CompletedProcess:
    """One scenario of this module in a child process (the test process must outlive librados' aborts)."""
    return subprocess.run([sys.executable, "-X", "faulthandler", "-m", "tests.integration.fault_clients", scenario,
                           str(flab.root), str(conf.path), str(steady.path), str(state), *how],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def judged(step: str, flab: Lab, conf, steady, state: Path) -> dict:
    """One step of the judge, run again when librados aborted it (its known terminate after a
    ``std::system_error``, above): any other death, or a third abort, raises ``JudgeDied``."""
    run = 1
    while True:
        done = run_client(step, flab, conf, steady, state)
        if done.returncode == 0:
            return json.loads(done.stdout)
        aborted = done.returncode == -signal.SIGABRT and "terminate called" in done.stderr
        if not aborted or run == JUDGE_RUNS:
            # the first lines say why (librados' terminate message, or a traceback), the Python stacks where
            raise JudgeDied(f"the judge's {step} {ended(done.returncode)}: {done.stderr.strip()[:4000]}")
        warnings.warn(f"librados aborted the judge's {step} (run {run}), which runs again: "
                      f"{done.stderr.strip()[:300]}", stacklevel=2)
        run += 1


def ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


def main(argv: list[str]) -> int:
    scenario, lab_root, quick, steady, state, *how = argv
    if scenario == "clones-batch":
        clones_batch(Lab(lab_root), config.load(quick), Path(state), die=how == ["die"])
    elif scenario == "clones-inspect":
        print(json.dumps(clones_inspect(config.load(steady), Path(state))))
    elif scenario == "clones-rerun":
        print(json.dumps(clones_rerun(config.load(steady), Path(state))))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
