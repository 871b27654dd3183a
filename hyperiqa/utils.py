"""Small shared helpers: atomic file writes, seeding, user-facing errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from hyperiqa.errors import UserError as UserError  # the root of user mistakes, importable from here too


# --- permissions -----------------------------------------------------------------------------------
# tempfile creates files 0o600 and folders 0o700 whatever the umask: right for secrets, wrong for
# exports and checkpoints that colleagues must read. Everything written here gets the mode a plain
# open()/mkdir() would give. The umask can only be read by setting it, which for an instant changes it
# for every thread of the process (a file another thread creates then could come out world-writable);
# so it is read from /proc/self/status where Linux offers it (no change at all), and otherwise set and
# restored once, at import, while the import lock keeps other imports out.
def _umask_at_import() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_at_import()


def current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _IMPORT_UMASK


def apply_umask(path: str | Path, *, directory: bool = False) -> None:
    """Give `path` (made by tempfile.mkstemp/mkdtemp) the mode open()/mkdir() would: 0o666 or 0o777 minus the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_dir_honouring_umask(parent: str | Path, prefix: str) -> Path:
    """tempfile.mkdtemp(dir=parent, prefix=prefix) with the mode mkdir() gives (mkdtemp's 0o700 hides it)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    apply_umask(path, directory=True)
    return path


# --- atomic writes -----------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    apply_umask(tmp)  # the block may reopen the file, which keeps this mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a new empty folder beside `path`; it replaces `path` only once the block has succeeded.

    So a folder of several files (a checkpoint) is either the old one or the new one, never a mix,
    even when a write fails half-way (full disk) or the process dies. An existing `path` is moved
    aside, the new folder renamed in, then the old one deleted: two renames, microseconds apart.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_dir_honouring_umask(path.parent, f".{path.name}.tmp-")
    old = None
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old)  # over the empty folder mkdtemp made: rename(2) allows that
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # the new folder never arrived: put the old one back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` survive a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading text ------------------------------------------------------------------------------------
def read_text(path: str | Path, what: str = "file", error: type[Exception] = UserError) -> str:
    """A user's text file (config, search space, label table) as UTF-8, with or without a BOM.

    Strict: a file in another encoding (Excel's "CSV" on Windows is cp1252) is refused in one line
    with the offset of the first bad byte, instead of being guessed and read with wrong characters.
    Raises OSError as open() does (the caller words it), `error` for bytes that are not UTF-8.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{what} {path}: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) is "
                        f"not UTF-8; re-save the file as UTF-8 (in Excel: 'CSV UTF-8')") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HYPERIQA_CACHE", Path.home() / ".cache" / "hyperiqa")).expanduser().resolve()


def run_cli(main_fn) -> None:
    """Run a CLI body: user mistakes become one line on stderr and exit code 2, not a traceback."""
    try:
        code = main_fn()
    except UserError as exc:  # ConfigError, DatasetError, SpaceError... are UserErrors
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
