"""Writing output files all at once or not at all.

Every tool writes through ``write_files``: each file goes to a temporary name
in its target folder first, then existing files are moved aside, the new ones
renamed into place and the old ones dropped. On any error the old files come
back, and new files and folders are removed, so a failed run never leaves a
half-written output behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Tuple, Union

from .errors import InputError

Files = Union[Dict[Path, bytes], Iterable[Tuple[Path, bytes]]]


def write_files(files: Files):
    """Write every file or none.

    Each file goes to a temporary name first; then existing files are moved
    aside, the new ones renamed into place, and the old ones dropped. On any
    error the old files come back, and new files and folders are removed.
    """
    files = {Path(k): v for k, v in (files.items() if isinstance(files, dict) else files)}
    for path in files:
        if path.is_dir():
            raise InputError(f"cannot write {path}: it is a folder")
    created_dirs: List[Path] = []
    temps, backups, placed = [], [], []
    done = False
    try:
        for path in sorted(Path(p) for p in files):
            missing = [d for d in [path.parent, *path.parent.parents] if not d.exists()]
            for d in reversed(missing):
                d.mkdir()
                created_dirs.append(d)
            tmp = path.with_name(f".{path.name}.qcc-tmp")
            tmp.write_bytes(files[path])
            temps.append((tmp, path))
        for tmp, path in temps:
            if path.exists() or path.is_symlink():
                backup = path.with_name(f".{path.name}.qcc-old")
                os.replace(path, backup)
                backups.append((backup, path))
            os.replace(tmp, path)
            placed.append(path)
        done = True
    except OSError as e:
        raise InputError(f"cannot write {e.filename or 'the output files'}: {e.strerror or e}") from None
    finally:
        if done:
            for backup, _ in backups:
                _unlink(backup)
        else:
            for path in placed:
                _unlink(path)
            for backup, path in backups:
                try:
                    os.replace(backup, path)
                except OSError:
                    pass
            for tmp, _ in temps:
                _unlink(tmp)
            for d in reversed(created_dirs):
                try:
                    d.rmdir()
                except OSError:
                    pass


def _unlink(path: Path):
    try:
        path.unlink()
    except OSError:
        pass
