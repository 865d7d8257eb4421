"""Experiment drivers: sweeps that train and evaluate several configs and report a table."""
