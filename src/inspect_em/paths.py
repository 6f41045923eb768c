"""Where inspect_em keeps its cache (prepared models) on disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_cache_dir

HOME_ENV = "INSPECT_EM_HOME"


def home() -> Path:
    """The cache root: ``$INSPECT_EM_HOME`` or the user's cache dir (``~/.cache/inspect_em``)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path(user_cache_dir("inspect_em"))


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` only if the block succeeds.

    A failure (or Ctrl-C) removes the temporary folder, so no half-written ``final`` ever exists.
    With ``overwrite`` an existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the tree the modes a plain mkdir/open would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _dirs, names in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in names:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def user_path(path: str | Path) -> Path:
    """A path the user typed, resolved against where they typed it.

    Inspect changes the working directory to a task or scorer file's folder while loading it
    (``inspect eval tasks/em_freeform.py -T vectors=vectors/...``), so a relative path that does
    not exist from there is tried against the shell's directory (``$PWD``) too.
    """
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    shell_dir = os.environ.get("PWD")
    if shell_dir and (Path(shell_dir) / path).exists():
        return Path(shell_dir) / path
    return path
