"""Results out: JSON files and plain aligned text tables, for every bench and experiment.

  report.write_json(os.path.join(workdir, "bench.json"), results)
  report.print_table(rows, [report.Column("sampler", "sampler"),
                            report.Column("NFE", "network_evaluations"),
                            report.Column("s/sample", "seconds_per_sample", ".5f")],
                     title="device: cpu x1")
"""

import json
import math
import sys
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from jdiff import files


def _process_index() -> int:
  """jax.process_index() where jax is already imported (a multi-process run), else 0."""
  jax = sys.modules.get("jax")
  return jax.process_index() if jax is not None else 0


def _to_json(value):
  """numpy scalars and arrays (and anything else with .tolist()) as plain JSON values."""
  if hasattr(value, "tolist"):  # numpy and jax values
    return value.tolist()
  return str(value)


def write_json(path: str, results: Any, *, announce: bool = True) -> Optional[str]:
  """Writes results as indented JSON to path (creating its folder), atomically (a reader never
  sees half a file), on process 0 only; prints "wrote <path>" when announce. Returns path, or
  None on other processes. numpy values are written as plain numbers and lists."""
  if _process_index() != 0:
    return None
  with files.atomic_write(path, "w") as f:
    json.dump(results, f, indent=2, default=_to_json)
    f.write("\n")
  if announce:
    print(f"wrote {path}", flush=True)
  return path


class Column(NamedTuple):
  """A table column: its header, the row's value (a key of the row, or row -> value), and how the
  value is written (a format spec such as ".2f" or ".1%", or value -> str). None or a missing key
  is written "n/a"."""
  header: str
  value: Union[str, Callable[[Mapping], Any]]
  fmt: Union[str, Callable[[Any], str]] = ""


def _cell(row: Mapping, column: Column) -> str:
  value = column.value(row) if callable(column.value) else row.get(column.value)
  if value is None or (isinstance(value, float) and math.isnan(value) and not column.fmt):
    return "n/a"
  if callable(column.fmt):
    return column.fmt(value)
  return format(value, column.fmt)


def format_table(rows: Iterable[Mapping], columns: Sequence[Union[Column, tuple]],
                 title: str = "", notes: Iterable[str] = ()) -> str:
  """The table as text: title, header, a rule, one line per row, then the notes. The first
  column is left-aligned, the others right-aligned, each as wide as its widest cell."""
  columns = [Column(*column) for column in columns]
  cells = [[column.header for column in columns]]
  cells += [[_cell(row, column) for column in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

  def line(values):
    return "  ".join(value.ljust(width) if i == 0 else value.rjust(width)
                     for i, (value, width) in enumerate(zip(values, widths))).rstrip()

  lines = [title] if title else []
  lines += [line(cells[0]), "  ".join("-" * width for width in widths)]
  lines += [line(values) for values in cells[1:]]
  lines += list(notes)
  return "\n".join(lines)


def print_table(rows: Iterable[Mapping], columns: Sequence[Union[Column, tuple]],
                title: str = "", notes: Iterable[str] = ()) -> str:
  """Prints format_table(rows, columns, title, notes) (flushed, so that a table printed while a
  long experiment runs shows at once) and returns it. Prints on process 0 only."""
  text = format_table(rows, columns, title, notes)
  if _process_index() == 0:
    print(text, flush=True)
  return text


def format_markdown_table(rows: Iterable[Mapping], columns: Sequence[Union[Column, tuple]]) -> str:
  """The table as GitHub markdown (header, |---| rule, one line per row), cells as format_table's."""
  columns = [Column(*column) for column in columns]
  lines = ["| " + " | ".join(column.header for column in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(_cell(row, column) for column in columns) + " |" for row in rows]
  return "\n".join(lines)
