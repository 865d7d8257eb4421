"""What the tools' absl apps share: flag parsing and errors as one line (exit 2 for bad input,
as jdiff.main), and the config of a --config flag (ml_collections config_flags)."""

import functools
import sys
from typing import Callable

from absl import flags

from jdiff import config_lib
from jdiff.errors import ConfigError, JdiffError

_HELP_FLAGS = ("--help", "-help", "--helpshort", "--helpfull", "--helpxml", "-?", "-h")


def parse_flags(argv):
  """absl's flag parsing, with a bad or missing flag as one line `error: ...` and exit 2, and
  --help exiting 0 (app.run(main, flags_parser=cli.parse_flags))."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(2)
  except SystemExit as e:  # absl's --help exits 1 after printing the help: asked for, it is no error
    if e.code == 1 and any(arg in _HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise


def load_config(config_flag):
  """A copy of the config that a config_flags.DEFINE_config_file flag holds (its --config.<field>
  overrides applied); ConfigError (one line) when the file cannot be loaded."""
  try:
    config = config_flag.value.copy_and_resolve_references()
  except Exception as e:  # pylint: disable=broad-except  (a config file can raise anything)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise ConfigError(f"--config: cannot load it ({type(e).__name__}: "
                      f"{lines[-1] if lines else ''})") from None
  return config_lib.split_comma_lists(config)


def one_line_errors(main: Callable) -> Callable:
  """main(argv), with a JdiffError printed as `error: <message>` and its exit code returned."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except JdiffError as e:
      print(f"error: {e}", file=sys.stderr)
      return e.exit_code
  return wrapped
