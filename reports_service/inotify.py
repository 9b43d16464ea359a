"""Linux inotify through ctypes: a file descriptor that becomes readable when a file in one
directory is written, so the event loop can learn of another process's commit without a timer.

No thread and no wake-up while nothing is written: the loop watches the descriptor
(``loop.add_reader``) like a socket. Elsewhere (another OS, a filesystem or a container that
refuses a watch) :class:`DirectoryWatch` raises OSError and the caller polls instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

IN_MODIFY = 0x00000002
IN_Q_OVERFLOW = 0x00004000  # the kernel's queue overflowed: events were lost
IN_IGNORED = 0x00008000  # the watch is gone (the directory was removed or unmounted)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_BYTES = 65536


class DirectoryWatch:
    """An inotify instance watching one directory for files written in it (IN_MODIFY)."""

    def __init__(self, directory: str) -> None:
        libc = _libc()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1", directory)
        if libc.inotify_add_watch(fd, os.fsencode(directory), IN_MODIFY) < 0:
            error = _error("inotify_add_watch", directory)
            os.close(fd)
            raise error
        self.fd = fd
        self.gone = False  # True once the watch has ended: nothing more will be reported

    def written(self) -> set[str] | None:
        """Names of the files written since the last call; None when events were lost (any
        file may have been written) or the watch ended (see ``gone``)."""
        names: set[str] | None = set()
        while True:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & IN_IGNORED:
                    self.gone = True
                if mask & (IN_Q_OVERFLOW | IN_IGNORED):
                    names = None
                elif names is not None:
                    names.add(os.fsdecode(data[offset : offset + length].rstrip(b"\0")))
                offset += length

    def close(self) -> None:
        os.close(self.fd)


def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, f"no inotify on {sys.platform}")
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except AttributeError:  # NOTE: a C library without it (an old or unusual libc)
        raise OSError(errno.ENOSYS, "the C library has no inotify") from None
    return libc


def _error(call: str, directory: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}", directory)
