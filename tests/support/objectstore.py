"""An object store behind Beam's ``FileSystems`` API, in memory, for tests (scheme ``memstore``).

It has the semantics of GCS and S3 that matter to the sinks and the retention jobs: keys, not
directories (``has_dirs()`` is False, ``mkdirs`` does nothing); a listing is a prefix scan; an
object appears whole when its upload is closed; a rename is a copy followed by a delete (so a
crash between the two leaves both). ``OBJECTS`` is the store itself; tests clear it.
"""

from __future__ import annotations

import io
import threading

from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem

__all__ = ["LOCK", "OBJECTS", "ObjectStore"]

OBJECTS: dict[str, bytes] = {}
LOCK = threading.Lock()


class _Upload(io.BytesIO):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def close(self) -> None:
        if not self.closed:
            with LOCK:
                OBJECTS[self.path] = self.getvalue()  # an object appears whole, on close
        super().close()


class ObjectStore(FileSystem):
    """Flat keys behind Beam's FileSystems API, like GCS or S3."""

    @classmethod
    def scheme(cls):
        return "memstore"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        with LOCK:
            items = [(k, len(v)) for k, v in OBJECTS.items() if k.startswith(dir_or_prefix)]
        for key, size in items:
            yield FileMetadata(key, size, 0.0)

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        return _Upload(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        with LOCK:
            return io.BytesIO(OBJECTS[path])

    def copy(self, source_file_names, destination_file_names):
        with LOCK:
            for src, dst in zip(source_file_names, destination_file_names, strict=True):
                OBJECTS[dst] = OBJECTS[src]

    def rename(self, source_file_names, destination_file_names):
        missing = {
            (s, d): KeyError(s)
            for s, d in zip(source_file_names, destination_file_names, strict=True)
            if s not in OBJECTS
        }
        if missing:
            raise BeamIOError("rename failed", missing)
        self.copy(source_file_names, destination_file_names)  # two steps, as on GCS
        self.delete(source_file_names)

    def exists(self, path):
        return path in OBJECTS

    def size(self, path):
        return len(OBJECTS[path])

    def last_updated(self, path):
        return 0.0

    def checksum(self, path):
        return str(len(OBJECTS[path]))

    def metadata(self, path):
        return FileMetadata(path, len(OBJECTS[path]), 0.0)

    def delete(self, paths):
        errors = {}
        with LOCK:
            for path in paths:
                doomed = [k for k in OBJECTS if k == path or k.startswith(path.rstrip("/") + "/")]
                if not doomed:
                    errors[path] = FileNotFoundError(path)
                for key in doomed:
                    del OBJECTS[key]
        if errors:
            raise BeamIOError("delete failed", errors)
