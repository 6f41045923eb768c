"""What may be written where: the cache root, user paths, names, and outputs that never replace
what inspect_em did not write.

Every command with ``--out`` goes through :func:`check_output` before it loads a model, and
writes through :func:`atomic_output` (a folder) or :func:`atomic_file` (one file):

- An output is written to a hidden temporary sibling and renamed into place only when complete;
  an error, Ctrl-C or SIGTERM (:func:`cleanup_on_sigterm`) removes the temporary copy, and
  temporaries left by a killed process (``.NAME.tmp-<pid>-*`` holding our ``.inspect_em-tmp``
  marker) are swept on the next run. A replaced output is first renamed to ``.NAME.old-<pid>-*``;
  a run that finds one of ours with no ``NAME`` (a kill between the two renames) restores it.
  Nothing without our marker is ever swept, whatever its name.
- A folder Inspect fills as it goes (``eval_set`` logs of a sweep) cannot be renamed into place:
  :func:`check_live_folder` / :func:`claim_live_folder` give it the same rules (empty, or marked as
  this command's with the same settings, or ``--force``).
- Each output carries its own marker (``.inspect_em.json`` in a folder, ``.NAME.inspect_em.json``
  beside a file) naming the command, its settings and the files it wrote.
- An existing output may be replaced only when its marker says the same command wrote it, it holds
  nothing else, and either the settings are the same (re-running the command) or ``--force`` is
  given. A folder or file without our marker is never replaced, and an output never goes into or
  over a folder that holds one of the command's inputs.
"""

from __future__ import annotations

import datetime as dt
import errno
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
TMP_MARKER = ".inspect_em-tmp"  # inside every temporary folder of ours (only those are swept)
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
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise InspectEmError(f"{path}: cannot resolve this path ({type(e).__name__}: a symlink loop?); "
                             "choose another path") from None


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
    except OSError as e:
        full = _disk_full(folder, e)
        if full is not None:
            raise full from None
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
    sweep_stale(out.parent, out.name)  # an output of ours left renamed by a killed run comes back first
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


def _ours(entry: Path, marker: str) -> bool:
    """A real folder (not a link) holding our ``marker`` file."""
    return entry.is_dir() and not entry.is_symlink() and (entry / marker).is_file() and \
        ((marker == TMP_MARKER) or _read_marker(entry / marker) is not None)


def sweep_stale(folder: Path, name: str) -> list[Path]:
    """Tidy what processes that are gone left of ``name`` in ``folder``: remove our temporaries
    (``.NAME.tmp-<pid>-*`` holding :data:`TMP_MARKER`); restore our replaced output
    (``.NAME.old-<pid>-*`` holding :data:`MARKER`) when ``NAME`` is missing, else remove it.
    Entries without our marker are left alone. Returns the entries removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    final = folder / name
    for entry in sorted(folder.iterdir()):
        match = _TMP_RE.match(entry.name)
        if not match or match["name"] != name or _alive(int(match["pid"])):
            continue
        if entry.name.startswith(f".{name}.old-") and _ours(entry, MARKER):
            if not final.exists() and not final.is_symlink():
                os.replace(entry, final)  # killed between the two renames: the previous output comes back
            else:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif entry.name.startswith(f".{name}.tmp-") and _ours(entry, TMP_MARKER):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _temporary_folder(final: Path) -> Path:
    """A hidden temporary sibling of ``final``, marked as ours from the start."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as e:
        raise _disk_full(final, e) or e from None
    try:
        (tmp / TMP_MARKER).write_text(json.dumps({"tool": "inspect_em", "pid": os.getpid()}), encoding="utf-8")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(final, e)
        if full is not None:
            raise full from None
        raise
    return tmp


def _disk_full(out: Path, error: BaseException) -> InspectEmError | None:
    """One line for a full disk (or quota) while writing ``out``; the earlier output is untouched.
    Libraries that write through their own I/O (safetensors) report it only in their message."""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error):
        return InspectEmError(f"{out}: the disk is full (no space left on device); nothing was replaced, any "
                              "earlier output is intact: free space and re-run")
    return None


def check_live_folder(folder: str | Path, *, command: str, config: dict[str, Any], force: bool = False) -> Path:
    """Refuse a folder a command would fill as it goes (an ``eval_set`` log folder) unless it is
    missing, empty, or marked as this command's (:func:`claim_live_folder`) with the same settings
    (resuming) or ``force``. Inspect writes ``logs.json`` and ``eval-set.json`` there, so a user's
    folder must never be used. One-line errors, before any model loads."""
    folder = Path(folder).expanduser()
    _resolved(folder)
    flag = f"inspect-em {command}"
    parent = _resolved(folder).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not _can_create_in(parent):
        raise InspectEmError(f"{folder}: cannot write here ({parent} is not writable); choose another --out")
    if not folder.exists() and not folder.is_symlink():
        return folder
    if not folder.is_dir() or folder.is_symlink():
        raise InspectEmError(f"{folder}: exists and is not a log folder of {flag}; choose another --out")
    if not any(folder.iterdir()):
        return folder
    marker = _read_marker(folder / MARKER)
    if marker is None or marker.get("command") != command or not marker.get("live"):
        raise InspectEmError(f"{folder}: exists and was not written by {flag} (its evals write logs.json and "
                             "eval-set.json there); choose another --out")
    if _canonical(marker.get("config") or {}) == _canonical(config) or force:
        return folder
    raise InspectEmError(f"{folder}: holds the logs of an earlier {flag} with other settings; "
                         "pass --force to add this run's logs to it, or choose another --out")


def claim_live_folder(folder: str | Path, *, command: str, config: dict[str, Any], force: bool = False) -> Path:
    """Check ``folder`` (:func:`check_live_folder`), create it and mark it as this command's."""
    folder = check_live_folder(folder, command=command, config=config, force=force)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({**_stamp(command, config), "live": True}, indent=2), encoding="utf-8")
    return folder


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
    tmp = _temporary_folder(final)
    try:
        yield tmp
        check()
        (tmp / TMP_MARKER).unlink()
        (tmp / MARKER).write_text(json.dumps({**_stamp(command, config), "files": _files_of(tmp)}, indent=2))
        _default_permissions(tmp)
        _swap(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(final, e)
        if full is not None:
            raise full from None
        raise


def _swap(tmp: Path, final: Path) -> None:
    """``tmp`` → ``final``; an existing ``final`` (ours: checked) goes to ``.NAME.old-<pid>-*`` first,
    removed once ``tmp`` is in place (a later run restores it if we die in between)."""
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
    folder = _temporary_folder(final)  # the file is written inside a marked temporary folder
    tmp = folder / final.name
    try:
        yield tmp
        check()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        marker = {**_stamp(command, config), "sha256": sha256_file(tmp)}
        _marker_of(final, "file").write_text(json.dumps(marker, indent=2))
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(folder, ignore_errors=True)
        full = _disk_full(final, e)
        if full is not None:
            raise full from None
        raise
    shutil.rmtree(folder, ignore_errors=True)


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
