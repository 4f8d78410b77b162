"""Output folders that never mix runs (``decode``, ``tokenize`` and ``bench`` ``--out DIR``).

Every run records the files it wrote in ``DIR/.gramophone-files`` (JSON: the command and
the files, as paths relative to ``DIR``). A new run into ``DIR``:

- a folder that does not exist, or an empty one: is created and written;
- a folder gramophone wrote before (it holds ``.gramophone-files`` and only files listed
  there): first loses exactly those files, then is written, so no piece, WAV or plot of
  the previous run is left beside the new ones;
- a folder holding any file gramophone did not write: is refused with one line
  (:class:`OutputFolderError`) naming it; gramophone never deletes or mixes in a file it
  did not write.

The list is written before the first file (the names the run plans to write) and again at
the end (what is there), so even the files of an interrupted run are known to the next.
The name has no suffix, so ``check DIR`` and ``DIR/*.json`` never see it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from gramophone._files import atomic_write_bytes
from gramophone.errors import GramophoneError

__all__ = ["MANIFEST", "OutputFolder", "OutputFolderError", "claim_output_folder", "output_names"]

MANIFEST = ".gramophone-files"


class OutputFolderError(GramophoneError, ValueError):
    """An output folder cannot be used: not a folder, not writable, or holding files that
    gramophone did not write."""


def _files(root: Path) -> set[str]:
    """Every file (and link) under ``root`` but the manifest, as relative POSIX paths."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        names = filenames + [d for d in dirnames if (here / d).is_symlink()]
        found.update((here / n).relative_to(root).as_posix() for n in names)
    found.discard(MANIFEST)
    return found


def _listed(root: Path) -> set[str] | None:
    """The files the manifest lists, or ``None`` without a readable one."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return {f for f in files if f and not Path(f).is_absolute() and ".." not in Path(f).parts}


def _temp_of_listed(name: str, listed: set[str]) -> bool:
    """Whether ``name`` is a temporary file that an atomic write of a listed file left
    behind (a run killed mid-write): ``.NAME.*`` or ``.STEM.*`` in the same folder."""
    path = Path(name)
    if not path.name.startswith("."):
        return False
    parts = path.name[1:].split(".")
    heads = {".".join(parts[:i]) for i in range(1, len(parts))}
    return any(
        Path(f).parent == path.parent and (Path(f).name in heads or Path(f).stem in heads) for f in listed
    )


class OutputFolder:
    """A claimed output folder (see :func:`claim_output_folder`)."""

    def __init__(self, path: Path, command: str) -> None:
        self.path = path
        self.command = command

    def record(self, files: Iterable[str], *, complete: bool) -> None:
        """Write the manifest: ``files`` relative to the folder."""
        data = {"command": self.command, "complete": complete, "files": sorted(set(files))}
        try:
            atomic_write_bytes(self.path / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())
        except OSError as exc:
            raise OutputFolderError(f"{self.path}: cannot write into the folder ({exc.strerror})") from None

    def finish(self) -> None:
        """Record every file now in the folder (all of them this run's) as complete."""
        self.record(_files(self.path), complete=True)


def claim_output_folder(
    out: str | os.PathLike[str], command: str, planned: Iterable[str] = ()
) -> OutputFolder:
    """Make ``out`` ready for a new run of ``command`` (see the module's policy): create it,
    or remove the files of gramophone's previous run there; record ``planned`` (names
    relative to ``out``) as this run's before anything is written.

    Raises :class:`OutputFolderError` (one line) for a path that is not a folder, a folder
    that cannot be created or written, or one that holds files gramophone did not write.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputFolderError(f"{root}: not a folder (--out names the folder to write into)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        present = _files(root)
    except OSError as exc:
        raise OutputFolderError(f"{root}: cannot create the output folder ({exc.strerror})") from None
    ours = _listed(root) or set()
    foreign = sorted(f for f in present - ours if not _temp_of_listed(f, ours))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputFolderError(
            f"{root}: holds files gramophone did not write ({foreign[0]}{more}); write into a new or "
            "empty folder, or one gramophone wrote before (whose files it replaces)"
        )
    parents: set[Path] = set()
    try:
        for name in sorted(present):
            path = root / name
            path.unlink()
            parents.update(p for p in path.parents if root in p.parents)
    except OSError as exc:
        raise OutputFolderError(f"{root}: cannot remove {name}, of the last run ({exc.strerror})") from None
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    claimed = OutputFolder(root, command)
    claimed.record(planned, complete=False)
    return claimed


def output_names(inputs: Sequence[str]) -> list[str]:
    """Names (relative, without suffix) for the outputs of ``inputs``: each input's path
    relative to the deepest folder holding them all, so inputs from one folder keep their
    stems (``x.mid`` -> ``x``) and ``a/x.mid b/x.mid`` become ``a/x`` and ``b/x``.

    Raises :class:`OutputFolderError` when two inputs would still share a name
    (``x.mid`` and ``x.midi`` in one folder); give each file once.
    """
    paths = [Path(os.path.abspath(p)) for p in inputs]
    if not paths:
        return []
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    names = [p.with_suffix("").relative_to(common).as_posix() for p in paths]
    seen: dict[str, tuple[str, Path]] = {}
    for given, path, name in zip(inputs, paths, names, strict=True):
        first = seen.setdefault(name, (given, path))
        if first[1] != path:
            raise OutputFolderError(
                f"{first[0]} and {given} would both be written as {name}.json: rename one, or "
                "tokenize them into two folders"
            )
    return names
