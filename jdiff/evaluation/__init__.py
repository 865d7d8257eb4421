"""Evaluation: the FID Inception-v3 network in Flax with torch-free weight loading; FID, IS,
KID and feature statistics; Digits FD for CPU-scale work; speed/quality trade-off plots."""

import os


def cache_dir() -> str:
  """Where downloaded weights, trained metric networks and feature caches live."""
  return os.environ.get("JDIFF_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jdiff"))
