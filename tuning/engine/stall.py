"""When a trial (or a --runner processes run) counts as stalled, and the record of stalls; no Ray imports here.

The rule: a run that has reported nothing for max(stall_timeout, EPOCH_MULTIPLE x its own slowest
measured epoch) is stalled. An epoch is measured as the time between two consecutive reports of one
attempt; the time from a start (or a restart after a failure) to its first report is warm-up (imports,
dataset cache, restoring a checkpoint) and is not an epoch, so it must fit in stall_timeout alone.
A run's slowest epoch is kept across its restarts. stall_timeout 0 turns the watchdog off.

tuning/engine/watch.py applies the rule to Ray trials, tuning/engine/local_runs.py to local processes;
both write STALLS_FILE in the experiment folder and retry a stalled run MAX_RETRIES times from its last
checkpoint before it ends as stalled.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyperiqa.utils import UserError, atomic_write_text

DEFAULT_STALL_TIMEOUT = 1800.0  # seconds; docs/clusters.md "A stalled trial" says why
EPOCH_MULTIPLE = 3.0
MAX_RETRIES = 2  # the same as Ray's FailureConfig(max_failures) in tuning/engine/launch.py
STALLS_FILE = "stalls.json"
STALLED = "stalled"  # how such a run ended (trials.csv "ended")


def check_stall_timeout(value: float) -> float:
    """--stall-timeout's value, refused in one line if it is negative or not a finite number."""
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--stall-timeout {value:g}: must be a number of seconds >= 0 (0 turns the watchdog off)")
    return float(value)


def limit(stall_timeout: float, slowest_epoch: float | None) -> float | None:
    """Seconds of silence after which a run is stalled; None when the watchdog is off."""
    if not stall_timeout:
        return None
    return max(stall_timeout, EPOCH_MULTIPLE * (slowest_epoch or 0.0))


@dataclass
class Clock:
    """One run's reports: when it last reported (or started) and its slowest measured epoch."""

    last: float                      # time.monotonic() of its last report or of its (re)start
    measured: bool = False           # whether `last` is a report (then the next report measures an epoch)
    slowest: float | None = None

    def silent_for(self, now: float) -> float:
        return now - self.last


@dataclass
class Watch:
    """The rule over many runs, keyed by any id; times come from the caller (time.monotonic())."""

    stall_timeout: float
    clocks: dict[str, Clock] = field(default_factory=dict)

    def started(self, key: str, now: float) -> None:
        """A (re)start: silence counts from now; the slowest epoch of earlier attempts is kept."""
        clock = self.clocks.get(key)
        self.clocks[key] = Clock(now, slowest=clock.slowest if clock else None)

    def reported(self, key: str, now: float) -> None:
        clock = self.clocks.setdefault(key, Clock(now))
        if clock.measured:
            epoch = now - clock.last
            clock.slowest = epoch if clock.slowest is None else max(clock.slowest, epoch)
        clock.last, clock.measured = now, True

    def forget(self, key: str) -> None:
        """The run ended or stopped running: it is no longer watched (its slowest epoch is kept)."""
        clock = self.clocks.get(key)
        if clock is not None:
            self.clocks[key] = Clock(math.inf, slowest=clock.slowest)

    def limit_for(self, key: str) -> float | None:
        clock = self.clocks.get(key)
        return limit(self.stall_timeout, clock.slowest if clock else None)

    def stalled(self, key: str, now: float) -> float | None:
        """How long the run has been silent if that is past its limit, else None."""
        clock, most = self.clocks.get(key), self.limit_for(key)
        if clock is None or most is None or math.isinf(clock.last):
            return None
        silent = clock.silent_for(now)
        return silent if silent > most else None


def stall_line(name: str, node: str | None, silent: float, most: float, retry: bool) -> str:
    """The one line printed when a run is ended as stalled."""
    then = "retried from its last checkpoint" if retry else f"no retries left: it ends as {STALLED}"
    return (f"stalled: {name} on node {node or 'unknown'} reported nothing for {silent:.0f} s (limit {most:.0f} s, "
            f"--stall-timeout); its process was killed, {then}")


def stall_record(name: str, node: str | None, pid: int | None, silent: float, most: float, retry: bool) -> dict:
    return {"trial": name, "node": node, "pid": pid, "silent_s": round(silent, 1), "limit_s": round(most, 1),
            "retried": retry, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def merge(previous: dict | None, record: dict | None = None, ended: str | None = None,
          revived: str | None = None) -> dict:
    """STALLS_FILE's contents with one more stall (`record`), one more run that ended stalled (`ended`), and/or
    one less (`revived`: a --resume started it again)."""
    data = {"stalls": list((previous or {}).get("stalls", [])), "stalled": list((previous or {}).get("stalled", []))}
    if record is not None:
        data["stalls"].append(record)
    if ended is not None and ended not in data["stalled"]:
        data["stalled"].append(ended)
    if revived is not None:
        data["stalled"] = [s for s in data["stalled"] if s != revived]
    return data


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"


def parse(text: str | None) -> dict:
    """STALLS_FILE's contents; an empty record when there is none (or it is unreadable)."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    return merge(data if isinstance(data, dict) else {})


def load(fs, folder: str) -> dict:
    """STALLS_FILE in `folder` of the pyarrow filesystem `fs` (local or object storage; None: a local folder,
    read without pyarrow, which --runner processes does not need)."""
    path = f"{folder.rstrip('/')}/{STALLS_FILE}"
    try:
        if fs is None:
            return parse(Path(path).read_text())
        with fs.open_input_stream(path) as fh:
            return parse(fh.readall().decode())
    except OSError:  # pyarrow's FileNotFoundError is an OSError
        return parse(None)


def add(fs, folder: str, record: dict | None = None, ended: str | None = None, revived: str | None = None) -> None:
    """Add a stall and/or a run that ended stalled to `folder`'s STALLS_FILE; a failed write is a warning."""
    path = f"{folder.rstrip('/')}/{STALLS_FILE}"
    text = dumps(merge(load(fs, folder), record, ended, revived))
    try:
        if fs is None:
            atomic_write_text(path, text)
        else:
            with fs.open_output_stream(path) as fh:
                fh.write(text.encode())
    except OSError as exc:
        print(f"warning: could not record the stall in {path} ({exc})", flush=True)


def read_stalls(experiment_path: str) -> dict:
    """An experiment's STALLS_FILE (a local folder or a storage URI); an empty record when there is none."""
    if "://" not in experiment_path:
        return load(None, experiment_path)
    import pyarrow.fs

    try:
        fs, folder = pyarrow.fs.FileSystem.from_uri(experiment_path)
    except (OSError, ValueError):
        return parse(None)
    return load(fs, folder)


def stalled_ids(experiment_path: str) -> set[str]:
    """The runs (trial ids, run ids) that ended stalled: their retries ran out."""
    return set(read_stalls(experiment_path)["stalled"])
