"""The run's output folder: one writer at a time, and never a folder of committed files (stdlib only: the
command line checks both before torch or transformers load)."""

from __future__ import annotations

import os

from align.errors import UsageError

LOCK = ".align.lock"


def committed_files(folder: str) -> list[str]:
    """Files under ``folder`` that git tracks (a recipe's committed model, say); [] outside a git work tree or
    without git."""
    import subprocess

    if not os.path.isdir(folder):
        return []
    try:
        proc = subprocess.run(
            ["git", "-C", folder, "ls-files", "--", "."], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.split() if proc.returncode == 0 else []


def check_not_committed(output_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse to write training output over files committed to git, unless asked (or resuming there)."""
    if overwrite or resuming:
        return
    tracked = committed_files(output_dir)
    if tracked:
        shown = ", ".join(tracked[:3]) + (f" and {len(tracked) - 3} more" if len(tracked) > 3 else "")
        raise UsageError(
            f"output_dir {output_dir} holds files committed to git ({shown}); training would overwrite "
            "them: give another --output_dir, or --overwrite_output_dir true to replace them on purpose."
        )


class OutputLock:
    """One writer per ``output_dir``: an exclusive ``flock`` on ``OUTPUT_DIR/.align.lock``, held by the main
    process for the whole run. A second run into the same folder is refused in one line naming the holder
    (pid, host, start time, written into the file). The kernel drops the lock when its process dies, so a
    lock left by a killed run on this host is simply taken over; on a shared filesystem the lock is the
    filesystem's (NFSv4 releases a dead client's locks when its lease expires)."""

    def __init__(self, output_dir: str):
        self.output_dir, self.fd, self.created = output_dir, None, False

    def acquire(self) -> OutputLock:
        import fcntl
        import socket
        import time

        self.created = not os.path.isdir(self.output_dir)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that wrote nothing yet"
            os.close(fd)
            raise UsageError(
                f"output_dir {self.output_dir} is in use by another run ({holder}); wait for it or stop "
                "it, or give another --output_dir."
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {stamp}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock; a folder this lock created and nothing else wrote to (a run refused before its first
        step) is removed, so a refused run leaves nothing behind."""
        if self.fd is None:
            return
        os.close(self.fd)  # closing drops the flock; the file stays, stale content is harmless
        self.fd = None
        try:
            if self.created and os.listdir(self.output_dir) == [LOCK]:
                os.remove(os.path.join(self.output_dir, LOCK))
                os.rmdir(self.output_dir)
        except OSError:
            pass
