"""Writing outputs so that a killed run or a full disk never leaves a half-written file.

Every file jdiff writes for a user (samples, WAVs, grids, statistics, feature caches, evaluation
batches, metrics.json, sampler.json, bench JSON) goes through `atomic_write`: the bytes go to a
temporary name in the same folder, are flushed and fsynced, and are renamed over the final name,
so the final name holds either the old complete file or the new complete one. A set of files
that belongs together (a sample run's .npz, grid and WAVs) is written as a folder by
`replace_folder` and swapped in whole.

Every path may be local or on an object store (`gs://...`): jdiff's own reads and writes of
workdirs, statistics, caches and results go through this module and etils.epath (checkpoints
through orbax). On an object store an object appears only when its upload completes, so there a
file is written in place; a set of files is uploaded from a local staging folder and files of
the previous set that the new one lacks are then deleted.

Write failures (disk full, read-only, permission, a workdir that is a file) become one
`WorkdirError` line naming the path (`write_error`).
"""

import contextlib
import errno
import io
import json
import os
import shutil
import socket
import tempfile
from typing import Callable, Iterator

import numpy as np
from absl import logging
from etils import epath

from jdiff.errors import WorkdirError  # pylint: disable=unused-import  (also files.WorkdirError)

PARTIAL = ".partial-"    # <name>.partial-<pid>...: being written; removed or renamed when done
REPLACED = ".replaced-"  # <folder>.replaced-<pid>: the previous set while a new one is swapped in

# Errors of the filesystem, not of jdiff: each becomes one line that names the path.
WRITE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for this filesystem", errno.EROFS: "read-only filesystem",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.ENOTDIR: "a path component is a file, not a folder",
                errno.EEXIST: "a file is in the way of a folder", errno.EIO: "input/output error"}


def _partial_tag() -> str:
  """.partial-<host>-<pid>-: whose temporary file it is, so that only a dead writer's are removed."""
  return f"{PARTIAL}{socket.gethostname()}-{os.getpid()}-"


def _writer_is_gone(name: str) -> bool:
  """Whether the temporary file `name` belongs to a process of this host that no longer runs
  (another host's, or a live writer's, is left alone)."""
  tag = PARTIAL + name.partition(PARTIAL)[2]
  prefix = f"{PARTIAL}{socket.gethostname()}-"
  if not tag.startswith(prefix):
    return False
  pid = tag[len(prefix):].split("-", 1)[0]
  if not pid.isdigit() or int(pid) == os.getpid():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except OSError:
    return False
  return False


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """A local path made absolute; a remote one (gs://...) as it is (abspath would mangle it)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def exists(path) -> bool:
  return epath.Path(path).exists()


def listdir(path) -> list:
  """Names in a folder (empty when it does not exist)."""
  folder = epath.Path(path)
  return sorted(child.name for child in folder.iterdir()) if folder.is_dir() else []


def read_text(path) -> str:
  return epath.Path(path).read_text()


def load_npz(path) -> dict:
  """{name: array} of an .npz, local or remote (read whole: object stores do not seek cheaply)."""
  if not is_remote(path):
    with np.load(path) as archive:
      return {name: archive[name] for name in archive.files}
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as archive:
    return {name: archive[name] for name in archive.files}


def move(source, target) -> None:
  """Renames a file or folder (locally atomic; on an object store a copy, then a delete)."""
  source, target = os.fspath(source), os.fspath(target)
  if not is_remote(source):
    os.replace(source, target)
    return
  source_path = epath.Path(source)
  if not source_path.is_dir():
    source_path.copy(epath.Path(target), overwrite=True)
    source_path.unlink()
    return
  for root, _, names in epath.Path(source).walk():
    for name in names:
      relative = os.path.relpath(os.fspath(root / name), source)
      destination = epath.Path(target) / relative
      destination.parent.mkdir(parents=True, exist_ok=True)
      (root / name).copy(destination, overwrite=True)
  source_path.rmtree()


def write_error(path, error: OSError, what: str = "write") -> WorkdirError:
  """One line for a failed write of `path`."""
  reason = WRITE_ERRNOS.get(error.errno) or error.strerror or str(error) or type(error).__name__
  return WorkdirError(f"cannot {what} {os.fspath(path)}: {reason}")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", sync: bool = True) -> Iterator[io.IOBase]:
  """`with atomic_write(path) as f: f.write(...)`: path holds the old file until the block ends,
  then the new one; an exception (or a kill) inside the block leaves the old file as it was.

  sync: fsync the file (and the folder's entry) before the rename, so a machine crash cannot
  leave an empty file under the final name either.
  """
  path = os.fspath(path)
  if is_remote(path):
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with epath.Path(path).open(mode) as f:
      yield f
    return
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=os.path.basename(path) + _partial_tag(), dir=folder)
  except OSError as e:
    raise write_error(path, e) from None
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      if sync:
        os.fsync(f.fileno())
    os.chmod(partial, 0o644)  # mkstemp's 0600 is not what a plain open() gives
    os.replace(partial, path)
    if sync:
      _fsync_folder(folder)
  except OSError as e:
    _remove_quietly(partial)
    raise write_error(path, e) from None
  except BaseException:
    _remove_quietly(partial)
    raise


def _fsync_folder(folder: str) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # some filesystems do not fsync folders; the file itself is synced
  finally:
    os.close(fd)


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def write_bytes(path, data: bytes, sync: bool = True) -> None:
  with atomic_write(path, "wb", sync) as f:
    f.write(data)


def write_json(path, value, sync: bool = True) -> None:
  with atomic_write(path, "w", sync) as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def save_npz(path, compressed: bool = False, sync: bool = True, **arrays) -> None:
  """np.savez(_compressed) to `path` (which should end in .npz), atomically."""
  with atomic_write(path, "wb", sync) as f:
    (np.savez_compressed if compressed else np.savez)(f, **arrays)


def save_npy(path, array: np.ndarray, sync: bool = True) -> None:
  with atomic_write(path, "wb", sync) as f:
    np.save(f, array)


def write_with(path, save: Callable[[io.IOBase], None], sync: bool = True) -> None:
  """save(file object) writes the content (PIL's Image.save, matplotlib's savefig, ...)."""
  with atomic_write(path, "wb", sync) as f:
    save(f)


def check_writable(folder, what: str = "outputs") -> None:
  """Creates `folder` if needed and writes and removes a probe file there, before any work: a
  folder that cannot be written is one WorkdirError line (an existing file in the way included)."""
  folder = os.fspath(folder)
  if is_remote(folder):
    probe_path = epath.Path(folder) / f".jdiff-write-probe-{os.getpid()}"
    try:
      probe_path.parent.mkdir(parents=True, exist_ok=True)  # folders: no-ops on object stores
      probe_path.write_bytes(b"jdiff")
      probe_path.unlink()
    except Exception as e:  # pylint: disable=broad-except  (each store raises its own types)
      raise WorkdirError(f"cannot write {what} to {folder}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return
  probe = os.path.join(folder, f".jdiff-write-probe-{os.getpid()}")
  try:
    os.makedirs(folder, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"jdiff")
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    _remove_quietly(probe)
    raise WorkdirError(f"cannot write {what} to {folder}: "
                       f"{WRITE_ERRNOS.get(e.errno) or e.strerror or e}") from None


def check_workdir(workdir) -> None:
  """A --workdir that exists and is not a folder is one line, in every mode."""
  workdir = os.fspath(workdir)
  if not is_remote(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a folder: give a folder (it is created "
                       "if missing)")


def load_npy_cache(path: str):
  """The memory-mapped .npy cache at path; None when absent or unreadable (damaged: a warning
  names it, and the caller makes it again)."""
  if not exists(path):
    return None
  try:
    array = (np.load(io.BytesIO(epath.Path(path).read_bytes())) if is_remote(path)
             else np.load(path, mmap_mode="r"))
  except (ValueError, OSError, EOFError) as e:
    logging.warning("cache %s is damaged (%s: %s); making it again", path, type(e).__name__, e)
    return None
  logging.info("using the cache %s (delete it to make it again)", path)
  return array


def load_npz_cache(path: str):
  """{name: array} of the .npz cache at path; None when absent or unreadable (damaged: a warning
  names it, and the caller makes it again)."""
  if not exists(path):
    return None
  try:
    arrays = load_npz(path)
  except Exception as e:  # pylint: disable=broad-except  (zip, zlib, pickle and shape errors)
    logging.warning("cache %s is damaged (%s: %s); making it again", path, type(e).__name__, e)
    return None
  logging.info("using the cache %s (delete it to make it again)", path)
  return arrays


# ----------------------------------------------------------------------------------------------
# A set of files replaced as a whole


def recover_folder(final) -> None:
  """Finishes or undoes a replace_folder that a kill interrupted: removes half-written new sets
  and, when the final folder is missing, puts the previous complete set back."""
  if is_remote(final):
    return  # nothing is staged on the store itself (_replace_remote_folder)
  final = os.path.abspath(os.fspath(final))
  parent, name = os.path.split(final)
  if not os.path.isdir(parent):
    return
  leftovers = sorted(os.listdir(parent))
  for entry in leftovers:
    if entry.startswith(name + PARTIAL) and _writer_is_gone(entry):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
  replaced = [entry for entry in leftovers if entry.startswith(name + REPLACED)]
  if replaced and not os.path.exists(final):
    os.replace(os.path.join(parent, replaced[-1]), final)
    logging.warning("%s: restored the previous complete set (a replacement was interrupted)", final)
    replaced = replaced[:-1]
  for entry in replaced:
    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def replace_folder(final) -> Iterator[str]:
  """`with replace_folder(out) as tmp: <write files into tmp>`: when the block ends, tmp becomes
  `out` and the previous `out` is deleted; until then `out` is untouched. An exception (disk
  full, Ctrl-C) removes tmp and leaves `out` as it was."""
  if is_remote(final):
    with _replace_remote_folder(os.fspath(final)) as staging:
      yield staging
    return
  final = os.path.abspath(os.fspath(final))
  recover_folder(final)
  parent, name = os.path.split(final)
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=name + _partial_tag(), dir=parent)
    os.chmod(staging, 0o755)
  except OSError as e:
    raise write_error(final, e) from None
  try:
    yield staging
    for root, _, names in os.walk(staging):
      _fsync_folder(root)
      del names
    old = None
    if os.path.exists(final):
      old = os.path.join(parent, f"{name}{REPLACED}{os.getpid()}")
      os.replace(final, old)
    os.replace(staging, final)
    _fsync_folder(parent)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except OSError as e:
    shutil.rmtree(staging, ignore_errors=True)
    recover_folder(final)
    raise write_error(final, e) from None
  except WorkdirError as e:  # a file of the set: name it where the user will look for it
    shutil.rmtree(staging, ignore_errors=True)
    recover_folder(final)
    raise WorkdirError(str(e).replace(staging, final) + f"; {final} is as it was") from None
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    recover_folder(final)
    raise


@contextlib.contextmanager
def _replace_remote_folder(final: str) -> Iterator[str]:
  """replace_folder on an object store: the set is made in a local folder, uploaded object by
  object (each appears whole), then the previous set's objects the new set lacks are deleted."""
  with tempfile.TemporaryDirectory(prefix="jdiff-staging-") as staging:
    yield staging
    target = epath.Path(final)
    target.mkdir(parents=True, exist_ok=True)
    new_names = set()
    for root, _, names in os.walk(staging):
      for name in names:
        relative = os.path.relpath(os.path.join(root, name), staging)
        new_names.add(relative)
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(root, name), "rb") as f:
          destination.write_bytes(f.read())
    for root, _, names in target.walk():
      for name in names:
        relative = os.path.relpath(os.fspath(root / name), final)
        if relative not in new_names:
          (root / name).unlink()


def remove_partials(folder) -> None:
  """Deletes the temporary files that a killed atomic_write left in folder (kill -9 gives no
  chance to clean up); the files under their final names are whole."""
  folder = os.fspath(folder)
  if is_remote(folder) or not os.path.isdir(folder):
    return
  for name in os.listdir(folder):
    if PARTIAL in name and os.path.isfile(os.path.join(folder, name)) and _writer_is_gone(name):
      _remove_quietly(os.path.join(folder, name))
