"""Ray's authentication token stays readable by its owner only.

Ray 2.60 turns token authentication on for every Ray that ray.init() starts (unless RAY_AUTH_MODE says
otherwise) and, when it finds no token, writes a new one to ~/.ray/auth_token with the default mode: 0644
in a 0755 ~/.ray under umask 022. Whoever reads that file can use the dashboard and its job API, that is,
run code as the search's owner. So before Ray starts, this module writes the token itself (0600, in a
~/.ray made 0700), and says in one line how to fix a token file that others can read.

Where Ray 2.60 looks for the token (src/ray/rpc/authentication/authentication_token_loader.cc), first
found wins: the RAY_AUTH_TOKEN variable itself, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token
($HOME's). It reads the file's first line without surrounding whitespace; ray.init() creates tokens of
32 random bytes in hex (ray/_private/authentication/authentication_token_generator.py), as here.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
from pathlib import Path

from hyperiqa.utils import UserError

TOKEN_BYTES = 32


def token_path(environ=os.environ) -> Path | None:
    """The file Ray takes its token from, or None when the token is not a file (RAY_AUTH_TOKEN) or token
    authentication is off (RAY_AUTH_MODE other than token)."""
    if environ.get("RAY_AUTH_TOKEN"):
        return None
    mode = environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.strip().lower() != "token":
        return None
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        return Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".ray" / "auth_token"


def prepare(create: bool, log=print, environ=os.environ) -> Path | None:
    """Before ray.init(): with `create` (a Ray started here), write a private token where Ray will look
    if there is none; then warn in one line if the token file can be read by group or others.
    Returns the token file Ray will use, if any."""
    path = token_path(environ)
    if path is None:
        return None
    if create and not _holds_token(path):
        try:
            _write_private_token(path)
        except OSError as exc:
            raise UserError(f"cannot create Ray's token file {path} ({exc}); set RAY_AUTH_TOKEN_PATH to a file "
                            "you can write, or RAY_AUTH_TOKEN to the token itself") from None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return path  # joining without a token file: Ray itself says what it needs
    if mode & 0o044:
        log(f"warning: Ray's token {path} can be read by other users of this machine (mode {mode:04o}), who "
            f"could then run code as you through the Ray dashboard; fix it with: chmod 600 {shlex.quote(str(path))}")
    return path


def _holds_token(path: Path) -> bool:
    try:
        with open(path) as fh:
            return bool(fh.readline().strip())
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but not ours to read: leave it to Ray's own message


def _write_private_token(path: Path) -> None:
    """A new token file, 0600, written whole before it appears: a Ray started at the same moment by another
    run finds either no file or a complete one. A file already there (another run won the race) is kept;
    an empty one is replaced."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(secrets.token_hex(TOKEN_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except OSError:  # there already, or a file system without hard links
            if not _holds_token(path):
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
