"""Each `records.Record` behaves as the `@dataclass(frozen=True, slots=True)` it replaces.

For every Record class a twin dataclass is made from its annotations and the defaults of
its `__init__`, and the two are compared: signature, `__match_args__`, slots, repr,
equality and hash, frozen errors, pickling and copies.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pathlib
import pickle
import re
from typing import Any

import pytest

# Importing a module makes its Records; each module with Records is listed here.
from imageward import checker, policystore, records, settings
from imageward.policy import evaluate, globs, model, quantities, selectors
from imageward.registry import auth, gojson, manifests, platforms, routes, streams, transport
from imageward.registry import model as registry_model
from imageward.signatures import authorities, bundle, coverage, keys, legacy, verify
from imageward.signatures import model as signatures_model

MODULES = (
    checker,
    policystore,
    settings,
    evaluate,
    globs,
    model,
    quantities,
    selectors,
    auth,
    gojson,
    manifests,
    platforms,
    registry_model,
    routes,
    streams,
    transport,
    authorities,
    bundle,
    coverage,
    keys,
    legacy,
    signatures_model,
    verify,
)
RECORDS = sorted(records.Record.__subclasses__(), key=lambda c: (c.__module__, c.__qualname__))


def _twin(cls: type[records.Record]) -> Any:
    """The dataclass `cls` stands for."""
    namespace: dict[str, Any] = {
        # Without its ClassVars: a dataclass tells a string annotation `ClassVar[...]` by
        # finding typing.ClassVar under that name in the class's module, and the Record
        # modules import typing for mypy only (`imageward check` does not load it).
        "__annotations__": {
            name: annotation
            for name, annotation in cls.__annotations__.items()
            if not str(annotation).startswith(("ClassVar", "typing.ClassVar"))
        },
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.default is records.FACTORY:
            namespace[name] = dataclasses.field(default_factory=lambda: records.FACTORY)
        elif parameter.default is not inspect.Parameter.empty:
            namespace[name] = parameter.default
    for name in cls._fields:
        hidden, uncompared = name not in cls._shown, name not in cls._compared
        if hidden or uncompared:
            default = namespace.pop(name, dataclasses.MISSING)
            namespace[name] = dataclasses.field(
                default=default, repr=not hidden, compare=not uncompared
            )
    return dataclasses.dataclass(frozen=True, slots=True)(type(cls.__name__, (), namespace))


def test_every_module_with_records_is_listed() -> None:
    package = pathlib.Path(records.__file__).parent
    using = {
        ".".join(("imageward", *path.relative_to(package).with_suffix("").parts))
        for path in package.rglob("*.py")
        if re.search(r"^class \w+\(\s*records\.Record\b", path.read_text(), re.MULTILINE)
    }
    assert using == {module.__name__ for module in MODULES}
    assert {cls.__module__ for cls in RECORDS} == using


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_a_record_behaves_as_its_dataclass(cls: type[records.Record]) -> None:
    twin = _twin(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(twin))
    assert cls.__match_args__ == twin.__match_args__
    assert sorted(cls.__slots__) == sorted(twin.__slots__)
    assert cls.__doc__, "a Record writes its docstring (a dataclass would make one)"
    instance = cls(*_values(cls, 0))
    assert not hasattr(instance, "__dict__") and not hasattr(instance, "__weakref__")

    ours, theirs = cls(*_values(cls, 0)), twin(*_values(cls, 0))
    assert repr(ours) == repr(theirs)
    assert hash(ours) == hash(theirs)
    same = cls(*_values(cls, 0))
    assert ours == same and not (ours != same)  # noqa: SIM202 (__ne__ too)
    other = cls(*_values(cls, 1))
    assert (ours == other) == (theirs == twin(*_values(cls, 1)))
    assert ours != theirs and theirs != ours  # different classes: never equal
    assert ours.__eq__(object()) is NotImplemented

    for name in cls._fields:
        for obj in (ours, theirs):
            with pytest.raises(dataclasses.FrozenInstanceError) as assigned:
                setattr(obj, name, 1)
            assert str(assigned.value) == f"cannot assign to field {name!r}"
            with pytest.raises(dataclasses.FrozenInstanceError) as deleted:
                delattr(obj, name)
            assert str(deleted.value) == f"cannot delete field {name!r}"
    # Another name: Python 3.11's slotted dataclass fails with a TypeError (its
    # __setattr__ names the class it replaced); a Record refuses it as frozen.
    with pytest.raises(dataclasses.FrozenInstanceError, match="'not_a_field'"):
        ours.not_a_field = 1  # type: ignore[attr-defined]

    assert ours.__getstate__() == theirs.__getstate__()
    for clone in (pickle.loads(pickle.dumps(ours)), copy.copy(ours), copy.deepcopy(ours)):
        assert clone == ours and repr(clone) == repr(ours)

    required = [p for p in inspect.signature(cls).parameters.values() if p.default is p.empty]
    defaults = cls(*_values(cls, 0)[: len(required)])
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.default is records.FACTORY:
            assert getattr(defaults, name) is not records.FACTORY  # made by __init__
        elif parameter.default is not parameter.empty:
            assert getattr(defaults, name) is parameter.default


def _values(cls: type[records.Record], seed: int) -> list[object]:
    """Hashable values, distinct per field (and per seed)."""
    return [f"{name}-{seed}" if i % 2 else (i, seed) for i, name in enumerate(cls._fields)]


def test_replace_is_dataclasses_replace() -> None:
    reference = registry_model.ImageReference("docker.io", "library/nginx", tag="1")
    assert records.replace(reference, tag="2") == registry_model.ImageReference(
        "docker.io", "library/nginx", tag="2"
    )
    assert reference.tag == "1"
    with pytest.raises(TypeError, match="unexpected keyword argument 'tga'"):
        records.replace(reference, tga="2")


def test_a_record_without_its_own_init_is_refused_by_name() -> None:
    class Base(records.Record):
        __slots__ = ("a",)
        a: int

        def __init__(self, a: int) -> None:
            object.__setattr__(self, "a", a)

    with pytest.raises(TypeError, match=r"Child: a Record writes its own __init__"):

        class Child(Base):
            pass
