"""A search started before tuning/ was split into packages pickled its objects by the old module paths."""

import pickle

import pytest


def test_old_module_paths_unpickle_to_the_moved_objects():
    from tuning.sweep.asha import ResumableASHA
    from tuning.sweep.optuna_search import BestValueOptunaSearch
    from tuning.sweep.tuner import train_trial

    # protocol 0 GLOBAL opcodes, as a pickle written before the split names them
    assert pickle.loads(b"ctuning.schedulers\nResumableASHA\n.") is ResumableASHA
    assert pickle.loads(b"ctuning.schedulers\nBestValueOptunaSearch\n.") is BestValueOptunaSearch
    assert pickle.loads(b"ctuning.trainable\ntrain_trial\n.") is train_trial


def test_an_unknown_name_under_an_old_path_says_where_the_module_went():
    import tuning.report as old

    with pytest.raises(AttributeError, match=r"tuning.report \(moved to tuning.sweep.trials_report\) has no 'nope'"):
        _ = old.nope
