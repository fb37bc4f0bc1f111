"""A mirror of figment's parser for environment-variable values (the form the chart writes
CROWDTICK_* variables in), so the checks can read back what CrowdTick will load."""

from __future__ import annotations

from typing import Any


class FigmentParseError(ValueError):
    pass


def figment_unescape(inner: str) -> str:
    """figment 0.10's value/escape.rs: TOML basic-string escapes; raw control characters refused."""
    out, i = [], 0
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            if i + 1 >= len(inner):
                raise FigmentParseError("unterminated escape")
            e = inner[i + 1]
            simple = {'"': '"', "\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
            if e in simple:
                out.append(simple[e])
                i += 2
            elif e in "uU":
                n = 4 if e == "u" else 8
                digits = inner[i + 2:i + 2 + n]
                if len(digits) != n or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise FigmentParseError(f"bad \\{e} escape {digits!r}")
                code = int(digits, 16)
                if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                    raise FigmentParseError(f"escape \\{e}{digits} is no character")
                out.append(chr(code))
                i += 2 + n
            else:
                raise FigmentParseError(f"invalid escape \\{e}")
        elif c == "\t" or ("\u0020" <= c and c != "\u007f"):
            out.append(c)
            i += 1
        else:
            raise FigmentParseError(f"invalid character {c!r} in a string")
    return "".join(out)


def parse_figment_env_value(text: str) -> Any:
    """What figment 0.10 (CrowdTick's configuration library) makes of an environment variable's
    value (value/parse.rs), for what the chart writes: arrays, inline tables, quoted strings,
    integers, booleans and bare strings. Raises unless the whole text parses as one value: figment
    would then take the text as one plain string, which CrowdTick refuses for a list."""
    pos = 0

    def ws() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace() and text[pos].isascii():
            pos += 1

    def string() -> str:
        nonlocal pos
        assert text[pos] == '"'
        end, escaped = pos + 1, False
        while end < len(text) and (escaped or text[end] != '"'):
            escaped = not escaped and text[end] == "\\"
            end += 1
        if end >= len(text):
            raise FigmentParseError("unterminated string")
        inner, pos = text[pos + 1:end], end + 1
        return figment_unescape(inner)

    def collect(close: str, item) -> list:
        nonlocal pos
        pos += 1
        items = []
        ws()
        if pos < len(text) and text[pos] == close:
            pos += 1
            return items
        while True:
            items.append(item())
            ws()
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if pos < len(text) and text[pos] == close:
                pos += 1
                return items
            raise FigmentParseError(f"expected ',' or {close!r} at {pos}: {text[pos:pos + 20]!r}")

    def key_value() -> tuple[str, Any]:
        nonlocal pos
        ws()
        if pos < len(text) and text[pos] == '"':
            key = string()
        else:
            start = pos
            while pos < len(text) and (text[pos].isascii() and (text[pos].isalnum() or text[pos] in "_-")):
                pos += 1
            key = text[start:pos]
            if not key:
                raise FigmentParseError(f"expected a key at {pos}")
        ws()
        if pos >= len(text) or text[pos] != "=":
            raise FigmentParseError(f"expected '=' at {pos}")
        pos += 1
        return key, value()

    def value() -> Any:
        nonlocal pos
        ws()
        if text.startswith("true", pos):
            pos += 4
            result: Any = True
        elif text.startswith("false", pos):
            pos += 5
            result = False
        elif text.startswith("{", pos):
            pairs = collect("}", key_value)
            result = dict(pairs)
            if len(result) != len(pairs):
                raise FigmentParseError("a key appears twice in an inline table")
        elif text.startswith("[", pos):
            result = collect("]", value)
        elif text.startswith('"', pos):
            result = string()
        else:
            start = pos
            while pos < len(text) and text[pos] not in ",{}[]":
                pos += 1
            bare = text[start:pos].strip()
            try:
                result = float(bare) if "." in bare else int(bare)
            except ValueError:
                result = bare
        ws()
        return result

    parsed = value()
    if pos != len(text):
        raise FigmentParseError(f"trailing text at {pos}: {text[pos:pos + 20]!r}")
    return parsed
