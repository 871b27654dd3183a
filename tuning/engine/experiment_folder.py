"""The experiment folder of a search, ablation or confirmation: who may write it, whether Ray's state in
it can be read, what a full disk means for it, and which is the newest of a kind (--resume without --name).
No Ray imports: all of this runs before Ray starts.

Ray writes its experiment state (experiment_state-<session>.json) in place, without a temporary file, one
file per driver session: the first snapshot comes seconds after the Tuner starts, and a write that fails
(a full disk) leaves the file truncated. `--resume` reads the newest of these files only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hyperiqa.utils import UserError
from tuning.engine.options import is_uri

LOCK_FILE = ".hyperiqa.lock"
STATE_PATTERN = "experiment_state-*.json"
# Below this much free space a failure that does not say ENOSPC (Ray's workers dying with an EOFError,
# a truncated read) is still put down to the full disk.
NEARLY_FULL_BYTES = 64 * 2**20


def newest(storage: str, record_file: str, *, what: str, kind: str | None = None) -> str:
    """The name of the newest experiment under `storage` that holds `record_file` (the search's plan or a
    RunSet), of this `kind` when given (a RunSet's "kind": "ablate" or "confirm"); one line if there is none."""
    if is_uri(storage):
        raise UserError("--resume with a remote --storage-path needs --name")
    found = sorted(Path(storage).glob(f"*/{record_file}"), key=lambda p: p.stat().st_mtime)
    if kind is not None:
        found = [p for p in found if _kind(p) == kind]
    if not found:
        raise UserError(f"--resume: no {what} under {storage}; give --storage-path and --name")
    return found[-1].parent.name


def _kind(record: Path) -> str | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def has_state(experiment_path: str) -> bool:
    """Ray has written an experiment state there (a remote path is not looked at: Tune refuses to overwrite)."""
    return not is_uri(experiment_path) and any(Path(experiment_path).glob(STATE_PATTERN))


@contextmanager
def claim(experiment_path: str, *, new: bool):
    """Hold the experiment folder for this process while the block runs: a second search, ablation or
    confirmation with the same storage path and name is refused at once, before Ray starts, instead of
    both writing one folder. `new`: refuse a folder that already holds an experiment (--resume: accept it).

    The claim is a flock on LOCK_FILE, not a file created exclusively: the kernel drops it when the
    process dies, however it dies, so an experiment whose search was killed can always be resumed.
    Remote storage (s3://...) cannot be locked from here: it keeps Ray's own check only. A filesystem
    without flock (some network mounts) is not locked either, as before this claim existed.
    """
    if is_uri(experiment_path):
        yield
        return
    folder = Path(experiment_path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _lock(fd) is False:
            name = experiment_path.rsplit("/", 1)[-1]
            raise UserError(f"{experiment_path}: another search, ablation or confirmation is running in this "
                            f"experiment folder; wait for it to end (then --resume continues it), or choose "
                            f"another --name than {name}")
        if new and has_state(experiment_path):
            raise UserError(f"{experiment_path} already holds an experiment; add --resume to continue it or "
                            "choose another --name")
        yield
    except BaseException:
        if created:  # refused before anything ran (resources, export folder): leave no empty experiment behind
            _remove_if_only_the_lock(folder)
        raise
    finally:
        os.close(fd)  # releases the flock


def _remove_if_only_the_lock(folder: Path) -> None:
    try:
        if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
    except OSError:
        pass


def _lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
            return None
        raise
    return True


def state_files(experiment_path: str) -> list[Path]:
    """Ray's experiment state files, oldest first (Ray's order: their names end with the session's time)."""
    return sorted(Path(experiment_path).glob(STATE_PATTERN))


def unreadable(state: Path) -> str | None:
    """Why Ray could not read this experiment state file; None if it parses."""
    try:
        json.loads(state.read_bytes())
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def damaged_state(experiment_path: str) -> str | None:
    """What is wrong with the newest experiment state (the one Ray reads); None if it parses or is absent."""
    if is_uri(experiment_path):
        return None  # read by Ray alone
    states = state_files(experiment_path)
    why = unreadable(states[-1]) if states else None
    return f"Ray's experiment state {states[-1]} is unreadable ({why}; was the disk full?)" if why else None


def check_resumable(experiment_path: str, instead: str) -> None:
    """Refuse in one line, before Ray starts, to resume from an experiment state Ray cannot read, and say
    what to do: fall back to an older state if one parses, else `instead` (what recovers the trials' work)."""
    damaged = damaged_state(experiment_path)
    if damaged is None:
        return
    states = state_files(experiment_path)
    staged = staged_copy(experiment_path, states[-1].name)
    if staged is not None:
        raise UserError(f"{damaged}; Ray's driver still holds an intact copy: copy the contents of {staged.parent} "
                        f"into {experiment_path} (cp -r {staged.parent}/. {experiment_path}/), then --resume")
    older = next((s for s in reversed(states[:-1]) if unreadable(s) is None), None)
    if older is not None:
        raise UserError(f"{damaged}; move that file out of the folder and --resume continues from the older "
                        f"state {older.name}")
    raise UserError(f"{damaged}, and there is no older one, so this experiment cannot be resumed; {instead}")


def staged_copy(experiment_path: str, state_name: str) -> Path | None:
    """An intact copy of this state file in a local Ray session's staging folder (Ray writes the state there
    first, then uploads it with the trials' results: a storage path that ran full leaves this copy whole)."""
    name = Path(experiment_path).name
    sessions = Path(ray_temp_dir(), "ray").glob(f"session_*/artifacts/*/{name}/driver_artifacts/{state_name}")
    intact = [p for p in sessions if unreadable(p) is None]
    return max(intact, key=lambda p: p.stat().st_mtime) if intact else None


def ray_temp_dir() -> str:
    """Where a local Ray keeps its session (logs, the experiment state before upload): what Ray reads."""
    return os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()


@contextmanager
def disk_full_is_one_line(experiment_path: str, resume_command: str):
    """Turn a run that ended on a full disk into one line saying so; nothing on disk is removed."""
    try:
        yield
    except Exception as exc:
        where = full_disk(exc, [experiment_path, ray_temp_dir()])
        if where is None:
            raise
        raise UserError(f"disk full at {where}: the run stopped; what it saved is kept in {experiment_path}; "
                        f"free space, then continue with: {resume_command}") from exc


def full_disk(exc: BaseException, paths: list[str]) -> str | None:
    """The path whose filesystem is full if `exc` (or an exception it carries) comes from a full disk."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e.filename or _fullest(paths)[0])
    if any(isinstance(e, (EOFError, OSError)) for e in chain):
        path, free = _fullest(paths)
        if free < NEARLY_FULL_BYTES:
            return path
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _fullest(paths: list[str]) -> tuple[str, int]:
    """(path, free bytes) of the path among `paths` with the least free space (local paths only)."""
    free = []
    for path in paths:
        existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)
        if not is_uri(path) and existing is not None:
            free.append((path, shutil.disk_usage(existing).free))
    return min(free, key=lambda pf: pf[1]) if free else (paths[0], NEARLY_FULL_BYTES)
