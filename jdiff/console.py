"""A quiet console for jdiff's programs (jdiff.main, the tools): call quiet_startup() before
TensorFlow (clu, TFDS) or jax is imported, and quiet_absl_handler() once absl's handler exists.

Hidden: TF's C++ INFO lines (the oneDNN notice, the CPU feature notice; TF_CPP_MIN_LOG_LEVEL=1
keeps its warnings and errors, and a user's own setting wins), jax's INFO line for each
platform it probes and does not find ("Unable to initialize backend 'tpu'"), and orbax's INFO
line per checkpoint step. Warnings of all of them still show.
"""

import logging
import os


def _not_a_backend_probe(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or not record.getMessage().startswith(
      "Unable to initialize backend")


def _not_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def quiet_startup() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  logging.getLogger("jax._src.xla_bridge").addFilter(_not_a_backend_probe)


def quiet_absl_handler() -> None:
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_not_orbax_info)
