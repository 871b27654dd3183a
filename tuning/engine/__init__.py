"""The engine every experiment runs on: starting or joining Ray, resources, the trainable, fixed-configuration
runs (RunSet, on Ray or as local processes), experiment folders, tracking and Ray's logger callbacks.

It imports no workflow package (sweep, ablation, confirmation); tests/test_imports.py checks it.
"""
