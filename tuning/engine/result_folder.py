"""A result folder (a search's export, an ablation's or a confirmation's results), built whole and swapped in.

A reader never sees half a folder, and only a folder that a previous export wrote (it holds EXPORT_MARKER),
or an empty one, is ever replaced.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hyperiqa.utils import UserError, atomic_dir
from tuning.engine.options import is_uri

EXPORT_MARKER = ".hyperiqa-export"  # written into every folder `staging` builds: the folders it may replace
MARKER_TEXT = ("Written by hyperiqa-tune (tuning/export.py, search.py, ablate.py). The next export to this folder "
               "replaces it whole; a folder without this file is never replaced.\n")


def check_export_dir(target, experiment: str | None = None) -> Path:
    """The folder an export may replace, resolved: absent, empty, or one it wrote itself (EXPORT_MARKER).

    Anything else is refused in one line, as is the experiment's folder, a folder holding it or inside it
    (Ray owns it), and the current folder or one holding it: the swap renames the whole folder away.
    """
    target = Path(target).expanduser().resolve()
    if experiment and not is_uri(experiment):
        exp = Path(experiment).expanduser().resolve()
        if target == exp or target in exp.parents or exp in target.parents:
            raise UserError(f"export folder {target}: it is, holds or is inside the experiment {exp}, which an "
                            "export never replaces; choose another --out/--export-dir")
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(f"export folder {target}: it is or holds the current folder, and an export replaces its "
                        "whole folder; choose another --out/--export-dir")
    if target.exists() and not target.is_dir():
        raise UserError(f"export folder {target}: a file, not a folder; choose another --out/--export-dir")
    if target.is_dir() and not (target / EXPORT_MARKER).is_file():
        entry = next(target.iterdir(), None)
        if entry is not None:
            raise UserError(f"export folder {target}: holds files no export wrote (e.g. {entry.name}) and an export "
                            "replaces its whole folder; choose another --out/--export-dir, or empty it")
    return target


@contextmanager
def staging(target, experiment: str | None = None):
    """Build the folder under a temporary name beside `target`, then swap it in (hyperiqa.utils.atomic_dir:
    the files get the umask's modes, a reader never sees half a folder). Only a folder that check_export_dir
    accepts is replaced: checked on entry and again before the swap, which may come long after
    (cross-dataset scoring), so files put there meanwhile survive too."""
    target = check_export_dir(target, experiment)
    with atomic_dir(target) as tmp:
        (tmp / EXPORT_MARKER).write_text(MARKER_TEXT)
        yield tmp
        check_export_dir(target, experiment)
