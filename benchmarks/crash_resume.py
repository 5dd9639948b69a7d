"""Crash campaign: ``kill -9`` multi-phase runs at random and at chosen moments, continue each, and count.

Four runs of several phases (images and texts; ``two-stage`` and ``progressive``; the frozen-backbone feature cache
and the decoded-input cache built at the start) are each trained once uninterrupted — the
reference — and then many times with ``kill -9`` (SIGKILL to the whole process group) at:

- **random moments**: uniform from the moment its folder appears to the moment it finishes (``transferkit.json``;
  one in five: uniform from the process start, imports included); a continued run is itself killed again with
  probability 0.4 (chains of up to 3 kills), at a moment uniform from its start (a kill while it still imports
  and loads is labelled "startup of the continued run");
- **the checkpoint swap**: the moment ``.checkpoint.new`` is created (the new checkpoint being written) or
  ``.checkpoint.old`` appears (the previous one moved aside), at a random epoch's checkpoint (watched with inotify);
- **the feature-cache build**: a random moment while the backbone computes the features, or the moment the cache's
  temporary entry is created (it is being written).

After each kill the folder is inspected: ``transferkit.load`` must refuse it unless the run really finished (a folder
that loads while its weights or epochs differ from the reference counts as *loaded as finished while unfinished*,
which must be 0). The run is then continued: ``train --resume`` when it holds a checkpoint, else the same command
again (a kill before the first checkpoint leaves a folder with ``config.yaml`` — kill -9 cannot clean up — and
running the same command again starts it over in place; a kill during the imports leaves no folder). The final
weights must be bit-identical to the reference.

A full disk during a checkpoint is simulated in a child process (the safetensors writer raises ENOSPC, after a
partial write, on the second checkpoint): the run must stop with one ``error:`` line and exit code 2 naming the folder
and the fix, keep the first checkpoint intact, leave no ``.checkpoint.new``, and resume to the reference's weights.

    python benchmarks/crash_resume.py                 # default: 24 random + 8 swap + 8 cache kills, 2 full disks
    python benchmarks/crash_resume.py --kills 60 --seed 3

Prints a table of counts and writes ``benchmarks/results/crash_resume.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIMEOUT = 900  # seconds for one uninterrupted (part of a) run


# --- data and run configurations ------------------------------------------------------------------------------------


def make_data(root: Path, images_per_class: int, texts_per_class: int) -> dict[str, Path]:
    """Non-square noisy colour images (3 classes), tiny timm weights, a tiny BERT and a review CSV."""
    import numpy as np
    from PIL import Image
    from weights_fingerprint import COLOURS, FILLER, NEGATIVE, POSITIVE, make_texts, make_weights

    for split, count, start in (("train", images_per_class, 0), ("val", max(3, images_per_class // 5), 10_000)):
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(count):
                rng = np.random.default_rng(start + 1000 * c + i)
                pixels = np.clip(np.array(colour) + rng.normal(0, 60, (24 + 8 * (i % 3), 32, 3)), 0, 255)
                path = root / "images" / split / name / f"{name}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
    weights = make_weights(root)
    bert, _ = make_texts(root)
    rng = random.Random(0)
    rows = ["text,label"]
    for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
        for _ in range(texts_per_class):
            rows.append(" ".join(rng.choice(FILLER + words) for _ in range(rng.randint(4, 30))) + f",{label}")
    reviews = root / "reviews.csv"
    reviews.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"images": root / "images", "weights": weights, "bert": bert, "reviews": reviews}


def configurations(data: dict[str, Path], smoke: bool) -> dict[str, list[str]]:
    """Command-line flags (without ``--out``) of each run; every run has several phases and checkpoints."""
    image = ["--data", str(data["images"]), "--model", "timm:test_efficientnet", "--weights", str(data["weights"]),
             "--image-size", "32", "--batch-size", "16", "--workers", "0", "--augment", "light", "--dropout", "0.2"]
    text = ["--data", str(data["reviews"]), "--model", str(data["bert"]), "--batch-size", "16", "--dropout", "0.2"]
    common = ["--patience", "0", "--seed", "7", "-q"]
    configs = {
        "images two-stage": [*image, "--strategy", "two-stage", "--head-fit", "sgd", "--head-epochs", "2",
                             "--epochs", "2", *common],
        "images progressive": [*image, "--strategy", "progressive", "--groups", "3", "--head-fit", "sgd",
                               "--head-epochs", "1", "--epochs", "3", *common],
        "text two-stage": [*text, "--strategy", "two-stage", "--head-fit", "sgd", "--head-epochs", "2", "--epochs",
                           "2", "--lr", "1e-3", *common],
        "text progressive": [*text, "--strategy", "progressive", "--head-fit", "sgd", "--head-epochs", "1",
                             "--epochs", "3", "--lr", "1e-3", *common],
    }
    return {"images two-stage": configs["images two-stage"]} if smoke else configs


# --- child processes ------------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """One thread (bit-identical results between runs), offline, and this transferkit on the path."""
    import transferkit

    src = str(Path(transferkit.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _same_cpu_lower_priority() -> None:
    """In the child: share the campaign's CPU, at a lower priority (see :func:`realtime`)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CPU})
    os.nice(5)


CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


class realtime:  # noqa: N801 - a context manager used like a function
    """While waiting for a kill moment, the campaign runs as a real-time process on the child's CPU (where the system
    allows it): when inotify wakes it (a file the child just created or renamed), it preempts the child at once and
    its SIGKILL lands before the child's next step — so a kill at ``.checkpoint.old`` lands between the swap's two
    renames instead of after them. Without the privilege the kill lands a little later; the folder states report
    where each kill actually landed."""

    def __enter__(self) -> realtime:
        self.entered = False
        if hasattr(os, "sched_setscheduler"):
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
                self.entered = True
            except OSError:
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.entered:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def start(args: list[str], log: Path, code: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "transferkit", *args]
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=handle, env=child_env(), start_new_session=True,
                                preexec_fn=_same_cpu_lower_priority)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill(proc)
        return -9


# --- watching the run folder ----------------------------------------------------------------------------------------


class Watch:
    """Creations and renames inside folders, from inotify (Linux), or by polling every millisecond elsewhere."""

    IN_CREATE, IN_MOVED_TO, IN_NONBLOCK = 0x100, 0x80, 0o4000

    def __init__(self) -> None:
        self.fd = -1
        libc_name = ctypes.util.find_library("c")
        if sys.platform.startswith("linux") and libc_name:
            self.libc = ctypes.CDLL(libc_name, use_errno=True)
            self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        self.folders: dict[int, Path] = {}

    def add(self, folder: Path) -> None:
        if self.fd >= 0 and folder not in self.folders.values():
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_CREATE | self.IN_MOVED_TO)
            if wd >= 0:
                self.folders[wd] = folder

    def wait(self, timeout: float) -> list[Path]:
        """Paths created or renamed into watched folders within ``timeout`` seconds (may be empty)."""
        if self.fd < 0:
            time.sleep(min(timeout, 0.001))
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        data, found, offset = os.read(self.fd, 1 << 16), [], 0
        while offset + 16 <= len(data):
            wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16: offset + 16 + length].rstrip(b"\0")
            offset += 16 + length
            if wd in self.folders:
                found.append(self.folders[wd] / os.fsdecode(name))
        return found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def wait_until(proc: subprocess.Popen, run: Path, hit: Callable[[Path], bool], deadline: float) -> bool:
    """Watch ``run`` (and its feature-cache folder) until ``hit(path)`` for a path that appears or already exists;
    ``False`` if the process ended or the deadline passed first."""
    watch = Watch()
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for folder in (run.parent, run, run / "feature-cache"):
                if folder.is_dir():
                    watch.add(folder)
            existing = [p for folder in (run, run / "feature-cache") if folder.is_dir() for p in folder.iterdir()]
            if any(hit(p) for p in existing) or any(hit(p) for p in watch.wait(0.05)):
                kill(proc)  # before closing the watch: closing an inotify descriptor can sleep for ms
                return True
        return False
    finally:
        watch.close()


def wait_for_file(proc: subprocess.Popen, path: Path, deadline: float) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.01)
    return path.exists()


# --- inspecting a folder ----------------------------------------------------------------------------------------------


def weights_of(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {name: load_file(str(run / name)) for name in ("model.safetensors", "head.safetensors")
            if (run / name).is_file()}


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k])
                                                                             for k in a[f]) for f in a)


def where(run: Path, phases: list[str]) -> tuple[str, str]:
    """(phase, state of the folder) right after a kill."""
    from transferkit.runfolder import RunFolder

    if not run.exists():
        return "startup", "no folder"
    folder = RunFolder(run)
    names = {p.name for p in run.iterdir()}
    swap = []
    if ".checkpoint.new" in names:
        swap.append(".checkpoint.new being written")
    if ".checkpoint.old" in names:
        swap.append(".checkpoint.old present, " + ("new checkpoint in place" if "checkpoint" in names
                                                   else "checkpoint/ missing (between the renames)"))
    cache = run / "feature-cache"
    temp = cache.is_dir() and any(p.name.startswith(".") for p in cache.iterdir())
    if folder.is_finished:
        return "finished", "transferkit.json written"
    if not folder.has_checkpoint:
        state = ["before the first checkpoint"] + swap
        if temp:
            state.append("a feature-cache entry being written")
        elif not cache.is_dir() or not any(cache.iterdir()):
            state.append("feature cache not yet written")
        return "setup", "; ".join(state)
    index = folder.checkpoint_state()["phase_index"]
    phase = f"phase {index + 1} ({phases[index]})" if index < len(phases) else "finishing (after the last epoch)"
    epoch = folder.checkpoint_state()["epoch"]
    return phase, "; ".join([f"checkpoint of epoch {epoch}"] + swap + (["a cache entry being written"] if temp else []))


def loads_as_finished(run: Path) -> tuple[bool, str]:
    """Whether ``transferkit.load`` accepts the folder, and how it refused it (the error's type)."""
    import transferkit
    from transferkit.errors import TransferKitError

    try:
        transferkit.load(run)
        return True, ""
    except TransferKitError as exc:
        return False, type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - counted: load must refuse an unfinished folder with a clear error
        return False, f"UNCLEAR {type(exc).__name__}: {exc}"


# --- the campaign -----------------------------------------------------------------------------------------------------


class Campaign:
    def __init__(self, root: Path, configs: dict[str, list[str]], rng: random.Random) -> None:
        self.root, self.configs, self.rng = root, configs, rng
        self.reference: dict[str, dict[str, Any]] = {}
        self.kills: list[dict[str, Any]] = []
        self.trials: list[dict[str, Any]] = []
        self.counter = 0

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def references(self) -> None:
        """Each configuration run once, uninterrupted, with its timeline (when the folder, the feature cache and each
        checkpoint appeared)."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        for name, flags in self.configs.items():
            run = self.root / f"reference {name}".replace(" ", "-")
            started = time.monotonic()
            proc = start(["train", *flags, "--out", str(run)], self.log(run.name))
            marks: dict[str, float] = {}
            while proc.poll() is None:
                for mark, path in (("folder", run / "config.yaml"), ("cache", run / "feature-cache"),
                                   ("checkpoint", run / "checkpoint"), ("finished", run / "transferkit.json")):
                    if mark not in marks and path.exists():
                        marks[mark] = time.monotonic() - started
                time.sleep(0.01)
            if proc.returncode != 0:
                raise SystemExit(f"reference run {name} failed; see {self.log(run.name)}")
            info = json.loads((run / "transferkit.json").read_text())
            self.reference[name] = {
                "run": run, "weights": weights_of(run), "epochs": info["metrics"]["epochs_run"],
                "phases": [p["name"] for p in info["phases"]], "seconds": time.monotonic() - started,
                "marks": marks, "checkpoints": info["metrics"]["epochs_run"]}
            print(f"reference {name:<20} {self.reference[name]['seconds']:6.1f} s, {info['metrics']['epochs_run']} "
                  f"epochs, phases {self.reference[name]['phases']}, folder at {marks.get('folder', 0):.1f} s, "
                  f"feature cache at {marks.get('cache', 0):.1f} s", flush=True)

    # one trial: a run killed by ``first`` (a kill plan), continued (and maybe killed again) until it completes

    def trial(self, config: str, target: str, first: Callable[[subprocess.Popen, Path], bool]) -> None:
        self.counter += 1
        run = self.root / f"run{self.counter:03d}"
        flags = self.configs[config]
        ref = self.reference[config]
        args = ["train", *flags, "--out", str(run)]
        proc, plan, chain, kind = start(args, self.log(run.name)), first, 0, "start"
        record = {"run": run.name, "config": config, "target": target, "kills": [], "continuations": []}
        while True:
            started = time.monotonic()
            with realtime():
                landed = plan(proc, run)
                if landed:
                    kill(proc)
            elapsed = time.monotonic() - started
            if not landed:  # the moment never came (the run ended first): let it finish
                rc = finish(proc)
                record["continuations"].append({"kind": kind, "rc": rc, "missed_target": True})
                if rc != 0:
                    record["failed"] = self._tail(run)
                break
            chain += 1
            phase, state = where(run, ref["phases"])
            if chain > 1 and elapsed < ref["marks"].get("folder", 0.0) and phase not in ("startup", "finished"):
                phase = "startup of the continued run"  # still importing / loading: the folder shows the last kill
            loaded, refusal = loads_as_finished(run)
            wrongly = loaded and not self._matches(run, ref)
            kill_record = {"run": run.name, "config": config, "target": target if chain == 1 else "random (chained)",
                           "seconds_after_start": round(elapsed, 2), "phase": phase, "state": state,
                           "loaded": loaded, "refusal": refusal, "loaded_while_unfinished": wrongly, "chain": chain}
            self.kills.append(kill_record)
            record["kills"].append(kill_record)
            print(f"  kill {len(self.kills):3d} {config:<20} {kill_record['target']:<28} {phase:<34} {state}",
                  flush=True)
            if phase == "finished":
                break
            if RunFolder_has_checkpoint(run):
                kind, args = "resume", ["train", "--resume", str(run), "-q"]
            else:
                kind, args = "restart (same command)", ["train", *flags, "--out", str(run)]
            proc = start(args, self.log(run.name))
            if chain < 3 and self.rng.random() < 0.4:
                plan = self.random_moment(config, from_start=True)
                record["continuations"].append({"kind": kind, "rc": "killed again"})
                continue
            rc = finish(proc)
            record["continuations"].append({"kind": kind, "rc": rc})
            if rc != 0:
                record["failed"] = self._tail(run)
            break
        record["finished"] = (run / "transferkit.json").is_file()
        record["identical"] = record["finished"] and self._matches(run, ref)
        self.trials.append(record)
        if not record["identical"]:
            print(f"  !! {run.name} ({config}): finished={record['finished']} identical={record['identical']} "
                  f"{record.get('failed', '')}", flush=True)
        elif not KEEP:
            shutil.rmtree(run, ignore_errors=True)

    def _matches(self, run: Path, ref: dict[str, Any]) -> bool:
        try:
            info = json.loads((run / "transferkit.json").read_text())
        except (OSError, ValueError):
            return False
        return info["metrics"]["epochs_run"] == ref["epochs"] and same_weights(weights_of(run), ref["weights"])

    def _tail(self, run: Path) -> str:
        lines = [line for line in self.log(run.name).read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    # kill plans: each returns True when it is time to kill, False when the moment never came

    def random_moment(self, config: str, from_start: bool) -> Callable[[subprocess.Popen, Path], bool]:
        ref = self.reference[config]
        folder_at = ref["marks"].get("folder", 0.0)
        rng = self.rng

        def plan(proc: subprocess.Popen, run: Path) -> bool:
            started = time.monotonic()
            if from_start:
                delay = rng.uniform(0, ref["seconds"])
            else:
                if not wait_for_file(proc, run / "config.yaml", started + TIMEOUT):
                    return False
                # up to the moment the run finished (transferkit.json), not the interpreter's exit after it: kills
                # after the finish test nothing (one in three random kills landed there)
                finished_at = ref["marks"].get("finished", ref["seconds"])
                delay = rng.uniform(0, max(0.1, finished_at - folder_at))
            started = time.monotonic()
            while time.monotonic() - started < delay:
                if proc.poll() is not None:
                    return False
                time.sleep(0.005)
            return proc.poll() is None

        return plan

    def swap_moment(self, config: str) -> tuple[str, Callable[[subprocess.Popen, Path], bool]]:
        """At the k-th checkpoint: when `.checkpoint.new` is created, or when `.checkpoint.old` appears."""
        epochs = self.reference[config]["checkpoints"]
        which = self.rng.choice([".checkpoint.new", ".checkpoint.old"])
        nth = self.rng.randint(1 if which == ".checkpoint.new" else 2, epochs)  # the nth checkpoint of the run
        seen = {"count": 0}

        def hit(path: Path) -> bool:
            if path.name == which and path.parent.name != "feature-cache":
                seen["count"] += 1  # each creation (mkdir or rename) is one event; the first checkpoint has no .old
                return seen["count"] >= (nth if which == ".checkpoint.new" else nth - 1)
            return False

        def plan(proc: subprocess.Popen, run: Path) -> bool:
            watch, deadline, present = Watch(), time.monotonic() + TIMEOUT, False
            try:
                while time.monotonic() < deadline and proc.poll() is None:
                    if run.is_dir():
                        watch.add(run)
                        break
                    time.sleep(0.002)
                while time.monotonic() < deadline and proc.poll() is None:
                    if watch.fd >= 0:
                        paths = watch.wait(0.05)
                    else:  # polling: count each time the name comes into existence
                        now = (run / which).exists()
                        paths, present = ([run / which] if now and not present else []), now
                    if any(hit(p) for p in paths):
                        kill(proc)  # before closing the watch: closing an inotify descriptor can sleep for ms
                        return True
                return False
            finally:
                watch.close()

        return f"checkpoint swap ({which}, #{nth})", plan

    def cache_moment(self, config: str) -> tuple[str, Callable[[subprocess.Popen, Path], bool]]:
        """During the feature-cache build: a random moment of the computation, or its temporary entry's creation."""
        ref = self.reference[config]
        if self.rng.random() < 0.5:
            span = max(0.05, ref["marks"].get("cache", ref["seconds"]) - ref["marks"].get("folder", 0.0))
            rng = self.rng

            def computing(proc: subprocess.Popen, run: Path) -> bool:
                if not wait_for_file(proc, run / "config.yaml", time.monotonic() + TIMEOUT):
                    return False
                time.sleep(rng.uniform(0, span))
                return proc.poll() is None

            return "feature cache (computing)", computing

        def temporary(proc: subprocess.Popen, run: Path) -> bool:
            return wait_until(proc, run, lambda p: p.parent.name == "feature-cache" and p.name.startswith("."),
                              time.monotonic() + TIMEOUT)

        return "feature cache (temporary entry)", temporary


def RunFolder_has_checkpoint(run: Path) -> bool:  # noqa: N802 - reads as what it asks
    from transferkit.runfolder import RunFolder

    return run.is_dir() and RunFolder(run).has_checkpoint


# --- a full disk during the second checkpoint -------------------------------------------------------------------------

FULL_DISK = """
import errno, os, sys
from transferkit.training import checkpoint
from transferkit.cli import main
real, writes = checkpoint.save_file, []
def save_file(tensors, filename, *args, **kwargs):
    if ".checkpoint.new" in filename and filename.endswith("model.safetensors"):
        writes.append(filename)
        if len(writes) == 2:
            with open(filename, "wb") as handle:
                handle.write(bytes(4096))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
    return real(tensors, filename, *args, **kwargs)
checkpoint.save_file = save_file
sys.argv[0] = "transferkit"
main(sys.argv[1:])
"""


def full_disk(campaign: Campaign, config: str) -> dict[str, Any]:
    from transferkit.errors import IncompleteRunError
    from transferkit.runfolder import RunFolder

    run = campaign.root / f"full-disk {config}".replace(" ", "-")
    log = campaign.log(run.name)
    rc = finish(start(["train", *campaign.configs[config], "--out", str(run)], log, code=FULL_DISK))
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    folder = RunFolder(run)
    try:
        import transferkit

        transferkit.load(run)
        refused = "loaded"
    except IncompleteRunError:
        refused = "IncompleteRunError"
    except Exception as exc:  # noqa: BLE001
        refused = type(exc).__name__
    result = {
        "config": config, "exit_code": rc, "error": errors[-1] if errors else (lines[-1] if lines else ""),
        "one_error_line": len(errors) == 1 and "Traceback" not in text,
        "names_folder_and_fix": bool(errors) and str(run) in errors[-1] and "Fix:" in errors[-1]
        and "--resume" in errors[-1],
        "checkpoint_epoch": folder.checkpoint_state()["epoch"] if folder.has_checkpoint else None,
        "checkpoint_new_left": (run / ".checkpoint.new").exists(), "load": refused,
    }
    try:
        folder.load_checkpoint()
        result["checkpoint_readable"] = True
    except Exception:  # noqa: BLE001
        result["checkpoint_readable"] = False
    resumed = finish(start(["train", "--resume", str(run), "-q"], log))
    result["resume_exit_code"] = resumed
    result["identical"] = resumed == 0 and campaign._matches(run, campaign.reference[config])
    result["ok"] = (rc == 2 and result["one_error_line"] and result["names_folder_and_fix"]
                    and result["checkpoint_epoch"] == 1 and result["checkpoint_readable"]
                    and not result["checkpoint_new_left"] and refused == "IncompleteRunError" and result["identical"])
    print(f"  full disk {config:<20} exit {rc}, {'ok' if result['ok'] else 'NOT OK'}: {result['error']}", flush=True)
    return result


# --- the report -------------------------------------------------------------------------------------------------------


def summarise(campaign: Campaign, disks: list[dict[str, Any]]) -> dict[str, Any]:
    kills = campaign.kills
    continuations = [c for t in campaign.trials for c in t["continuations"]]
    by_target = Counter(k["target"].split(" (")[0] if k["target"].startswith("random") else k["target"]
                        for k in kills)
    by_phase = Counter(f"{k['config']} | {k['phase']}" for k in kills)
    states = Counter(k["state"] for k in kills)
    return {
        "kills": len(kills),
        "kills_by_target": dict(sorted(Counter(k["target"] for k in kills).items())),
        "kills_by_kind": dict(by_target),
        "kills_by_config_and_phase": dict(sorted(by_phase.items())),
        "folder_states_after_kill": dict(sorted(states.items())),
        "trials": len(campaign.trials),
        "resumed": sum(c["kind"] == "resume" and c["rc"] == 0 for c in continuations),
        "restarted_same_command": sum(c["kind"].startswith("restart") and c["rc"] == 0 for c in continuations),
        "continued_then_killed_again": sum(c["rc"] == "killed again" for c in continuations),
        "finished_before_kill": sum(k["phase"] == "finished" for k in kills),
        "identical": sum(t["identical"] for t in campaign.trials),
        "not_identical": sum(t["finished"] and not t["identical"] for t in campaign.trials),
        "loaded_as_finished_while_unfinished": sum(k["loaded_while_unfinished"] for k in kills),
        "unclear_load_refusals": sum(k["refusal"].startswith("UNCLEAR") for k in kills),
        "failed_continuations": sum(isinstance(c["rc"], int) and c["rc"] != 0 for c in continuations),
        "targets_missed": sum(bool(c.get("missed_target")) for c in continuations),
        "full_disk": {"cases": len(disks), "ok": sum(d["ok"] for d in disks)},
    }


def print_table(summary: dict[str, Any], campaign: Campaign) -> None:
    print("\nkills by configuration and phase")
    for key, count in summary["kills_by_config_and_phase"].items():
        print(f"  {key:<58} {count:3d}")
    print("kills by target")
    for key, count in summary["kills_by_target"].items():
        print(f"  {key:<58} {count:3d}")
    print("folder state right after the kill")
    for key, count in summary["folder_states_after_kill"].items():
        print(f"  {key:<100} {count:3d}")
    print()
    rows = [("kills", summary["kills"]), ("trials (runs killed at least once)", summary["trials"]),
            ("continued with --resume (completed)", summary["resumed"]),
            ("started over by the same command (completed)", summary["restarted_same_command"]),
            ("continued, then killed again", summary["continued_then_killed_again"]),
            ("finished before the kill landed", summary["finished_before_kill"]),
            ("final weights bit-identical to the reference", f"{summary['identical']} of {summary['trials']}"),
            ("loaded as finished while unfinished", summary["loaded_as_finished_while_unfinished"]),
            ("unclear load refusals", summary["unclear_load_refusals"]),
            ("failed resumes / restarts", summary["failed_continuations"]),
            ("targeted moments that never came (run ended first)", summary["targets_missed"]),
            ("full disk during the 2nd checkpoint: as specified",
             f"{summary['full_disk']['ok']} of {summary['full_disk']['cases']}")]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


KEEP = False


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global KEEP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24, help="random kills (chained ones included) [24]")
    parser.add_argument("--swap-kills", type=int, default=8, help="kills at the checkpoint swap [8]")
    parser.add_argument("--cache-kills", type=int, default=8, help="kills during the feature-cache build [8]")
    parser.add_argument("--full-disk", type=int, default=2, help="full-disk cases (image, text, ...) [2]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-class", type=int, default=150)
    parser.add_argument("--texts-per-class", type=int, default=150)
    parser.add_argument("--smoke", action="store_true", help="one image run, one swap kill (used by the tests)")
    parser.add_argument("--workdir", type=Path, help="where runs go [a temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep the run folders of identical trials too")
    parser.add_argument("--out", type=Path, default=None, help="JSON results [benchmarks/results/crash_resume.json]")
    args = parser.parse_args(argv)
    if args.smoke:
        args.kills, args.swap_kills, args.cache_kills, args.full_disk = 0, 1, 0, 0
        args.images_per_class = 8
    KEEP = args.keep
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CPU})  # the children share this CPU at a lower priority (see start)
    rng = random.Random(args.seed)
    started = time.monotonic()
    owned = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="crash-resume-")) if owned else args.workdir
    root.mkdir(parents=True, exist_ok=True)
    try:
        data = make_data(root / "data", args.images_per_class, args.texts_per_class)
        campaign = Campaign(root, configurations(data, args.smoke), rng)
        campaign.references()
        names = list(campaign.configs)
        plans: list[tuple[str, str, Callable]] = []
        for i in range(args.swap_kills):
            target, plan = campaign.swap_moment(names[i % len(names)])
            plans.append((names[i % len(names)], target, plan))
        for i in range(args.cache_kills):
            target, plan = campaign.cache_moment(names[i % len(names)])
            plans.append((names[i % len(names)], target, plan))
        rng.shuffle(plans)
        for config, target, plan in plans:
            campaign.trial(config, target, plan)
        while sum(k["target"].startswith("random") for k in campaign.kills) < args.kills:
            config = rng.choice(names)
            from_start = rng.random() < 0.2
            campaign.trial(config, "random (from process start)" if from_start else "random (after folder)",
                           campaign.random_moment(config, from_start))
        disks = [full_disk(campaign, names[i % len(names)] if args.smoke else
                           [n for n in names if "two-stage" in n][i % 2]) for i in range(args.full_disk)]
        summary = summarise(campaign, disks)
        print_table(summary, campaign)
        result = {"benchmark": "crash_resume", "machine": machine(), "seed": args.seed,
                  "settings": {k: str(v) for k, v in vars(args).items()},
                  "seconds": round(time.monotonic() - started, 1),
                  "references": {n: {k: v for k, v in r.items() if k not in ("weights", "run")}
                                 for n, r in campaign.reference.items()},
                  "summary": summary, "kills": campaign.kills,
                  "trials": [{k: v for k, v in t.items() if k != "kills"} for t in campaign.trials], "full_disk": disks}
        out = args.out or RESULTS / "crash_resume.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results: {out} ({result['seconds']:.0f} s)")
        return result
    finally:
        if owned and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
