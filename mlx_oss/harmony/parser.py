"""Streaming harmony parser: feed sampled tokens one at a time, get deltas and finished messages.

Header parsing follows openai-harmony's rules (so both agree on every well-formed stream),
including what models actually emit: the recipient before or after the channel, `<|constrain|>`
glued to the previous word, tool calls on the analysis channel. Unlike openai-harmony it never
raises: malformed input is recorded in `errors` and parsing carries on, and `finish()` returns a
cut-off message marked `incomplete` instead of failing.

Text that belongs to no message is never dropped silently: tokens outside a message, a "header" longer
than `MAX_HEADER_TOKENS` (a model not writing harmony, e.g. random weights) and a cut-off header that
cannot be one are reported as `StreamEvent.unparsed` and collected in `unparsed_text`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from enum import Enum
from typing import Iterable

import tiktoken

from mlx_oss import tokenizer as tk
from mlx_oss.harmony.messages import Message, Role

__all__ = ["ParserState", "StreamEvent", "StreamParser", "parse_completion"]

_CHANNEL_TEXT = "<|channel|>"
_CONSTRAIN_TEXT = "<|constrain|>"
# Rust's char::is_whitespace (Unicode White_Space) and u8::is_ascii_whitespace.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_ASCII_WS = re.compile(r"[ \t\n\x0c\r]+")
_ROLES = {r.value: r for r in Role}
MAX_HEADER_TOKENS = 64  # real headers ("<|channel|>commentary to=functions.x <|constrain|>json") are ~10


class ParserState(Enum):
    EXPECT_START = "expect_start"
    HEADER = "header"
    CONTENT = "content"


@dataclass(frozen=True)
class _Header:
    role: Role
    name: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class StreamEvent:
    """What one token did.

    `role`/`channel`/`recipient`/`content_type` describe the message being read (or the one this
    token completed); they are None until its header is complete (`header_done` marks the
    `<|message|>` token). `delta` is the text this token added. `message` is set when the token
    completed a message. `stop` is True for `<|return|>` and `<|call|>`: sampling should stop.
    `error` says why a token was skipped or a message recovered, for malformed streams. `unparsed` is
    text this token released that belongs to no message (not harmony: shown as is, never an answer).
    `header_tokens`, on a token that ended a message before `<|message|>`: how many tokens its header
    had (they wrote the message's text).
    """

    token: int
    state: ParserState
    role: Role | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    delta: str = ""
    header_done: bool = False
    message: Message | None = None
    stop: bool = False
    error: str | None = None
    unparsed: str = ""
    header_tokens: int = 0


def _split_ascii(s: str) -> list[str]:
    return [p for p in _ASCII_WS.split(s) if p]


def _parse_header(
    text: str, role: Role | None, with_recipient: bool
) -> tuple[_Header, str | None, list[str]]:
    """Parse header text (specials appear as their literal text). Returns the header, leftover
    words (content for a header that never reached `<|message|>`), and problems found."""
    errors: list[str] = []
    channel = None
    idx = text.find(_CHANNEL_TEXT)
    if idx >= 0:
        after = text[idx + len(_CHANNEL_TEXT) :]
        end = next((i for i, c in enumerate(after) if c in _WHITESPACE or c == "<"), len(after))
        if end == 0:
            errors.append("<|channel|> without a channel name")
        else:
            channel = after[:end]
        text = text[:idx] + after[end:]
    text = text.strip(_WHITESPACE)
    if _CONSTRAIN_TEXT in text:
        # The model sometimes glues <|constrain|> to the recipient; make it its own word.
        text = text.replace(_CONSTRAIN_TEXT, " " + _CONSTRAIN_TEXT).strip(_WHITESPACE)
    parts = _split_ascii(text)

    name = None
    if role is None:
        if not parts:
            errors.append("header has no role; assuming assistant")
            role = Role.ASSISTANT
        elif parts[0] in _ROLES:
            role = _ROLES[parts[0]]
            if role is Role.TOOL:
                name = parts[0]
        else:
            # Tool results name the tool instead of a role ("functions.x to=assistant").
            role, name = Role.TOOL, parts.pop(0)
    if parts and parts[0] == role.value:
        parts.pop(0)

    recipient = content_type = None
    if with_recipient and parts:
        n = len(parts)
        last = parts.pop()
        if last.startswith("to="):
            recipient = last[3:]
        elif n == 1:
            # A lone word is a recipient, except a content type marked by <|constrain|>.
            if last.startswith(_CONSTRAIN_TEXT):
                content_type = last
            else:
                recipient = last
        else:
            content_type = last
            raw = parts.pop()
            recipient = raw[3:] if raw.startswith("to=") else raw
    rest = " ".join(parts) if parts else None
    return _Header(role, name, channel, recipient, content_type), rest, errors


class StreamParser:
    """Incremental parser over sampled tokens.

    `role` is the role already rendered in the prompt (`<|start|>assistant`), so the first header
    is read without one; pass None to parse from a `<|start|>`. Completed messages accumulate in
    `messages`; `finish()` flushes a cut-off message (marked `incomplete`).
    """

    def __init__(self, role: Role | None = Role.ASSISTANT, encoding: tiktoken.Encoding | None = None) -> None:
        self._enc = tk.load_tokenizer() if encoding is None else encoding
        self._role_hint: Role | None = None if role is None else Role(role)
        self._state = ParserState.HEADER if role is not None else ParserState.EXPECT_START
        self._header_tokens: list[int] = []
        self._header: _Header | None = None
        self._content: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._messages: list[Message] = []
        self._tokens: list[int] = []
        self._errors: list[str] = []
        self._last_delta: str | None = None
        self._unparsed: list[str] = []
        self._unparsed_tokens = 0
        self._raw = codecs.getincrementaldecoder("utf-8")(errors="replace")  # for unparsed tokens

    # Read-only views ----------------------------------------------------------------------

    @property
    def state(self) -> ParserState:
        return self._state

    @property
    def messages(self) -> list[Message]:
        """Completed messages so far (a copy)."""
        return list(self._messages)

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    @property
    def errors(self) -> list[str]:
        """Descriptions of malformed input met so far (empty for a well-formed stream)."""
        return list(self._errors)

    @property
    def unparsed_text(self) -> str:
        """All text so far that belongs to no message (see `StreamEvent.unparsed`)."""
        return "".join(self._unparsed)

    @property
    def unparsed_tokens(self) -> int:
        """How many tokens wrote `unparsed_text`: each one outside a message (its bytes may still wait
        in the UTF-8 decoder), and every token of a "header" given up as unparsed text."""
        return self._unparsed_tokens

    @property
    def current_role(self) -> Role | None:
        return self._header.role if self._header is not None else self._role_hint

    @property
    def current_channel(self) -> str | None:
        return self._header.channel if self._header is not None else None

    @property
    def current_recipient(self) -> str | None:
        return self._header.recipient if self._header is not None else None

    @property
    def current_content_type(self) -> str | None:
        return self._header.content_type if self._header is not None else None

    @property
    def current_content(self) -> str:
        """Text of the message being read so far."""
        return "".join(self._content)

    @property
    def last_content_delta(self) -> str | None:
        """Text added by the last token, None if it added none."""
        return self._last_delta

    # Feeding ------------------------------------------------------------------------------

    def process(self, token: int) -> StreamEvent:
        """Consume one token; never raises."""
        self._tokens.append(token)
        self._last_delta = None
        if self._state is ParserState.EXPECT_START:
            return self._on_expect_start(token)
        if self._state is ParserState.HEADER:
            return self._on_header(token)
        return self._on_content(token)

    def feed(self, tokens: Iterable[int]) -> list[StreamEvent]:
        """Process several tokens."""
        return [self.process(t) for t in tokens]

    def finish(self) -> list[Message]:
        """End of stream: flush a message cut off mid-content or mid-header (marked incomplete)
        and return all messages. The parser can keep going afterwards with a new `<|start|>`."""
        if self._state is ParserState.CONTENT:
            self._append_text(self._decoder.decode(b"", final=True))
            self._complete(incomplete=True)
        elif self._state is ParserState.HEADER and self._header_tokens:
            text = self._header_text()
            header, rest, errs = _parse_header(text, self._role_hint, True)
            if rest is not None or (header.role is Role.ASSISTANT and header.channel is None):
                self._errors.append("stream ended in text that is not a message header; kept as unparsed text")
                self._unparsed.append(text)  # a model not writing harmony: its words, not a cut header
                self._unparsed_tokens += len(self._header_tokens)
            else:
                self._errors += errs + ["stream ended inside a message header"]
                self._header = header
                self._complete(incomplete=True)
        tail = self._raw.decode(b"", final=True)
        if tail:
            self._unparsed.append(tail)
        self._reset_message(ParserState.EXPECT_START)
        self._role_hint = None
        return self.messages

    # States -------------------------------------------------------------------------------

    def _event(
        self,
        token: int,
        *,
        delta: str = "",
        header_done: bool = False,
        message: Message | None = None,
        stop: bool = False,
        error: str | None = None,
        unparsed: str = "",
        header_tokens: int = 0,
    ) -> StreamEvent:
        # Header fields come from the message this token completed, else the one being read.
        src: Message | _Header | None = message if message is not None else self._header
        if error:
            self._errors.append(error)
        if unparsed:
            self._unparsed.append(unparsed)
        return StreamEvent(
            token,
            self._state,
            role=src.role if src is not None else self._role_hint,
            channel=src.channel if src is not None else None,
            recipient=src.recipient if src is not None else None,
            content_type=src.content_type if src is not None else None,
            delta=delta,
            header_done=header_done,
            message=message,
            stop=stop,
            error=error,
            unparsed=unparsed,
            header_tokens=header_tokens,
        )

    def _on_expect_start(self, token: int) -> StreamEvent:
        if token == tk.START:
            tail = self._raw.decode(b"", final=True)
            self._raw.reset()
            self._reset_message(ParserState.HEADER)
            return self._event(token, unparsed=tail)
        self._unparsed_tokens += 1
        data = self._token_bytes(token)
        text = self._raw.decode(data) if data is not None else self._raw.decode(b"", final=True) + "\ufffd"
        return self._event(token, error=f"token {token} outside a message (expected <|start|>); kept as unparsed text",
                           unparsed=text)  # fmt: skip

    def _on_header(self, token: int) -> StreamEvent:
        if token == tk.MESSAGE:
            header, rest, errs = _parse_header(self._header_text(), self._role_hint, True)
            if rest is not None:
                errs.append(f"unexpected words in message header: {rest!r}")
            self._errors += errs
            self._header = header
            self._role_hint = None
            self._state = ParserState.CONTENT
            return self._event(token, header_done=True)
        if token in tk.STOP_TOKENS:
            return self._end_without_message_token(token)
        if token == tk.START:
            dropped = self._header_text()
            self._reset_message(ParserState.HEADER)
            self._role_hint = None
            return self._event(token, error=f"<|start|> inside a header; dropped header {dropped!r}")
        self._header_tokens.append(token)
        if len(self._header_tokens) > MAX_HEADER_TOKENS:  # not a header: the model is not writing harmony
            text = self._header_text()
            self._unparsed_tokens += len(self._header_tokens)
            self._reset_message(ParserState.EXPECT_START)
            self._role_hint = None
            return self._event(token, error=f"message header longer than {MAX_HEADER_TOKENS} tokens; kept as unparsed text",
                               unparsed=text)  # fmt: skip
        return self._event(token)

    def _end_without_message_token(self, token: int) -> StreamEvent:
        # The model ended a message whose header never got <|message|>: keep the header fields
        # we can read and treat the remaining words as the text (openai-harmony's non-strict mode).
        message, header_tokens = None, 0
        if self._header_tokens:
            text = self._header_text()
            role = self._role_hint
            if role is None:
                first = _split_ascii(text.replace(_CHANNEL_TEXT, " " + _CHANNEL_TEXT))[:1]
                role = _ROLES.get(first[0]) if first else None
            if role is not None:
                header, rest, _ = _parse_header(text, role, False)
                message = Message(role, rest or "", channel=header.channel)
                self._messages.append(message)
                header_tokens = len(self._header_tokens)
        self._reset_message(ParserState.EXPECT_START)
        self._role_hint = None
        return self._event(
            token,
            message=message,
            stop=token in tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS,
            error="message ended before <|message|>" + ("" if message else "; dropped"),
            header_tokens=header_tokens,
        )

    def _on_content(self, token: int) -> StreamEvent:
        if token in tk.STOP_TOKENS:
            delta = self._append_text(self._decoder.decode(b"", final=True))
            message = self._complete(incomplete=False)
            self._reset_message(ParserState.EXPECT_START)
            return self._event(
                token, delta=delta, message=message, stop=token in tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS
            )
        if token == tk.START:
            # The model skipped the end token: close what we have and read the new header.
            delta = self._append_text(self._decoder.decode(b"", final=True))
            message = self._complete(incomplete=True)
            self._reset_message(ParserState.HEADER)
            return self._event(token, delta=delta, message=message, error="<|start|> inside message content")
        data = self._token_bytes(token)
        if data is None:
            delta = self._append_text(self._decoder.decode(b"", final=True) + "\ufffd")
            return self._event(token, delta=delta, error=f"unknown token {token} in content")
        return self._event(token, delta=self._append_text(self._decoder.decode(data)))

    # Helpers ------------------------------------------------------------------------------

    def _token_bytes(self, token: int) -> bytes | None:
        try:
            return self._enc.decode_single_token_bytes(token)
        except Exception:  # unknown id (KeyError) or not an int-like value
            return None

    def _header_text(self) -> str:
        data = []
        for t in self._header_tokens:
            b = self._token_bytes(t)
            if b is None:
                self._errors.append(f"unknown token {t} in header")
                b = "\ufffd".encode()
            data.append(b)
        raw = b"".join(data)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._errors.append("message header is not valid UTF-8")
            return raw.decode("utf-8", errors="replace")

    def _append_text(self, text: str) -> str:
        if text:
            self._content.append(text)
            self._last_delta = text
        return text

    def _complete(self, incomplete: bool) -> Message | None:
        h = self._header
        if h is None:
            return None
        message = Message(
            h.role,
            "".join(self._content),
            name=h.name,
            channel=h.channel,
            recipient=h.recipient,
            content_type=h.content_type,
            incomplete=incomplete,
        )
        self._messages.append(message)
        return message

    def _reset_message(self, state: ParserState) -> None:
        self._state = state
        self._header_tokens = []
        self._header = None
        self._content = []
        self._decoder.reset()


def parse_completion(
    tokens: Iterable[int], role: Role | None = Role.ASSISTANT, encoding: tiktoken.Encoding | None = None
) -> list[Message]:
    """Parse a whole completion (e.g. tokens sampled after `<|start|>assistant`) into messages."""
    parser = StreamParser(role, encoding)
    parser.feed(tokens)
    return parser.finish()
