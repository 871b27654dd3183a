"""The module paths `tuning/` had before it was split into packages, kept alive for unpickling only.

A Ray search started before the split pickled its scheduler, searcher, trainable and callbacks by module
path into its experiment state, and `--resume` unpickles them. This finder answers each old path with a
module that forwards every name to where it lives now. No code imports these paths; new experiments
pickle the new ones.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

OLD_PATHS = {  # old module: the modules its names now live in, searched in order
    "tuning.ablation_report": ("tuning.ablation.report",),
    "tuning.ablation_stats": ("tuning.ablation.stats",),
    "tuning.ablation_summary": ("tuning.ablation.summary",),
    "tuning.confirm_report": ("tuning.confirmation.report",),
    "tuning.experiment_folder": ("tuning.engine.experiment_folder",),
    "tuning.launch": ("tuning.engine.launch", "tuning.sweep.tuner"),
    "tuning.local_runs": ("tuning.engine.local_runs",),
    "tuning.options": ("tuning.engine.options",),
    "tuning.ray_callbacks": ("tuning.engine.ray_callbacks",),
    "tuning.runner": ("tuning.engine.runner",),
    "tuning.tracking": ("tuning.engine.tracking",),
    "tuning.trainable": ("tuning.engine.trainable", "tuning.sweep.tuner"),
    "tuning.trial_folders": ("tuning.engine.trial_folders",),
    "tuning.crosseval": ("tuning.sweep.crosseval",),
    "tuning.schedulers": ("tuning.sweep.asha", "tuning.sweep.optuna_search"),
    "tuning.plan": ("tuning.sweep.plan",),
    "tuning.space": ("tuning.sweep.space",),
    "tuning.report": ("tuning.sweep.trials_report",),
}


class _Forwarding(types.ModuleType):
    def __getattr__(self, name: str):
        for target in OLD_PATHS[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"{self.__name__} (moved to {', '.join(OLD_PATHS[self.__name__])}) has no {name!r}")


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in OLD_PATHS else None

    def create_module(self, spec):
        return _Forwarding(spec.name)

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Appended, so that any real module of the same name still wins."""
    if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
