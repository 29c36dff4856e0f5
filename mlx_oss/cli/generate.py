"""`mlx-oss generate`: one prompt in, the answer out (stdout is only the answer).

Reasoning goes to stderr with --show-reasoning, so `mlx-oss generate ... > answer.txt` keeps the file
clean; --json prints one object (answer, reasoning, tool calls, stats) instead. --json-schema enforces
the answer's format: stdout is then exactly the JSON document, printed once it is complete, or nothing
(exit 1) when the reply stopped before it was; --response-format only describes the format. Exit codes
follow the CLI's: 0 success, 2 bad arguments (a schema that cannot be enforced included), 1
model/runtime errors (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from mlx_oss.cli import args
from mlx_oss.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `generate` subcommand to the `mlx-oss` parser."""
    g = subparsers.add_parser(
        "generate",
        help="answer one prompt (stdout: the answer; --json for everything)",
        description="Generate a reply to one prompt. The prompt is read from stdin when not given.",
    )
    g.add_argument("prompt", nargs="?", help="the user message (default: read stdin)")
    args.add_model(g)
    args.add_effort(g)
    args.add_instructions(g)
    args.add_sampling(g)
    args.add_limits(g)
    args.add_reasoning_budget(g)
    g.add_argument("--show-reasoning", action="store_true", help="stream the chain of thought (to stderr unless --reasoning-to stdout)")
    g.add_argument("--reasoning-to", choices=["stderr", "stdout"], default="stderr",
                   help="where --show-reasoning writes (stdout is refused with --json-schema)")  # fmt: skip
    g.add_argument("--tools", metavar="FILE", help="JSON file: a list of function tool schemas the model may call")
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument("--json-schema", metavar="FILE",
                     help="enforce the answer's format: a JSON schema, or OpenAI's {name, schema, strict} wrapper (a "
                          "file, or inline JSON). stdout is exactly the JSON document and a newline, printed once it "
                          "is complete; reasoning never goes to stdout; a reply that stops before the document is "
                          "complete (--max-tokens) prints nothing there and exits 1; a schema that cannot be enforced "
                          "exits 2 naming the keyword. Pair it with --max-reasoning-tokens")  # fmt: skip
    fmt.add_argument("--response-format", metavar="SCHEMA",
                     help="describe the answer's format to the model, not enforced: the same schema as --json-schema "
                          "(inline JSON or a file); the answer streams as the model writes it")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print one JSON object: answer, reasoning, tool_calls, stats")
    g.add_argument("--stats", action="store_true", help="print a statistics line to stderr")
    args.add_dtype(g)
    args.add_kv_cache(g)
    args.add_hosts(g)
    args.add_builtin_tools(g)
    g.set_defaults(func=run)
    return g


def _read_json(value: str, what: str) -> Any:
    """Inline JSON or a file holding it."""
    text = value
    if not value.lstrip().startswith(("{", "[")):
        p = Path(value).expanduser()
        if not p.is_file():
            raise UsageError(f"{what}: no such file {value!r}")
        text = p.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _answer_format(a: argparse.Namespace) -> tuple[dict[str, Any] | None, bool]:
    """(the schema of --json-schema or --response-format, enforced?): one reading for both flags. A
    `strict` in OpenAI's wrapper must agree with the flag, so neither flag is silently overridden."""
    strict = a.json_schema is not None
    flag, value = ("--json-schema", a.json_schema) if strict else ("--response-format", a.response_format)
    if value is None:
        return None, False
    schema = _read_json(value, flag)
    if not isinstance(schema, dict):
        raise UsageError(f"{flag}: expected a JSON schema object")
    said = schema.get("strict") if isinstance(schema.get("schema"), dict) else None
    if isinstance(said, bool) and said != strict:
        other = "use --response-format to only describe it" if strict else "use --json-schema to enforce it"
        raise UsageError(f'{flag}: the schema says "strict": {str(said).lower()}; {other}')
    return schema, strict


def _prompt(a: argparse.Namespace, stdin: TextIO) -> str:
    if a.prompt is not None:
        text = a.prompt
    elif stdin.isatty():
        raise UsageError("no prompt: give it as an argument or pipe it on stdin")
    else:
        text = stdin.read()
    if not text.strip():
        raise UsageError("the prompt is empty")
    return text


class Silence:
    """Progress on stderr while generate has shown nothing for `after_s` (a model that reasons for long
    with the reasoning hidden, or a random one that never stops): on a terminal one line redrawn in place
    and erased before real output, elsewhere a plain line every `every_s`."""

    def __init__(self, err: TextIO, hint: str = "", after_s: float = 3.0, every_s: float = 10.0) -> None:
        import time

        self.err, self.hint, self.after_s, self.every_s = err, hint, after_s, every_s
        self.clock = time.monotonic
        self.last_output = self.clock()
        self.last_line = None
        self.drawn = False
        self.tty = bool(getattr(err, "isatty", lambda: False)())

    def tick(self, tokens: int) -> None:
        now = self.clock()
        if now - self.last_output < self.after_s:
            return
        line = f"… {tokens} tokens generated, nothing to show yet{self.hint}"
        if self.tty:
            self.err.write("\r\033[K" + line)
            self.drawn = True
        elif self.last_line is None or now - self.last_line >= self.every_s:
            self.err.write(line + "\n")
        else:
            return
        self.last_line = now
        self.err.flush()

    def clear(self) -> None:
        """Real output follows: erase the progress line (terminal) and restart the quiet timer."""
        if self.drawn:
            self.err.write("\r\033[K")
            self.err.flush()
            self.drawn = False
        self.last_output = self.clock()


def _tool_stop_note(calls) -> str:
    if not calls:
        return "stopped: the model ended with <|call|> but wrote no complete tool call"
    names = ", ".join(dict.fromkeys(c.recipient or c.name for c in calls))
    return f"stopped at a tool call to {names}: generate does not run tools; --json has the arguments"


def _stats_line(s) -> str:
    return (
        f"[{s.stop_reason}] prompt {s.prompt_tokens} tok ({s.reused_tokens} cached, {s.prefilled_tokens} prefilled "
        f"at {s.prefill_tps:.1f} tok/s), ttft {s.ttft_s:.2f} s, {s.generated_tokens} generated at "
        f"{s.decode_tps:.1f} tok/s, peak memory {s.peak_memory_bytes / 1e9:.2f} GB"
    )


def run(a: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """The `generate` command; -> exit code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    from mlx_oss.distributed import cli as dist

    try:
        with dist.group(a) as session:
            if session is not None and not session.leader:
                return dist.follow_rank_0(session, a.model, a.dtype, **args.kv_cache_kwargs(a))  # the same argv: checked
            return _run(a, out, err, stdin or sys.stdin, session)
    except UsageError as e:
        if a.json:
            _print_json_error(out, "invalid_argument", str(e))
        print(f"mlx-oss generate: error: {e}", file=err)
        return 2
    except Exception as e:  # the CLI prints the one-line message and exits 1; --json readers get it too
        if a.json and not isinstance(e, BrokenPipeError):
            kind = "context_length_exceeded" if type(e).__name__ == "ContextLengthError" else "error"
            _print_json_error(out, kind, (str(e).strip().splitlines() or [type(e).__name__])[0])
        raise


def _print_json_error(out: TextIO, kind: str, message: str) -> None:
    """--json always prints one object on stdout: the reply, or {"error": {"type", "message"}}."""
    print(json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False), file=out)


def _run(a: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO, session=None) -> int:
    args.check_builtin_args(a)  # before anything loads
    prompt = _prompt(a, stdin)
    tools = _read_json(a.tools, "--tools") if a.tools else None
    if tools is not None and not isinstance(tools, list):
        tools = [tools]
    response_format, strict = _answer_format(a)
    if strict and a.reasoning_to == "stdout":
        raise UsageError("--reasoning-to stdout: with --json-schema stdout is only the JSON document")
    from mlx_oss.tools import as_tools

    try:
        tools = as_tools(tools)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--tools: {e}") from None

    from mlx_oss.errors import VocabularyError
    from mlx_oss.chat import Chat, vocabulary_problem
    from mlx_oss.grammar import GrammarError
    from mlx_oss.loader import load
    from mlx_oss.store import resolve_model

    sampling = args.sampling_config(a)
    chat_class = Chat
    if session is None:
        folder = resolve_model(a.model, progress=not a.json, status=lambda m: print(m, file=err))
        model, tokenizer = load(folder, a.dtype, **args.kv_cache_kwargs(a))
    else:  # rank 0 of a group: this rank's slice, and a Chat whose engine leads the others
        from mlx_oss.distributed import cli as dist
        from mlx_oss.distributed.engine import DistributedChat

        model, tokenizer = dist.load(session, a.model, a.dtype, status=lambda m: print(m, file=err), **args.kv_cache_kwargs(a))
        chat_class = DistributedChat
    problem = vocabulary_problem(model, tokenizer)
    if problem:  # a model problem (exit 1), not one of the settings Chat() rejects below (exit 2)
        raise VocabularyError(problem)
    builtin = args.builtin_chat_kwargs(a, TerminalApprover(a.approve_python, err))
    try:
        chat = chat_class(
            model, tokenizer, reasoning_effort=a.reasoning_effort, instructions=a.instructions, tools=tools,
            auto_tools=bool(builtin), response_format=response_format, strict=strict, sampling=sampling,
            max_tokens=a.max_tokens, max_context=a.max_context, max_reasoning_tokens=a.max_reasoning_tokens,
            **builtin,
        )  # fmt: skip
    except ValueError as e:  # settings the model rejects, e.g. --max-context beyond its limit
        raise UsageError(str(e).splitlines()[0]) from None

    try:
        if strict:  # compiled now (send() finds it cached) to name the flag when llguidance cannot enforce it
            try:
                chat.grammars.json_schema(chat.response_format.schema, "--json-schema")
            except GrammarError as e:
                raise UsageError(str(e)) from None
        return _stream(a, chat, prompt, out, err)
    finally:
        chat.close()  # stops the python session, if one started


def _document_problem(s, reply) -> str | None:
    """Why a --json-schema reply has no JSON document to print (None: it has one)."""
    if s.stop_reason == "error":
        return None  # reported as every error is
    if s.stop_reason == "stop":
        try:
            json.loads(reply.answer)
            return None
        except ValueError:
            return "no JSON document: the answer is not valid JSON"
    if s.stop_reason == "length":
        return ("no JSON document: the reply reached --max-tokens before it was complete (raise --max-tokens, or "
                "bound the reasoning with --max-reasoning-tokens)")  # fmt: skip
    why = {"context": "the context filled up before it was complete", "cancelled": "cancelled",
           "tool_call": _tool_stop_note(reply.tool_calls)}  # fmt: skip
    return f"no JSON document: {why.get(s.stop_reason, s.stop_reason)}"


def _stream(a: argparse.Namespace, chat, prompt: str, out: TextIO, err: TextIO) -> int:
    from mlx_oss.events import AnswerDelta, Done, Progress, ReasoningDelta, ToolCall, ToolResult, UnparsedDelta
    from mlx_oss.grammar import GrammarError

    document = a.json_schema is not None  # the answer is printed whole, once complete
    rstream = out if a.reasoning_to == "stdout" and not document else err
    done = None
    in_reasoning = in_unparsed = False
    quiet = Silence(err, hint="" if a.show_reasoning else " (the reasoning is hidden: --show-reasoning shows it)")
    try:
        events = chat.send(prompt)
    except GrammarError as e:  # a strict tool whose parameters cannot be enforced (--json-schema was checked before)
        raise UsageError(f"--tools: {e}") from None
    for ev in events:
        if a.json:
            if isinstance(ev, Done):
                done = ev
            continue
        if isinstance(ev, Progress):
            quiet.tick(ev.generated_tokens)
            continue
        if isinstance(ev, UnparsedDelta):  # not harmony: shown (stderr), never taken as the answer
            quiet.clear()
            err.write(ev.text)
            err.flush()
            in_unparsed = True
            continue
        if in_unparsed:
            err.write("\n")
            in_unparsed = False
        if isinstance(ev, ReasoningDelta) or (isinstance(ev, AnswerDelta) and ev.channel != "final"):
            if a.show_reasoning:
                quiet.clear()
                rstream.write(ev.text)
                rstream.flush()
                in_reasoning = True
        elif isinstance(ev, AnswerDelta):
            quiet.clear()
            if in_reasoning:
                rstream.write("\n")
                rstream.flush()
                in_reasoning = False
            if not document:
                out.write(ev.text)
                out.flush()
        elif isinstance(ev, ToolCall):
            quiet.clear()
            print(f"tool call: {ev.recipient} {ev.raw}", file=err)
        elif isinstance(ev, ToolResult):
            quiet.clear()
            first = (ev.content.strip().splitlines() or [""])[0][:120]
            print(f"tool result{' (error)' if ev.error else ''}: {ev.name}: {first}", file=err)
            for path in ev.images:
                print(f"image: {path}", file=err)
        elif isinstance(ev, Done):
            done = ev
    quiet.clear()
    assert done is not None  # every turn ends with Done, which also ended an unparsed line above
    s = done.stats
    problem = _document_problem(s, done.reply) if document else None
    if a.json:
        print(json.dumps(done.reply.to_dict(), ensure_ascii=False), file=out)
    elif document:
        if problem is None and s.stop_reason != "error":
            out.write(done.reply.answer + "\n")
    elif done.reply.answer and not done.reply.answer.endswith("\n"):
        out.write("\n")
    notes = {"length": "stopped at --max-tokens", "context": "stopped: the context is full",
             "cancelled": "cancelled",
             "tool_call": _tool_stop_note(done.reply.tool_calls)}  # fmt: skip
    if not a.json and s.unparsed_tokens:
        print(f"({s.unparsed_tokens} of {s.generated_tokens} generated tokens were not in harmony format: shown above "
              "as unparsed text, not taken as the answer)", file=err)  # fmt: skip
    if not a.json and s.stop_reason in notes and problem is None:
        print(f"({notes[s.stop_reason]})", file=err)
    if not a.json and done.reply.citations:
        print("sources:", file=err)
        for c in done.reply.citations:
            lines = f" L{c.line_start}-L{c.line_end}" if c.line_start is not None else ""
            print(f"  {c.marker} {c.title} <{c.url}>{lines}", file=err)
    if a.stats:
        print(_stats_line(s), file=err)
    if s.stop_reason == "error":
        print(f"mlx-oss: error: {s.error}", file=err)
        return 1
    if problem is not None:
        print(f"mlx-oss: error: {problem}", file=err)
        return 1
    return 0


class TerminalApprover:
    """Shows the code on the terminal and asks Run / Skip / Always (for this chat). Without a terminal
    it refuses: code never runs unasked unless the user chose `--approve-python always`."""

    def __init__(self, mode: str = "ask", err: TextIO | None = None, tty_path: str = "/dev/tty") -> None:
        self.mode = mode
        self.err = err
        self.tty_path = tty_path

    def __call__(self, call: Any) -> bool:
        if self.mode in ("always", "never"):
            return self.mode == "always"
        question = ("\n--- the model wants to run this Python code ---\n" + str(call.arguments).rstrip()
                    + "\n--- [r]un / [s]kip / [a]lways for this chat? ")  # fmt: skip
        try:
            fd = os.open(self.tty_path, os.O_RDWR | getattr(os, "O_NOCTTY", 0))
            try:
                os.write(fd, question.encode())
                answer = os.read(fd, 1024).decode(errors="replace").strip().lower()  # a terminal reads a line
            finally:
                os.close(fd)
        except OSError:
            if self.err is not None:
                print("python call refused: no terminal to ask (use --approve-python always to allow)", file=self.err)
            return False
        if answer in ("a", "always"):
            self.mode = "always"
            return True
        return answer in ("r", "run", "y", "yes")
