"""The YAML that policy files are mostly written in, parsed without importing PyYAML.

`imageward check` reads its policy files on every run, and PyYAML costs more to import
(its scanner, parser, constructor, resolver and emitter, and the regexes they compile)
than the run takes. `parse_documents` reads a strict subset of YAML, the one
`yaml.safe_dump` writes and people write by hand:

- block mappings and block sequences (a sequence may sit at its key's indentation);
- plain scalars on one line, typed as PyYAML's safe loader types them (YAML 1.1);
- single-quoted scalars (over several lines too), double-quoted ones on one line with
  the simple escapes, and literal block scalars (`|`, `|-`, `|+`);
- flow sequences and mappings on one line (`["a", b]`, `{k: v}`);
- comments, and documents separated by `---`.

Anything else (anchors, aliases, tags, directives, folded or multi-line plain scalars,
tabs, carriage returns, non-ASCII text, duplicate keys, every error) gives None: the
caller then parses the text with PyYAML, which says what it says about it. So for any
text this returns either exactly what `yaml.load_all(text, yaml.CSafeLoader)` returns,
or None; `tests/unit/policy/test_yamlsubset.py` compares the two on a corpus and on mutations.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Any

#: Plain scalars PyYAML's resolver reads as something else than a string, by first
#: character (yaml/resolver.py): the words it knows exactly, and for numbers and times
#: its regexes (compiled only when a scalar starts like a number).
_BOOLS = {
    **dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
}
_NULLS = ("~", "null", "Null", "NULL", "")
_NUMERIC_START = frozenset("-+0123456789.")
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_NUMBER_PATTERNS = (
    # float, int and timestamp, as yaml/resolver.py writes them.
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+
    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$""",
    r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
    (?:[Tt]|[ \t]+)[0-9][0-9]?
    :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
    (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
)
_numbers: list[re.Pattern[str]] = []

#: Characters a plain scalar may not start with (YAML indicators); `-` may start one
#: when a non-space follows. Everything outside printable ASCII is refused up front.
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
_FLOW_INDICATORS = frozenset(",[]{}")
_ESCAPES = {
    "0": "\0",
    "a": "\x07",
    "b": "\x08",
    "t": "\t",
    "n": "\n",
    "v": "\x0b",
    "f": "\x0c",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
}
_ALLOWED = re.compile(r"[\n -~]*")
#: libyaml and PyYAML refuse a mapping key that ends over 1024 characters after its start
#: (a "simple key"); declining every longer line keeps that refusal theirs, and keeps the
#: flow-collection reader's work per line (it slices what is left of the line) small.
_MAX_LINE = 1024


class _Unsupported(Exception):
    """Internal: the text leaves the subset; PyYAML must read it."""


def parse_documents(text: str) -> list[Any] | None:
    """The documents of `text`, as PyYAML's safe loader makes them, or None when the text
    is not in the subset (then only PyYAML can say what it is)."""
    if not _ALLOWED.fullmatch(text) or any(len(line) > _MAX_LINE for line in text.split("\n")):
        return None
    try:
        return _Parser(text).documents()
    except _Unsupported:
        return None
    except Exception:  # a bug here must not change what check says: PyYAML decides
        return None


def _resolve(text: str) -> Any:
    """A plain scalar's value, as yaml.resolver.Resolver and SafeConstructor make it."""
    if not text or text in _NULLS:
        return None
    first = text[0]
    if first in "yYnNtTfFoO" and text in _BOOLS:
        return _BOOLS[text]
    if first in _NUMERIC_START:
        if _DECIMAL.fullmatch(text) and len(text) < 20:
            return int(text)
        if not _numbers:
            _numbers.extend(re.compile(pattern, re.X) for pattern in _NUMBER_PATTERNS)
        if any(pattern.match(text) for pattern in _numbers):
            raise _Unsupported  # a float, an octal, a sexagesimal, a timestamp...
    if text in ("=", "<<"):
        raise _Unsupported  # the value and merge tags
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _marker(indent: int, content: str) -> bool:
    """Whether a line is a document marker (`---` or `...` at column 0): it ends every
    block node open."""
    return indent == 0 and content[:3] in ("---", "...") and content[3:4] in ("", " ")


def _blank_or_comment(line: str) -> bool:
    stripped = line.lstrip(" ")
    return not stripped or stripped.startswith("#")


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.ends_with_newline = text.endswith("\n")
        self.row = 0

    # Lines -----------------------------------------------------------------------

    def _skip(self) -> None:
        """Past blank and comment lines (outside scalars they carry nothing)."""
        while self.row < len(self.lines) and _blank_or_comment(self.lines[self.row]):
            self.row += 1

    def _at_end(self) -> bool:
        self._skip()
        return self.row >= len(self.lines)

    def _peek(self) -> tuple[int, str]:
        """The next content line: its indentation and its text after it."""
        self._skip()
        line = self.lines[self.row]
        return _indent(line), line.lstrip(" ")

    # Documents -------------------------------------------------------------------

    def documents(self) -> list[Any]:
        documents: list[Any] = []
        explicit = False  # the current document began with `---`
        ended = False  # a document's root node was just read
        while not self._at_end():
            indent, content = self._peek()
            if indent == 0 and content == "..." and ended:
                self.row += 1
                if not self._at_end():
                    raise _Unsupported  # more after the stream's last document end
                break
            if indent == 0 and content.startswith(("---", "...", "%")):
                if content != "---":
                    raise _Unsupported  # `--- value`, `...` with more, directives
                if explicit:
                    documents.append(None)  # `---` after `---`: an empty document
                self.row += 1
                explicit, ended = True, False
                continue
            documents.append(self._node(indent, content, parent=-1))
            explicit, ended = False, True
            if not self._at_end():
                indent, content = self._peek()
                if not (indent == 0 and content.startswith(("---", "..."))):
                    raise _Unsupported  # more after the document's root node
        if explicit:
            documents.append(None)  # the stream ends after a `---`: an empty document
        return documents

    # Block nodes -----------------------------------------------------------------

    def _node(self, indent: int, content: str, *, parent: int) -> Any:
        """The block node whose first line is the current one (at `indent`)."""
        if content == "-" or content.startswith("- "):
            return self._sequence(indent, parent=parent)
        if self._key_end(content) is not None:
            return self._mapping(indent, content)
        return self._inline(content, indent=indent, parent=parent)

    def _sequence(self, indent: int, *, parent: int) -> list[Any]:
        items: list[Any] = []
        while not self._at_end():
            at, content = self._peek()
            if at < indent or _marker(at, content):
                break
            if at > indent:
                raise _Unsupported
            if not content.startswith("- "):
                if content == "-":
                    raise _Unsupported  # an entry on the next lines
                if indent > parent:
                    raise _Unsupported  # something else at the entries' indentation
                break  # a compact sequence ends at its parent mapping's next key
            rest = content[2:]
            column = indent + 2 + _indent(rest)
            rest = rest.lstrip(" ")
            if not rest or rest.startswith("#") or rest == "-" or rest.startswith("- "):
                raise _Unsupported  # nested sequences, entries on the next lines
            if self._key_end(rest) is not None:
                items.append(self._mapping(column, rest))
            else:
                items.append(self._inline(rest, indent=indent, parent=indent))
        return items

    def _mapping(self, indent: int, first: str) -> dict[Any, Any]:
        """The mapping whose first key is `first` (the current line's text from `indent`)."""
        mapping: dict[Any, Any] = {}
        content = first
        while True:
            end = self._key_end(content)
            if end is None:
                raise _Unsupported
            key_text, rest = content[:end], content[end + 1 :]
            key = self._key(key_text)
            if key in mapping:
                raise _Unsupported  # PyYAML keeps the last; leave that to it
            stripped = rest.strip(" ")
            if not stripped or stripped.startswith("#"):
                self.row += 1
                mapping[key] = self._block_value(indent)
            else:
                mapping[key] = self._inline(rest.lstrip(" "), indent=indent, parent=indent)
            if self._at_end():
                break
            at, content = self._peek()
            if at < indent or _marker(at, content):
                break
            if at > indent:
                raise _Unsupported
        return mapping

    def _block_value(self, indent: int) -> Any:
        """The value of a key at `indent` given on the lines after it (or null)."""
        if self._at_end():
            return None
        at, content = self._peek()
        if _marker(at, content):
            return None
        if at > indent:
            return self._node(at, content, parent=indent)
        if at == indent and (content == "-" or content.startswith("- ")):
            return self._sequence(at, parent=indent)
        return None

    def _key_end(self, content: str) -> int | None:
        """Where the `:` ending a simple key is, in a line's text; None: not a key."""
        if content[0] in "[{":
            return None  # a flow collection (as a key, PyYAML's)
        if content[0] in "'\"":
            close = self._quoted_end(content)
            if close is None:
                return None
            after = close + 1
            if content[after : after + 1] == ":" and content[after + 1 : after + 2] in ("", " "):
                return after
            return None
        position = content.find(":")
        while position != -1:
            if content[position + 1 : position + 2] in ("", " "):
                key = content[:position]
                if " #" in key:
                    return None  # the colon is in a comment
                return position
            position = content.find(":", position + 1)
        return None

    def _quoted_end(self, content: str) -> int | None:
        """The closing quote of the quoted scalar starting `content`, on its line."""
        quote = content[0]
        index = 1
        while index < len(content):
            char = content[index]
            if quote == "'" and char == "'":
                if content[index + 1 : index + 2] == "'":
                    index += 2
                    continue
                return index
            if quote == '"':
                if char == "\\":
                    index += 2
                    continue
                if char == '"':
                    return index
            index += 1
        return None

    def _key(self, text: str) -> Any:
        if not text.strip(" "):
            raise _Unsupported  # an empty key
        if text[0] in "'\"":
            value, rest = self._quoted_line(text)
            if rest:
                raise _Unsupported
            return value
        return self._plain(text.rstrip(" "), flow=False)

    # Scalars and flow collections ---------------------------------------------------

    def _inline(self, content: str, *, indent: int, parent: int) -> Any:
        """A value that starts on the current line (after `key: ` or `- `); moves past it.
        `indent` is the indentation of the mapping or sequence it is in."""
        first = content[0]
        if first == "|":
            return self._literal(content, indent=indent)
        if first == "'":
            value = self._single_quoted(content, indent=indent)
        else:
            if first == '"':
                value, rest = self._quoted_line(content)
            elif first in "[{":
                value, rest = self._flow(content, 0)
            else:
                value, rest = self._plain_with_rest(content)
            if rest.strip(" ") and not rest.lstrip(" ").startswith("#"):
                raise _Unsupported
            if rest and not rest.startswith(" "):
                raise _Unsupported
            self.row += 1
        if not self._at_end():
            at, _ = self._peek()
            if at > max(indent, parent):
                raise _Unsupported  # a continuation line (or an error)
        return value

    def _plain_with_rest(self, content: str) -> tuple[Any, str]:
        end = content.find(" #")
        text, rest = (content, "") if end == -1 else (content[:end], content[end:])
        text = text.rstrip(" ")
        if ": " in text or text.endswith(":"):
            raise _Unsupported
        return self._plain(text, flow=False), rest

    def _plain(self, text: str, *, flow: bool) -> Any:
        if not text:
            raise _Unsupported
        first = text[0]
        if first in _INDICATORS and not (first == "-" and len(text) > 1 and text[1] != " "):
            raise _Unsupported
        if flow and any(char in _FLOW_INDICATORS or char == "?" for char in text):
            raise _Unsupported
        if " #" in text or ": " in text or text.endswith(":"):
            raise _Unsupported
        return _resolve(text)

    def _quoted_line(self, content: str) -> tuple[str, str]:
        """A quoted scalar that ends on this line, and the text after it."""
        close = self._quoted_end(content)
        if close is None:
            raise _Unsupported  # multi-line double-quoted: PyYAML folds it
        body = content[1:close]
        if content[0] == "'":
            return body.replace("''", "'"), content[close + 1 :]
        out: list[str] = []
        index = 0
        while index < len(body):
            char = body[index]
            if char == "\\":
                escape = body[index + 1 : index + 2]
                if escape not in _ESCAPES:
                    raise _Unsupported  # \x, \u, \U, errors
                out.append(_ESCAPES[escape])
                index += 2
            else:
                out.append(char)
                index += 1
        return "".join(out), content[close + 1 :]

    def _single_quoted(self, content: str, *, indent: int) -> str:
        """A single-quoted scalar from the current line, over as many lines as it takes,
        folded as yaml.scanner folds them; moves past its last line."""
        if self._quoted_end(content) is not None:
            value, rest = self._quoted_line(content)
            if rest.strip(" ") and not rest.lstrip(" ").startswith("#"):
                raise _Unsupported
            if rest and not rest.startswith(" "):
                raise _Unsupported
            self.row += 1
            return value
        chunks = [content[1:].rstrip(" ").replace("''", "'")]
        if "'" in chunks[0]:
            raise _Unsupported  # cannot happen: no closing quote on this line
        breaks = 0
        while True:
            self.row += 1
            if self.row >= len(self.lines):
                raise _Unsupported  # unterminated
            line = self.lines[self.row]
            if line.startswith(("---", "...")) or (line.strip(" ") and _indent(line) <= indent):
                raise _Unsupported  # a document marker, or not indented under its key
            text = line.strip(" ")
            if not text:
                breaks += 1
                continue
            chunks.append("\n" * breaks if breaks else " ")
            breaks = 0
            close = self._quoted_end("'" + text)
            if close is None:
                chunks.append(text.replace("''", "'"))
                continue
            close -= 1  # in `text`
            chunks.append(text[:close].replace("''", "'"))
            rest = text[close + 1 :]
            if rest and not (rest.startswith(" ") and rest.lstrip(" ").startswith("#")):
                raise _Unsupported
            self.row += 1
            return "".join(chunks)

    def _literal(self, content: str, *, indent: int) -> str:
        """A literal block scalar (`|`, `|-`, `|+`); moves past its last line."""
        header = content.split(" #", 1)[0].rstrip(" ")
        if header not in ("|", "|-", "|+"):
            raise _Unsupported  # indentation indicators, `>`
        self.row += 1
        lines: list[str] = []
        block_indent: int | None = None
        while self.row < len(self.lines):
            line = self.lines[self.row]
            if not line.strip(" "):
                lines.append(line)
                self.row += 1
                continue
            at = _indent(line)
            if block_indent is None:
                if at <= indent:
                    break
                block_indent = at
            if at < block_indent:
                break
            lines.append(line)
            self.row += 1
        if block_indent is None:
            raise _Unsupported  # an empty block scalar
        if self.row >= len(self.lines) and not self.ends_with_newline:
            raise _Unsupported  # the last line has no line break
        # The text's own last "line" after its final newline is not a line.
        if self.row >= len(self.lines) and lines and lines[-1] == "":
            lines.pop()
        body = []
        for line in lines:
            if not line.strip(" "):
                if len(line) > block_indent:
                    raise _Unsupported  # spaces beyond the indentation are content
                body.append("")
            else:
                body.append(line[block_indent:])
        while body and body[-1] == "":
            body.pop()
        trailing = len(lines) - len(body)  # blank lines after the last content line
        text = "\n".join(body)
        if header == "|-":
            return text
        if header == "|":
            return text + "\n"
        return text + "\n" + "\n" * trailing

    def _flow(self, content: str, start: int) -> tuple[Any, str]:
        """A flow sequence or mapping that closes on this line, and the text after it."""
        opener = content[start]
        closer = "]" if opener == "[" else "}"
        index = start + 1
        items: list[Any] = []
        mapping: dict[Any, Any] = {}
        expect_item = True
        while True:
            while content[index : index + 1] == " ":
                index += 1
            if index >= len(content):
                raise _Unsupported  # continues on the next line
            char = content[index]
            if char == closer:
                if expect_item and (items or mapping):
                    raise _Unsupported  # a trailing comma
                index += 1
                break
            if not expect_item:
                if char != ",":
                    raise _Unsupported
                index += 1
                expect_item = True
                continue
            key, index = self._flow_scalar_or_collection(content, index)
            if opener == "{":
                if content[index : index + 2] != ": ":
                    raise _Unsupported  # a key without a value, `k:v`
                index += 2
                while content[index : index + 1] == " ":
                    index += 1
                value, index = self._flow_scalar_or_collection(content, index)
                if isinstance(key, (dict, list)) or key in mapping:
                    raise _Unsupported
                mapping[key] = value
            else:
                if content[index : index + 1] == ":":
                    raise _Unsupported  # a single-pair mapping in a sequence
                items.append(key)
            expect_item = False
        return (items if opener == "[" else mapping), content[index:]

    def _flow_scalar_or_collection(self, content: str, index: int) -> tuple[Any, int]:
        char = content[index : index + 1]
        if char in ("[", "{"):
            value, rest = self._flow(content, index)
            return value, len(content) - len(rest)
        if char in ("'", '"'):
            value, rest = self._quoted_line(content[index:])
            return value, len(content) - len(rest)
        end = index
        while end < len(content) and content[end] not in ",[]{}":
            if content[end] == ":" and content[end + 1 : end + 2] in (" ", ",", "]", "}", ""):
                break
            if content[end] == "#" and content[end - 1] == " ":
                raise _Unsupported  # a comment inside a flow collection
            end += 1
        text = content[index:end].rstrip(" ")
        return self._plain(text, flow=True), index + len(content[index:end].rstrip(" "))
