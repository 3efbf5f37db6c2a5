"""Header checks of PLY, OFF and PCD files, run before open3d reads them.

open3d sizes its arrays from a file's header and fills them from the body; when the body is
shorter (a cut-off copy) it reports an error yet returns every declared vertex, the missing ones
uninitialised memory, so one broken file decodes differently from one try to the next. Here the
header is parsed and the body measured against it (the byte size a binary body must have, the
values or lines a text body must hold); a body that is short, or longer than declared, raises
``MalformedFileError`` and open3d never sees it. What passes is read in full, so what open3d
returns depends on the bytes alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class MalformedFileError(ValueError):
    """A file whose body does not match its header; the message is the reason ("truncated: 10 of
    1839 vertices")."""


PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
PLY_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}  # → byte order
_BLANK = b" \t\r\n"


def _plural(name: str) -> str:
    return {"vertex": "vertices"}.get(name, name + "s")


def _truncated(rows: int, count: int, name: str) -> MalformedFileError:
    return MalformedFileError(f"truncated: {rows} of {count} {_plural(name)}")


@dataclass(frozen=True)
class PlyProperty:
    name: str
    dtype: str  # numpy type code without byte order ("f4"); of the items, for a list
    count_dtype: str | None = None  # a list property: the type of its length prefix


@dataclass(frozen=True)
class PlyElement:
    name: str
    count: int
    properties: tuple[PlyProperty, ...]


@dataclass(frozen=True)
class PlyHeader:
    format: str  # a key of PLY_FORMATS
    elements: tuple[PlyElement, ...]
    body_start: int  # byte offset of the first body byte


def parse_ply_header(data: bytes) -> PlyHeader:
    """A PLY file's header → its format, elements (name, count, properties) and body offset."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise MalformedFileError("corrupt PLY header: no 'ply' … 'end_header'")
    newline = data.find(b"\n", end)
    body_start = len(data) if newline < 0 else newline + 1
    fmt, elements = None, []
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
                if fmt not in PLY_FORMATS:
                    raise MalformedFileError(f"corrupt PLY header: format {fmt!r} "
                                             f"(expects {', '.join(PLY_FORMATS)})")
            elif words[0] == "element":
                count = int(words[2])
                if count < 0:
                    raise ValueError(count)
                elements.append(PlyElement(words[1], count, ()))
            elif words[0] == "property" and elements:
                kinds = words[2:4] if words[1] == "list" else words[1:2]
                if any(k not in PLY_TYPES for k in kinds):
                    raise MalformedFileError(f"corrupt PLY header: property type in {line.strip()!r}")
                prop = (PlyProperty(words[4], PLY_TYPES[words[3]], PLY_TYPES[words[2]]) if words[1] == "list"
                        else PlyProperty(words[2], PLY_TYPES[words[1]]))
                last = elements[-1]
                elements[-1] = PlyElement(last.name, last.count, last.properties + (prop,))
            else:
                raise ValueError(line)
        except (IndexError, ValueError) as err:
            if isinstance(err, MalformedFileError):
                raise
            raise MalformedFileError(f"corrupt PLY header: line {line.strip()[:80]!r}") from err
    if fmt is None:
        raise MalformedFileError("corrupt PLY header: no format line")
    return PlyHeader(fmt, tuple(elements), body_start)


def _binary_rows(data: bytes, offset: int, element: PlyElement, order: str) -> tuple[int, int]:
    """(complete rows, offset after them) of a binary element starting at ``offset``."""
    sizes = [np.dtype(p.dtype).itemsize for p in element.properties]
    if not any(p.count_dtype for p in element.properties):  # fixed-size rows
        stride = sum(sizes)
        if stride == 0:
            return element.count, offset
        rows = min(element.count, (len(data) - offset) // stride)
        return rows, offset + rows * stride
    # rows with lists: when every list has the first row's length (triangles), one strided check
    layout, at, row_end = [], offset, offset
    for prop, size in zip(element.properties, sizes, strict=True):
        if prop.count_dtype:
            count_type = np.dtype(order + prop.count_dtype)
            if at + count_type.itemsize > len(data):
                break
            length = int(np.frombuffer(data, count_type, 1, at)[0])
            layout.append((at - offset, count_type, length))
            at += count_type.itemsize + max(length, 0) * size
        else:
            at += size
    else:
        row_end = at
    stride = row_end - offset
    if element.count and stride and offset + element.count * stride <= len(data) and all(
            length >= 0 for _, _, length in layout) and all(
            (np.ndarray((element.count,), count_type, data, offset + pos, (stride,)) == length).all()
            for pos, count_type, length in layout):
        return element.count, offset + element.count * stride
    for row in range(element.count):  # lists of varying length: walk the rows
        for prop, size in zip(element.properties, sizes, strict=True):
            if prop.count_dtype:
                count_type = np.dtype(order + prop.count_dtype)
                if offset + count_type.itemsize > len(data):
                    return row, offset
                length = int(np.frombuffer(data, count_type, 1, offset)[0])
                if length < 0:
                    raise MalformedFileError(f"corrupt PLY body: {element.name} {row} has a list of length {length}")
                offset += count_type.itemsize + length * size
            else:
                offset += size
            if offset > len(data):
                return row, offset
    return element.count, offset


def _ascii_rows(tokens: list[bytes], at: int, element: PlyElement) -> tuple[int, int]:
    """(complete rows, token index after them) of an ascii element starting at token ``at``."""
    if not any(p.count_dtype for p in element.properties):
        width = len(element.properties)
        rows = element.count if width == 0 else min(element.count, (len(tokens) - at) // width)
        try:
            np.array(tokens[at:at + rows * width], dtype=np.float64)
        except ValueError as err:
            raise MalformedFileError(f"corrupt PLY body: a {element.name} value is not a number ({err})") from err
        return rows, at + rows * width
    for row in range(element.count):
        for prop in element.properties:
            if at >= len(tokens):
                return row, at
            if prop.count_dtype:
                try:
                    length = int(tokens[at])
                    if length < 0:
                        raise ValueError(length)
                except ValueError as err:
                    raise MalformedFileError(f"corrupt PLY body: {element.name} {row} list length "
                                             f"{tokens[at][:20]!r}") from err
                at += length
            at += 1
        if at > len(tokens):
            return row, at
    return element.count, at


def check_ply(data: bytes) -> None:
    """Every element the header declares is in the body, in full, and nothing follows."""
    header = parse_ply_header(data)
    order = PLY_FORMATS[header.format]
    if order:
        offset = header.body_start
        for element in header.elements:
            rows, offset = _binary_rows(data, offset, element, order)
            if rows < element.count:
                raise _truncated(rows, element.count, element.name)
        rest = data[offset:]
    else:
        body = data[header.body_start:]
        tokens, at = body.split(), 0
        if body and body[-1] not in _BLANK:  # rply reads a value up to the blank after it: cut inside one
            tokens = tokens[:-1]
        for element in header.elements:
            rows, at = _ascii_rows(tokens, at, element)
            if rows < element.count:
                raise _truncated(rows, element.count, element.name)
        rest = b" ".join(tokens[at:])
    if rest.strip(_BLANK):
        raise MalformedFileError(f"header/body mismatch: {len(rest)} bytes after the "
                                 f"{', '.join(f'{e.count} {_plural(e.name)}' for e in header.elements)} "
                                 "the header declares")


def _text_lines(data: bytes) -> list[list[bytes]]:
    """A text file's lines as words, blank lines and ``#`` comments left out."""
    return [ln.split() for ln in data.splitlines() if ln.strip() and not ln.lstrip().startswith(b"#")]


def off_counts(lines: list[list[bytes]]) -> tuple[int, int, list[list[bytes]]]:
    """An OFF file's words per line → (vertex count, face count, the lines after the counts)."""
    if not lines or not lines[0][0].endswith(b"OFF"):
        raise MalformedFileError("corrupt OFF header: no OFF line")
    if b"BINARY" in lines[0]:
        raise MalformedFileError("binary OFF is not supported")
    counts, body = (lines[0][1:], lines[1:]) if len(lines[0]) > 1 else ((lines[1:2] or [[]])[0], lines[2:])
    try:
        vertices, faces = int(counts[0]), int(counts[1])
        if vertices < 0 or faces < 0:
            raise ValueError(counts)
    except (IndexError, ValueError) as err:
        raise MalformedFileError("corrupt OFF header: expects vertex, face and edge counts") from err
    return vertices, faces, body


def check_off(data: bytes) -> None:
    """The header's vertex lines (≥ 3 numbers each) and face lines (n, then n indices) are all
    there, and nothing follows them. A short last line is a file cut off inside it."""
    vertices, faces, body = off_counts(_text_lines(data))
    for i, words in enumerate(body[:vertices]):
        if len(words) < 3:
            if i == len(body) - 1:
                raise _truncated(i, vertices, "vertex")
            raise MalformedFileError(f"corrupt OFF vertex line {i}: {len(words)} values, expects ≥ 3")
    if len(body) < vertices:
        raise _truncated(len(body), vertices, "vertex")
    try:
        np.array([w[:3] for w in body[:vertices]], dtype=np.float64)
    except ValueError as err:
        raise MalformedFileError(f"corrupt OFF vertex: {err}") from err
    face_lines = body[vertices:vertices + faces]
    for i, words in enumerate(face_lines):
        try:
            complete = len(words) >= int(words[0]) + 1
        except ValueError as err:
            raise MalformedFileError(f"corrupt OFF face line {i}: {b' '.join(words)[:40]!r}") from err
        if not complete:
            if vertices + i == len(body) - 1:
                raise _truncated(i, faces, "face")
            raise MalformedFileError(f"corrupt OFF face line {i}: fewer indices than its count")
    if len(face_lines) < faces:
        raise _truncated(len(face_lines), faces, "face")
    if len(body) > vertices + faces:
        raise MalformedFileError(f"header/body mismatch: {len(body) - vertices - faces} lines after the "
                                 f"{vertices} vertices and {faces} faces the header declares")


def check_pcd(data: bytes) -> None:
    """A binary PCD's body holds the ``POINTS`` its header declares (``SIZE`` × ``COUNT`` bytes
    each); an ascii one that many lines. Compressed bodies carry their own sizes (open3d checks)."""
    fields: dict[bytes, list[bytes]] = {}
    at = 0
    while at < len(data):
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end
        words = data[at:end].split()
        at = end + 1
        if words and not words[0].startswith(b"#"):
            fields[words[0].upper()] = words[1:]
            if words[0].upper() == b"DATA":
                break
    try:
        points = int(fields[b"POINTS"][0])
        kind = fields[b"DATA"][0].lower()
        counts = [int(c) for c in fields.get(b"COUNT", [b"1"] * len(fields[b"SIZE"]))]
        row = sum(int(s) * c for s, c in zip(fields[b"SIZE"], counts, strict=True))
    except (KeyError, IndexError, ValueError) as err:
        raise MalformedFileError("corrupt PCD header: expects POINTS, SIZE and DATA lines") from err
    body = data[at:]
    if kind == b"binary":
        rows = len(body) // row if row else points
    elif kind == b"ascii":
        values = len(body.split()) - (1 if body and body[-1] not in _BLANK else 0)  # a cut last value
        rows = values // sum(counts) if sum(counts) else points
    else:
        return
    if rows < points:
        raise _truncated(rows, points, "point")


HEADER_CHECKS: dict[str, Callable[[bytes], None]] = {".ply": check_ply, ".off": check_off, ".pcd": check_pcd}


def check_declared_size(data: bytes, ext: str) -> None:
    """Raise MalformedFileError when a file's body does not hold what its header declares
    (formats with a header: ``HEADER_CHECKS``; others pass)."""
    check = HEADER_CHECKS.get(ext)
    if check is not None:
        check(data)
