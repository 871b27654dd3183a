"""The ablation of the original solver's defects (`python tuning/ablate.py`): its design, statistics and report."""
