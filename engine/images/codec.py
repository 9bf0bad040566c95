"""Dataclass <-> JSON conversion with strict type checking.

`from_dict` checks parsed JSON against the annotations of a record dataclass and refuses
anything that does not match: a missing field, an unknown field, a string where an int
belongs, a bool posing as an int. That is the "schema" of every JSON image file; range
checks live in each record's `validate()`, which is called for every nested record too.

Speed matters (records by the thousand: fds, files, semaphores; a tree of 50 tasks is 1,500
records): converters are made once per type, a record's compiled from generated code that
reads each field by name (_compiled_converter); the general converter, which finds and
names what is wrong, only runs for data the compiled one does not take as it is. The path
of a bad field (`fds[12].file_id`) is only assembled when an error travels up, never on
the success path. A record class that sets the class
attribute `ROW = True` (semaphores) is written as a JSON array of its fields in declaration
order instead of an object: half the bytes to parse, and a converter that checks a row by
position instead of matching names. Fields a record class lists in `EXTERNAL` are not in
its JSON at all (stored in a file of their own: MmCore.vmas, engine/images/vmatable.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from engine.images.records import RecordError

T = TypeVar("T")
Converter = Callable[[Any], Any]

_CONVERTERS: dict[Any, Converter] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_FLAT: dict[type, bool] = {}
_ROW_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
_SCALARS = (int, str, float, bool, type(None))


def to_dict(record: Any) -> Any:
    """Turn a record (or a list/dict of them) into plain JSON-able data. The result may
    share dicts and lists with the records (no copies, for speed): read it, do not change
    it."""
    t = type(record)
    if t in _SCALARS:
        return record
    if t is list:
        return [to_dict(x) for x in record]
    if t is dict:
        return {k: to_dict(v) for k, v in record.items()}
    names = _FIELD_NAMES.get(t)
    if names is None:
        if not dataclasses.is_dataclass(record):
            raise TypeError(f"cannot serialise {t.__name__}")
        names = _shape(t)
    row = _ROW_GETTERS.get(t)
    if row is not None:
        return row(record)  # a tuple: JSON array of the fields in declaration order
    if _FLAT[t]:
        # Only scalars and lists/dicts of scalars: the instance dict is already JSON data
        # (the fast path for tens of thousands of VMA records). Not copied: the result is
        # only read by the JSON encoder.
        return record.__dict__
    return {n: to_dict(getattr(record, n)) for n in names}


def _shape(t: Any) -> tuple[str, ...]:
    """Work out once how records of dataclass t are written: their JSON fields, whether
    they are flat, and their row getter (ROW records)."""
    names = _FIELD_NAMES[t] = _json_fields(t)
    hints = typing.get_type_hints(t)
    _FLAT[t] = all(_is_plain(hints[n]) for n in names)
    if getattr(t, "ROW", False):
        if not _FLAT[t] or len(names) < 2:
            raise TypeError(f"{t.__name__}: a row record needs 2+ plain fields")
        _ROW_GETTERS[t] = operator.attrgetter(*names)
    return names


def prepare(classes: Iterable[Any]) -> None:
    """Work out now how to write and read these record classes and every type their
    fields hold, records of other modules included (typing.get_type_hints costs ~0.2 ms a
    class): the engine server does it once, for every forked step."""
    todo = list(classes)
    while todo:
        tp = todo.pop()
        if dataclasses.is_dataclass(tp):
            if tp in _FIELD_NAMES:
                continue
            hints = typing.get_type_hints(tp)
            todo += [hints[n] for n in _shape(tp)]
        else:
            todo += typing.get_args(tp)
        if tp is not type(None):
            _converter(tp)


def _json_fields(cls: Any) -> tuple[str, ...]:
    """The fields a record has in JSON: all but those its class attribute EXTERNAL names
    (stored in files of their own, e.g. MmCore.vmas, and filled in by their reader)."""
    external = getattr(cls, "EXTERNAL", ())
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in external)


def _is_plain(tp: Any) -> bool:
    """Whether values of type tp are JSON data as they are (no records inside)."""
    if tp in _SCALARS:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, list, dict):
        return all(_is_plain(a) for a in typing.get_args(tp))
    return False


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build a `cls` record from parsed JSON, checking every field's type.

    Raises RecordError naming the path of the offending field (e.g. `vmas[0].prot`).
    """
    try:
        return _converter(cls)(data)  # type: ignore[no-any-return]
    except _PathError as e:
        raise RecordError(f"{where or cls.__name__}{e.path}: {e.message}") from None


class _PathError(Exception):
    """An error on the way up: `path` grows as it leaves each container."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _fail(message: str) -> typing.NoReturn:
    raise _PathError("", message)


def _converter(tp: Any) -> Converter:
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _build(tp)
    return conv


def _build(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        inner = _converter(args[0])
        return lambda data: None if data is None else inner(data)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if item_tp in (int, str):
            return _scalar_list_converter(item_tp, _converter(item_tp))
        if _int_row(item_tp):
            return _int_rows_converter(item_tp, _list_converter(_converter(item_tp)))
        return _list_converter(_converter(item_tp))
    if origin is dict:
        _key, val_tp = typing.get_args(tp)
        return _dict_converter(_converter(val_tp))
    if dataclasses.is_dataclass(tp):
        return _row_converter(tp) if getattr(tp, "ROW", False) else _record_converter(tp)
    scalars: dict[Any, Converter] = {bool: _bool, int: _int, float: _float, str: _str}
    if tp in scalars:
        return scalars[tp]
    raise TypeError(f"unsupported type {tp}")


def _bool(data: Any) -> bool:
    if type(data) is not bool:
        _fail(f"expected a bool, got {data!r:.40}")
    return data


def _int(data: Any) -> int:
    # type() rather than isinstance: bool is an int subclass, and a hostile image
    # could smuggle True in as 1.
    if type(data) is not int:
        _fail(f"expected an integer, got {data!r:.40}")
    return data


def _float(data: Any) -> float:
    if type(data) not in (int, float):
        _fail(f"expected a number, got {data!r:.40}")
    return float(data)


def _str(data: Any) -> str:
    if type(data) is not str:
        _fail(f"expected a string, got {data!r:.40}")
    return data


def _list_converter(item: Converter) -> Converter:
    def convert(data: Any) -> list[Any]:
        if type(data) is not list:
            _fail(f"expected a list, got {type(data).__name__}")
        try:
            return [item(x) for x in data]
        except _PathError as e:
            # Find the index only now, on the error path.
            for i, x in enumerate(data):
                try:
                    item(x)
                except _PathError:
                    raise _PathError(f"[{i}]{e.path}", e.message) from None
            raise
    return convert


def _scalar_list_converter(item_tp: type, item: Converter) -> Converter:
    """A list of ints or strs: one inline type test per item (30,000 VMAs carry 180,000
    VmFlags strings); the generic converter names a bad item."""
    slow = _list_converter(item)

    def convert(data: Any) -> list[Any]:
        if type(data) is list and all(type(x) is item_tp for x in data):
            return data
        checked: list[Any] = slow(data)
        return checked
    return convert


def _int_row(tp: Any) -> bool:
    """Whether tp is a ROW record of int fields only whose validate checks each field's
    range, listed in its BOUNDS (SigactionRecord)."""
    if not (dataclasses.is_dataclass(tp) and getattr(tp, "ROW", False)):
        return False
    hints = typing.get_type_hints(tp)
    fields = dataclasses.fields(tp)
    return all(hints[f.name] is int for f in fields) \
        and len(getattr(tp, "BOUNDS", ())) == len(fields)


def _int_rows_converter(cls: Any, slow: Converter) -> Converter:
    """A list of int-only ROW records (62 sigactions a task): every row's shape, every
    value's type and each column's range (cls.BOUNDS) checked in one pass (in C), the
    records made in bulk; the per-row converter (`slow`) names a bad row."""
    count = len(dataclasses.fields(cls))
    bounds = cls.BOUNDS

    def convert(data: Any) -> list[Any]:
        if type(data) is list and set(map(type, data)) <= {list} \
                and set(map(len, data)) <= {count} \
                and set(map(type, itertools.chain.from_iterable(data))) <= {int} \
                and _within(data, bounds):
            return list(itertools.starmap(cls, data))
        rows: list[Any] = slow(data)
        return rows
    return convert


def _within(rows: list[list[int]], bounds: tuple[tuple[int, int], ...]) -> bool:
    """Whether every column of `rows` lies within its (low, high) bounds."""
    if not rows:
        return True
    return all(lo <= min(col) and max(col) <= hi for col, (lo, hi) in zip(zip(*rows), bounds))


def _dict_converter(val: Converter) -> Converter:
    def convert(data: Any) -> dict[str, Any]:
        if type(data) is not dict:
            _fail(f"expected an object, got {type(data).__name__}")
        out = {}
        for k, v in data.items():
            try:
                out[k] = val(v)
            except _PathError as e:
                raise _PathError(f".{k}{e.path}", e.message) from None
        return out
    return convert


def _simple_types(tp: Any) -> tuple[type, ...] | None:
    """The exact types a scalar (or optional scalar) field accepts, checked inline by the
    record converter; None for fields that need a converter."""
    plain = {int: (int,), str: (str,), bool: (bool,)}
    if tp in plain:
        return plain[tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] in plain and len(args) == 2:
            return (*plain[inner[0]], type(None))
    return None


def _record_converter(cls: Any) -> Converter:
    """A record's converter: the compiled one (_compiled_converter), which hands any
    record it does not take as it is to the general one, which names what is wrong."""
    general = _general_record_converter(cls)
    return _compiled_converter(cls, general) or general


#: field names that are Python keywords cannot be generated code's local names
_LOCAL = "v{}"


def _compiled_converter(cls: Any, general: Converter) -> Converter | None:
    """A converter compiled for `cls` (as dataclasses compiles __init__): each field read
    by name and type-checked inline, nested ones through their converters, the record
    made with positional arguments: 50 tasks' core records (24 nested records each) in
    4.0 ms, not 5.1, their mm records in 1.1, not 1.3. Anything unexpected (wrong type, unknown or
    missing field, a failed validate) goes to `general`, which raises the located error.
    None for classes it does not handle (fields not set by __init__, keyword-only)."""
    fields = dataclasses.fields(cls)
    if any(not f.init or f.kw_only for f in fields):
        return None
    hints = typing.get_type_hints(cls)
    known = frozenset(_json_fields(cls))
    env: dict[str, Any] = {"cls": cls, "general": general, "known": known,
                           "_PathError": _PathError, "RecordError": RecordError,
                           "MISSING": _MISSING}
    required = frozenset(f.name for f in fields if f.name in known
                         and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
    env["required"] = required
    lines = ["def convert(data):",
             ("    if type(data) is not dict or not known.issuperset(data)"
              " or not required.issubset(data):"),
             "        return general(data)",
             "    try:"]
    args = []
    for i, f in enumerate(fields):
        local = _LOCAL.format(i)
        args.append(local)
        if f.name not in known:  # EXTERNAL: its default, filled in by its reader
            lines.append(f"        {local} = {_default_code(i, f, env)}")
            continue
        if f.name in required:
            lines.append(f"        {local} = data[{f.name!r}]")
        else:
            lines.append(f"        {local} = data.get({f.name!r}, MISSING)")
        lines += _field_code(i, local, hints[f.name], env, f)
    lines += ["        record = cls(" + ", ".join(args) + ")",
              "        record.validate()",
              "    except (_PathError, RecordError):",
              "        return general(data)",
              "    return record"]
    exec("\n".join(lines), env)  # noqa: S102 - code made here from field names
    conv: Converter = env["convert"]
    return conv


class _Missing:
    """The value of a field a record's JSON leaves out (it takes its default)."""


_MISSING = _Missing()


def _field_code(i: int, local: str, tp: Any, env: dict[str, Any],
                f: dataclasses.Field[Any]) -> list[str]:
    """Lines checking or converting field `i` (read into `local`), its default put in
    when it is missing and optional."""
    out = []
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
        out.append(f"        if {local} is MISSING: {local} = {_default_code(i, f, env)}")
        out.append("        else:")
        indent = "            "
    else:
        indent = "        "
    allowed = _simple_types(tp)
    if allowed is not None:
        env[f"t{i}"] = allowed
        test = f"type({local}) is not {allowed[0].__name__}" if len(allowed) == 1 \
            and allowed[0] in (int, str, bool) else f"type({local}) not in t{i}"
        out.append(f"{indent}if {test}: return general(data)")
    else:
        env[f"c{i}"] = _resolving(tp, f"c{i}", env)
        out.append(f"{indent}{local} = c{i}({local})")
    return out


def _default_code(i: int, f: dataclasses.Field[Any], env: dict[str, Any]) -> str:
    """The expression of field i's default (a factory's called each time)."""
    if f.default is dataclasses.MISSING:
        env[f"d{i}"] = f.default_factory
        return f"d{i}()"
    env[f"d{i}"] = f.default
    return f"d{i}"


def _resolving(tp: Any, name: str, env: dict[str, Any]) -> Converter:
    """A stand-in for a nested type's converter (records refer to each other: it may
    not exist yet) that, called once, puts the converter in its place in `env`."""
    def first_call(data: Any) -> Any:
        conv = env[name] = _converter(tp)
        return conv(data)
    return first_call


def _general_record_converter(cls: Any) -> Converter:
    hints = typing.get_type_hints(cls)
    known = frozenset(_json_fields(cls))
    fields = [f for f in dataclasses.fields(cls) if f.name in known]
    required = frozenset(f.name for f in fields if f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
    simple = {name: _simple_types(hints[name]) for name in known}
    # Converters of nested types are looked up lazily: records may refer to each other.
    convs: dict[str, Converter] = {}

    def convert(data: Any) -> Any:
        if type(data) is not dict:
            _fail(f"expected an object, got {type(data).__name__}")
        if not known.issuperset(data):
            _fail(f"unknown field(s) {sorted(set(data) - known)}")
        if not required.issubset(data):
            _fail(f"missing field {min(required - set(data))!r}")
        kwargs = {}
        for name, value in data.items():
            allowed = simple[name]
            if allowed is not None:
                if type(value) not in allowed:
                    want = " or ".join("null" if t is type(None) else t.__name__
                                       for t in allowed)
                    raise _PathError(f".{name}", f"expected {_article(want)}, got "
                                                 f"{value!r:.40}")
                kwargs[name] = value
                continue
            conv = convs.get(name)
            if conv is None:
                conv = convs[name] = _converter(hints[name])
            try:
                kwargs[name] = conv(value)
            except _PathError as e:
                raise _PathError(f".{name}{e.path}", e.message) from None
        return _validated(cls(**kwargs))
    return convert


def _row_converter(cls: Any) -> Converter:
    """Converter of a ROW record: a JSON array holding every field in declaration order."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    simple = [(i, _simple_types(hints[n])) for i, n in enumerate(names)]
    checked = [(i, allowed) for i, allowed in simple if allowed is not None]
    nested = [(i, _converter(hints[names[i]])) for i, allowed in simple if allowed is None]
    count = len(names)

    def convert(data: Any) -> Any:
        if type(data) is not list or len(data) != count:
            _fail(f"expected an array of the {count} fields {' '.join(names)}, got "
                  f"{data!r:.60}")
        for i, allowed in checked:
            if type(data[i]) not in allowed:
                want = " or ".join("null" if t is type(None) else t.__name__
                                   for t in allowed)
                raise _PathError(f".{names[i]}", f"expected {_article(want)}, got "
                                                 f"{data[i]!r:.40}")
        if nested:
            data = list(data)
            for i, conv in nested:
                try:
                    data[i] = conv(data[i])
                except _PathError as e:
                    raise _PathError(f".{names[i]}{e.path}", e.message) from None
        return _validated(cls(*data))
    return convert


def _validated(record: Any) -> Any:
    """The record, once its own cross-field checks pass (their message located here)."""
    try:
        record.validate()
    except RecordError as e:
        raise _PathError("", str(e)) from None
    return record


def _article(type_names: str) -> str:
    words = {"int": "an integer", "str": "a string", "bool": "a bool"}
    first, _, rest = type_names.partition(" or ")
    return words.get(first, first) + (f" or {rest}" if rest else "")
