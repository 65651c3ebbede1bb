"""Frozen, slotted value classes that cost nothing to define.

`@dataclasses.dataclass(frozen=True, slots=True)` writes and compiles six methods for
each class when its module is imported (a millisecond or more a class), and builds the
class twice. `imageward check` imports the policy model on every run, so its classes
are `Record`s instead: each writes its `__slots__` and its `__init__` (compiled once,
into the module's bytecode), and everything else is the shared code here, which does
what the dataclass's generated methods do:

- `repr`: `Name(field=value, ...)`, fields of `hidden=` left out;
- `==` between instances of the same class, and `hash`, over the fields not in
  `uncompared=`, as tuples (so hashes are the dataclass's);
- assigning or deleting an attribute raises `dataclasses.FrozenInstanceError`
  ("cannot assign to field 'name'");
- `__match_args__` (the positional parameters of `__init__`), pickling and `copy`.

For mypy a Record is a frozen dataclass (`typing.dataclass_transform`): a field is
read-only, and `__init__` is checked as written. `__init_subclass__` checks that the
annotations, `__slots__` and the parameters of `__init__` name the same fields (the
annotations in the order of the parameters), so the three cannot drift apart.
`dataclasses.fields` and `dataclasses.replace` do not apply (there are no `Field`s):
`records.replace` is the latter; and a Record writes its own docstring (a dataclass
without one gets its signature).
`tests/unit/test_records.py` compares each Record with the dataclass it stands for.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Any, ClassVar, Final, TypeVar, dataclass_transform

    _R = TypeVar("_R", bound="Record")
else:
    # For mypy only: typing's import costs `imageward check` milliseconds every run. At
    # run time the decorator would only set `Record.__dataclass_transform__`.
    def dataclass_transform(**_kwargs):
        return lambda cls: cls


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"  # as a dataclass's signature shows a default_factory


#: The default of a parameter whose value `__init__` makes anew for each instance (a
#: dataclass's `default_factory`): `if match is records.FACTORY: match = Match(...)`.
FACTORY: Final[Any] = _Factory()


@dataclass_transform(frozen_default=True)
class Record:
    __slots__ = ()

    #: Every field, in order (the parameters of `__init__`).
    _fields: ClassVar[tuple[str, ...]] = ()
    #: The fields `repr` shows and the fields `==` and `hash` compare.
    _shown: ClassVar[tuple[str, ...]] = ()
    _compared: ClassVar[tuple[str, ...]] = ()
    #: The tuple `==` and `hash` compare (operator.attrgetter: as fast as the dataclass's).
    _key: ClassVar[Callable[[Any], tuple[Any, ...]]]
    __match_args__: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(
        cls, *, hidden: Iterable[str] = (), uncompared: Iterable[str] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        namespace = cls.__dict__
        if "__init__" not in namespace or "__slots__" not in namespace:
            raise TypeError(f"{cls.__qualname__}: a Record writes its own __init__ and __slots__")
        init = namespace["__init__"]
        init.__annotations__["return"] = None  # not 'None': as the dataclass's __init__
        code = init.__code__
        positional = code.co_varnames[1 : code.co_argcount]
        fields = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]
        annotated = tuple(
            name
            for name, annotation in namespace.get("__annotations__", {}).items()
            if not str(annotation).startswith(("ClassVar", "typing.ClassVar"))
        )
        if annotated != fields or sorted(namespace["__slots__"]) != sorted(fields):
            raise TypeError(
                f"{cls.__qualname__}: __slots__ {namespace['__slots__']}, annotations "
                f"{annotated} and __init__ parameters {fields} must name the same fields"
            )
        hidden, uncompared = set(hidden), set(uncompared)
        cls._fields = fields
        cls._shown = tuple(name for name in fields if name not in hidden)
        cls._compared = tuple(name for name in fields if name not in uncompared)
        cls._key = staticmethod(_key_of(cls._compared))
        cls.__match_args__ = positional  # type: ignore[misc]  # mypy: set by the dataclass

    def __repr__(self) -> str:
        shown = ", ".join([f"{name}={getattr(self, name)!r}" for name in self._shown])
        return f"{self.__class__.__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        cls = self.__class__
        if other.__class__ is cls:
            return cls._key(self) == cls._key(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.__class__._key(self))

    # Hidden from mypy, which would otherwise allow assigning any attribute; it reports
    # assignments to fields itself (frozen_default). A dataclass lets a subclass's own
    # attributes be set; a Record is never subclassed.
    if not TYPE_CHECKING:

        def __setattr__(self, name, value):
            import dataclasses

            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self, name):
            import dataclasses

            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __getstate__(self) -> list[Any]:
        return [getattr(self, name) for name in self._fields]

    def __setstate__(self, state: list[Any]) -> None:
        for name, value in zip(self._fields, state, strict=False):
            object.__setattr__(self, name, value)


def replace(record: _R, /, **changes: Any) -> _R:
    """A copy of `record` with `changes`, as `dataclasses.replace` makes one: through
    `__init__`, so a name that is no field is a TypeError."""
    fields = {name: getattr(record, name) for name in record._fields}
    return type(record)(**{**fields, **changes})


def _key_of(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function from a record to the tuple of its `names` (attrgetter gives a tuple
    only for two names or more)."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    if names:
        (name,) = names
        return lambda record: (getattr(record, name),)
    return lambda record: ()
