"""A pickle reader that can only build data: numpy arrays, builtin containers and checkpoint metadata.

Paddle writes `.distcp`, `.metadata` and `.pdparams` files with pickle. `pickle.load` on such a file
runs whatever callable the file names, so a file from an untrusted source could run code. This
module is a small pickle virtual machine of its own: it implements the opcodes those files use and
resolves only the globals in `_ALLOWED` to harmless stand-ins; any other global, and every opcode it
does not know, is refused with `UnsafePickleError` before anything is called.

It also keeps big payloads on disk: a byte string outside a pickle frame (pickle protocol 4 writes
every large array's bytes that way) becomes a `FileSpan` (offset, length), and the array built from
it a `StoredArray` that reads its bytes only when asked. Indexing a multi-gigabyte `.distcp` file
reads a few kilobytes.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .errors import CheckpointError, UnsafePickleError
from .paddle_metadata import STAND_INS

# Payloads at least this long, outside a frame, stay on disk.
LAZY_BYTES = 1 << 16


@dataclass(frozen=True)
class FileSpan:
    offset: int
    length: int


class StoredArray:
    """A numpy array as pickled by numpy (`_reconstruct` + `__setstate__`), its bytes maybe on disk."""

    __slots__ = ("data", "dtype", "fortran", "path", "shape", "span")

    def __init__(self, path: str):
        self.path = path
        self.shape: tuple[int, ...] = ()
        self.dtype: np.dtype | None = None
        self.fortran = False
        self.data: bytes | None = None
        self.span: FileSpan | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def _setstate(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"{self.path}: malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise UnsafePickleError(f"{self.path}: malformed numpy array shape {shape!r}")
        if not isinstance(dtype, _DTypeStub):
            raise UnsafePickleError(f"{self.path}: malformed numpy array dtype")
        self.shape, self.dtype, self.fortran = shape, dtype.resolve(self.path), bool(fortran)
        if isinstance(raw, FileSpan):
            self.span = raw
        elif isinstance(raw, (bytes, bytearray)):
            self.data = bytes(raw)
        else:
            raise UnsafePickleError(f"{self.path}: numpy arrays of Python objects are not allowed")
        length = raw.length if isinstance(raw, FileSpan) else len(raw)
        if length != self.nbytes:
            raise CheckpointError(
                f"{self.path}: array of shape {shape} {self.dtype} holds {length} bytes, "
                f"expected {self.nbytes}"
            )

    def read_into(self, out: np.ndarray) -> None:
        """Fill `out` (C-contiguous, this array's shape, storage dtype) with this array's values."""
        if self.fortran or self.dtype.byteorder == ">":
            out[...] = self.read()
            return
        buf = memoryview(out.reshape(-1).view(np.uint8))
        if self.data is not None:
            buf[:] = self.data
            return
        read_span(self.path, self.span.offset, buf)

    def read(self) -> np.ndarray:
        if self.data is not None:
            flat = np.frombuffer(self.data, dtype=self.dtype).copy()
        else:
            flat = np.empty(self.nbytes // self.dtype.itemsize, dtype=self.dtype)
            read_span(self.path, self.span.offset, memoryview(flat.view(np.uint8)))
        array = flat.reshape(self.shape, order="F" if self.fortran else "C")
        if self.fortran:
            array = np.ascontiguousarray(array)
        if self.dtype.byteorder == ">":
            array = array.astype(self.dtype.newbyteorder("="))
        return array


def read_span(path: str, offset: int, buf: memoryview) -> None:
    """Read len(buf) bytes at `offset` straight into `buf` (no intermediate copy)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pread_into(fd, path, buf, offset)
    finally:
        os.close(fd)


def pread_into(fd: int, path: str, buf: memoryview, offset: int) -> None:
    """Fill `buf` from the open file `fd` at `offset`; a short file is a truncated checkpoint."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise CheckpointError(f"{path}: file is truncated (data ends at byte {offset + done})")
        done += n


class _DTypeStub:
    """np.dtype(...) and its __setstate__ (byte order), resolved only to plain numeric dtypes."""

    def __init__(self, spec: Any):
        self.spec, self.byteorder = spec, "="

    def _setstate(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or any(x is not None for x in state[2:5]):
            raise UnsafePickleError("structured numpy dtypes are not allowed")
        self.byteorder = state[1]

    def resolve(self, path: str) -> np.dtype:
        if not isinstance(self.spec, str) or not self.spec or self.spec[0] not in "biufc":
            raise UnsafePickleError(f"{path}: numpy dtype {self.spec!r} is not allowed")
        dt = np.dtype(self.spec)
        if self.byteorder in ("<", ">"):
            dt = dt.newbyteorder(self.byteorder)
        return dt


class _Global:
    """What a pickle's GLOBAL opcode resolves to: a name we know how to call or build safely."""

    def __init__(self, name: str, kind: str, target: Any = None):
        self.name, self.kind, self.target = name, kind, target

    def __repr__(self) -> str:
        return self.name


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # protocol 2 pickles bytes as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("_codecs.encode only decodes latin1 byte strings")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    # protocol 2 pickles b"" as bytes(); anything else (bytes(10**12)) is refused
    if args:
        raise UnsafePickleError("bytes() with arguments is not allowed")
    return b""


def _allowed() -> dict[tuple[str, str], _Global]:
    table = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[module, "_reconstruct"] = _Global("numpy _reconstruct", "reconstruct")
        table[module, "scalar"] = _Global("numpy scalar", "scalar")
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5
        table[module, "_frombuffer"] = _Global("numpy _frombuffer", "frombuffer")
    table["numpy", "ndarray"] = _Global("numpy.ndarray", "ndarray")
    table["numpy", "dtype"] = _Global("numpy.dtype", "dtype")
    table["_codecs", "encode"] = _Global("_codecs.encode", "call", _latin1_encode)
    for name, fn in (
        ("tuple", tuple),
        ("list", list),
        ("set", set),
        ("frozenset", frozenset),
        ("bytes", _empty_bytes),
    ):
        for module in ("builtins", "__builtin__"):  # protocol 2 spells it __builtin__
            table[module, name] = _Global(name, "call", fn)
    table["collections", "OrderedDict"] = _Global("OrderedDict", "class", OrderedDict)
    for module, names in STAND_INS.items():
        for name, cls in names.items():
            table[module, name] = _Global(f"{module}.{name}", "class", cls)
    return table


_ALLOWED = _allowed()


class _Mark:
    pass


_MARK = _Mark()


class _Stream:
    """Bytes from a frame held in memory, or straight from the file; big payloads become spans."""

    def __init__(self, path: str, f):
        self.path, self.f = path, f
        self.size = os.fstat(f.fileno()).st_size
        self.frame: bytes | None = None
        self.pos = 0

    def _truncated(self) -> CheckpointError:
        return CheckpointError(f"{self.path}: file is truncated or not a pickle")

    def read(self, n: int) -> bytes:
        if self.frame is not None:
            if self.pos == len(self.frame):
                self.frame = None
            elif self.pos + n > len(self.frame):
                raise self._truncated()
            else:
                data = self.frame[self.pos : self.pos + n]
                self.pos += n
                return data
        data = self.f.read(n)
        if len(data) != n:
            raise self._truncated()
        return data

    def readline(self) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            if len(line) > 1000:
                raise UnsafePickleError(f"{self.path}: malformed GLOBAL opcode")
            line += self.read(1)
        return line[:-1]

    def payload(self, n: int) -> bytes | FileSpan:
        if self.frame is None and n >= LAZY_BYTES:
            offset = self.f.tell()
            if offset + n > self.size:
                raise CheckpointError(
                    f"{self.path}: file is truncated ({self.size} bytes, data runs to {offset + n})"
                )
            self.f.seek(n, os.SEEK_CUR)
            return FileSpan(offset, n)
        return self.read(n)

    def start_frame(self, n: int) -> None:
        if self.frame is not None and self.pos != len(self.frame):
            raise UnsafePickleError(f"{self.path}: new pickle frame inside a frame")
        self.frame, self.pos = None, 0
        self.frame = self.read(n)


def load(path: str) -> Any:
    """Unpickle `path`, allowing only data (see the module docstring)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; `with` would hide the OSError message)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    with f:
        try:
            return _Machine(path, _Stream(path, f)).run()
        except (IndexError, TypeError, ValueError, KeyError, AttributeError, RecursionError):
            # a hostile or corrupt file that breaks the machine's assumptions; nothing has run
            raise UnsafePickleError(f"{path}: malformed pickle") from None


class _Machine:
    def __init__(self, path: str, stream: _Stream):
        self.path, self.s = path, stream
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}

    def _pop_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise UnsafePickleError(f"{self.path}: malformed pickle (no MARK)")

    def _global(self, module: Any, name: Any) -> _Global:
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickleError(f"{self.path}: malformed GLOBAL")
        g = _ALLOWED.get((module, name))
        if g is None:
            raise UnsafePickleError(
                f"{self.path}: refusing to load '{module}.{name}' "
                "(a checkpoint holds only numpy arrays and Paddle checkpoint metadata)"
            )
        return g

    def _reduce(self, fn: Any, args: Any) -> Any:
        if not isinstance(fn, _Global) or not isinstance(args, tuple):
            raise UnsafePickleError(f"{self.path}: malformed REDUCE")
        if fn.kind == "reconstruct":
            if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
                raise UnsafePickleError(f"{self.path}: _reconstruct of something else than ndarray")
            return StoredArray(self.path)
        if fn.kind == "frombuffer":
            if len(args) != 4 or not isinstance(args[1], _DTypeStub) or args[3] not in ("C", "F"):
                raise UnsafePickleError(f"{self.path}: malformed numpy buffer")
            array = StoredArray(self.path)
            array._setstate((args[2], args[1], args[3] == "F", args[0]))
            return array
        if fn.kind == "dtype":
            return _DTypeStub(args[0] if args else None)
        if fn.kind == "scalar":
            if len(args) != 2 or not isinstance(args[0], _DTypeStub):
                raise UnsafePickleError(f"{self.path}: malformed numpy scalar")
            raw = args[1]
            if not isinstance(raw, bytes):
                raise UnsafePickleError(f"{self.path}: numpy object scalars are not allowed")
            return np.frombuffer(raw, dtype=args[0].resolve(self.path))[0]
        if fn.kind == "call":
            if any(isinstance(a, (_Global, StoredArray, _DTypeStub)) for a in args):
                raise UnsafePickleError(f"{self.path}: {fn.name} called on a non-data argument")
            return fn.target(*args)
        if fn.kind == "class" and fn.target is OrderedDict:
            return OrderedDict(*args)
        raise UnsafePickleError(f"{self.path}: refusing to call {fn.name}")

    def _newobj(self, cls: Any, args: Any) -> Any:
        if not isinstance(cls, _Global) or cls.kind != "class" or not isinstance(args, tuple):
            raise UnsafePickleError(f"{self.path}: refusing to instantiate {cls!r}")
        if cls.target is OrderedDict:
            return OrderedDict()
        if args:
            raise UnsafePickleError(f"{self.path}: unexpected constructor arguments for {cls.name}")
        return object.__new__(cls.target)

    def _build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, (StoredArray, _DTypeStub)):
            obj._setstate(state)
            return
        if type(obj) in _STAND_IN_CLASSES:
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict):
                raise UnsafePickleError(f"{self.path}: malformed state for {type(obj).__name__}")
            known = {f.name for f in fields(obj)}
            for f in fields(obj):
                object.__setattr__(obj, f.name, f.default)
            for key, value in state.items():
                if key in known:
                    object.__setattr__(obj, key, value)
            return
        if isinstance(obj, OrderedDict) and state is None:
            return
        raise UnsafePickleError(f"{self.path}: refusing to set the state of {type(obj).__name__}")

    def run(self) -> Any:
        s, stack, memo = self.s, self.stack, self.memo
        unpack = struct.unpack
        while True:
            op = s.read(1)
            if op == b"\x80":  # PROTO
                if s.read(1)[0] > 5:
                    raise UnsafePickleError(f"{self.path}: unsupported pickle protocol")
            elif op == b"\x95":  # FRAME
                s.start_frame(unpack("<Q", s.read(8))[0])
            elif op == b".":  # STOP
                if len(stack) != 1:
                    raise UnsafePickleError(f"{self.path}: malformed pickle (stack at STOP)")
                return stack.pop()
            elif op == b"(":
                stack.append(_MARK)
            elif op == b"}":
                stack.append({})
            elif op == b"]":
                stack.append([])
            elif op == b")":
                stack.append(())
            elif op == b"\x8f":  # EMPTY_SET
                stack.append(set())
            elif op == b"t":
                stack.append(tuple(self._pop_mark()))
            elif op == b"\x85":
                stack[-1] = (stack[-1],)
            elif op == b"\x86":
                stack[-2:] = [tuple(stack[-2:])]
            elif op == b"\x87":
                stack[-3:] = [tuple(stack[-3:])]
            elif op == b"l":  # LIST
                stack.append(self._pop_mark())
            elif op == b"d":  # DICT
                items = self._pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif op == b"\x91":  # FROZENSET
                stack.append(frozenset(self._pop_mark()))
            elif op == b"a":  # APPEND
                value = stack.pop()
                self._container(stack[-1], list).append(value)
            elif op == b"e":  # APPENDS
                items = self._pop_mark()
                self._container(stack[-1], list).extend(items)
            elif op == b"s":  # SETITEM
                value, key = stack.pop(), stack.pop()
                self._container(stack[-1], dict)[self._key(key)] = value
            elif op == b"u":  # SETITEMS
                items = self._pop_mark()
                target = self._container(stack[-1], dict)
                for i in range(0, len(items), 2):
                    target[self._key(items[i])] = items[i + 1]
            elif op == b"\x90":  # ADDITEMS
                items = self._pop_mark()
                self._container(stack[-1], set).update(self._key(k) for k in items)
            elif op == b"N":
                stack.append(None)
            elif op == b"\x88":
                stack.append(True)
            elif op == b"\x89":
                stack.append(False)
            elif op == b"J":
                stack.append(unpack("<i", s.read(4))[0])
            elif op == b"K":
                stack.append(s.read(1)[0])
            elif op == b"M":
                stack.append(unpack("<H", s.read(2))[0])
            elif op == b"\x8a":  # LONG1
                stack.append(int.from_bytes(s.read(s.read(1)[0]), "little", signed=True))
            elif op == b"\x8b":  # LONG4
                n = unpack("<i", s.read(4))[0]
                if not 0 <= n <= 64:
                    raise UnsafePickleError(f"{self.path}: integer too large")
                stack.append(int.from_bytes(s.read(n), "little", signed=True))
            elif op == b"G":
                stack.append(unpack(">d", s.read(8))[0])
            elif op == b"\x8c":
                stack.append(self._text(s.read(s.read(1)[0])))
            elif op == b"X":
                stack.append(self._text(s.read(unpack("<I", s.read(4))[0])))
            elif op == b"\x8d":
                stack.append(self._text(s.read(unpack("<Q", s.read(8))[0])))
            elif op == b"C":
                stack.append(s.read(s.read(1)[0]))
            elif op == b"B":
                stack.append(s.payload(unpack("<I", s.read(4))[0]))
            elif op == b"\x8e" or op == b"\x96":
                stack.append(s.payload(unpack("<Q", s.read(8))[0]))
            elif op == b"\x94":  # MEMOIZE
                memo[len(memo)] = stack[-1]
            elif op == b"q":
                memo[s.read(1)[0]] = stack[-1]
            elif op == b"r":
                memo[unpack("<I", s.read(4))[0]] = stack[-1]
            elif op == b"h":
                stack.append(self._memo(s.read(1)[0]))
            elif op == b"j":
                stack.append(self._memo(unpack("<I", s.read(4))[0]))
            elif op == b"c":  # GLOBAL
                module = s.readline().decode("ascii", "replace")
                name = s.readline().decode("ascii", "replace")
                stack.append(self._global(module, name))
            elif op == b"\x93":  # STACK_GLOBAL
                name, module = stack.pop(), stack.pop()
                stack.append(self._global(module, name))
            elif op == b"R":
                args, fn = stack.pop(), stack.pop()
                stack.append(self._reduce(fn, args))
            elif op == b"\x81":  # NEWOBJ
                args, cls = stack.pop(), stack.pop()
                stack.append(self._newobj(cls, args))
            elif op == b"\x92":  # NEWOBJ_EX
                kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
                if kwargs:
                    raise UnsafePickleError(f"{self.path}: unexpected keyword arguments")
                stack.append(self._newobj(cls, args))
            elif op == b"b":  # BUILD
                state = stack.pop()
                self._build(stack[-1], state)
            elif op == b"\x98":  # READONLY_BUFFER: our payloads are never written to
                pass
            elif op == b"0":
                stack.pop()
            elif op == b"1":
                self._pop_mark()
            elif op == b"2":
                stack.append(stack[-1])
            else:
                raise UnsafePickleError(
                    f"{self.path}: pickle opcode {op!r} is not allowed in a checkpoint"
                )

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise UnsafePickleError(f"{self.path}: malformed string") from None

    def _memo(self, index: int) -> Any:
        try:
            return self.memo[index]
        except KeyError:
            raise UnsafePickleError(f"{self.path}: malformed pickle (memo)") from None

    def _container(self, obj: Any, kind: type) -> Any:
        if not isinstance(obj, kind):
            raise UnsafePickleError(f"{self.path}: malformed pickle (expected a {kind.__name__})")
        return obj

    def _key(self, key: Any) -> Any:
        if isinstance(key, (StoredArray, _DTypeStub, _Global, list, dict, set)):
            raise UnsafePickleError(f"{self.path}: malformed pickle (unhashable key)")
        return key


_STAND_IN_CLASSES = frozenset(c for names in STAND_INS.values() for c in names.values())
