"""The ``.npz`` container: an atomic writer, and a reader that checks every size before it decompresses.

Writing goes to a temporary file in the target's directory, which is flushed, synced to disk and then
renamed over the target (``os.replace``, atomic on POSIX and Windows): a save that fails for any reason
(a full disk, a file-size limit, Ctrl-C) leaves the previous file byte-identical and no temporary file
behind. A symbolic link at the target is itself replaced: the file it pointed to is never written.

Reading never trusts the archive. Before zipfile parses the zip directory (into objects of about nine
times its size), the directory's end record must announce at most ``MAX_ENTRIES`` entries and a directory
of at most ``MAX_DIRECTORY_BYTES``. :class:`Archive` then lists the entries from the directory, reads each
entry's ``.npy`` header (a few hundred bytes) and refuses the file, before decompressing any data, when an
entry is not a plain array (object arrays would need pickle), when a header is malformed (a negative
dimension, a string dtype of itemsize 0), when the arrays' sizes add up to more than ``max_bytes``, or
when the directory is malformed. Array data are decompressed only by :meth:`Archive.read`,
which reads exactly the bytes the header announced: a deflated entry that expands to gigabytes costs no
more memory than its header's shape.
"""
import math
import os
import struct
import tempfile
import zipfile

import numpy
from numpy.lib import format as npy_format

MAX_ENTRIES = 100_000
MAX_DIRECTORY_BYTES = 16 * 2 ** 20  # the zip directory zipfile parses whole, about 10x its size in objects
MAX_META_BYTES = 64 * 2 ** 20
_END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, entries, size, offset, comment
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_ALLOWED_KINDS = "biufcUS"  # bool, integers, floats, complex, str, bytes: never object, void or datetime


class FileError(ValueError):
    """A numpy-moe file that cannot be read: the message names the file and what is wrong."""


class Archive:
    """The entries of an ``.npz`` file with their headers, opened for bounded reading.

    Parameters
    ----------
    path : the file. max_bytes : the most bytes the arrays of the file may take in memory, all together.

    Attributes
    ----------
    headers : {entry name without ``.npy``: (shape, dtype)} for every entry.
    n_bytes : {entry name: bytes of the array in memory}.
    max_bytes : as given (loading checks what else a file makes it allocate against it).
    """

    def __init__(self, path, max_bytes):
        self.path, self.max_bytes = path, max_bytes
        if os.path.isdir(path):
            raise FileError(f"{path} is a directory, not a numpy-moe file")
        self._file = open(path, "rb")  # FileNotFoundError and PermissionError stay what they are
        try:
            self._open(max_bytes)
        except BaseException:
            self._file.close()
            raise

    def _error(self, what):
        return FileError(f"{self.path} is not a valid numpy-moe .npz file: {what}")

    def _open(self, max_bytes):
        self._check_directory()
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:
            raise self._error(f"not a zip archive ({err}); truncated or corrupt?") from err
        if len(infos) > MAX_ENTRIES:
            raise self._error(f"{len(infos)} entries, more than the {MAX_ENTRIES} allowed")
        self._infos, self.headers, self.n_bytes = {}, {}, {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or name[:-4] in self._infos:
                raise self._error(f"entry {name!r} is not a uniquely named .npy array")
            self._infos[name[:-4]] = info
        total = 0
        for name, info in self._infos.items():
            shape, dtype = self._header(name, info)
            size = math.prod(shape) * dtype.itemsize
            total += size
            if total > max_bytes:
                raise FileError(f"{self.path}: its arrays take more than max_bytes={max_bytes} bytes in memory "
                                f"(entry {name!r} alone is {shape} {dtype}, {size} bytes); refusing to load it. "
                                "Pass a larger max_bytes if you trust the file")
            self.headers[name], self.n_bytes[name] = (shape, dtype), size

    def _check_directory(self):
        """Refuse a zip directory of more than MAX_ENTRIES entries or MAX_DIRECTORY_BYTES bytes from its end
        record alone, before zipfile parses the whole directory into objects (about ten times its size in
        memory: a file of millions of empty entries would cost gigabytes before the entry count was seen).

        The end record is found where zipfile finds it (the last 22 bytes, else the last signature in the
        final 64 KiB); its Zip64 form is read when the record points to one. A file with no end record is
        left to zipfile, which refuses it.
        """
        fp = self._file
        try:
            entries, directory = self._directory_size(fp)
        finally:
            fp.seek(0)
        if entries > MAX_ENTRIES:
            raise self._error(f"{entries} entries, more than the {MAX_ENTRIES} allowed")
        if directory > MAX_DIRECTORY_BYTES:
            raise self._error(f"a zip directory of {directory} bytes, more than the {MAX_DIRECTORY_BYTES} allowed")

    @staticmethod
    def _directory_size(fp):
        """(entries, directory bytes) that the end record of the zip in ``fp`` announces; (0, 0) without one."""
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
        tail_start = max(0, size - _END.size - 0xFFFF)
        fp.seek(tail_start)
        tail = fp.read()
        at = len(tail) - _END.size
        if not (at >= 0 and tail[at:at + 4] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00"):
            at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _END.size > len(tail):
            return 0, 0
        record = _END.unpack_from(tail, at)
        entries, directory = record[4], record[5]
        locator_at = at - _END64_LOCATOR.size
        if locator_at >= 0 and tail[locator_at:locator_at + 4] == b"PK\x06\x07":
            offset = _END64_LOCATOR.unpack_from(tail, locator_at)[2]
            data = b""
            if offset + _END64.size <= size:  # a crafted offset past the end (up to 2**64) is not seekable
                fp.seek(offset)
                data = fp.read(_END64.size)
            if len(data) == _END64.size and data[:4] == b"PK\x06\x06":
                end64 = _END64.unpack(data)
                entries, directory = end64[7], end64[8]
        return entries, directory

    def _header(self, name, info):
        """(shape, dtype) from the ``.npy`` header of one entry, without reading its data."""
        try:
            with self._zip.open(info) as fp:
                version = npy_format.read_magic(fp)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(fp, max_header_size=10_000)
                elif version == (2, 0):
                    shape, _, dtype = npy_format.read_array_header_2_0(fp, max_header_size=10_000)
                else:
                    raise ValueError(f".npy format version {version} is not supported")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
                SyntaxError, TypeError) as err:
            raise self._error(f"entry {name!r} has no readable array header ({err})") from err
        if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject or dtype.fields is not None:
            raise self._error(f"entry {name!r} has dtype {dtype}; only plain numeric and string arrays are "
                              "allowed (never pickled objects)")
        if dtype.itemsize == 0:  # <U0 / |S0: any number of elements in 0 bytes (NumPy never writes these)
            raise self._error(f"entry {name!r} has dtype {dtype.str}, whose elements take no bytes; strings "
                              "of at least one character are expected")
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):  # would count negative bytes against max_bytes
            raise self._error(f"entry {name!r} has shape {shape}, with a negative dimension")
        return shape, dtype

    def read(self, name):
        """The array ``name`` (already checked against ``max_bytes``), decompressed and CRC-checked."""
        try:
            with self._zip.open(self._infos[name]) as fp:
                array = npy_format.read_array(fp, allow_pickle=False, max_header_size=10_000)
                if fp.read(1):
                    raise ValueError("data beyond the array its header describes")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as err:
            raise self._error(f"entry {name!r} cannot be read ({err}); truncated or corrupt?") from err
        return array

    def read_meta(self):
        """The ``__meta__`` entry as a string (at most MAX_META_BYTES)."""
        if "__meta__" not in self.headers:
            raise FileError(f"{self.path} is an .npz file but not a numpy-moe model: it has no __meta__ entry")
        shape, dtype = self.headers["__meta__"]
        if shape != () or dtype.kind != "U" or self.n_bytes["__meta__"] > MAX_META_BYTES:
            raise self._error(f"__meta__ is {shape} {dtype}; expected one string of at most {MAX_META_BYTES} bytes")
        return str(self.read("__meta__"))

    def close(self):
        self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_atomic(path, arrays):
    """Write ``arrays`` ({entry name: NumPy array}) as an ``.npz`` at ``path``, atomically.

    The new file gets the mode of the file it replaces, or the default mode for new files (0666 less the
    umask). On any exception, KeyboardInterrupt included, the temporary file is removed and the exception
    re-raised; ``path`` is then exactly what it was.
    """
    replace_together([(path, lambda f: numpy.savez(f, **arrays))])


def replace_together(files):
    """Write several files, then rename them into place in the given order (put an index last).

    files : [(path, write)], ``write(f)`` filling a binary file. Every file is written to a temporary file
    beside its target and synced before any target is replaced, so a failed write (a full disk, Ctrl-C)
    leaves every target as it was and no temporary file behind; only the renames, which do not write
    data, come after.
    """
    staged = []
    try:
        for path, write in files:
            staged.append(_stage(path, write))
        while staged:
            tmp, path = staged[0]
            os.replace(tmp, path)
            staged.pop(0)
            _sync_directory(os.path.dirname(os.path.abspath(path)))
    finally:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _stage(path, write):
    """(temporary file, path): ``write(f)`` into a synced temporary file beside ``path``, of ``path``'s mode."""
    path = os.fsdecode(path)  # a bytes path too: the temporary file's name is built from str parts
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; pass a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):  # mkstemp's error named the temporary file, not the one asked for
        raise FileNotFoundError(f"{path}: the directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return tmp, path


def _mode_for(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
