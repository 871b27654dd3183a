"""--log-to tensorboard,mlflow,wandb, --optuna-storage and --cross on one tiny real search, every record
read back with the tool's own client and compared with what the trials reported (result.json) and what
the export says (trials.csv, metrics.json). Offline: MLflow and Optuna on sqlite files, W&B in offline
mode. That the study and the MLflow runs continue after a kill and --resume is in tests/test_resume.py.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
from pathlib import Path

import optuna
import pytest
import ray
import yaml

from hyperiqa.evaluation import evaluate_checkpoint
from hyperiqa.utils import UserError
from tests.test_evaluate import kadid, tid2013  # noqa: F401  (module fixtures: generated TID2013 and KADID-10k layouts)
from tests.test_search import SPACE, results_per_trial, search_argv
from tuning.engine import tracking
from tuning.sweep import experiment as search
from tuning.sweep.optuna_search import BestValueOptunaSearch

pytestmark = pytest.mark.timeout(420)
NAME = "e2e"


def offline_env(root: Path) -> dict:
    """W&B offline, with its config and caches in the test folder (nothing written to the home folder)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            **{var: str(root / "wandb-home") for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}}


@pytest.fixture(scope="module")
def tracked(tiny_dataset, tiny_cache_dir, tid2013, kadid, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("tracked")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    urls = {"mlflow": f"sqlite:///{root}/mlflow.db", "optuna": f"sqlite:///{root}/study.db"}
    argv = [*search_argv(tiny_dataset, tiny_cache_dir, root), "--num-samples", "2", "--max-epochs", "2",
            "--log-to", "tensorboard,mlflow", "--log-to", "wandb", "--mlflow-uri", urls["mlflow"],
            "--wandb-project", "hyperiqa-test", "--optuna-storage", urls["optuna"],
            "--cross", f"tid2013={tid2013[0]}", "--cross", f"kadid10k={kadid[0]}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=offline_env(root), timeout=400)
    (root / "search.log").write_text(proc.stdout + proc.stderr)  # for a failure in any of the tests below
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = root / "ray" / NAME
    with open(root / "export" / "trials.csv") as fh:
        trials = {r["trial"]: r for r in csv.DictReader(fh)}
    epochs = {t: {r["epoch"]: r for r in lines} for t, lines in results_per_trial(experiment).items()}
    return {"root": root, "experiment": experiment, "export": root / "export", "urls": urls, "trials": trials,
            "epochs": epochs, "stdout": proc.stdout, "cross": {"tid2013": tid2013[0], "kadid10k": kadid[0]}}


def val_srcc_per_epoch(tracked, trial: str) -> dict[int, float]:
    return {e: r["val_srcc"] for e, r in tracked["epochs"][trial].items()}


def test_mlflow_holds_one_run_per_trial_with_params_epochs_status_and_the_best_tag(tracked):
    import mlflow

    mlflow.set_tracking_uri(tracked["urls"]["mlflow"])
    runs = mlflow.search_runs(experiment_names=[NAME])
    assert sorted(runs[f"tags.{tracking.TRIAL_TAG}"]) == sorted(tracked["trials"])
    best = json.loads((tracked["export"] / "metrics.json").read_text())["trial"]
    client = mlflow.MlflowClient(tracked["urls"]["mlflow"])
    for _, run in runs.iterrows():
        trial = tracked["trials"][run[f"tags.{tracking.TRIAL_TAG}"]]
        assert float(run["params.backbone_lr"]) == pytest.approx(float(trial["backbone_lr"]))
        assert run["status"] == "FINISHED"
        assert run[f"tags.{tracking.ENDED_TAG}"] == trial["ended"]
        assert run[f"tags.{tracking.BEST_TAG}"] == str(trial["trial"] == best).lower()
        history = client.get_metric_history(run["run_id"], "val_srcc")
        assert {m.step: m.value for m in history} == pytest.approx(val_srcc_per_epoch(tracked, trial["trial"]))


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (run-ID.wandb), parsed with wandb's own protobuf messages.

    The file is a 7-byte W&B header, then a LevelDB-style log: 32 KiB blocks of records, each with a
    7-byte header (checksum, little-endian length, type: 1 full, 2 first, 3 middle, 4 last); a block's
    tail shorter than a header is padding.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_runs_hold_every_epoch_of_every_trial(tracked):
    files = sorted(tracked["experiment"].glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == len(tracked["trials"]), files
    for path in files:
        records = wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.project, run.run_group) == ("hyperiqa-test", NAME)
        history = {}
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                history[int(items["epoch"])] = items["val_srcc"]
        assert history == pytest.approx(val_srcc_per_epoch(tracked, run.run_id))


def test_tensorboard_event_files_hold_every_epoch_of_every_trial(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial in tracked["trials"]:
        folder = next(p for p in tracked["experiment"].iterdir() if p.is_dir() and trial in p.name)
        events = EventAccumulator(str(folder))
        events.Reload()
        scalars = {e.step: e.value for e in events.Scalars("ray/tune/val_srcc")}
        assert scalars == pytest.approx(val_srcc_per_epoch(tracked, trial), abs=1e-6)  # stored as float32
    assert f"tensorboard --logdir {tracked['experiment']}" in tracked["stdout"]


def test_optuna_study_in_the_database_holds_every_trial_with_its_best_and_epoch_values(tracked):
    study = optuna.load_study(study_name=NAME, storage=tracked["urls"]["optuna"])
    assert study.metric_names == ["val_srcc"] and len(study.trials) == len(tracked["trials"])
    for t in study.trials:
        trial = t.user_attrs["ray_trial_id"]
        assert t.value == pytest.approx(float(tracked["trials"][trial]["best_val_srcc"]), abs=5e-5)  # csv: 4 digits
        assert t.intermediate_values == pytest.approx(val_srcc_per_epoch(tracked, trial))
    assert f"optuna-dashboard {tracked['urls']['optuna']}" in tracked["stdout"]


def test_cross_dataset_table_in_metrics_json_and_summary(tracked):
    metrics = json.loads((tracked["export"] / "metrics.json").read_text())
    entries = {e["dataset"]: e for e in metrics["cross_dataset"]}
    assert set(entries) == {"tid2013", "kadid10k"}
    checkpoint = tracked["export"] / "checkpoint"
    for name, root in tracked["cross"].items():
        again = evaluate_checkpoint(checkpoint, name, str(root), device="cpu", log=lambda *_: None)
        for key in ("srcc", "plcc", "plcc_logistic", "krcc", "n_images"):
            assert entries[name][key] == pytest.approx(again[key], abs=1e-9), (name, key)
        assert "rmse" not in entries[name]  # the tiny labels span 1..9 by their min and max: another scale
    summary = (tracked["export"] / "summary.md").read_text()
    assert "| split | srcc | plcc | plcc_logistic | krcc | rmse |" in summary
    assert f"| val | {metrics['val_srcc']:.4f} | {metrics['val_plcc']:.4f} |" in summary
    assert "| dataset | images | srcc | plcc | plcc_logistic | krcc | rmse |" in summary
    assert f"| kadid10k | 6 | {entries['kadid10k']['srcc']:.4f} |" in summary
    assert "cross-dataset (exported checkpoint):" in tracked["stdout"]


def test_reexport_repeats_the_saved_cross_datasets_and_the_export_flag_replaces_them(tracked, tmp_path, capsys):
    from tuning import export
    from tuning.sweep import export_folder

    assert export.main([str(tracked["experiment"]), "--out", str(tmp_path / "one"), "--cross",
                        f"kadid10k={tracked['cross']['kadid10k']}"]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["cross_dataset"]
    assert [e["dataset"] for e in one] == ["kadid10k"]
    again = export_folder.export_experiment(str(tracked["experiment"]), str(tmp_path / "two"), log=lambda *_: None,
                                     progress=lambda *_: None)
    assert [e["dataset"] for e in again.cross] == ["tid2013", "kadid10k"]


def test_a_restored_searcher_catches_up_with_its_database(tmp_path):
    """The searcher state Ray pickled lags the database: trial a was told after it, trial c asked after it."""
    url = f"sqlite:///{tmp_path}/study.db"
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def searcher(**kwargs):
        return BestValueOptunaSearch(space=space, metric="m", mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                                     **kwargs)

    live = searcher(storage=optuna.storages.RDBStorage(url), study_name="s")
    live.suggest("a")
    live.suggest("b")
    live.on_trial_result("a", {"m": 0.5, "epoch": 1})
    live.save(str(tmp_path / "searcher.pkl"))
    live.on_trial_complete("a", {"m": 0.6, "epoch": 2})
    live.suggest("c")  # then the driver dies

    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("a", {"m": 0.6, "epoch": 2})  # Ray finishes a again: no UpdateFinishedTrialError
    restored.on_trial_result("b", {"m": 0.4, "epoch": 1})
    restored.on_trial_complete("b", {"m": 0.4, "epoch": 1})
    restored.suggest("d")
    study = optuna.load_study(study_name="s", storage=url)
    states = {t.number: (t.state.name, t.value) for t in study.trials}
    assert states == {0: ("COMPLETE", 0.6), 1: ("COMPLETE", 0.4), 2: ("FAIL", None), 3: ("RUNNING", None)}
    assert study.trials[3].user_attrs["ray_trial_id"] == "d"


def test_store_urls_are_made_absolute_before_ray_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.absolute_store_uri("sqlite:///exports/study.db", "--optuna-storage") == \
        f"sqlite:///{tmp_path}/exports/study.db"
    assert (tmp_path / "exports").is_dir()  # sqlite cannot create the folder itself
    assert tracking.absolute_store_uri("sqlite:///a.db?timeout=30", "--mlflow-uri") == f"sqlite:///{tmp_path}/a.db?timeout=30"
    assert tracking.absolute_store_uri("sqlite:////abs/b.db", "--mlflow-uri") == "sqlite:////abs/b.db"
    assert tracking.absolute_store_uri("mlruns", "--mlflow-uri") == str(tmp_path / "mlruns")
    assert tracking.absolute_store_uri("postgresql://u@h/db", "--optuna-storage") == "postgresql://u@h/db"


@pytest.mark.parametrize("flags, words", [
    (["--log-to", "tensorboard,comet"], "--log-to comet: unknown tool; allowed: tensorboard, mlflow, wandb"),
    (["--mlflow-uri", "sqlite:///x.db"], "--mlflow-uri is used with --log-to mlflow"),
    (["--cross", "nosuch={root}"], "--cross nosuch={root}: unknown dataset 'nosuch'; allowed: koniq10k,"),
    (["--cross", "kadid10k={root}/missing"], "--cross kadid10k={root}/missing: {root}/missing does not exist"),
    (["--cross", "kadid10k"], "--cross 'kadid10k': expected NAME=ROOT"),
    (["--cross", "kadid10k={root}"], "--cross kadid10k={root}: kadid10k: annotation file {root}/dmos.csv"),
    (["--optuna-storage", "study.db"], "--optuna-storage study.db: a database URL is expected"),
    (["--optuna-storage", "sqlite:///:memory:"], "an in-memory database would vanish"),
])
def test_mistakes_are_one_line_before_ray_starts(tiny_dataset, tiny_cache_dir, tmp_path, flags, words):
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    with pytest.raises(UserError) as info:
        search.main([*argv, *[f.format(root=tmp_path) for f in flags]])
    assert words.format(root=tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert not ray.is_initialized()


def test_missing_extra_and_existing_study_are_refused_before_ray_starts(tiny_dataset, tiny_cache_dir, tmp_path,
                                                                        monkeypatch):
    argv = search_argv(tiny_dataset, tiny_cache_dir, tmp_path)[2:]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    monkeypatch.setitem(tracking.MODULES, "wandb", ("wandb_is_not_installed", "wandb"))
    with pytest.raises(UserError, match=r'--log-to wandb: .* not installed; pip install -e "\.\[wandb\]"'):
        search.main([*argv, "--log-to", "wandb"])
    url = f"sqlite:///{tmp_path}/study.db"
    optuna.create_study(study_name=NAME, storage=url)
    with pytest.raises(UserError, match=f"already holds a study '{NAME}'.*optuna delete-study"):
        search.main([*argv, "--optuna-storage", url])
    assert not ray.is_initialized()
