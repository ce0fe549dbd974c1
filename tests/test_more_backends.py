"""Gemini Live's and Deepgram's adapters behind the backend seam: what relay sends, and the events
their messages become (sans-I/O: no socket, no simulator)."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from relay import backends as ev
from relay.agents import Agent, AgentProfile
from relay.backends.deepgram import DeepgramBackend
from relay.backends.gemini import GeminiBackend, seconds_of, usage_tokens
from relay.config import Settings
from relay.tools.spec import TenantTool
from relay.usage import Tokens

GEMINI = AgentProfile(instructions="Be brief.", backend="gemini-live", model="gemini-3.8-live", greeting="Hi")
DEEPGRAM = AgentProfile(instructions="Be brief.", backend="deepgram", model="gpt-4.1-nano", voice="aura-2-orion-en")


def _json(message: bytes) -> dict[str, object]:
    value = orjson.loads(message)
    assert isinstance(value, dict)
    return value


def _audio_message(pcm: bytes) -> bytes:
    inline = {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(pcm).decode()}
    return orjson.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": inline}]}}})


# ---------------------------------------------------------------- Gemini Live


def test_gemini_setup_asks_for_audio_transcripts_tools_and_resumption() -> None:
    tool = TenantTool(
        name="lookup", description="Look up", parameters={"type": "object", "properties": {}}, url="https://t.example/x"
    )
    agent = AgentProfile(
        instructions="Be brief.", backend="gemini-live", model="gemini-3.8-live", end_call_tool=True, tools=(tool,)
    )
    backend = GeminiBackend(agent)
    (message,) = backend.open(agent, [], 1000)
    setup = _json(message)["setup"]
    assert isinstance(setup, dict)
    assert setup["model"] == "models/gemini-3.8-live"
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] == "Kore"
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {}
    assert setup["realtimeInputConfig"]["activityHandling"] == "START_OF_ACTIVITY_INTERRUPTS"
    names = [d["name"] for d in setup["tools"][0]["functionDeclarations"]]
    assert names == ["end_call", "lookup"]
    assert setup["tools"][0]["functionDeclarations"][1]["parameters"]["type"] == "OBJECT"
    assert backend.after_ready() == []


def test_gemini_resumes_with_a_handle_and_seeds_a_fresh_session_after_setup() -> None:
    backend = GeminiBackend(GEMINI)
    history = [("user", "I need a table"), ("assistant", "For how many?")]
    (resumed,) = backend.open(GEMINI, history, 1000, resume="handle-1")
    assert _json(resumed)["setup"]["sessionResumption"] == {"handle": "handle-1"}
    assert backend.after_ready() == []  # the resumed session has the conversation
    backend = GeminiBackend(GEMINI)
    backend.open(GEMINI, history, 1000)
    (seeded,) = backend.after_ready()
    turns = _json(seeded)["clientContent"]["turns"]
    assert [t["role"] for t in turns] == ["user", "model"]
    assert _json(seeded)["clientContent"]["turnComplete"] is False


def test_gemini_turn_with_a_barge_in() -> None:
    backend = GeminiBackend(GEMINI)
    assert backend.parse(b'{"setupComplete":{}}') == [ev.Ready()]
    heard = backend.parse(b'{"serverContent":{"inputTranscription":{"text":"Book a table"}}}')
    assert heard == [ev.CallerTurn("user1")]
    first = backend.parse(_audio_message(b"\x00\x01" * 480))
    assert first[:2] == [ev.ResponseStarted(), ev.AnswerStarted("answer2")]
    assert isinstance(first[2], ev.AnswerAudio) and first[2].item_id == "answer2"
    said = backend.parse(b'{"serverContent":{"outputTranscription":{"text":"For how"}}}')
    assert said == [ev.AnswerTranscript("answer2", "For how", final=False)]
    cut = backend.parse(b'{"serverContent":{"interrupted":true}}')
    assert cut[:2] == [ev.CallerSpeechStarted(), ev.CallerSpeechStopped(None)]
    assert cut[2:] == [ev.AnswerAudioDone("answer2"), ev.ResponseDone(("answer2",), ())]
    done = backend.parse(b'{"serverContent":{"turnComplete":true}}')
    assert done == [ev.CallerTranscript("user1", "Book a table")]
    # A transcript of the cut answer that comes late still goes to it.
    assert backend.parse(b'{"serverContent":{"outputTranscription":{"text":" many"}}}') == [
        ev.AnswerTranscript("answer2", " many", final=False)
    ]
    # The next answer's audio starts a new one.
    assert backend.parse(_audio_message(b"\x00\x00"))[1] == ev.AnswerStarted("answer3")


def test_gemini_bundled_content_is_read_in_order() -> None:
    backend = GeminiBackend(GEMINI)
    backend.parse(_audio_message(b"\x00\x00"))
    inline = {"mimeType": "audio/pcm", "data": "AAA="}
    bundled = {
        "serverContent": {
            "interrupted": True,
            "modelTurn": {"parts": [{"inlineData": inline}]},
            "turnComplete": True,
        }
    }
    events = backend.parse(orjson.dumps(bundled))
    kinds = [type(e).__name__ for e in events]
    # The old answer is cut, the new one's audio plays, then the turn (the new one) ends.
    assert kinds == [
        "CallerSpeechStarted",
        "CallerSpeechStopped",
        "AnswerAudioDone",
        "ResponseDone",
        "ResponseStarted",
        "AnswerStarted",
        "AnswerAudio",
        "AnswerAudioDone",
        "ResponseDone",
    ]


def test_gemini_tools_usage_resumption_and_go_away() -> None:
    backend = GeminiBackend(GEMINI)
    call = {"toolCall": {"functionCalls": [{"id": "fc_1", "name": "lookup", "args": {"q": "x"}}]}}
    (done,) = backend.parse(orjson.dumps(call))
    assert done == ev.ResponseDone((), (ev.ToolCall("fc_1", "lookup", '{"q":"x"}'),))
    (reply,) = backend.tool_result("fc_1", {"ok": True})
    assert _json(reply) == {
        "toolResponse": {"functionResponses": [{"id": "fc_1", "name": "lookup", "response": {"ok": True}}]}
    }
    usage = {
        "usageMetadata": {
            "promptTokenCount": 50,
            "responseTokenCount": 80,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}, {"modality": "TEXT", "tokenCount": 10}],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 80}],
        }
    }
    assert backend.parse(orjson.dumps(usage)) == [
        ev.ResponseDone((), (), Tokens(text_in=10, audio_in=40, audio_out=80))
    ]
    assert backend.parse(b'{"sessionResumptionUpdate":{"newHandle":"h2","resumable":true}}') == [ev.ResumeHandle("h2")]
    assert backend.parse(b'{"sessionResumptionUpdate":{"newHandle":"h3","resumable":false}}') == []
    assert backend.parse(b'{"goAway":{"timeLeft":"59s"}}') == [ev.SessionEnding(59.0)]
    assert seconds_of("1.5s") == 1.5 and seconds_of("soon") is None
    assert usage_tokens({"promptTokenCount": 0}) is None


def test_gemini_bad_messages_are_failures_not_exceptions() -> None:
    backend = GeminiBackend(GEMINI)
    assert backend.parse(b"{nope")[0] == ev.Failed("Gemini Live message is not valid JSON", malformed=True)
    assert isinstance(backend.parse(b"[]")[0], ev.Failed)
    bad = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}}}
    assert isinstance(backend.parse(orjson.dumps(bad))[0], ev.Failed)


# ---------------------------------------------------------------- Deepgram


def test_deepgram_settings_pass_mulaw_through_and_offer_tools() -> None:
    agent = AgentProfile(
        instructions="Be brief.", backend="deepgram", model="gpt-4.1-nano", voice="aura-2-orion-en", end_call_tool=True
    )
    backend = DeepgramBackend(agent)
    (message,) = backend.open(agent, [("user", "hello"), ("assistant", "hi")], 1000)
    settings = _json(message)
    assert settings["type"] == "Settings"
    assert settings["audio"] == {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    }
    agent_settings = settings["agent"]
    assert agent_settings["speak"]["provider"]["model"] == "aura-2-orion-en"
    assert agent_settings["think"]["provider"] == {"type": "open_ai", "model": "gpt-4.1-nano"}
    assert [f["name"] for f in agent_settings["think"]["functions"]] == ["end_call"]
    assert all("endpoint" not in f for f in agent_settings["think"]["functions"])  # relay runs them
    assert [m["role"] for m in agent_settings["context"]["messages"]] == ["user", "assistant"]
    assert _json(backend.say("Hello")) == {"type": "InjectAgentMessage", "message": "Hello"}
    assert backend.keepalive() == b'{"type":"KeepAlive"}'


def test_deepgram_turn_with_a_barge_in_drops_audio_in_flight() -> None:
    backend = DeepgramBackend(DEEPGRAM)
    assert backend.parse(b'{"type":"Welcome","request_id":"r"}') == []
    (ready,) = backend.parse(b'{"type":"SettingsApplied"}')
    assert isinstance(ready, ev.Ready) and ready.expires_at is not None
    assert ready.expires_at == pytest.approx(time.time() + 7200, abs=5)  # the 2-hour cap
    assert backend.parse(b'{"type":"ConversationText","role":"user","content":"Hi"}') == [
        ev.CallerTurn("user1"),
        ev.CallerTranscript("user1", "Hi"),
    ]
    started = backend.parse(b'{"type":"AgentStartedSpeaking","total_latency":0.4}')
    assert started == [ev.ResponseStarted(), ev.AnswerStarted("answer2")]
    assert backend.parse(bytearray(b"\xff" * 160)) == [ev.AnswerAudio("answer2", b"\xff" * 160)]
    assert backend.parse(b'{"type":"ConversationText","role":"assistant","content":"Hello there"}') == [
        ev.AnswerTranscript("answer2", "Hello there", False)
    ]
    cut = backend.parse(b'{"type":"UserStartedSpeaking"}')
    assert cut == [ev.CallerSpeechStarted()]
    assert backend.parse(bytearray(b"\x7f" * 160)) == []  # in flight from the cut answer
    # The caller's words end the cut utterance, before their turn.
    assert backend.parse(b'{"type":"ConversationText","role":"user","content":"Stop"}') == [
        ev.AnswerAudioDone("answer2"),
        ev.ResponseDone(("answer2",), ()),
        ev.CallerTurn("user3"),
        ev.CallerTranscript("user3", "Stop"),
    ]
    # Text before the next utterance's start goes with it.
    assert backend.parse(b'{"type":"ConversationText","role":"assistant","content":"Sure."}') == []
    assert backend.parse(b'{"type":"AgentStartedSpeaking"}')[1:] == [
        ev.AnswerStarted("answer4"),
        ev.AnswerTranscript("answer4", "Sure.", False),
    ]
    assert backend.parse(b'{"type":"AgentAudioDone"}') == [
        ev.AnswerAudioDone("answer4"),
        ev.ResponseDone(("answer4",), ()),
    ]


def test_deepgram_text_after_a_cut_goes_to_the_cut_utterance() -> None:
    backend = DeepgramBackend(DEEPGRAM)
    backend.parse(b'{"type":"AgentStartedSpeaking"}')
    assert backend.parse(b'{"type":"UserStartedSpeaking"}') == [ev.CallerSpeechStarted()]
    assert backend.parse(b'{"type":"ConversationText","role":"assistant","content":"Long text"}') == [
        ev.AnswerTranscript("answer1", "Long text", False),
        ev.AnswerAudioDone("answer1"),
        ev.ResponseDone(("answer1",), ()),
    ]


def test_deepgram_client_side_functions_and_errors() -> None:
    backend = DeepgramBackend(DEEPGRAM)
    request = {
        "type": "FunctionCallRequest",
        "functions": [
            {"id": "f1", "name": "lookup", "arguments": '{"q":1}', "client_side": True},
            {"id": "f2", "name": "server_side", "arguments": "{}", "client_side": False},
        ],
    }
    assert backend.parse(orjson.dumps(request)) == [ev.ResponseDone((), (ev.ToolCall("f1", "lookup", '{"q":1}'),))]
    (reply,) = backend.tool_result("f1", {"found": 2})
    assert _json(reply) == {"type": "FunctionCallResponse", "id": "f1", "name": "lookup", "content": '{"found":2}'}
    error = b'{"type":"Error","code":"UNPARSABLE_CLIENT_MESSAGE","description":"bad"}'
    assert isinstance(backend.parse(error)[0], ev.Refused)  # before SettingsApplied: the session is refused
    backend.parse(b'{"type":"SettingsApplied"}')
    assert isinstance(backend.parse(error)[0], ev.Failed)
    assert isinstance(backend.parse(b"not json")[0], ev.Failed)


# ---------------------------------------------------------------- settings and agents


def test_each_backend_has_its_endpoint_key_and_model() -> None:
    settings = Settings(openai_api_key="o", gemini_api_key="g", deepgram_api_key="d")
    url, headers = settings.backend_endpoint("gemini-live", "gemini-3.8-live")
    assert url.startswith("wss://generativelanguage.googleapis.com/ws/") and headers == {"x-goog-api-key": "g"}
    url, headers = settings.backend_endpoint("deepgram", "gpt-4.1-nano")
    assert url == "wss://agent.deepgram.com/v1/agent/converse" and headers == {"Authorization": "Token d"}
    assert settings.model_for("gemini-live") == "gemini-3.8-live"
    env = {"RELAY_BACKEND": "gemini-live", "TWILIO_AUTH_TOKEN": "t", "RELAY_PUBLIC_URL": "https://r.example"}
    with pytest.raises(Exception, match="GEMINI_API_KEY is required"):
        Settings.from_env(env)
    ok = Settings.from_env({**env, "GEMINI_API_KEY": "k", "RELAY_GEMINI_LIVE_URL": "ws://127.0.0.1:9/x"})
    assert ok.agent.model == "gemini-3.8-live" and ok.gemini_api_key == "k"
    with pytest.raises(Exception, match="RELAY_DEEPGRAM_AGENT_URL"):
        Settings.from_env({**env, "GEMINI_API_KEY": "k", "RELAY_DEEPGRAM_AGENT_URL": "ws://example.com/x"})


def _problems(**fields: str) -> list[str]:
    return Agent.from_profile("t1", "a1", AgentProfile(instructions="x", **fields)).problems()  # type: ignore[arg-type]


def test_agents_name_models_and_voices_of_their_backend() -> None:
    assert _problems(backend="gemini-live", model="gemini-3.8-live") == []
    assert _problems(backend="deepgram", model="gpt-4.1-nano", voice="aura-2-orion-en") == []
    assert any("not a Gemini Live model" in p for p in _problems(backend="gemini-live", model="gpt-realtime-2.1"))
    assert any("its backend is gemini-live" in p for p in _problems(model="gemini-3.8-live"))
    assert _problems(backend="gemini-live", model="gemini-3.8-live", voice="Puck") == []
    assert _problems(voice="Puck") != []


def test_gemini_words_over_an_answer_are_a_turn_of_their_own() -> None:
    """Input transcription of a caller talking over the answer (before the server cuts it) opens
    a new user turn: the one the answer answers is complete."""
    backend = GeminiBackend(GEMINI)
    backend.parse(b'{"serverContent":{"inputTranscription":{"text":"Tomorrow at seven."}}}')
    backend.parse(_audio_message(b"\x00\x00"))
    over = backend.parse(b'{"serverContent":{"inputTranscription":{"text":"That is all"}}}')
    assert over == [ev.CallerTranscript("user1", "Tomorrow at seven."), ev.CallerTurn("user3")]
