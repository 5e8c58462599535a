"""A small renderer for the subset of Go's text/template that Ollama chat templates use.

Enough to check, without Go or Ollama, that a template we pass to `create` renders exactly what
the model's Hugging Face chat template renders: `{{- -}}` trimming, if / else if / else / end,
range (with `$i, $_ :=`), `$x :=` and `$x =`, fields (`.Role`, `$.System`), and the functions
eq, ne, and, or, not, len, slice. `render_ollama` prepares the data the way Ollama does
(consecutive same-role messages merged, `.System` = all system messages joined).
"""
from __future__ import annotations

import re
import shlex
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next, pos = bool(m.group(3)), m.end()
    text = template[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str]:
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(" ", 1)[0]
        if word in stop:
            return nodes, i, value
        if word == "if":
            branches = []
            cond = value[3:]
            while True:
                body, i, ender = _parse(tokens, i, ("else", "end"))
                branches.append((cond, body))
                if ender == "end":
                    break
                cond = ender[len("else if "):] if ender.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif word == "range":
            spec = value[len("range "):]
            names: list[str] = []
            if ":=" in spec:
                left, spec = spec.split(":=", 1)
                names = [n.strip() for n in left.split(",")]
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("range", names, spec.strip(), body))
        elif re.match(r"^\$\w+\s*:?=", value):
            name, op, expr = re.match(r"^(\$\w+)\s*(:?=)\s*(.*)$", value, re.S).groups()
            nodes.append(("set" if op == ":=" else "assign", name, expr))
        else:
            nodes.append(("print", value))
    if stop:
        raise ValueError("template: unexpected EOF")
    return nodes, i, ""


def _truthy(v: Any) -> bool:
    return bool(v) if v is not None else False


class _Scope:
    def __init__(self, root: Any):
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise KeyError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise KeyError(f"undefined variable {name}")


def _split_args(expr: str) -> list[str]:
    args, depth, cur, quote = [], 0, "", False
    for ch in expr:
        if ch == '"':
            quote = not quote
        if not quote and ch == "(":
            depth += 1
        if not quote and ch == ")":
            depth -= 1
        if ch.isspace() and depth == 0 and not quote:
            if cur:
                args.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        args.append(cur)
    return args


def _field(obj: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _eval(expr: str, dot: Any, scope: _Scope) -> Any:
    args = _split_args(expr.strip())
    if len(args) > 1 or (args and args[0] in _FUNCS):
        fn, rest = args[0], [_eval(a, dot, scope) for a in args[1:]]
        return _FUNCS[fn](*rest)
    (arg,) = args
    if arg.startswith("(") and arg.endswith(")"):
        return _eval(arg[1:-1], dot, scope)
    if arg.startswith('"'):
        return shlex.split(arg)[0]
    if arg in ("true", "false"):
        return arg == "true"
    if re.fullmatch(r"-?\d+", arg):
        return int(arg)
    if arg.startswith("$"):
        name, _, path = arg.partition(".")
        return _field(scope.get(name), path)
    if arg.startswith("."):
        return _field(dot, arg)
    raise ValueError(f"cannot evaluate {arg!r}")


def _and(*xs: Any) -> Any:
    for x in xs:
        if not _truthy(x):
            return x
    return xs[-1]


def _or(*xs: Any) -> Any:
    for x in xs:
        if _truthy(x):
            return x
    return xs[-1]


_FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs), "ne": lambda a, b: a != b,
    "and": _and, "or": _or, "not": lambda x: not _truthy(x), "len": len,
    "slice": lambda x, i, j=None: x[i:j],
}


def _run(nodes: list, dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            value = _eval(node[1], dot, scope)
            out.append("" if value is None else str(value))
        elif kind == "set":
            scope.frames[-1][node[1]] = _eval(node[2], dot, scope)
        elif kind == "assign":
            scope.assign(node[1], _eval(node[2], dot, scope))
        elif kind == "if":
            for cond, body in node[1]:
                if _truthy(_eval(cond, dot, scope)):
                    scope.frames.append({})
                    _run(body, dot, scope, out)
                    scope.frames.pop()
                    break
        elif kind == "range":
            _, names, expr, body = node
            for index, item in enumerate(_eval(expr, dot, scope)):
                frame: dict[str, Any] = {}
                if len(names) == 2:
                    frame[names[0]], frame[names[1]] = index, item
                elif len(names) == 1:
                    frame[names[0]] = item
                scope.frames.append(frame)
                _run(body, item, scope, out)
                scope.frames.pop()


def render(template: str, data: dict[str, Any]) -> str:
    nodes, _, _ = _parse(_tokens(template))
    out: list[str] = []
    _run(nodes, data, _Scope(data), out)
    return "".join(out)


def render_ollama(template: str, messages: list[dict[str, str]]) -> str:
    """Render as Ollama's chat endpoint does: messages collated, `.System` gathered."""
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return render(template, {"Messages": collated, "System": system})
