"""`yamlsubset.parse_documents` reads what PyYAML's safe loaders read, or declines.

For every text it either returns None or exactly the documents both
`yaml.load_all(text, CSafeLoader)` and `yaml.load_all(text, SafeLoader)` make (same
values, same types, same key order). Checked on policy files (which it must accept: that
is the point), on what `yaml.safe_dump` writes for random documents, and on random
mutations of both (which it mostly declines, and must never read differently).
"""

from __future__ import annotations

import pathlib
import random
from typing import Any

import pytest
import yaml

from imageward.localcluster import peers
from imageward.policy import yamlsubset
from tests.unit.commands import test_check_outputs

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples" / "policies").glob("*.yaml"))


def _canonical(value: Any) -> Any:
    """`value` with every scalar's type made explicit (True is not 1, 1 is not 1.0)."""
    if isinstance(value, dict):
        return ("map", [(_canonical(k), _canonical(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", [_canonical(v) for v in value])
    return (type(value).__name__, repr(value))


def _pyyaml(text: str, loader: Any) -> list[Any] | None:
    try:
        return [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except yaml.YAMLError:
        return None


def _parse(text: str) -> list[Any] | None:
    """What the subset parser makes of `text`, its bugs not hidden (parse_documents
    turns any exception into None, to let PyYAML decide)."""
    if not yamlsubset._ALLOWED.fullmatch(text):
        return None
    try:
        documents = yamlsubset._Parser(text).documents()
    except yamlsubset._Unsupported:
        return None
    return [d for d in documents if d is not None]


def _agrees(text: str) -> bool:
    """True when `text` is read as PyYAML reads it; False when it is declined."""
    ours = _parse(text)
    if ours is None:
        return False
    for loader in (yaml.CSafeLoader, yaml.SafeLoader):
        theirs = _pyyaml(text, loader)
        assert theirs is not None, f"accepted what {loader.__name__} refuses: {text!r}"
        assert _canonical(ours) == _canonical(theirs), f"{loader.__name__} differs: {text!r}"
    return True


BENCH_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEVUfW9sVIWjjQw7bnT2dxhwrrYjQR\n"
    "wKsTxwU6XUy7trj5Le4ec9eMkVofNZaV/zKXapuywBxWv2RTgDN7uyTDoQ==\n"
    "-----END PUBLIC KEY-----\n"
)

POLICY_FILES = {
    "bench": yaml.safe_dump(peers.build_imagepolicy("bench-cli", "bench", BENCH_PEM)),
    "bench-sized": yaml.safe_dump_all(
        [peers.build_imagepolicy(f"p{i}", "bench", BENCH_PEM, max_size="20Mi") for i in range(3)]
    ),
    "hand-written": test_check_outputs.HAND_WRITTEN,
    **{path.name: path.read_text() for path in EXAMPLES},
}


@pytest.mark.parametrize("name", list(POLICY_FILES))
def test_policy_files_are_read_without_pyyaml(name: str) -> None:
    assert _agrees(POLICY_FILES[name])
    assert yamlsubset.parse_documents(POLICY_FILES[name]) is not None


ACCEPTED = [
    "",
    "# only a comment\n",
    "a: b\n",
    "a: b\n  # an indented comment\nc: d\n",
    "a:\n- b\n- c\nd: e\n",
    "a:\n  - b\n  -   c: 1\n      d: 2\n",
    "- a\n-  b\n",
    "a: 'it''s'\n",
    "a: 'one\n  two\n\n  three\n\n\n  '\n",
    'a: "x\\ty\\\\z\\"\\/"\n',
    "a: [b, 'c', \"d\", [e], {f: g}, []]\n",
    "a: {b: c, 'd': [1, 2], e: {}}\n",
    "a: [localhost:5001, a:b]\n",
    "a: |\n  x\n  y\n",
    "a: |-\n  x\n\n",
    "a: |+\n  x\n\n\nb: c\n",
    "a: |\n\n  x\n   y\n",
    "a: |  # comment\n  # not a comment\n",
    "- |\n  in a sequence\n- b\n",
    "a:\n  b: |\n    deep\n  c: d\n",
    "k: v #c\n",
    "k: v#c\n",
    "a: b:c\n",
    "http://x: y\n",
    "yes: no\nOff: TRUE\n",
    "a: [~, null, Null, NULL, '', \"\"]\n",
    "a: [0, -0, +1, 12, -34, 1e3, 200Mi, 1Gi, 168h, +, .5x]\n",
    "a:\nb:\n",
    "---\na: 1\n---\n---\nb: 2\n",
    "hello\n",
    "'quoted root'\n",
    "- [a, b]\n- {c: d}\n",
    "a: 'x' # c\n",
    "a: b\n...\n# the end\n",
    "a:    \n  b: 1\n",
    "a : b\n",
    "'k': v\n\"j\": w\n",
    "---\n",  # an empty document
    "a: 1\n---\n",
    "---\n---\n",
    "a: " + "x" * 1000 + "\n",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_the_subset_is_read_as_pyyaml_reads_it(text: str) -> None:
    assert _agrees(text), f"declined: {text!r}"


DECLINED = [
    "a: &x b\nc: *x\n",  # anchors and aliases
    "a: !!str 1\n",  # tags
    "%YAML 1.1\n---\na: 1\n",  # directives
    "a: >\n  folded\n",
    "a: |2\n  indicated\n",
    "a: plain\n  continued\n",
    "a: 1.5\n",
    "a: 012\n",
    "a: 0x1F\n",
    "a: 1_000\n",
    "a: 1:30\n",
    "a: 2001-12-14\n",
    "a: .inf\n",
    "a: =\n",
    "<<: {a: b}\n",
    "a: 1\na: 2\n",  # duplicate keys
    "a:\n\tb: 1\n",  # tabs
    "a: b\r\n",  # carriage returns
    "a: caf\u00e9\n",  # non-ASCII
    "\ufeffa: b\n",
    'a: "\\u00e9"\n',
    'a: "multi\n  line"\n',
    "a: [b,\n  c]\n",
    "a: [b, c, ]\n",
    "a: [b: c]\n",
    "a: {b}\n",
    '{"a":"b"}\n',
    "? a\n: b\n",
    "a: b: c\n",
    "a: - b\n",
    "a:\n  - b\n  c: d\n",
    "a:\n    b: 1\n  c: 2\n",
    "a: 'x'y\n",
    "a: |\n",
    "a: |\n  x",  # no final line break
    "a: b\n--- c\n",
    "a: b\n...\nc: d\n",
    "...\n",
    "---\n...\n",
    "a: 'x\n---\n'\n",
    "-\n  a\n",
    "- - a\n",
    "a: [x?y]\n",
    "a: `b`\n",
    "@a: b\n",
    "a: 1" + "0" * 30 + "\n",
    "k" * 1025 + ": v\n",  # libyaml refuses a key this long
    "a: {" + "k" * 1025 + ": v}\n",
    "- " + "k" * 1025 + ": v\n",
    "a: [" + '"x", ' * 300 + "]\n",  # a line over 1024 characters
]


@pytest.mark.parametrize("text", DECLINED)
def test_what_is_not_in_the_subset_is_left_to_pyyaml(text: str) -> None:
    assert yamlsubset.parse_documents(text) is None


def test_a_bug_in_the_subset_parser_only_hands_the_text_to_pyyaml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: object) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(yamlsubset._Parser, "documents", broken)
    assert yamlsubset.parse_documents("a: b\n") is None


_WORDS = [
    "a", "b c", "release", "**/bench/**", "localhost:5001", "yes", "no", "on", "null", "~",
    "", " ", "1", "0", "012", "1.5", "1e3", "2001-12-14", "-1", "+1", "a: b", "a #b", "#x",
    "'q'", '"dq"', "x'y", 'x"y', "\\", "a\nb", "a\n\nb\n", "line\n", " lead", "trail ",
    BENCH_PEM, "[a]", "{b}", "a,b", "?x", "-x", "- x", "|", ">", "&a", "*a", "!t", "%", "@",
    "=", "<<", "0x1F", "1_0", "1:30", ".inf", "True", "FALSE", "Off", "y", "n", "x" * 90,
    "long " * 30,
]  # fmt: skip
_SIGNIFICANT = [*" :-#'\"\n[]{},|>&*!?a0.%@=<~", "  ", "- ", ": ", " #", "---\n", "''", "\\"]


def _random_document(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        kind = rng.random()
        if kind < 0.6:
            return rng.choice(_WORDS)
        if kind < 0.75:
            return rng.randint(-5, 100000)
        if kind < 0.85:
            return rng.choice([True, False, None])
        return "".join(rng.choice("ab :#-'\"\n{}[],|>&*!?") for _ in range(rng.randint(1, 8)))
    if roll < 0.7:
        return {
            rng.choice(_WORDS[:30]): _random_document(rng, depth + 1)
            for _ in range(rng.randint(0, 4))
        }
    return [_random_document(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        lines = text.split("\n")
        roll = rng.random()
        if roll < 0.3 and text:
            at = rng.randrange(len(text))
            text = text[:at] + text[at + 1 :]
        elif roll < 0.6:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(_SIGNIFICANT) + text[at:]
        elif roll < 0.75:
            at = rng.randrange(len(lines))
            shift = rng.choice([-2, -1, 1, 2])
            if shift > 0:
                lines[at] = " " * shift + lines[at]
            elif lines[at].startswith(" " * -shift):
                lines[at] = lines[at][-shift:]
            text = "\n".join(lines)
        elif roll < 0.88:
            lines.insert(rng.randrange(len(lines)), rng.choice(lines))
            text = "\n".join(lines)
        else:
            first, second = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[first], lines[second] = lines[second], lines[first]
            text = "\n".join(lines)
    return text


def _corpus(rng: random.Random) -> list[str]:
    texts = [*POLICY_FILES.values(), *ACCEPTED]
    for files, _, _ in test_check_outputs.CASES.values():
        texts.extend(files.values())
    for _ in range(150):
        document = _random_document(rng)
        style = rng.choice([False, None, True])
        width, indent = rng.choice([20, 80, 1000]), rng.choice([2, 4])
        texts.append(yaml.safe_dump(document, default_flow_style=style, width=width, indent=indent))
    return texts


def test_random_documents_and_mutations_are_read_as_pyyaml_reads_them() -> None:
    rng = random.Random(20261202)
    corpus = _corpus(rng)
    accepted = sum(_agrees(text) for text in corpus)
    mutated = sum(_agrees(_mutate(rng, rng.choice(corpus))) for _ in range(1500))
    # Most of what safe_dump writes is in the subset; a fair share of mutations too.
    assert accepted > len(corpus) // 2 and mutated > 200
