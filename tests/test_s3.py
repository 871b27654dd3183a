"""--storage-path s3:// (issue 30) against a local S3-compatible server the test starts (moto's ThreadedMotoServer,
as Ray's own storage tests use): a search whose driver is killed mid-search, `--resume` from the bucket,
`tuning/export.py s3://...`, and the --keep-checkpoints deletions made in the bucket.

The subprocesses find the server through AWS_ENDPOINT_URL, which pyarrow's S3 filesystem (Ray's storage and
tuning/engine/retention.py) reads, as boto3 does. Real Ray, real Tuner; scripted trials
(tests/stub_trials.scripted) with checkpoint files of a few KB (tests/test_retention.FILES).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import signal
import socket
import subprocess
import sys
import time

import pytest

from hyperiqa.checkpoint import WEIGHTS
from tests.stub_trials import PAUSED_PREFIX, kill_paused
from tests.test_retention import FILES
from tests.test_search import ROOT
from tests.test_search_scripted import DRIVER, argv_for, rows
from tuning.engine import retention

moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.timeout(400)

BUCKET = "searches"
GOOD, BAD = repr(1e-3), repr(1e-6)
# One trial at a time: GOOD runs to the end, BAD waits after epoch 1 and the driver is killed there.
CURVES = {GOOD: [0.5, 0.6, 0.7], BAD: [0.1, 0.2, 0.3]}


def _s3_response_name_fix(monkeypatch) -> None:
    """moto 5.2.1 answers CompleteMultipartUpload with a <CompleteMultipartUploadResponse> root element where S3
    sends <CompleteMultipartUploadResult>; the AWS C++ SDK under pyarrow then finds no ETag and pyarrow fails
    every upload (it writes each file as a multipart upload) with "error embedded in a 200 OK response"."""
    from moto.s3.responses import S3Response

    original = S3Response._key_response_post

    def fixed(self, *args, **kwargs):
        status, headers, body = original(self, *args, **kwargs)
        if isinstance(body, bytes):
            body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        elif isinstance(body, str):
            body = body.replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult")
        return status, headers, body

    monkeypatch.setattr(S3Response, "_key_response_post", fixed)


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 with one bucket; the environment its clients need."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.MonkeyPatch.context() as monkeypatch:
        _s3_response_name_fix(monkeypatch)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)  # a line per request
        server.start()
        try:
            env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
            for key, value in env.items():
                monkeypatch.setenv(key, value)  # for pyarrow in this process too
            import boto3

            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield env
        finally:
            server.stop()


def snapshot_has_checkpoint(experiment: str, lr: str) -> bool:
    """Ray's experiment snapshot in the bucket (what --resume reads) knows a checkpoint of the trial with this lr."""
    from ray import tune

    try:
        analysis = tune.ExperimentAnalysis(experiment)
    except Exception:  # not written yet, or written while we read it
        return False
    return any(repr(t.config.get("backbone_lr")) == lr and t.checkpoint is not None for t in analysis.trials)


def only_weights_of(kept: dict[int, set[str]], epoch: int) -> bool:
    """The weights of `epoch` and no other big file (Ray's own ranking may have deleted older folders)."""
    return kept[epoch] == {WEIGHTS} and not any(files for e, files in kept.items() if e != epoch)


def stored(experiment: str) -> dict[str, dict[int, set[str]]]:
    """{trial lr: {epoch: big files in that checkpoint}} of every checkpoint folder in the bucket."""
    import pyarrow.fs

    from tuning.engine import retention

    fs, _ = retention.filesystem(experiment)
    out = {}
    for path in retention.trial_paths(experiment).values():
        with fs.open_input_stream(posixpath.join(path, "result.json")) as fh:
            lr = repr(json.loads(fh.read().split(b"\n", 1)[0])["config"]["backbone_lr"])
        kept = {}
        for info in fs.get_file_info(pyarrow.fs.FileSelector(path)):
            if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
                continue
            try:
                with fs.open_input_stream(posixpath.join(info.path, "metrics.json")) as fh:
                    epoch = json.loads(fh.read())["epoch"]
            except (OSError, ValueError):  # being uploaded while the test polls
                continue
            names = {i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(info.path))}
            kept[epoch] = names & set(FILES)
        out[lr] = kept
    return out


def test_a_search_on_s3_killed_resumed_from_the_bucket_exported_and_pruned_there(s3_env, tiny_dataset,
                                                                                 tiny_cache_dir, tmp_path):
    pause = tmp_path / "pause"
    pause.mkdir()
    (pause / "pause.json").write_text(json.dumps({BAD: 1}))
    storage = f"s3://{BUCKET}/x"
    experiment = f"{storage}/s3search"
    argv = argv_for(tmp_path, tiny_dataset, tiny_cache_dir, CURVES, "s3search", "--max-epochs", "3",
                    "--grace-period", "3", "--keep-checkpoints", "top-1")
    argv[argv.index("--storage-path") + 1] = storage
    cmd = [sys.executable, "-c", DRIVER]
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen([*cmd, json.dumps([argv, CURVES, str(pause), FILES])], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None and not (
                    any(pause.glob(f"{PAUSED_PREFIX}*")) and snapshot_has_checkpoint(experiment, BAD)):
                time.sleep(1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_paused(pause)
    assert snapshot_has_checkpoint(experiment, BAD), (tmp_path / "run1.log").read_text()[-3000:]
    killed = stored(experiment)
    # In the bucket, while BAD ran: GOOD (ended) keeps its best epoch's weights only, BAD its newest whole.
    assert only_weights_of(killed[GOOD], 3) and killed[BAD] == {1: set(FILES)}
    (pause / "resumed").touch()
    resumed = subprocess.run([*cmd, json.dumps([[*argv, "--resume"], CURVES, str(pause), FILES])], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    exported = subprocess.run([sys.executable, str(ROOT / "tuning" / "export.py"), experiment, "--out",
                               str(tmp_path / "again")], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    print(f"search, kill, resume and export on s3:// in {time.monotonic() - started:.1f} s")
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]

    # BAD continued from its epoch-1 checkpoint in the bucket; both exports took GOOD's epoch 3 from there.
    for folder in (tmp_path / "export", tmp_path / "again"):
        trials = rows(folder)
        by_lr = {repr(float(r["backbone_lr"])): r for r in trials.values()}
        bad_id = by_lr[BAD]["trial"]
        assert {lr: (r["ended"], r["epochs_run"]) for lr, r in by_lr.items()} == \
            {GOOD: ("completed", "3"), BAD: ("completed", "3")}
        metrics = json.loads((folder / "metrics.json").read_text())
        assert (metrics["epoch"], metrics["val_srcc"]) == (3, 0.7)
        assert (folder / "checkpoint" / WEIGHTS).stat().st_size == FILES[WEIGHTS]
    # --keep-checkpoints top-1, in the bucket: no optimizer state left, weights of GOOD's best epoch only.
    final = stored(experiment)
    assert only_weights_of(final[GOOD], 3) and final[BAD] and not any(final[BAD].values())
    with retention.filesystem(experiment)[0].open_input_stream(retention.trial_paths(experiment)[bad_id] +
                                                               "/result.json") as fh:
        epochs = [json.loads(line)["epoch"] for line in fh.read().decode().splitlines()]
    assert epochs == [1, 2, 3]  # continued from the bucket's checkpoint, not restarted
