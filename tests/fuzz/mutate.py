"""Mutations of fuzz inputs: structural ones for JSON documents, byte-level ones otherwise.

Byte flips rarely keep a JSON document parseable, so most of libFuzzer's own mutants of
a manifest never get past `json.loads`. The structural mutator decodes the document,
changes one value, key or nesting level (values of every JSON type, the edge cases
parsers trip on: huge numbers, deep nesting, lone surrogates, keys that differ only by
case, duplicate keys), and encodes it again. `bench/fuzz.py` alternates it with
libFuzzer's `Mutate`; the unit suite's smoke run uses it with `mutate_bytes`, so it
needs no atheris.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any, Final

ByteMutator = Callable[[bytes, int, random.Random], bytes]

_EDGE_STRINGS: Final = (
    "",
    " ",
    "\x00",
    "\ud800",
    "\U0001f600",
    "é",
    "\u0130",  # İ: lower() makes it two characters
    "\u212a",  # Kelvin sign: lower() is ASCII k
    "../",
    "%00",
    "a" * 300,
    "sha256:" + "0" * 64,
    "sha256:" + "A" * 64,
    "sha512:" + "f" * 128,
    "http://[::1",
    "https://evil.test/",
    "0",
    "+0",
    "-0",
    "root",
)
_EDGE_NUMBERS: Final = (0, -1, 1, 2, 2**31, 2**63 - 1, 2**63, -(2**63), 10**400, 0.5, 1e308, -0.0)
_RAW_LITERALS: Final = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "1" * 400,
    "[" * 3000 + "]" * 3000,
    '{"a":' * 2000 + "0" + "}" * 2000,
)


def _random_value(rng: random.Random, tokens: Sequence[str], depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice((True, False))
    if choice == 2:
        return rng.choice(_EDGE_NUMBERS)
    if choice == 3:
        return rng.choice(_EDGE_STRINGS)
    if choice in (4, 5):
        return rng.choice(tokens) if tokens else ""
    if choice == 6:
        return []
    if choice == 7:
        return {}
    if choice == 8:
        return [_random_value(rng, tokens, depth + 1) for _ in range(rng.randint(1, 3))]
    return {
        (rng.choice(tokens) if tokens else "k"): _random_value(rng, tokens, depth + 1)
        for _ in range(rng.randint(1, 3))
    }


def _slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value inside a document (the document itself is `()`)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_slots(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_slots(item, (*path, index)))
    return found


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for segment in path:
        document = document[segment]
    return document


def _set(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(document, path[:-1])[path[-1]] = value
    return document


def _case_variant(key: str, rng: random.Random) -> str:
    variants = [key.upper(), key.lower(), key.capitalize(), key.swapcase()]
    different = [v for v in variants if v != key]
    return rng.choice(different) if different else key + "_"


def mutate_json(document: Any, rng: random.Random, tokens: Sequence[str]) -> bytes:
    """One structural change to a decoded document, encoded again."""
    slots = _slots(document)
    path = rng.choice(slots)
    target = _get(document, path)
    action = rng.randrange(10)
    raw: str | None = None
    if action <= 2:
        document = _set(document, path, _random_value(rng, tokens))
    elif action == 3 and path:
        parent = _get(document, path[:-1])
        del parent[path[-1]]
    elif action == 4:
        document = _set(document, path, [target] if rng.random() < 0.5 else {"x": target})
    elif action == 5 and isinstance(target, dict) and target:
        # A key that differs only by case: Go's encoding/json matches it to the same field.
        key = rng.choice(list(target))
        target[_case_variant(str(key), rng)] = _random_value(rng, tokens)
    elif action == 6 and isinstance(target, dict):
        target[rng.choice(tokens) if tokens else "k"] = _random_value(rng, tokens)
    elif action == 7 and isinstance(target, list) and target:
        index = rng.randrange(len(target))
        target.insert(rng.randrange(len(target) + 1), json.loads(json.dumps(target[index])))
    elif action == 8 and isinstance(target, dict) and target:
        # A duplicate key, written out by hand: json.dumps cannot make one.
        key = rng.choice(list(target))
        text = json.dumps(document)
        marker = json.dumps({key: target[key]})[1:-1]
        value = json.dumps(_random_value(rng, tokens))
        raw = text.replace(marker, f"{marker}, {json.dumps(key)}: {value}", 1)
    elif action == 9:
        literal = rng.choice(_RAW_LITERALS)
        placeholder = "\x00imageward-raw\x00"
        document = _set(document, path, placeholder)
        raw = json.dumps(document).replace(json.dumps(placeholder), literal, 1)
    else:
        document = _set(document, path, _random_value(rng, tokens))
    if raw is None:
        raw = json.dumps(document, ensure_ascii=rng.random() < 0.5)
    return raw.encode("utf-8", "surrogatepass")


def mutate_bytes(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """A few byte-level edits: the atheris-free stand-in for libFuzzer's `Mutate`."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(6)
        position = rng.randint(0, len(buffer))
        if action == 0 and buffer:
            buffer[min(position, len(buffer) - 1)] ^= 1 << rng.randrange(8)
        elif action == 1:
            buffer[position:position] = bytes([rng.randrange(256)])
        elif action == 2 and buffer:
            end = min(len(buffer), position + rng.randint(1, 16))
            del buffer[position:end]
        elif action == 3 and buffer:
            start = rng.randrange(len(buffer))
            chunk = buffer[start : start + rng.randint(1, 32)]
            buffer[position:position] = chunk
        elif action == 4:
            buffer[position:position] = rng.choice(
                (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\r\n", b"\\", b'"', b"%")
            )
        elif buffer:
            buffer[position:] = buffer[position:][:1]
    return bytes(buffer[:max_size])


def mutate(
    data: bytes,
    max_size: int,
    rng: random.Random,
    *,
    json_from: int | None,
    tokens: Sequence[str] = (),
    byte_mutator: ByteMutator = mutate_bytes,
) -> bytes:
    """One mutant of `data`: structural half of the time when it holds a JSON document."""
    if json_from is not None and rng.random() < 0.5:
        prefix, rest = data[:json_from], data[json_from:]
        try:
            document = json.loads(rest)
        except (ValueError, RecursionError):
            document = None
        else:
            if rng.random() < 0.1 and prefix:
                prefix = bytes([rng.randrange(256)]) + prefix[1:]
            return (prefix + mutate_json(document, rng, tokens))[:max_size]
    if tokens and rng.random() < 0.3:
        token = rng.choice(tokens).encode("utf-8", "surrogatepass")
        position = rng.randint(0, len(data))
        return (data[:position] + token + data[position:])[:max_size]
    return byte_mutator(data, max_size, rng)
