"""OpenAI Realtime GA: the session (PROTOCOLS §2.2), client events (§2.3), server events (§2.4)."""

from __future__ import annotations

import base64
import dataclasses

import orjson
import pytest

from relay.backends import realtime
from relay.errors import PayloadError, ProtocolError

AGENT = realtime.AgentProfile(instructions="Be brief.", voice="cedar")


def test_session_update_is_ga_pcmu_with_server_vad_and_transcription() -> None:
    event = orjson.loads(realtime.session_update(AGENT))
    assert event["type"] == "session.update"
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-realtime-whisper"}  # not on the shutdown list
    vad = session["audio"]["input"]["turn_detection"]
    assert vad == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    # Nothing of the retired beta shape (PROTOCOLS §0.1).
    for beta in ("modalities", "voice", "input_audio_format", "output_audio_format", "input_audio_transcription"):
        assert beta not in session


def test_session_problems_accepts_only_pcmu_both_ways() -> None:
    good = {"audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}
    assert realtime.session_problems(good) == []
    pcm = {
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}},
            "output": {"format": {"type": "audio/pcmu"}},
        }
    }
    assert realtime.session_problems(pcm) == ["session audio.input.format is 'audio/pcm', not 'audio/pcmu'"]
    assert len(realtime.session_problems({})) == 2


class _Writes:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def test_input_audio_buffer_append_carries_the_payload_untouched(fp) -> None:
    payload = b"no+JhoaJjpzSHxAKBgYJDhtEopGKh4aIjZm7JhQMCAYIDBEaKdCdkYuIh4mNlK0t"
    transport = _Writes()
    fp.WsCore(transport, False, 1 << 20, 0, lambda: 0.0).send_append(payload)
    reader = fp.FrameReader(False)
    reader.feed(b"".join(transport.writes))
    opcode, message = reader.read()
    assert opcode == fp.OP_TEXT
    assert orjson.loads(message) == {"type": "input_audio_buffer.append", "audio": payload.decode()}


def test_truncate() -> None:
    assert orjson.loads(realtime.truncate("item_1", 1234)) == {
        "type": "conversation.item.truncate",
        "event_id": realtime.TRUNCATE_ID,
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1234,
    }


def test_response_cancel_and_create() -> None:
    assert orjson.loads(realtime.response_cancel()) == {"type": "response.cancel"}
    assert orjson.loads(realtime.response_create()) == {"type": "response.create"}
    assert orjson.loads(realtime.response_create("Greet the caller.")) == {
        "type": "response.create",
        "response": {"instructions": "Greet the caller."},
    }


def test_user_text_item() -> None:
    assert orjson.loads(realtime.user_text("pressed 1")) == {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "pressed 1"}]},
    }


DELTA = (
    b'{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1",'
    b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"//7+/g=="}'
)


def test_audio_delta_is_read_by_the_fast_path(fp) -> None:
    assert fp.parse_audio_delta(DELTA) == ("item_1", b"//7+/g==", "resp_1")
    assert fp.b64_decoded_len(b"//7+/g==") == 4 == len(base64.b64decode("//7+/g=="))


@pytest.mark.parametrize(
    "event",
    [
        {"type": "session.created", "session": {}},
        {"type": "session.updated", "session": {}},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 100, "item_id": "item_2"},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "item_2"},
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i",
            "content_index": 0,
            "transcript": "hi",
        },
        {
            "type": "response.output_audio.done",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
        },
        {"type": "response.output_audio_transcript.done", "item_id": "i", "transcript": "hello"},
        {"type": "response.done", "response": {"status": "completed", "output": []}},
        {"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "m"}},
    ],
)
def test_other_server_events_go_to_the_full_parser(fp, event: dict) -> None:
    message = orjson.dumps(event)
    assert fp.parse_audio_delta(message) is None
    assert realtime.parse_event(message) == event


@pytest.mark.parametrize(
    "message, error",
    [
        (b"nope", ProtocolError),
        (b'{"type":"response.output_audio.delta","delta":"AAAA"}', ProtocolError),
        (b'{"type":"response.output_audio.delta","item_id":"i","delta":"A"}', PayloadError),
        (b'{"no_type":1}', ProtocolError),
    ],
)
def test_malformed_backend_events_raise(fp, message: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        fp.parse_audio_delta(message)


def test_parse_event_rejects_non_events() -> None:
    for message in (b"[]", b'{"type": 3}', b"{"):
        with pytest.raises(ProtocolError):
            realtime.parse_event(message)


# ---------------------------------------------------------------- conversation events (§2.3)


def test_a_model_that_reasons_is_told_its_effort_and_an_older_one_is_not() -> None:
    session = orjson.loads(realtime.session_update(AGENT))["session"]  # gpt-realtime-2.1, the default
    assert session["reasoning"] == {"effort": "low"}
    high = dataclasses.replace(AGENT, model="gpt-realtime-2.1-mini", reasoning_effort="high")
    assert orjson.loads(realtime.session_update(high))["session"]["reasoning"] == {"effort": "high"}
    for older in ("gpt-realtime", "gpt-realtime-2025-08-28", "gpt-realtime-mini"):
        session = orjson.loads(realtime.session_update(dataclasses.replace(AGENT, model=older)))["session"]
        assert "reasoning" not in session


def test_session_update_offers_the_end_call_tool_unless_turned_off() -> None:
    session = orjson.loads(realtime.session_update(AGENT))["session"]
    assert session["tool_choice"] == "auto"
    [tool] = session["tools"]
    assert tool["type"] == "function" and tool["name"] == "end_call"
    assert tool["parameters"] == {"type": "object", "properties": {}, "required": []}
    off = orjson.loads(realtime.session_update(realtime.AgentProfile(instructions="x", end_call_tool=False)))
    assert off["session"]["tools"] == []


def test_interrupt_response_follows_the_agent() -> None:
    profile = realtime.AgentProfile(instructions="x", interrupt_response=False)
    vad = orjson.loads(realtime.session_update(profile))["session"]["audio"]["input"]["turn_detection"]
    assert vad["interrupt_response"] is False and vad["create_response"] is True


def test_say_is_a_response_create_with_the_line_in_its_instructions() -> None:
    event = orjson.loads(realtime.say("Hello there."))
    assert event == {"type": "response.create", "response": {"instructions": realtime.SAY_PREFIX + "Hello there."}}


def test_function_output_answers_a_tool_call() -> None:
    event = orjson.loads(realtime.function_output("call_1", {"error": "no"}))
    assert event == {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"error":"no"}'},
    }


def test_seed_items_carry_the_newest_turns_that_fit_oldest_first() -> None:
    history = [("user", "a" * 10), ("assistant", "b" * 10), ("user", "c" * 10), ("assistant", "d" * 10)]
    items = [orjson.loads(m) for m in realtime.seed_items(history, max_chars=30)]
    assert [i["type"] for i in items] == ["conversation.item.create"] * 3
    assert [(i["item"]["role"], i["item"]["content"]) for i in items] == [
        ("assistant", [{"type": "output_text", "text": "b" * 10}]),
        ("user", [{"type": "input_text", "text": "c" * 10}]),
        ("assistant", [{"type": "output_text", "text": "d" * 10}]),
    ]
    assert all(i["item"]["type"] == "message" for i in items)
    assert realtime.seed_items([], 100) == []
