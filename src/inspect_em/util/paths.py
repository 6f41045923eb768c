"""What may be written where: the cache root, user paths, names, and outputs that never replace
what inspect_em did not write.

Every command with ``--out`` goes through :func:`check_output` before it loads a model, and
writes through :func:`atomic_output` (a folder) or :func:`atomic_file` (one file):

- An output is written to a hidden temporary sibling and renamed into place only when complete;
  an error, Ctrl-C or SIGTERM (:func:`cleanup_on_sigterm`) removes the temporary copy, and
  temporaries left by a killed process (``.NAME.tmp-<pid>-*``) are swept on the next run.
- Each output carries its own marker (``.inspect_em.json`` in a folder, ``.NAME.inspect_em.json``
  beside a file) naming the command, its settings and the files it wrote.
- An existing output may be replaced only when its marker says the same command wrote it, it holds
  nothing else, and either the settings are the same (re-running the command) or ``--force`` is
  given. A folder or file without our marker is never replaced, and an output never goes into or
  over a folder that holds one of the command's inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from inspect_em.errors import InspectEmError

HOME_ENV = "INSPECT_EM_HOME"
MARKER = ".inspect_em.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[^/]*$")


def home() -> Path:
    """The cache root: ``$INSPECT_EM_HOME`` or the user's cache dir (``~/.cache/inspect_em``)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path(user_cache_dir("inspect_em"))


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


def check_name(name: str, what: str = "name") -> str:
    """A name used as a path component (trait, label, run): ``[A-Za-z0-9._-]+``, not ``.``/``..``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise InspectEmError(f"{what} {name!r} is not a valid name: use letters, digits, '.', '_' and '-' only")
    return name


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _marker_of(out: Path, kind: str) -> Path:
    return out / MARKER if kind == "dir" else out.with_name(f".{out.name}{MARKER}")


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "inspect_em" else None


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``, by trying (``os.access`` says yes to root even
    where nothing can be created, e.g. under /proc or on a read-only mount)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".inspect_em-probe-", delete=True)  # noqa: SIM115
    except OSError:
        return False
    probe.close()
    return True


def check_output(
    out: str | Path,
    *,
    command: str,
    config: dict[str, Any],
    inputs: Sequence[str | Path] = (),
    force: bool = False,
    kind: str = "dir",
    legacy_marker: str | None = None,
) -> Path:
    """Refuse an output location that would lose data; returns ``out`` (unchanged, not resolved).

    Checked before any work: ``out`` is not, does not contain, and is not inside any input; its
    parent is writable; an existing ``out`` was written by ``command`` (its marker; or, for
    outputs of older versions, ``legacy_marker``), holds nothing else, and is replaced only when
    ``config`` is the same or ``force`` is set.

    Args:
        out: the folder (``kind="dir"``) or file (``kind="file"``) to write.
        command: the command's name as the user types it (``extract``, ``compare`` ...).
        config: the settings that make a re-run "the same command" (JSON-serialisable).
        inputs: files and folders the command reads.
        force: replace an earlier output of ``command`` made with other settings.
        legacy_marker: a file that marks a folder written by an older inspect_em.

    Raises:
        InspectEmError: one line naming the path and what to do.
    """
    out = Path(out).expanduser()
    target = _resolved(out)
    flag = f"inspect-em {command}"
    for item in inputs:
        inp = _resolved(item)
        if _is_within(inp, target):
            raise InspectEmError(f"{out}: this --out holds the input {item}; choose another --out")
        if inp.is_dir() and _is_within(target, inp):
            raise InspectEmError(f"{out}: this --out is inside the input folder {item}; choose another --out")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not _can_create_in(parent):
        raise InspectEmError(f"{out}: cannot write here ({parent} is not writable); choose another --out")
    if not out.exists() and not out.is_symlink():
        return out
    if kind == "dir":
        if not out.is_dir() or out.is_symlink():
            raise InspectEmError(f"{out}: exists and is not a folder written by {flag}; choose another --out")
        if not any(out.iterdir()):
            return out
        marker = _read_marker(out / MARKER)
        if marker is None and legacy_marker and _legacy(out / legacy_marker):
            marker = {"command": command, "config": None, "files": _files_of(out)}
        if marker is None or marker.get("command") != command:
            raise InspectEmError(f"{out}: exists and was not written by {flag}; choose another --out "
                                 "(inspect_em never replaces what it did not write)")
        extra = sorted(set(_files_of(out)) - set(marker.get("files") or []))
        if extra:
            raise InspectEmError(f"{out}: holds files {flag} did not write (e.g. {extra[0]}); choose another --out")
    else:
        if not out.is_file() or out.is_symlink():
            raise InspectEmError(f"{out}: exists and is not a file written by {flag}; choose another --out")
        marker = _read_marker(_marker_of(out, "file"))
        if marker is None or marker.get("command") != command or marker.get("sha256") != sha256_file(out):
            raise InspectEmError(f"{out}: exists and was not written by {flag} (or was edited since); "
                                 "choose another --out")
    if marker.get("config") is not None and _canonical(marker["config"]) == _canonical(config):
        return out  # re-running the same command
    if force:
        return out
    raise InspectEmError(f"{out}: holds an earlier output of {flag} with other settings; "
                         "pass --force to replace it")


def _legacy(path: Path) -> bool:
    """A marker file of an older inspect_em: it names the tool in its name or its text."""
    if not path.is_file():
        return False
    if "inspect_em" in path.name:
        return True
    try:
        return "inspect_em" in path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path, name: str) -> list[Path]:
    """Remove our own temporaries of ``name`` in ``folder`` left by processes that are gone."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TMP_RE.match(entry.name)
        if match and match["name"] == name and not _alive(int(match["pid"])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _stamp(command: str, config: dict[str, Any]) -> dict[str, Any]:
    from inspect_em._version import __version__

    return {"tool": "inspect_em", "command": command, "config": json.loads(_canonical(config)),
            "inspect_em_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


@contextmanager
def atomic_output(
    out: str | Path,
    *,
    command: str,
    config: dict[str, Any],
    inputs: Sequence[str | Path] = (),
    force: bool = False,
    legacy_marker: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder; when the block succeeds, mark it and rename it to ``out``.

    The checks of :func:`check_output` run before the block and again just before the rename (the
    folder may have changed during a long run). A failure, Ctrl-C or SIGTERM removes the
    temporary folder, so no half-written ``out`` ever exists.
    """
    final = Path(out).expanduser()

    def check() -> None:
        check_output(final, command=command, config=config, inputs=inputs, force=force, legacy_marker=legacy_marker)

    check()
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        check()
        (tmp / MARKER).write_text(json.dumps({**_stamp(command, config), "files": _files_of(tmp)}, indent=2))
        _default_permissions(tmp)
        _swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{tmp.name[-8:]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_file(
    out: str | Path,
    *,
    command: str,
    config: dict[str, Any],
    inputs: Sequence[str | Path] = (),
    force: bool = False,
) -> Iterator[Path]:
    """Yield a temporary file path; when the block succeeds, rename it to ``out`` and write its
    marker (``.NAME.inspect_em.json`` beside it, with the file's sha256)."""
    final = Path(out).expanduser()

    def check() -> None:
        check_output(final, command=command, config=config, inputs=inputs, force=force, kind="file")

    check()
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent, final.name)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        check()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        marker = {**_stamp(command, config), "sha256": sha256_file(tmp)}
        _marker_of(final, "file").write_text(json.dumps(marker, indent=2))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _default_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the tree the modes a plain mkdir/open would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _dirs, names in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in names:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` and temporary-output cleanup runs."""


def cleanup_on_sigterm() -> None:
    """Turn SIGTERM (what job schedulers send) into :class:`Terminated` in the main thread."""

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, handler)
