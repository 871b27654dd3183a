"""The experiment folder of a search, ablation or confirmation: its record (what the CLI decided, saved
so that --resume and re-summarising need nothing but the folder), who may write it, whether Ray's state
in it can be read, what a full disk means for it, and which is the newest of a kind (--resume without
--name). No Ray imports: all of this runs before Ray starts.

The record is one JSON file written atomically by the CLI that started the experiment (a Kind): the
search's Plan (tuning/sweep/plan.py) or an ablation's or confirmation's RunSet (tuning/engine/runner.py),
with its "kind" and the record "version". Records written before either field existed read as searches
(a plan) or by the kind their RunSet names, at version 1.

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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hyperiqa.utils import UserError, atomic_write_text
from tuning.engine.options import is_uri, writable_storage

LOCK_FILE = ".hyperiqa.lock"
STATE_PATTERN = "experiment_state-*.json"
# Below this much free space a failure that does not say ENOSPC (Ray's workers dying with an EOFError,
# a truncated read) is still put down to the full disk.
NEARLY_FULL_BYTES = 64 * 2**20

SEARCH_FILE = "hyperiqa_search.json"
RUNS_FILE = "hyperiqa_runs.json"
RECORD_VERSION = 1  # the layout of a record; raised when a reader must tell old records from new ones


@dataclass(frozen=True)
class Kind:
    """A kind of experiment: `name` is its record's "kind" and its CLI (tuning/<name>.py), `file` the record."""

    name: str
    file: str
    what: str  # what one-line messages call it

    @property
    def cli(self) -> str:
        return f"tuning/{self.name}.py"


SEARCH = Kind("search", SEARCH_FILE, "search")
ABLATION = Kind("ablate", RUNS_FILE, "ablation")
CONFIRMATION = Kind("confirm", RUNS_FILE, "confirmation")
KINDS = {kind.name: kind for kind in (SEARCH, ABLATION, CONFIRMATION)}

Record = TypeVar("Record")


def save_record(experiment_path: str, kind: Kind, fields: dict) -> None:
    """Write the record of a `kind` experiment (`fields`: its dataclass as a dict) into its folder: a local
    folder (atomically) or a storage URI."""
    # Not sorted: a search's space keeps its parameters' order, which is their sampling order.
    text = json.dumps({**fields, "kind": kind.name, "version": RECORD_VERSION}, indent=2) + "\n"
    if is_uri(experiment_path):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path.rstrip('/')}/{kind.file}") as fh:
            fh.write(text.encode())
    else:
        atomic_write_text(Path(experiment_path) / kind.file, text)


def load_record(experiment_path: str, kind: Kind, build: Callable[..., Record]) -> Record:
    """The record of a `kind` experiment, built by `build(**fields)` (its "kind" and "version" left out);
    one line naming the file if it is missing, unreadable, of another kind or from newer code."""
    source = f"{experiment_path.rstrip('/')}/{kind.file}"
    try:
        data = json.loads(_read(experiment_path, kind.file))
    except OSError:
        raise UserError(f"{experiment_path}: no {kind.file}; not a folder written by {kind.cli} "
                        "(give storage-path/name)") from None
    except ValueError as exc:
        raise UserError(f"{source}: not a record written by {kind.cli} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: not a record written by {kind.cli} (a JSON {type(data).__name__})")
    found = _kind_of(data)
    if found != kind.name:
        raise UserError(f"{experiment_path}: written by tuning/{found}.py, not {kind.cli}")
    version = data.pop("version", RECORD_VERSION)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise UserError(f"{source}: record version {version!r}, newer than this code reads ({RECORD_VERSION}); "
                        "update hyperiqa to continue it")
    data.pop("kind", None)
    try:
        return build(**data)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{source}: not a record written by {kind.cli} ({exc})") from None


def _read(experiment_path: str, name: str) -> str:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path) if is_uri(experiment_path) else \
        (pyarrow.fs.LocalFileSystem(), experiment_path)
    with fs.open_input_stream(f"{path.rstrip('/')}/{name}") as fh:
        return fh.readall().decode()


def _kind_of(data) -> str | None:
    """The kind a parsed record names; a mapping without one is a search plan written before records had it."""
    return data.get("kind", SEARCH.name) if isinstance(data, dict) else None


def newest(storage: str, kind: Kind) -> str:
    """The name of the newest `kind` experiment under `storage` (by its record's time); one line if none."""
    if is_uri(storage):
        raise UserError("--resume with a remote --storage-path needs --name")
    found = [p for p in sorted(Path(storage).glob(f"*/{kind.file}"), key=lambda p: p.stat().st_mtime)
             if _recorded_kind(p) == kind.name]
    if not found:
        raise UserError(f"--resume: no {kind.what} under {storage}; give --storage-path and --name")
    return found[-1].parent.name


def _recorded_kind(record: Path) -> str | None:
    try:
        return _kind_of(json.loads(record.read_text()))
    except (OSError, ValueError):
        return None


def resume(storage_path: str, name: str | None, kind: Kind, build: Callable[..., Record], *,
           instead: str) -> Record:
    """The record (a Plan or RunSet) of the experiment that `--resume [--name NAME]` continues: NAME under
    `storage_path`, else the newest of its kind there; refused in one line, before Ray starts, if Ray's state
    in it cannot be read (`instead`: what recovers its work then, check_resumable; {experiment}: its path)."""
    storage = writable_storage(storage_path)
    record = load_record(f"{storage.rstrip('/')}/{name or newest(storage, kind)}", kind, build)
    path = record.experiment_path  # where it was started: what Ray's state and the trials name
    check_resumable(path, instead.format(experiment=path))
    print(f"resuming {path} with its saved settings (other flags are ignored)")
    return record


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
