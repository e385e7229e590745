"""Writing output files so that no interrupt, full disk or crash loses or mixes work.

* One file: written to a temporary name in the same directory, flushed, given
  the permissions the umask gives any new file, then renamed over the target
  (:func:`atomic_write_bytes`). A reader sees the old file or the new one.
* A tokenizer directory holds one *set* of files (``model.json``,
  ``tokenizer.json``, ``vocab.json`` + ``merges.txt``, ``tokenizer.tiktoken``)
  and a manifest naming each file's size and SHA-256 (:func:`write_set`).
  Writing a set replaces the whole set: files of the set's names that the new
  set does not hold are removed, so a directory never holds ``model.json`` of
  one model and ``tokenizer.json`` of another.

  - When the directory does not exist, or holds nothing but a set, the new set
    is built in a hidden sibling directory and swapped in by two renames (the
    old set is kept under a hidden name until the new one is in place).
  - When it holds other files too (``--out .``), the files are written under
    temporary names, a manifest marked ``writing`` goes first, the files are
    renamed into place, and the final manifest goes last. An interruption in
    between leaves the ``writing`` manifest, and loaders refuse the directory
    with a message instead of reading a mixed set (:func:`check_set`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "gpubpe-files.json"

# Every name a tokenizer set may hold: writing a set removes those it lacks.
SET_NAMES = ("model.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer.tiktoken")

def umask() -> int:
    """The process umask. Read from /proc where there is one: ``os.umask``
    can only read it by setting it, which races with threads creating files."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, 'w')`` would give a new file (mkstemp gives 0600)."""
    return 0o666 & ~umask()


def check_writable(directory: str | os.PathLike, what: str = "output directory") -> Path:
    """Fail now, before hours of work, if ``directory`` cannot be created and written.

    Creates the directory's missing parents (as the final write would) and a
    temporary file in the nearest existing ancestor. Raises ``OSError``
    subclasses with a message that names the path and the fix.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"{what} {str(d)!r} is a file: give a directory")
    probe_in = d if d.exists() else d.parent
    ancestor = probe_in
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot create {what} {str(d)!r}: {str(ancestor)!r} is not a directory")
    try:
        probe_in.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gpubpe-probe.", dir=probe_in)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PermissionError(
            f"cannot write {what} {str(d)!r} ({e.strerror or e}): choose a directory you can write to"
        ) from None
    return d


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = _write_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
    except BaseException:
        _unlink(tmp)
        raise
    return Path(tmp)


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, on disk before this returns, with the umask's mode."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, file_mode())


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def _digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest(files: dict[str, bytes], state: str) -> bytes:
    doc = {"format": "gpubpe-files", "version": 1, "state": state,
           "files": {name: _digest(data) for name, data in files.items()}}
    return json.dumps(doc, indent=1).encode("utf-8")


def write_set(directory: str | os.PathLike, files: dict[str, bytes], names: tuple[str, ...] = SET_NAMES) -> list[Path]:
    """Write ``{file name: bytes}`` into ``directory`` as one set (see the module doc).

    ``names``: every file the kind of set may hold (a tokenizer's by default;
    word counts have their own); those the new set lacks are removed.
    Returns the paths written, in the order given. The bytes are all made
    before this is called, so an error while building an export writes nothing.
    """
    d = Path(directory)
    unknown = [n for n in files if n not in names]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of this set's file names ({', '.join(names)})")
    check_writable(d)
    own = set(names) | {MANIFEST}
    swappable = not d.exists() or (
        d.resolve() != Path.cwd().resolve() and not d.is_mount() and all(p.name in own for p in d.iterdir())
    )
    if not (swappable and _swap_in(d, files)):
        _write_in_place(d, files, names)
    return [d / n for n in files]


def _swap_in(d: Path, files: dict[str, bytes]) -> bool:
    """Build the set beside ``d`` and rename it into place; False (nothing
    changed) where the directory cannot be renamed."""
    d.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{d.name}.new-", dir=d.parent))
    try:
        for name, data in files.items():
            _write_synced(stage / name, data)
        _write_synced(stage / MANIFEST, _manifest(files, "complete"))
        os.chmod(stage, 0o777 & ~umask())
        if d.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{d.name}.old-", dir=d.parent))
            os.rmdir(old)  # a free name for the rename, next to d
            try:
                os.rename(d, old)
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
                return False
            try:
                os.rename(stage, d)
            except BaseException:
                os.rename(old, d)  # put the old set back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, d)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return True


def _write_in_place(d: Path, files: dict[str, bytes], names: tuple[str, ...]) -> None:
    temps: dict[str, Path] = {}
    try:
        for name, data in files.items():
            temps[name] = _write_temp(d, name, data)
        atomic_write_bytes(d / MANIFEST, _manifest(files, "writing"))
        for name in names:
            if name not in files:
                _unlink(d / name)
        for name, tmp in temps.items():
            os.replace(tmp, d / name)
        temps.clear()
        atomic_write_bytes(d / MANIFEST, _manifest(files, "complete"))
    finally:
        for tmp in temps.values():
            _unlink(tmp)


class MixedSetError(ValueError):
    """A tokenizer directory whose files are not one complete set."""


def check_set(directory: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, bytes]:
    """Refuse a directory whose manifest says its set is incomplete or mixed;
    return the bytes of the files checked, so that nothing is read twice.

    ``names``: the files about to be read (default: every file the manifest
    lists); a name the manifest does not list must not exist. A directory
    without a manifest (written by another tool) passes, and nothing is returned.
    """
    d = Path(directory)
    path = d / MANIFEST
    if not path.exists():
        return {}
    fix = f"train or export into {str(d)!r} again, or delete it"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        listed = doc["files"]
        state = doc["state"]
    except (ValueError, KeyError, TypeError, OSError):
        raise MixedSetError(f"{path} is unreadable: {fix}") from None
    if state != "complete":
        raise MixedSetError(f"the tokenizer in {str(d)!r} was being written when that run stopped: {fix}")
    out: dict[str, bytes] = {}
    for name in (listed if names is None else names):
        want = listed.get(name)
        if want is None:
            if (d / name).exists():
                raise MixedSetError(f"{d / name} is not part of the set in {path}: {fix}")
            continue
        try:
            data = (d / name).read_bytes()
        except FileNotFoundError:
            raise MixedSetError(f"{d / name} is missing from the set: {fix}") from None
        if _digest(data) != want:
            raise MixedSetError(f"{d / name} was changed or belongs to another model than {path} says: {fix}")
        out[name] = data
    return out


def read_checked(path: str | os.PathLike) -> bytes:
    """Read one file of a tokenizer or counts directory, refusing a mixed or
    unfinished set (checked and read in one pass)."""
    path = Path(path)
    data = check_set(path.parent, [path.name]).get(path.name)
    return data if data is not None else path.read_bytes()
