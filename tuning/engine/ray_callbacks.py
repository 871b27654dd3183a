"""Ray Tune's MLflow and W&B logger callbacks, with what a HyperIQA search needs changed (Ray 2.60).

Imported only when --log-to asks for them (importing wandb takes seconds). Both stay Ray's loggers:
these subclasses change when runs are opened and closed, not what is logged.
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from tuning.engine.ray_private import WandbLoggingActor, mlflow_trial_runs, set_wandb_actor, wandb_module
from tuning.engine.tracking import TRIAL_TAG


class MLflowTrialRuns(MLflowLoggerCallback):
    """Ray's MLflow logger, with the trial id as a run tag (tuning.engine.tracking tags the export's best run by
    it) and one run per trial across --resume: Ray's callback would open a second run for a resumed trial."""

    def log_trial_start(self, trial) -> None:
        if trial not in mlflow_trial_runs(self):
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.tracking_uri)
            found = client.search_runs([self.mlflow_util.experiment_id],
                                       filter_string=f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'", max_results=1)
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
            else:
                tags = {**self.tags, "trial_name": str(trial), TRIAL_TAG: trial.trial_id}
                run_id = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
            mlflow_trial_runs(self)[trial] = run_id
        super().log_trial_start(trial)  # logs the trial's parameters


class _FlushedWandbActor(WandbLoggingActor):
    """The actor that logs one trial to W&B, waiting for W&B to write the run out before it returns.

    wandb.finish() returns before wandb-core (a separate process that exits with its parent) has
    flushed the run file, and Ray kills the actor as soon as run() returns: a trial that ended at the
    end of the search could lose its whole offline run. wandb.teardown() waits for it."""

    def run(self):
        super().run()
        wandb_module(self).teardown()


class WandbTrialRuns(WandbLoggerCallback):
    """Ray's W&B logger, each trial logged through _FlushedWandbActor."""


set_wandb_actor(WandbTrialRuns, _FlushedWandbActor)
