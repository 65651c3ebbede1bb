"""`cli._parse_check` parses `check` as argparse does, or declines.

`imageward check` spelled the common way is parsed without argparse (its import, with
gettext and locale, is a tenth of the run). Each argv here, common or hostile, is given
to both: where the fast path answers, argparse must accept the argv and set the same
attributes; where argparse refuses it (or prints help), the fast path must decline.
"""

from __future__ import annotations

import contextlib
import io
import random
from typing import Any

import pytest

from imageward import cli

DIGEST = "sha256:" + "0" * 64

#: Spellings the fast path must answer itself (else the floor pays for argparse).
COMMON = [
    ["check", "--policy", "p.yaml", "example.invalid/app:1.0"],
    ["check", "--policy=p.yaml", "a", "b", "a"],
    ["-v", "check", "--policy", "p.yaml", "--policy", "q.yaml", "img"],
    ["--verbose", "check", "--output", "json", "--policy", "p.yaml", "img"],
    ["check", "img", "--policy", "p.yaml", "--deadline", "5"],
    ["check", "--deadline=0.5", "--platform", "linux/arm64/v8", f"img@{DIGEST}"],
    ["check", "--insecure-registry", "127.0.0.1:5000", "--docker-config", "c.json", "img"],
    ["check", "--output=text", "--policy", "p.yaml", "img", "--output", "json"],
    ["check", "--platform=linux/amd64", "--policy=p=1.yaml", "img"],
]

#: Spellings argparse must parse (help, abbreviations, errors...): the fast path declines.
DECLINED = [
    [],
    ["check"],
    ["check", "--help"],
    ["check", "-h", "img"],
    ["--help"],
    ["--version"],
    ["run"],
    ["-vv", "check", "img"],
    ["--verb", "check", "img"],
    ["check", "--pol", "p.yaml", "img"],
    ["check", "--pol=p.yaml", "img"],
    ["check", "--policy"],
    ["check", "--policy", "img"],
    ["check", "--policy=", "img"],
    ["check", "--policy", "", "img"],
    ["check", "--policy", "-x", "img"],
    ["check", "--policy=-dash.yaml", "img"],
    ["check", "--docker-config=--", "img"],
    ["check", "--deadline", "-5", "img"],
    ["check", "--deadline", "soon", "img"],
    ["check", "--output", "xml", "img"],
    ["check", "--output=", "img"],
    ["check", "--", "img"],
    ["check", "-", "img"],
    ["check", "", "img"],
    ["check", "a", "--policy", "p.yaml", "b"],
    ["check", "img", "-v"],
    ["check", "img", "--verbose"],
    ["check", "--POLICY", "p.yaml", "img"],
    ["check", "--policy x", "img"],
]

#: Words the random argvs are made of: options whole, abbreviated, with `=`, values
#: that look like options, numbers argparse reads in its own ways, empty strings.
WORDS = [
    *("check", "check", "check", "run", "plan", "-v", "--verbose", "-vv", "--verbose=1"),
    *("--policy", "--policy=p.yaml", "--policy=", "--policy=-x", "--policy=a=b", "--pol"),
    *("--pol=p", "--POLICY", "p.yaml", "-p", "--output", "--output=json", "--output="),
    *("--output=json=x", "--outp", "json", "text", "xml", "JSON", "--deadline"),
    *("--deadline=-1", "--deadline=", "--dead", "5", "-5", "0.5", "-0.5", "1e3", "nan"),
    *("inf", "-inf", " 5 ", "1_0", "x5", "--platform", "--platform=linux/amd64"),
    *("linux/amd64", "--insecure-registry", "--insecure-registry=h:1", "--insecure"),
    *("localhost:5000", "--docker-config", "--docker-config=c.json", "c.json", "--"),
    *("-", "", " ", "-h", "--help", "--version", "--standalone", "-x y", "--policy x"),
    *("img:1", f"img@{DIGEST}", "example.invalid/a/b:c", "é", "+x", "a=b", "=", "-=x"),
]


def _argparse(argv: list[str]) -> dict[str, Any] | None:
    """The attributes argparse sets; None when it exits (an error, help, version)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(cli.build_parser(argv).parse_args(argv))
        except SystemExit:
            return None


def _agree(argv: list[str]) -> bool:
    """Whether the fast path answered; fails when it answered otherwise than argparse."""
    fast = cli._parse_check(argv)
    if fast is None:
        return False
    assert _comparable(vars(fast)) == _comparable(_argparse(argv)), argv
    return True


def _comparable(attributes: dict[str, Any] | None) -> dict[str, Any] | None:
    """`attributes` with floats by repr (a `--deadline nan` equals itself)."""
    if attributes is None:
        return None
    return {k: repr(v) if isinstance(v, float) else v for k, v in attributes.items()}


@pytest.mark.parametrize("argv", COMMON, ids=" ".join)
def test_the_common_spellings_are_parsed_without_argparse(argv: list[str]) -> None:
    assert _agree(argv)


@pytest.mark.parametrize("argv", DECLINED, ids=repr)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert not _agree(argv)


def test_random_argvs_agree_or_are_declined() -> None:
    rng = random.Random(13)
    answered = 0
    for _ in range(4000):
        argv = rng.choices(WORDS, k=rng.randrange(0, 9))
        if rng.random() < 0.8:
            argv = [*rng.choices(["-v", "--verbose"], k=rng.randrange(0, 3)), "check", *argv]
        answered += _agree(argv)
    # Enough of them answered that the comparison means something.
    assert answered > 200


OPTIONS = ["--policy", "--insecure-registry", "--docker-config", "--platform", "--output"]
VALUES = [*WORDS[WORDS.index("p.yaml") :], "5", "json", "text", "-1", "=x", "a b", "\n"]


def test_random_options_with_random_values_agree_or_are_declined() -> None:
    """Mostly well-formed: options whole (with `=` or not) and values of every kind."""
    rng = random.Random(14)
    answered = 0
    for _ in range(4000):
        argv = ["check"]
        images_at = rng.randrange(0, 4)
        for index in range(rng.randrange(0, 5)):
            if index == images_at:
                argv += rng.choices(["img", "a/b:1", "é", f"img@{DIGEST}", "-i"], k=2)
            option, value = rng.choice([*OPTIONS, "--deadline"]), rng.choice(VALUES)
            argv += [f"{option}={value}"] if rng.random() < 0.3 else [option, value]
        if images_at >= 4 or rng.random() < 0.5:
            argv.append("last")
        answered += _agree(argv)
    assert answered > 400


def test_each_answer_is_a_fresh_namespace() -> None:
    first = cli._parse_check(["check", "img"])
    second = cli._parse_check(["check", "img"])
    assert first is not None and second is not None
    first.policy.append("p.yaml")
    assert second.policy == [] and first.images is not second.images
