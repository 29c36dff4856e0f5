"""Output that is not harmony (random weights, a broken model) is shown and counted the same way
everywhere: the parser reports it, Chat streams it as `UnparsedDelta` and keeps it in the history
(never in the next prompt), generate prints it and counts it (text and --json), the TUI shows it live
with the status line moving, and ctrl+s / ctrl+o / ctrl+l agree with the screen."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import mlx_oss
import mlx_oss.loader
from mlx_oss import tokenizer as tk
from mlx_oss.cli.generate import Silence
from mlx_oss.cli.main import main
from mlx_oss.events import Done, Progress, UnparsedDelta
from mlx_oss.harmony import FINAL, UNPARSED, StreamParser
from mlx_oss.harmony.parser import MAX_HEADER_TOKENS
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from mlx_oss.tui.export import conversation_markdown, turns

sys.path.insert(0, str(Path(__file__).parent))
from test_tui_app import SIZE, aio, ready, send, status  # noqa: E402

ENC = tk.load_tokenizer()
WORDS = ENC.encode_ordinary("lorem ipsum dolor sit amet " * 30)  # plain text, no harmony at all


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def test_parser_reports_text_that_belongs_to_no_message():
    p = StreamParser()  # after <|start|>assistant: a "header" that never ends is not a header
    events = p.feed(WORDS[: MAX_HEADER_TOKENS + 10])
    assert not any(e.unparsed for e in events[:MAX_HEADER_TOKENS])
    assert p.unparsed_text == ENC.decode(WORDS[: MAX_HEADER_TOKENS + 10]) and p.finish() == []
    p = StreamParser()  # cut short: what was read is not a cut-off header either
    p.feed(WORDS[:20])
    assert p.finish() == [] and p.unparsed_text == ENC.decode(WORDS[:20])
    p = StreamParser()  # a real cut-off header stays one (no unparsed text)
    p.feed(ENC.encode("<|channel|>analysis", allowed_special="all"))
    assert p.finish()[0].channel == "analysis" and p.unparsed_text == ""
    p = StreamParser()  # text between messages
    p.feed(ENC.encode("<|channel|>final<|message|>Hi<|end|>stray words<|start|>assistant", allowed_special="all"))
    assert p.unparsed_text == "stray words" and p.messages[0].text == "Hi"


def _chat(model_tok, tokens, **kw):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, **kw)
    chat.sampling = SamplingConfig(seed=0, logits_processors=(ScriptedTokens(tokens),))
    return chat


def test_chat_streams_counts_and_keeps_unparsed_output_but_never_prompts_with_it(model_tok):
    good = ENC.encode("<|start|>assistant<|channel|>final<|message|>Fine.<|return|>", allowed_special="all")
    chat = _chat(model_tok, WORDS[:100] + good)
    before = len(chat.prompt_tokens([mlx_oss.harmony.Message.user("q")]))
    events = list(chat.send("q"))
    done = events[-1]
    assert isinstance(done, Done)
    shown = "".join(e.text for e in events if isinstance(e, UnparsedDelta))
    r, s = done.reply, done.stats
    assert shown == r.unparsed == ENC.decode(WORDS[:100]) and r.answer == "Fine."
    assert s.unparsed_tokens == 100 and s.answer_tokens == len(ENC.encode_ordinary("Fine.")) and s.generated_tokens == 100 + len(good)
    assert [(m.channel, m.text) for m in chat.history[1:]] == [(UNPARSED, r.unparsed), (FINAL, "Fine.")]
    # The next prompt holds the answer, not the unparsed text; saving and reopening keeps it.
    assert ENC.decode(chat.prompt_tokens()).count("lorem") == 0 and len(chat.prompt_tokens()) > before
    again = mlx_oss.Chat.from_json(json.dumps(chat.to_json()), *model_tok)
    assert [(m.channel, m.text) for m in again.history] == [(m.channel, m.text) for m in chat.history]
    assert ("unparsed", {"text": r.unparsed}) in turns(again.history)
    assert "not in harmony format" in conversation_markdown(again.history) and r.unparsed in conversation_markdown(again.history)


def test_a_random_model_cut_at_max_tokens_is_all_unparsed(model_tok):
    # max_context: a random model runs free, so a lost max_tokens must end at 400 tokens, not the model's 131072
    chat = mlx_oss.Chat(*model_tok, max_tokens=32, max_context=400, sampling=SamplingConfig(seed=1))
    chat.progress_interval_s = 0.0
    events = list(chat.send("hi"))
    r, s = events[-1].reply, events[-1].stats
    assert s.generated_tokens == 32 and s.unparsed_tokens == 32 and r.answer == r.reasoning == ""
    assert r.unparsed and "".join(e.text for e in events if isinstance(e, UnparsedDelta)) == r.unparsed
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.generated_tokens for p in progress] == list(range(1, 33)) and progress[-1].context_used > 0


@pytest.fixture
def fast_load(model_tok, monkeypatch):
    monkeypatch.setattr(mlx_oss.loader, "load", lambda path, dtype=None, **kv: model_tok)
    monkeypatch.setattr(
        mlx_oss.sampling, "SamplingConfig",
        lambda **kw: SamplingConfig(**kw, logits_processors=(ScriptedTokens(WORDS[:32]),)),
    )  # fmt: skip


def test_generate_shows_and_counts_it_in_text_and_json(tiny_chat_converted, fast_load, capsys):
    assert main(["generate", "-m", str(tiny_chat_converted), "--max-tokens", "32", "--max-context", "400", "hi"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and ENC.decode(WORDS[:32]) in cap.err
    assert "(32 of 32 generated tokens were not in harmony format" in cap.err
    assert main(["generate", "-m", str(tiny_chat_converted), "--max-tokens", "32", "--max-context", "400", "--json", "hi"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unparsed"] == ENC.decode(WORDS[:32]) and data["answer"] == ""
    assert data["stats"]["unparsed_tokens"] == data["stats"]["generated_tokens"] == 32


def test_generate_shows_progress_when_nothing_was_printed_for_a_while():
    now = [0.0]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (Tty(), io.StringIO()):
        q = Silence(stream, hint=" (hidden)", after_s=3, every_s=10)
        q.clock = lambda: now[0]
        q.last_output = now[0] = 0.0
        q.tick(5)
        assert stream.getvalue() == ""  # printed nothing for < 3 s: nothing to say
        now[0] = 4.0
        q.tick(40)
        now[0] = 5.0
        q.tick(50)
        q.clear()
        text = stream.getvalue()
        if stream.isatty():
            assert text.endswith("… 50 tokens generated, nothing to show yet (hidden)\r\x1b[K") and "\n" not in text
        else:  # not a terminal: plain lines, at most one per 10 s, no \r frames
            assert text == "… 40 tokens generated, nothing to show yet (hidden)\n"


@aio
async def test_tui_screen_status_save_copy_and_reopen_agree(model_tok, tmp_path, monkeypatch):
    from mlx_oss.tui.app import Backend, ChatApp
    from mlx_oss.tui.widgets import StatusLine, UnparsedBlock

    model, tok = model_tok

    def new_chat():
        c = mlx_oss.Chat(model, tok, max_tokens=40, max_context=400)
        c.sampling = SamplingConfig(seed=0, logits_processors=(ScriptedTokens(WORDS[:40]),))
        c.progress_interval_s = 0.0
        return c

    backend = Backend("tiny-chat", new_chat=new_chat, open_chat=lambda data: mlx_oss.Chat.from_json(data, model, tok))
    app = ChatApp(lambda say: backend, model="tiny-chat", chats_dir=tmp_path)
    seen: list[str] = []
    show = StatusLine.show
    monkeypatch.setattr(StatusLine, "show", lambda self, info: (seen.append(self_text(info)), show(self, info))[1])
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        block = app.query_one(UnparsedBlock)
        assert block.text == ENC.decode(WORDS[:40]) == app.session.history[-1].text
        assert any("generating…" in t and " tokens " in t and "ctx 0/" not in t for t in seen)  # moved while running
        app.action_copy_answer()
        await pilot.pause()
        assert app.last_answer == ""
        app.save_to(tmp_path / "raw")
        md = (tmp_path / "raw.md").read_text()
        assert block.text in md and "not in harmony format" in md
        expected_ctx = len(app.session.prompt_tokens())
        await app.action_new_chat()
        assert await app.open_conversation(tmp_path / "raw.json")
        await pilot.pause()
        assert app.query_one(UnparsedBlock).text == block.text
        assert f"ctx {expected_ctx:,}/" in status(app) and expected_ctx > 0


def self_text(info) -> str:
    from mlx_oss.tui.widgets import status_text

    return status_text(info)


def test_a_message_without_message_token_or_on_no_known_channel(model_tok):
    """A message that ends before `<|message|>` still shows its words once, where its channel puts
    them (final: the answer; no channel: unparsed); an assistant message on an unknown channel is
    shown and kept as unparsed, and never prompted with."""
    text = ("<|channel|>final Hello there<|end|><|start|>assistant<|channel|>weird<|message|>odd text<|end|>"
            "<|start|>assistant stray words<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>")  # fmt: skip
    chat = _chat(model_tok, ENC.encode(text, allowed_special="all"))
    events = list(chat.send("q"))
    r = events[-1].reply
    assert r.answer == "Hello thereDone." and r.unparsed == "odd textstray words"
    assert "".join(e.text for e in events if isinstance(e, UnparsedDelta)) == "odd textstray words"
    assert [(m.channel, m.text) for m in chat.history[1:]] == [
        (FINAL, "Hello there"), (UNPARSED, "odd text"), (UNPARSED, "stray words"), (FINAL, "Done.")]  # fmt: skip
    assert "odd text" not in ENC.decode(chat.prompt_tokens())


def test_unparsed_tokens_count_exactly_the_tokens_shown_as_unparsed(model_tok):
    """Stats.unparsed_tokens is what was shown as unparsed, token for token: content on no known channel,
    a header ended without <|message|> (its words), an abandoned header and the words after it, a cut-off
    header; a preamble, a tool call and a final answer add nothing."""

    def enc(text: str) -> list[int]:
        return ENC.encode(text, allowed_special="all")

    placed = enc("<|channel|>commentary<|message|>Hm<|end|><|start|>assistant<|channel|>analysis to=python code<|message|>"
                 "1+1<|end|><|start|>assistant<|channel|>final<|message|>A<|end|>")  # fmt: skip
    weird = enc("<|start|>assistant<|channel|>weird<|message|>odd text<|end|>")
    no_body = enc("<|start|>assistant stray words<|end|>")
    abandoned = enc("<|start|>assistant") + WORDS[: MAX_HEADER_TOKENS + 5]  # 64 header tokens, then loose words
    cut = enc("<|start|>assistant") + WORDS[:10]  # max_tokens ends it inside this "header"
    script = placed + weird + no_body + abandoned + cut
    chat = _chat(model_tok, script, max_tokens=len(script))
    events = list(chat.send("q"))
    r, s = events[-1].reply, events[-1].stats
    assert s.stop_reason == "length" and s.generated_tokens == len(script) and r.answer == "A"
    shown = "".join(e.text for e in events if isinstance(e, UnparsedDelta))
    assert shown == r.unparsed and r.unparsed.startswith("odd textstray wordsassistant" + ENC.decode(WORDS[:3]))
    expected = (len(ENC.encode_ordinary("odd text"))
                + len(ENC.encode_ordinary("assistant stray words"))  # the header's tokens, its role word too
                + len(abandoned) - 1  # everything after <|start|>: the 64-token "header", the 5 words after it
                + len(cut) - 1)  # fmt: skip
    assert s.unparsed_tokens == expected
    assert (s.answer_tokens, s.reasoning_tokens) == (1, 0)
    # the history keeps all of it, in order: the words after the abandoned header too, and the cut-off
    # "header" last, marked incomplete (so a saved chat says it was cut off)
    kept = [m for m in chat.history if m.channel == UNPARSED]
    assert "".join(m.text for m in kept) == r.unparsed and len(kept) == 4
    assert [m.incomplete for m in kept] == [False, False, False, True] and kept[-1].to_dict()["incomplete"] is True


def test_a_character_written_byte_by_byte_outside_a_message_counts_each_token(model_tok):
    """Three byte tokens release one "€" between messages: all three are unparsed tokens (the count once
    followed the text released, and so missed the tokens whose bytes waited in the decoder)."""
    euro = [ENC.encode_single_token(bytes([b])) for b in "€".encode()]
    script = ENC.encode("<|channel|>final<|message|>A<|end|>", allowed_special="all") + euro + ENC.encode(
        "<|start|>assistant<|channel|>final<|message|>B<|return|>", allowed_special="all")  # fmt: skip
    events = list(_chat(model_tok, script).send("q"))
    r, s = events[-1].reply, events[-1].stats
    assert (r.answer, r.unparsed, s.unparsed_tokens, s.answer_tokens) == ("AB", "€", 3, 2)


def test_a_reply_that_starts_with_words_ended_by_end_counts_them(model_tok):
    """The reply's very first "header" (right after the prompt's `<|start|>assistant`) ended by `<|end|>`
    without `<|message|>`: each of its tokens is unparsed, not one more or less."""
    words = ENC.encode_ordinary("stray words here")
    script = words + ENC.encode("<|end|><|start|>assistant<|channel|>final<|message|>A<|return|>", allowed_special="all")
    events = list(_chat(model_tok, script).send("q"))
    r, s = events[-1].reply, events[-1].stats
    assert (r.answer, r.unparsed, s.unparsed_tokens) == ("A", "stray words here", len(words))
