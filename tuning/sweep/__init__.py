"""The hyperparameter search (`python tuning/search.py`): plan, space, ASHA (asha.py), Optuna
(optuna_search.py), the Tuner (tuner.py), the export folder (export_folder.py), the trials report and the
cross-dataset scores."""
