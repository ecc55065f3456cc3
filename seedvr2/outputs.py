"""The command line's output files: checked before any work, written atomically.

`plan_outputs` decides every file a run will write (one video, one image, or a numbered image
sequence) and refuses, before anything is loaded, an unknown format, a missing or unwritable
folder, a folder given as the file, an existing file without `overwrite`, and any output that
is the input itself (by `os.path.samefile`: any spelling, hard or symbolic link), even with
`overwrite`.

`AtomicOutputs` writes each file under a temporary name beside its target,
`.<stem>.seedvr2-partial-<pid><suffix>` (hidden, clearly named, the same folder so the final
rename is atomic, the same suffix so encoders pick the format), and renames them into place only
in `commit()` (Ctrl-C and SIGTERM are held back until the last rename, so an image sequence is
never left half renamed). Until then nothing exists at the targets and a previous file there is intact; an
exception, Ctrl-C or SIGTERM (which the CLI turns into an exception) removes the temporary
files. Only SIGKILL can leave one behind, under that name and never at the target. One more
exception, by design: without `overwrite`, a file that appears at a target while the run writes
is kept, and so is the run's result, under its temporary name(s), which the error names.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from .files import move_no_overwrite
from .video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError, image_names, is_image_path, is_video_path

log = logging.getLogger("seedvr2")

PARTIAL_MARK = ".seedvr2-partial-"
_SHOWN = 3  # existing numbered files named in a message


@dataclass(frozen=True)
class OutputPlan:
    """Every file a run writes (`targets`), and whether it writes a video."""

    path: Path
    targets: tuple[Path, ...]
    video: bool
    overwrite: bool


def plan_outputs(input_path: str | os.PathLike, output: str | os.PathLike, *, frames: int | None,
                 input_is_video: bool, overwrite: bool) -> OutputPlan:
    """Check the output of a run of `frames` frames; raises MediaError naming -o and the problem.

    `frames=None`: the count is not known yet (the input is unread); the format and the folder
    are checked, and the file names too unless a video goes to a numbered image sequence.
    """
    path = Path(output)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise MediaError(f"-o {path} is a folder; give a file name inside it, e.g. "
                         f"{path / ('out' + ('.mp4' if input_is_video else '.png'))}")
    if not (is_image_path(path) or is_video_path(path)):
        raise MediaError(
            f"-o {path}: unknown output format {suffix or '(no extension)'!r}; use a video extension "
            f"({', '.join(VIDEO_EXTENSIONS)}) or an image one ({', '.join(IMAGE_EXTENSIONS)})")
    video = is_video_path(path)
    if video and not input_is_video:
        raise MediaError(f"-o {path}: the input is an image, so the output is an image too; use .png (or .jpg, "
                         ".webp, ...)")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise MediaError(f"-o {path}: the folder {folder} {what}; create it first or choose another -o")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MediaError(f"-o {path}: the folder {folder} is not writable")
    if video or frames == 1 or (frames is None and not input_is_video):
        targets: tuple[Path, ...] = (path,)
    else:
        targets = tuple(image_names(path, frames)) if frames else ()
    existing = []
    for target in targets:
        if target.is_dir():
            raise MediaError(f"-o {path}: {target} (an output file of this run) is a folder")
        if _same_file(input_path, target):
            raise MediaError(f"-o {target} is the input file {input_path} (the same file under another name or "
                             "link); writing it would destroy the input. Choose another -o")
        if target.exists() or target.is_symlink():
            existing.append(target)
    if existing and not overwrite:
        if len(targets) == 1:
            raise MediaError(f"{existing[0]} exists; pass -y/--overwrite to replace it or choose another -o")
        names = ", ".join(str(p.name) for p in existing[:_SHOWN]) + (", ..." if len(existing) > _SHOWN else "")
        raise MediaError(f"{len(existing)} of the {len(targets)} numbered output files exist ({names}); pass "
                         "-y/--overwrite to replace them or choose another -o")
    return OutputPlan(path, targets, video, overwrite)


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist (yet)


class AtomicOutputs:
    """Temporary files beside the targets of `plan`, renamed into place by `commit()` only.

    Use as a context manager; leaving it without `commit()` (an error, an interrupt) removes
    every temporary file.
    """

    def __init__(self, plan: OutputPlan):
        self.plan = plan
        self.temps = [t.with_name(f".{t.stem}{PARTIAL_MARK}{os.getpid()}{t.suffix}") for t in plan.targets]
        self._committed = False
        self._keep = False  # a commit stopped by a file that appeared at a target keeps the result

    @property
    def temp(self) -> Path:
        """The temporary file of a single-file output."""
        return self.temps[0]

    def commit(self) -> list[Path]:
        """Move every finished temporary file to its target; returns the targets.

        Ctrl-C and SIGTERM are held back until every file is in place (POSIX, main thread): an
        image sequence is never left half renamed (some new frames, some old or missing)."""
        with _signals_held():
            return self._commit()

    def _commit(self) -> list[Path]:
        pairs = list(zip(self.temps, self.plan.targets))
        for i, (temp, target) in enumerate(pairs):
            if not temp.exists():
                raise MediaError(f"{target}: nothing was written (no temporary file {temp.name})")
            if self.plan.overwrite:
                os.replace(temp, target)
                continue
            try:
                _link_no_overwrite(temp, target)
            except _Appeared as exc:
                self._keep = True  # the message points at the temporary files: they must stay
                rest = len(pairs) - i - 1
                raise MediaError(str(exc) + (f" (and {rest} more frame(s) of this run under the same kind of name)"
                                             if rest else "")) from None
        self._committed = True
        return list(self.plan.targets)

    def discard(self) -> None:
        for temp in self.temps:
            try:
                temp.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the temporary file %s (%s)", temp, exc.strerror)

    def __enter__(self) -> "AtomicOutputs":
        """Create the temporary files now (empty): the names are taken, and visible, from the start."""
        try:
            for temp in self.temps:
                with open(temp, "wb"):
                    pass
        except BaseException:
            self.discard()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if not self._committed and not self._keep:
            self.discard()


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM arriving inside are raised again on leaving (held, not lost). Python runs
    signal handlers in the main thread only, so holding is done by swapping the handlers there
    (a signal mask would not do: the process's other threads, torch's, would take the signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])  # now handled as it would have been (Ctrl-C: KeyboardInterrupt)


class _Appeared(MediaError):
    """A file appeared at a target during the run (no --overwrite): it is kept, and so is ours."""


def _link_no_overwrite(temp: Path, target: Path) -> None:
    """Put `temp` at `target` unless a file appeared there meanwhile (then keep both and say so)."""
    if not move_no_overwrite(temp, target):
        raise _Appeared(f"{target} appeared while this run was writing; it was kept and the result is at "
                        f"{temp}")


__all__ = ["AtomicOutputs", "OutputPlan", "PARTIAL_MARK", "plan_outputs"]
