"""Drivers: the train loops, sampling, evaluation and likelihood runs that --mode=... starts."""
