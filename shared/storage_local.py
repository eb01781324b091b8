"""Storage in a local folder (development, tests, single-machine deployments)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from shared.storage_base import Storage, StorageError, StorageNotFound, StorageUnavailable, check_key

# The folder, not the key, is at fault: full, read-only, denied, failing disk, a file where the
# folder should be. Callers retry these or answer 503, as for S3 being down.
_ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENOTDIR,
        errno.ENOENT,
        errno.ESTALE,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EBUSY,
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ENODEV,
        errno.ENXIO,
    }
)


def _os_error(what: str, exc: OSError) -> StorageError:
    kind = StorageUnavailable if exc.errno in _ENVIRONMENT_ERRNOS else StorageError
    return kind(f"{what}: {exc}")


class LocalStorage(Storage):
    """Files under one folder; writes go to a temp file first so readers never see half an MP3."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.abspath(root))
        self.url = "file://" + str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # A symlink inside the root could still point outside it; resolve() exposes that.
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"storage key {key!r} escapes the storage root")
        return path

    def put(self, key, data, content_type=None):
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise _os_error(f"cannot write {key}", exc) from exc

    def get(self, key):
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(key) from None
        except OSError as exc:
            raise _os_error(f"cannot read {key}", exc) from exc

    def exists(self, key):
        return self._path(key).is_file()

    def delete(self, key):
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(f"cannot delete {key}", exc) from exc

    def list(self, prefix=""):
        if not self.root.is_dir():
            return []
        keys = []
        # Walk only the folder the prefix names ("audio/<id>/" looks at one folder, not all of them).
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):  # an unfinished write
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def local_path(self, key):
        return self._path(key)

    def ensure_ready(self):
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create {self.root}: {exc}") from exc

    def check(self):
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"{self.root} is missing or not writable")
