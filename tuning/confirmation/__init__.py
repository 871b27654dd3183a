"""The confirmation of a search's winner on fresh paired splits (`python tuning/confirm.py`): its design and report."""
