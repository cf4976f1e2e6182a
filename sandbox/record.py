"""Record: the typed value class of what every box's start loads (plan steps, requests, limits, results).

Why not dataclasses: on the CPython of Debian 12 (3.11), `import dataclasses`
costs some 10 ms (it brings inspect, ast, dis and tokenize), and each class
another 0.4 ms, spent compiling six generated methods with exec.  The 35
value classes `sbx run` loads cost it a third of its start (bench/README.md).
A Record's methods are shared rather than generated, so a class costs what
its body does.  Type checkers see a dataclass (`dataclass_transform`): the
same fields, `__init__`, equality, frozen by default (`frozen=False` in the
class line makes one mutable), `field(default_factory=..., repr=False)` and
`__post_init__`.  `record.replace(...)` and `fields(record)` stand for
`dataclasses.replace` and `dataclasses.fields`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self, dataclass_transform

_NO_DEFAULT: Any = object()


class _Field:
    __slots__ = ("default", "factory", "repr")

    def __init__(self, default: Any, factory: Callable[[], Any] | None, repr: bool) -> None:
        self.default, self.factory, self.repr = default, factory, repr


def field(*, default: Any = _NO_DEFAULT, default_factory: Callable[[], Any] | None = None, repr: bool = True) -> Any:
    """A field's default made anew for each record (`default_factory`), or a field left out of repr."""
    return _Field(default, default_factory, repr)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record:
    """Fields are the class's annotations (ClassVar aside), a base class's first; a default is the class value."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, _Field]] = {}
    _hidden: ClassVar[frozenset[str]] = frozenset()
    _in_repr: ClassVar[tuple[str, ...]] = ()
    _frozen: ClassVar[bool] = True

    def __init_subclass__(cls, frozen: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name, kind in cls.__dict__.get("__annotations__", {}).items()
               if not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        defaults, hidden = dict(cls._defaults), set(cls._hidden)
        for name in own:
            value = cls.__dict__.get(name, _NO_DEFAULT)
            spec = value if isinstance(value, _Field) else _Field(value, None, True)
            if isinstance(value, _Field):
                delattr(cls, name)
                if value.default is not _NO_DEFAULT:
                    setattr(cls, name, value.default)
            if spec.default is not _NO_DEFAULT or spec.factory is not None:
                defaults[name] = spec
            else:  # required, here or again after a base class gave it a default
                defaults.pop(name, None)
            if spec.repr:
                hidden.discard(name)
            else:
                hidden.add(name)
        cls._fields = tuple(dict.fromkeys([*cls._fields, *own]))
        cls._defaults, cls._hidden = defaults, frozenset(hidden)
        cls._in_repr = tuple(name for name in cls._fields if name not in hidden)
        cls._frozen = frozen
        if not frozen:
            cls.__hash__ = None  # type: ignore[assignment]  # equal by value and mutable: not hashable

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self._fields
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} arguments, {len(args)} given")
        given = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names or name in given:
                raise TypeError(f"{type(self).__name__}() got an unexpected or repeated argument {name!r}")
            given[name] = value
        values = self.__dict__
        for name in names:
            if name in given:
                values[name] = given[name]
                continue
            spec = self._defaults.get(name)
            if spec is None:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            values[name] = spec.factory() if spec.factory is not None else spec.default
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
        object.__delattr__(self, name)

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__[name] for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._in_repr)
        return f"{type(self).__qualname__}({shown})"

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (as `dataclasses.replace`): made through `__init__`, so checked again."""
        return type(self)(**{**{name: self.__dict__[name] for name in self._fields}, **changes})


def fields(record: Record | type[Record]) -> tuple[str, ...]:
    """The field names, in order."""
    return record._fields


def asdict(record: Record) -> dict[str, Any]:
    """The fields as a dict (one level: the values themselves, not copies)."""
    return {name: getattr(record, name) for name in record._fields}
