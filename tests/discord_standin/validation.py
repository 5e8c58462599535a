"""Discord's limits and error bodies, so a bot that breaks a rule fails here as it would live.

``DiscordError`` carries the HTTP status, Discord's JSON error code and (for 50035 "Invalid Form
Body") the nested ``errors`` object discord.py flattens into ``HTTPException.text``.
"""

from __future__ import annotations

import re
from typing import Any


class DiscordError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None):
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            data["errors"] = self.errors
        return data


def unknown(kind: str, code: int) -> DiscordError:
    return DiscordError(404, code, f"Unknown {kind}")


UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_USER = 10013
UNKNOWN_EMOJI = 10014
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
UNKNOWN_COMMAND = 10063
EMPTY_MESSAGE = 50006
CANNOT_EDIT_OTHERS = 50005
MISSING_PERMISSIONS = 50013
MISSING_ACCESS = 50001
INVALID_FORM_BODY = 50035
ALREADY_ACKNOWLEDGED = 40060


def form_error(errors: list[tuple[str, str, str]]) -> DiscordError:
    """Build a 50035 from ``(dotted.path, CODE, message)`` triples, nested as Discord nests them."""
    tree: dict[str, Any] = {}
    for path, code, message in errors:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})
    return DiscordError(400, INVALID_FORM_BODY, "Invalid Form Body", tree)


def _max_len(problems: list, path: str, value: Any, limit: int) -> None:
    if isinstance(value, str) and len(value) > limit:
        problems.append((path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))


def check_message_body(body: dict[str, Any], *, prefix: str = "", n_files: int = 0,
                       require_something: bool = True) -> None:
    """Content, embed and component limits of Create/Edit Message and interaction responses."""
    p = f"{prefix}." if prefix else ""
    problems: list[tuple[str, str, str]] = []
    content = body.get("content")
    _max_len(problems, f"{p}content", content, 2000)
    flags = int(body.get("flags") or 0)
    if flags & (1 << 15) and content:
        problems.append((f"{p}content", "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                         "The 'content' field cannot be used when using MessageFlags.IS_COMPONENTS_V2"))
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        problems.append((f"{p}embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."))
    total = 0
    for i, embed in enumerate(embeds):
        e = f"{p}embeds.{i}"
        for key, limit in (("title", 256), ("description", 4096)):
            _max_len(problems, f"{e}.{key}", embed.get(key), limit)
            total += len(embed.get(key) or "")
        footer = (embed.get("footer") or {}).get("text")
        _max_len(problems, f"{e}.footer.text", footer, 2048)
        author = (embed.get("author") or {}).get("name")
        _max_len(problems, f"{e}.author.name", author, 256)
        total += len(footer or "") + len(author or "")
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append((f"{e}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
        for j, fld in enumerate(fields):
            _max_len(problems, f"{e}.fields.{j}.name", fld.get("name"), 256)
            _max_len(problems, f"{e}.fields.{j}.value", fld.get("value"), 1024)
            if not fld.get("name") or not fld.get("value"):
                problems.append((f"{e}.fields.{j}", "BASE_TYPE_REQUIRED", "This field is required"))
            total += len(fld.get("name") or "") + len(fld.get("value") or "")
    if total > 6000:
        problems.append((f"{p}embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"))
    _check_components(problems, f"{p}components", body.get("components") or [], v2=bool(flags & (1 << 15)))
    if problems:
        raise form_error(problems)
    if require_something and not (content or embeds or body.get("components") or n_files
                                  or body.get("sticker_ids") or body.get("poll")):
        raise DiscordError(400, EMPTY_MESSAGE, "Cannot send an empty message")


def _check_components(problems: list, path: str, rows: list[dict[str, Any]], *, v2: bool) -> None:
    if not v2 and len(rows) > 5:
        problems.append((path, "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."))
    for i, row in enumerate(rows):
        rp = f"{path}.{i}"
        if row.get("type") == 1:
            children = row.get("components") or []
            if not children or len(children) > 5:
                problems.append((f"{rp}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."))
            for j, child in enumerate(children):
                _check_component(problems, f"{rp}.components.{j}", child)
        else:
            _check_component(problems, rp, row)
            if row.get("components"):
                _check_components(problems, f"{rp}.components", row["components"], v2=True)


def _check_component(problems: list, path: str, comp: dict[str, Any]) -> None:
    _max_len(problems, f"{path}.custom_id", comp.get("custom_id"), 100)
    _max_len(problems, f"{path}.label", comp.get("label"), 80)
    _max_len(problems, f"{path}.placeholder", comp.get("placeholder"), 150)
    if comp.get("type") == 2 and comp.get("style") != 5 and comp.get("style") != 6 and not comp.get("custom_id"):
        problems.append((f"{path}.custom_id", "BASE_TYPE_REQUIRED", "This field is required"))
    options = comp.get("options")
    if isinstance(options, list) and len(options) > 25:
        problems.append((f"{path}.options", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length."))


def check_modal(data: dict[str, Any]) -> None:
    problems: list[tuple[str, str, str]] = []
    title = data.get("title") or ""
    if not title:
        problems.append(("data.title", "BASE_TYPE_REQUIRED", "This field is required"))
    _max_len(problems, "data.title", title, 45)
    _max_len(problems, "data.custom_id", data.get("custom_id"), 100)
    comps = data.get("components") or []
    if not 1 <= len(comps) <= 5:
        problems.append(("data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."))
    from .world import walk_components

    for i, comp in enumerate(walk_components(comps)):
        if comp.get("type") == 4:
            _max_len(problems, f"data.components.{i}.label", comp.get("label"), 45)
            _max_len(problems, f"data.components.{i}.value", comp.get("value"), 4000)
            _max_len(problems, f"data.components.{i}.placeholder", comp.get("placeholder"), 100)
            if (comp.get("max_length") or 0) > 4000:
                problems.append((f"data.components.{i}.max_length", "NUMBER_TYPE_MAX",
                                 "int value should be less than or equal to 4000."))
        if comp.get("type") == 18:
            _max_len(problems, f"data.components.{i}.label", comp.get("label"), 45)
    if problems:
        raise form_error(problems)


_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


def check_commands(commands: list[dict[str, Any]]) -> None:
    """The checks Discord applies on Bulk Overwrite Application Commands."""
    problems: list[tuple[str, str, str]] = []
    seen: set[tuple[int, str]] = set()
    for i, cmd in enumerate(commands):
        kind = cmd.get("type", 1)
        name = cmd.get("name", "")
        if (kind, name) in seen:
            problems.append((f"{i}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME",
                             f"Application command names must be unique: {name}"))
        seen.add((kind, name))
        if kind == 1:
            if not _COMMAND_NAME.match(name) or name != name.lower():
                problems.append((f"{i}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name}"))
            desc = cmd.get("description", "")
            if not 1 <= len(desc) <= 100:
                problems.append((f"{i}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."))
            _check_options(problems, f"{i}.options", cmd.get("options") or [])
        elif not 1 <= len(name) <= 32:
            problems.append((f"{i}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."))
    if problems:
        raise form_error(problems)


def _check_options(problems: list, path: str, options: list[dict[str, Any]]) -> None:
    if len(options) > 25:
        problems.append((path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
    optional_seen = False
    for i, opt in enumerate(options):
        op = f"{path}.{i}"
        if not _COMMAND_NAME.match(opt.get("name", "")):
            problems.append((f"{op}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"))
        if not 1 <= len(opt.get("description", "")) <= 100:
            problems.append((f"{op}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."))
        if opt.get("type") in (1, 2):
            _check_options(problems, f"{op}.options", opt.get("options") or [])
            continue
        if opt.get("required"):
            if optional_seen:
                problems.append((f"{op}.required", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                                 "Required options must be placed before non-required options"))
        else:
            optional_seen = True
        if len(opt.get("choices") or []) > 25:
            problems.append((f"{op}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))


def check_autocomplete_choices(choices: list[dict[str, Any]]) -> None:
    problems: list[tuple[str, str, str]] = []
    if len(choices) > 25:
        problems.append(("data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
    for i, choice in enumerate(choices):
        _max_len(problems, f"data.choices.{i}.name", choice.get("name"), 100)
        _max_len(problems, f"data.choices.{i}.value", choice.get("value"), 100)
    if problems:
        raise form_error(problems)
