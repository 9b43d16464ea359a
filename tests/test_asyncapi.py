"""The AsyncAPI document: kept current in docs/, served, and true to what the server sends."""

from __future__ import annotations

import asyncio
import json
import re
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import falcon.testing
import msgpack
import pytest
from falcon.testing import ASGIConductor
from jsonschema import (  # type: ignore[import-untyped]
    Draft7Validator,
    Draft202012Validator,
    FormatChecker,
)
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from reports_service import __version__, protocol
from reports_service.asyncapi import build_document, render
from reports_service.config import Settings
from reports_service.records import NewReport
from reports_service.repository import ReportRepository

from .conftest import TOKEN, WRITE_TOKEN
from .drift import assert_current

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "asyncapi.json"
REGENERATE = "python -m reports_service.asyncapi > docs/asyncapi.json"
SESSION_DOCS = (ROOT / "docs" / "protocol.md", ROOT / "README.md")
URI = "urn:reports-service:asyncapi"
TIMEOUT = 5.0
EXPIRING = "test-expiring-token-0123456789"
SECOND = timedelta(seconds=1)

# Keywords of JSON Schema 2019-09/2020-12 that AsyncAPI's schema (a superset of draft 07) lacks.
NOT_IN_DRAFT_07 = frozenset(
    {
        "$defs",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$vocabulary",
        "prefixItems",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedItems",
        "unevaluatedProperties",
        "minContains",
        "maxContains",
    }
)


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return "T" in value and datetime.fromisoformat(value).tzinfo is not None


FORMATS = FormatChecker(formats=())
FORMATS.checks("date-time", raises=ValueError)(_date_time)


class Spec:
    """An AsyncAPI document, read the way a client generator would read it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        resource = DRAFT202012.create_resource(document)
        self.registry: Registry[Any] = Registry().with_resource(URI, resource)
        self._validators: dict[tuple[str, str], Any] = {}

    def resolve(self, ref: str) -> Any:
        assert ref.startswith("#/"), f"not a local reference: {ref}"
        node: Any = self.doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]
        return node

    def keys(self, refs: list[dict[str, str]], channel: str) -> list[str]:
        """Message keys in ``channel`` of a list of ``$ref``s (operation or reply messages)."""
        prefix = f"#/channels/{channel}/messages/"
        assert all(r["$ref"].startswith(prefix) for r in refs), refs
        return [r["$ref"].removeprefix(prefix) for r in refs]

    def channel_of(self, holder: dict[str, Any]) -> str:
        ref: str = holder["channel"]["$ref"]
        assert ref.startswith("#/channels/"), ref
        name = ref.removeprefix("#/channels/")
        assert name in self.doc["channels"], ref
        return name

    def received(self, channel: str) -> set[str]:
        """Keys of the messages the server receives on ``channel``."""
        return {
            key
            for op in self.doc["operations"].values()
            if op["action"] == "receive" and self.channel_of(op) == channel
            for key in self.keys(op["messages"], channel)
        }

    def sent(self, channel: str) -> set[str]:
        """Keys of the messages the server sends on ``channel``: replies and pushed messages."""
        found: set[str] = set()
        for op in self.doc["operations"].values():
            if op["action"] == "send" and self.channel_of(op) == channel:
                found.update(self.keys(op["messages"], channel))
            if "reply" in op and self.channel_of(op) == channel:
                found.update(self.keys(op["reply"]["messages"], self.channel_of(op["reply"])))
        return found

    def message(self, channel: str, key: str) -> dict[str, Any]:
        message: dict[str, Any] = self.resolve(self.pointer(channel, key))
        return message

    def pointer(self, channel: str, key: str) -> str:
        entry = self.doc["channels"][channel]["messages"][key]
        return str(entry["$ref"]) if "$ref" in entry else f"#/channels/{channel}/messages/{key}"

    def validator(self, channel: str, key: str) -> Any:
        if (channel, key) not in self._validators:
            schema = {"$ref": f"{URI}{self.pointer(channel, key)}/payload"}
            self._validators[channel, key] = Draft202012Validator(
                schema, registry=self.registry, format_checker=FORMATS
            )
        return self._validators[channel, key]

    def valid(self, channel: str, key: str, value: Any) -> bool:
        return bool(self.validator(channel, key).is_valid(value))

    def matching(self, channel: str, keys: set[str], value: Any) -> set[str]:
        return {key for key in keys if self.valid(channel, key, value)}


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in refs_in(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs_in(value)]
    return []


def keywords_in(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = set(schema)
        for key, value in schema.items():
            if key in ("properties", "patternProperties"):
                found.update(k for sub in value.values() for k in keywords_in(sub))
            elif key not in ("enum", "const", "default", "examples", "required"):
                found.update(keywords_in(value))
        return found
    if isinstance(schema, list):
        return {k for sub in schema for k in keywords_in(sub)}
    return set()


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(build_document())


# -- (a) the copy in docs/ ------------------------------------------------------------------


def test_docs_copy_is_current() -> None:
    assert_current(DOCUMENT, render(), REGENERATE)


# -- (b) served by the app ------------------------------------------------------------------


async def test_served_at_asyncapi_json(conductor: ASGIConductor) -> None:
    result = await conductor.simulate_get("/asyncapi.json")
    assert result.status_code == 200
    assert (result.content_type or "").split(";")[0].strip() == "application/json"
    assert result.json == build_document()


# -- (c) real messages against the document -------------------------------------------------


class Session:
    """One WebSocket, in JSON (text frames) or MessagePack (binary frames), checked as it goes.

    Each message sent is checked against the operation it is meant for, and each message
    received against the one message the document says it is (it must match no other message
    the server sends on the channel).
    """

    def __init__(self, spec: Spec, ws: falcon.testing.ASGIWebSocketSimulator, binary: bool) -> None:
        self.spec, self.ws, self.binary = spec, ws, binary
        self.channel = "reports"
        self.seen_received: set[str] = set()
        self.seen_sent: set[str] = set()

    async def send(self, value: Any, *, raw: bytes | None = None) -> None:
        if raw is not None:
            await self.ws.send_data(raw)
        elif self.binary:
            await self.ws.send_data(msgpack.packb(value))
        elif isinstance(value, str):
            await self.ws.send_text(value)  # a plain query or a token is the text itself
        else:
            await self.ws.send_text(json.dumps(value))

    async def receive(self) -> Any:
        if self.binary:
            data = await asyncio.wait_for(self.ws.receive_data(), TIMEOUT)
            return msgpack.unpackb(data)
        return json.loads(await asyncio.wait_for(self.ws.receive_text(), TIMEOUT))

    def operation(self, op_id: str) -> dict[str, Any]:
        op: dict[str, Any] = self.spec.doc["operations"][op_id]
        assert self.spec.channel_of(op) == self.channel, op_id
        return op

    def check_sent(self, op_id: str, value: Any, *, valid: bool = True) -> None:
        op = self.operation(op_id)
        assert op["action"] == "receive", op_id
        [key] = self.spec.keys(op["messages"], self.channel)
        if not valid:
            assert not self.spec.valid(self.channel, key, value), (op_id, value)
            return
        # NOTE: a token is a string, as a plain query is: it is told apart by coming first.
        others = self.spec.received(self.channel) - {"token"} if key != "token" else {key}
        assert self.spec.matching(self.channel, others, value) == {key}, (op_id, value)
        self.seen_received.add(key)

    def check_received(self, op_id: str, value: Any, key: str) -> None:
        op = self.operation(op_id)
        if op["action"] == "receive":
            allowed = self.spec.keys(op["reply"]["messages"], self.spec.channel_of(op["reply"]))
        else:
            allowed = self.spec.keys(op["messages"], self.channel)
        assert key in allowed, f"{op_id} does not say it may send {key}"
        validator = self.spec.validator(self.channel, key)
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, f"{value!r} is not a valid {key}: {errors}"
        matches = self.spec.matching(self.channel, self.spec.sent(self.channel), value)
        assert matches == {key}, f"{value!r} matches {sorted(matches)}, not just {key}"
        self.seen_sent.add(key)

    async def exchange(
        self, op_id: str, value: Any, *replies: str, valid: bool = True, raw: bytes | None = None
    ) -> list[Any]:
        """Send ``value`` for operation ``op_id``; receive and check one message per key."""
        if raw is None:
            self.check_sent(op_id, value, valid=valid)
        await self.send(value, raw=raw)
        received = []
        for key in replies:
            message = await self.receive()
            self.check_received(op_id, message, key)
            received.append(message)
        return received


ENCODINGS = pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])


@ENCODINGS
async def test_reports_messages_match_the_document(
    conductor: ASGIConductor, seeded_repository: ReportRepository, spec: Spec, binary: bool
) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        s = Session(spec, ws, binary)
        await s.exchange("receiveToken", WRITE_TOKEN)
        await s.exchange("receivePlainQuery", "report1", "plainReport")
        await s.exchange("receivePlainQuery", "report9", "plainError")
        if binary:
            await s.exchange("receivePlainQuery", 42, "plainError", valid=False)
            await s.exchange("receivePlainQuery", None, "plainError", raw=b"\xc1")
        else:
            await s.exchange("receivePlainQuery", '{"name": "report1"}', "plainError")

        typed: list[tuple[str, dict[str, Any], bool, str]] = [
            ("receiveGet", {"type": "get", "id": 1, "name": "report1"}, True, "getReply"),
            ("receiveGet", {"type": "get", "id": "two", "name": "report9"}, True, "errorReply"),
            ("receiveGet", {"type": "get", "id": 3}, False, "errorReply"),
            ("receiveList", {"type": "list", "id": 4, "limit": 2}, True, "pageReply"),
            ("receiveList", {"type": "list", "cursor": "3"}, True, "pageReply"),
            ("receiveList", {"type": "list", "id": 5, "cursor": "x"}, False, "errorReply"),
            ("receiveList", {"type": "list", "id": 50, "cursor": "9" * 19}, True, "errorReply"),
            ("receiveSearch", {"type": "search", "id": 6, "q": "report 3"}, True, "pageReply"),
            ("receiveSearch", {"type": "search", "id": 7, "q": ""}, False, "errorReply"),
            ("receivePing", {"type": "ping", "id": 8}, True, "pongReply"),
            ("receivePing", {"type": "ping"}, True, "pongReply"),
            ("receiveUnknownRequest", {"type": "frobnicate", "id": 9}, True, "errorReply"),
            ("receivePut", {"type": "put", "id": 20, "name": "y", "title": "Y"}, True, "getReply"),
            ("receivePut", {"type": "put", "id": 21, "name": "y"}, False, "errorReply"),
            ("receiveRemove", {"type": "remove", "id": 22, "name": "y"}, True, "removeReply"),
            ("receiveRemove", {"type": "remove", "id": 23, "name": "y"}, True, "errorReply"),
            ("receiveAuth", {"type": "auth", "id": 24, "token": WRITE_TOKEN}, True, "authReply"),
            ("receiveAuth", {"type": "auth", "id": 25, "token": TOKEN}, True, "errorReply"),
            ("receiveAuth", {"type": "auth", "id": 26, "token": "nope"}, True, "errorReply"),
            ("receiveAuth", {"type": "auth", "id": 27}, False, "errorReply"),
        ]
        codes = {}
        for op_id, request, valid, key in typed:
            [reply] = await s.exchange(op_id, request, key, valid=valid)
            assert reply["id"] == request.get("id")
            codes[reply["id"]] = reply["error"]["code"] if "error" in reply else None
        # A refresh to another subject's token, or to a bad one, leaves the writer's in force.
        assert (codes[24], codes[25], codes[26]) == (None, "forbidden", "invalid_token")

        since = {"type": "subscribe", "id": 11, "since": 10**9}
        await s.exchange("receiveSubscribe", since, "subscriptionReply")
        resync = await s.receive()
        s.check_received("sendChanges", resync, "resyncEvent")
        await s.exchange(
            "receiveUnsubscribe", {"type": "unsubscribe", "id": 12}, "subscriptionReply"
        )

        subscribe = {"type": "subscribe", "id": 13, "names": ["x"]}
        await s.exchange("receiveSubscribe", subscribe, "subscriptionReply")
        await s.exchange(
            "receiveSubscribe", {"type": "subscribe", "id": 14, "since": 0}, "errorReply"
        )
        await seeded_repository.add_reports([NewReport("x", "X", "c")])
        pushed = await s.receive()
        s.check_received("sendChanges", pushed, "reportEvent")
        assert (pushed["type"], pushed["report"]["name"]) == ("report.added", "x")

    # A token that expires soon: `auth` as the first message, then the warning.
    expires = datetime.now(UTC) + timedelta(seconds=Settings().token_expiry_warning + 1)
    await seeded_repository.create_token(name="expiring", token=EXPIRING, expires_at=expires)
    async with conductor.simulate_ws("/reports") as ws:
        s.ws = ws
        first = {"type": "auth", "id": 40, "token": EXPIRING}
        [reply] = await s.exchange("receiveAuth", first, "authReply")
        assert reply["result"]["subject"] == "expiring"
        assert abs(datetime.fromisoformat(reply["result"]["expires_at"]) - expires) < SECOND
        warning = await s.receive()
        s.check_received("sendTokenExpiring", warning, "tokenExpiring")
        assert abs(datetime.fromisoformat(warning["expires_at"]) - expires) < SECOND

        # Every message the document has on /reports was seen, both ways.
        assert s.seen_received == spec.received("reports")
        assert s.seen_sent == spec.sent("reports")


async def test_unsubscribe_before_subscribe_is_answered(
    conductor: ASGIConductor, spec: Spec
) -> None:
    async with conductor.simulate_ws("/reports") as ws:
        s = Session(spec, ws, binary=False)
        await s.exchange("receiveToken", TOKEN)
        await s.send({"type": "unsubscribe", "id": 1})
        reply = json.loads(await asyncio.wait_for(ws.receive_text(), 1.0))
        s.check_received("receiveUnsubscribe", reply, "subscriptionReply")


@ENCODINGS
async def test_echo_messages_match_the_document(
    conductor: ASGIConductor, spec: Spec, binary: bool
) -> None:
    async with conductor.simulate_ws("/echo") as ws:
        s = Session(spec, ws, binary)
        s.channel = "echo"
        [reply] = await s.exchange("receiveEcho", "hi", "echoReply")
        assert reply["message"] == "hi"
        if binary:
            value = {"a": [1, 2.5, None, True], "b": "c"}
            [reply] = await s.exchange("receiveEcho", value, "echoReply")
            assert reply["message"] == value
            await s.exchange("receiveEcho", None, "echoError", raw=b"\xc1")
            assert s.seen_sent == spec.sent("echo")
        assert s.seen_received == spec.received("echo")


# -- (d) the document itself ----------------------------------------------------------------


def test_document_structure(spec: Spec) -> None:
    doc = spec.doc
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == __version__
    assert {s["protocol"] for s in doc["servers"].values()} == {"ws"}

    for ref in refs_in(doc):
        spec.resolve(ref)

    used: set[tuple[str, str]] = set()
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), op_id
        channel = spec.channel_of(op)
        keys = spec.keys(op["messages"], channel)
        assert keys, f"{op_id} has no messages"
        used.update((channel, key) for key in keys)
        if "reply" in op:
            assert op["action"] == "receive", f"{op_id}: only a received request has a reply"
            reply_channel = spec.channel_of(op["reply"])
            used.update((reply_channel, k) for k in spec.keys(op["reply"]["messages"], channel))

    in_channels: set[str] = set()
    for name, channel in doc["channels"].items():
        assert channel["address"] == f"/{name}"
        for key in channel["messages"]:
            assert (name, key) in used, f"no operation uses {key} on {name}"
            message = spec.message(name, key)
            assert "payload" in message, key
            in_channels.add(spec.pointer(name, key))
    unused = {f"#/components/messages/{k}" for k in doc["components"]["messages"]} - in_channels
    assert not unused, f"messages in no channel: {sorted(unused)}"

    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft7Validator.check_schema(schema)
        Draft202012Validator.check_schema(schema)
        newer = keywords_in(schema) & NOT_IN_DRAFT_07
        assert not newer, f"{name} uses {sorted(newer)}, which AsyncAPI schemas do not have"
        assert not isinstance(schema.get("discriminator", ""), dict), name


def test_every_protocol_message_is_documented(spec: Spec) -> None:
    structs = [
        *protocol.REQUEST_TYPES,
        *typing.get_args(protocol.Outgoing),
        protocol.PlainReport,
        protocol.PlainError,
    ]
    payloads = {
        json.dumps(spec.message(channel, key)["payload"], sort_keys=True)
        for channel in spec.doc["channels"]
        for key in spec.doc["channels"][channel]["messages"]
    }
    for struct in structs:
        ref = {"$ref": f"#/components/schemas/{struct.__name__}"}
        assert json.dumps(ref) in payloads, f"no message carries {struct.__name__}"


def test_examples_match_their_messages(spec: Spec) -> None:
    for channel in spec.doc["channels"]:
        for key in spec.doc["channels"][channel]["messages"]:
            examples = spec.message(channel, key).get("examples", [])
            assert examples, f"{key} has no example"
            for example in examples:
                matches = spec.matching(channel, {key}, example["payload"])
                assert matches == {key}, f"{key} example {example['payload']!r} is not valid"


def test_every_error_code_and_close_reason_is_explained(spec: Spec) -> None:
    description = spec.doc["info"]["description"]
    for code in typing.get_args(protocol.ErrorCode):
        assert f"| `{code}` |" in description, f"no row for error {code}"
    reasons = ("invalid token", "token expired", "token revoked", "authentication timed out")
    for reason in reasons:
        assert f"`{reason}`" in description, f"close reason {reason!r} is not explained"
    assert "Authorization: Bearer" in description
    headers = spec.doc["channels"]["reports"]["bindings"]["ws"]["headers"]
    assert "Authorization" in headers["properties"]
    Draft7Validator.check_schema(headers)


def test_every_jwt_claim_is_explained(spec: Spec) -> None:
    description = spec.doc["info"]["description"]
    for claim in ("sub", "exp", "nbf", "iat", "aud", "iss", "scope", "reports"):
        assert re.search(rf"^\| [^|]*`{claim}`", description, re.MULTILINE), claim
    for scope in ("reports:read", "reports:write"):
        assert scope in description


def test_timestamps_are_documented_as_date_time(spec: Spec) -> None:
    report = spec.doc["components"]["schemas"]["ReportOut"]["properties"]
    assert report["created_at"].get("format") == "date-time"
    assert report["updated_at"].get("format") == "date-time"


# -- the example sessions in the docs -------------------------------------------------------

SESSION_BLOCK = re.compile(r"^```ws-session[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sessions_in(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    blocks = SESSION_BLOCK.findall(path.read_text(encoding="utf-8"))
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def test_docs_have_a_session() -> None:
    assert sessions_in(SESSION_DOCS[0]), f"{SESSION_DOCS[0]} shows no ws-session"


@pytest.mark.parametrize("path", SESSION_DOCS, ids=lambda p: p.name)
def test_doc_sessions_match_the_document(spec: Spec, path: Path) -> None:
    """Each ``> `` line a client sends and ``< `` line it receives in a ws-session block of the
    docs is a message of /reports (the first is the token), and nothing else."""
    for block in sessions_in(path):
        sent = [line[2:] for line in block if line.startswith("> ")]
        received = [line[2:] for line in block if line.startswith("< ")]
        assert all(line.startswith(("> ", "< ", "# ")) for line in block), block
        assert spec.matching("reports", {"token"}, sent[0]) == {"token"}
        incoming = spec.received("reports") - {"token"}
        for line in sent[1:]:
            value = json.loads(line) if line.startswith("{") else line
            assert len(spec.matching("reports", incoming, value)) == 1, line
        for line in received:
            value = json.loads(line)
            assert len(spec.matching("reports", spec.sent("reports"), value)) == 1, line
