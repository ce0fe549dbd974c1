"""Benchmark baseline, not part of relay: the Twilio <-> OpenAI Realtime relay written the way
the widely copied twilio-samples "speech-assistants-openai-realtime-api-python" sample is
written (FastAPI + uvicorn, the ``websockets`` client, stdlib ``json``, one message per frame,
``receive_from_twilio`` / ``send_to_twilio`` coroutines per call joined by ``asyncio.gather``),
updated to the GA Realtime event names. Written fresh for the benchmark harness so our relay
can be compared with what teams run today; it keeps the sample's shape, including its habits.

    python bench/baselines/sample_fastapi.py --port 5050 --upstream ws://127.0.0.1:9000/v1/realtime
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import sys

import uvicorn
import websockets
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse
from fastapi.websockets import WebSocketDisconnect
from twilio.twiml.voice_response import Connect, VoiceResponse
from websockets import ConnectionClosed, State

OPENAI_API_KEY = os.getenv("OPENAI_API_KEY", "sk-bench")
UPSTREAM_URL = "wss://api.openai.com/v1/realtime?model=gpt-realtime"  # replaced by --upstream
SYSTEM_MESSAGE = "You are a helpful and bubbly AI assistant who answers any questions you are asked."
VOICE = "alloy"
LOG_EVENT_TYPES = [
    "error",
    "response.content.done",
    "rate_limits.updated",
    "response.done",
    "input_audio_buffer.committed",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.speech_started",
    "session.created",
    "session.updated",
]
VERBOSE = False

app = FastAPI()


def log(*args):
    if VERBOSE:
        print(*args)


@app.api_route("/incoming-call", methods=["GET", "POST"])
async def handle_incoming_call(request: Request):
    """Answer the call with TwiML that connects it to the media stream."""
    response = VoiceResponse()
    connect = Connect()
    connect.stream(url=f"wss://{request.url.hostname}/media-stream")
    response.append(connect)
    return HTMLResponse(content=str(response), media_type="application/xml")


@app.websocket("/media-stream")
async def handle_media_stream(websocket: WebSocket):
    """Relay one call between Twilio and the Realtime API."""
    log("Client connected")
    await websocket.accept()

    async with websockets.connect(
        UPSTREAM_URL, additional_headers={"Authorization": f"Bearer {OPENAI_API_KEY}"}
    ) as openai_ws:
        await initialize_session(openai_ws)

        # Connection specific state
        stream_sid = None
        latest_media_timestamp = 0
        last_assistant_item = None
        mark_queue = []
        response_start_timestamp_twilio = None

        async def receive_from_twilio():
            """Receive audio from Twilio and send it to the Realtime API."""
            nonlocal stream_sid, latest_media_timestamp
            try:
                async for message in websocket.iter_text():
                    data = json.loads(message)
                    if data["event"] == "media" and openai_ws.state is State.OPEN:
                        latest_media_timestamp = int(data["media"]["timestamp"])
                        audio_append = {"type": "input_audio_buffer.append", "audio": data["media"]["payload"]}
                        await openai_ws.send(json.dumps(audio_append))
                    elif data["event"] == "start":
                        stream_sid = data["start"]["streamSid"]
                        log(f"Incoming stream has started {stream_sid}")
                        latest_media_timestamp = 0
                    elif data["event"] == "mark":
                        if mark_queue:
                            mark_queue.pop(0)
                    elif data["event"] == "stop":
                        log("Stream stopped.")
                        break
            except (WebSocketDisconnect, RuntimeError, ConnectionClosed):
                log("Client disconnected.")
            await openai_ws.close()

        async def send_to_twilio():
            """Receive events from the Realtime API and send audio back to Twilio."""
            nonlocal last_assistant_item, response_start_timestamp_twilio
            try:
                async for openai_message in openai_ws:
                    response = json.loads(openai_message)
                    if response["type"] in LOG_EVENT_TYPES:
                        log(f"Received event: {response['type']}", response)

                    if response.get("type") == "response.output_audio.delta" and "delta" in response:
                        audio_payload = base64.b64encode(base64.b64decode(response["delta"])).decode("utf-8")
                        audio_delta = {"event": "media", "streamSid": stream_sid, "media": {"payload": audio_payload}}
                        await websocket.send_json(audio_delta)

                        if response_start_timestamp_twilio is None:
                            response_start_timestamp_twilio = latest_media_timestamp
                        if response.get("item_id"):
                            last_assistant_item = response["item_id"]

                        await send_mark(websocket, stream_sid)

                    if response.get("type") == "input_audio_buffer.speech_started":
                        log("Speech started detected.")
                        if last_assistant_item:
                            log(f"Interrupting response with id: {last_assistant_item}")
                            await handle_speech_started_event()
            except Exception as e:
                log(f"Error in send_to_twilio: {e}")
            # The upstream is gone: hang up on Twilio (a no-op if Twilio already left).
            try:
                await websocket.close()
            except Exception:
                pass

        async def handle_speech_started_event():
            """Cut the assistant off when the caller starts speaking."""
            nonlocal response_start_timestamp_twilio, last_assistant_item
            if mark_queue and response_start_timestamp_twilio is not None:
                elapsed_time = latest_media_timestamp - response_start_timestamp_twilio
                if last_assistant_item:
                    truncate_event = {
                        "type": "conversation.item.truncate",
                        "item_id": last_assistant_item,
                        "content_index": 0,
                        "audio_end_ms": elapsed_time,
                    }
                    await openai_ws.send(json.dumps(truncate_event))

                await websocket.send_json({"event": "clear", "streamSid": stream_sid})

                mark_queue.clear()
                last_assistant_item = None
                response_start_timestamp_twilio = None

        async def send_mark(connection, stream_sid):
            if stream_sid:
                mark_event = {"event": "mark", "streamSid": stream_sid, "mark": {"name": "responsePart"}}
                await connection.send_json(mark_event)
                mark_queue.append("responsePart")

        await asyncio.gather(receive_from_twilio(), send_to_twilio())


async def initialize_session(openai_ws):
    """Configure the Realtime session for Twilio's 8 kHz mu-law audio."""
    session_update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": VOICE},
            },
            "instructions": SYSTEM_MESSAGE,
        },
    }
    log("Sending session update:", json.dumps(session_update))
    await openai_ws.send(json.dumps(session_update))


def main():
    global UPSTREAM_URL, VERBOSE
    parser = argparse.ArgumentParser(description="Twilio sample-style relay (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="ws:// URL of the Realtime endpoint")
    parser.add_argument("--verbose", action="store_true", help="print selected events like the sample")
    args = parser.parse_args()
    UPSTREAM_URL, VERBOSE = args.upstream, args.verbose

    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal once it has shut down;
    # these handlers (restored by uvicorn at that point) turn that into a clean exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(0))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
