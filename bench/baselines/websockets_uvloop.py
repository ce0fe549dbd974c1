"""Benchmark baseline, not part of relay: the Twilio <-> OpenAI Realtime relay as a team would
write it on plain ``websockets`` (asyncio API, server and client) running on uvloop, with
stdlib ``json`` and one message per frame. It is the same per-call logic as the Twilio sample
(``receive_from_twilio`` / ``send_to_twilio`` joined by ``asyncio.gather``, marks, truncate and
clear on barge-in) minus the web framework, so the benchmark can tell framework cost from relay
design. Like the sample, it connects upstream before reading the first Twilio message.

    python bench/baselines/websockets_uvloop.py --port 5050 --upstream ws://127.0.0.1:9000/v1/realtime
"""

import argparse
import asyncio
import json
import os
import signal

import uvloop
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

OPENAI_API_KEY = os.getenv("OPENAI_API_KEY", "sk-bench")
SYSTEM_MESSAGE = "You are a helpful and bubbly AI assistant who answers any questions you are asked."
SESSION_UPDATE = json.dumps(
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
            },
            "instructions": SYSTEM_MESSAGE,
        },
    }
)


async def handle_call(twilio_ws, upstream_url):
    """Relay one call: one Twilio WebSocket, one upstream Realtime WebSocket."""
    async with connect(upstream_url, additional_headers={"Authorization": f"Bearer {OPENAI_API_KEY}"}) as openai_ws:
        await openai_ws.send(SESSION_UPDATE)

        stream_sid = None
        latest_media_timestamp = 0
        last_assistant_item = None
        mark_queue = []
        response_start_timestamp_twilio = None

        async def receive_from_twilio():
            nonlocal stream_sid, latest_media_timestamp
            try:
                async for message in twilio_ws:
                    data = json.loads(message)
                    event = data["event"]
                    if event == "media":
                        latest_media_timestamp = int(data["media"]["timestamp"])
                        await openai_ws.send(
                            json.dumps({"type": "input_audio_buffer.append", "audio": data["media"]["payload"]})
                        )
                    elif event == "start":
                        stream_sid = data["start"]["streamSid"]
                        latest_media_timestamp = 0
                    elif event == "mark":
                        if mark_queue:
                            mark_queue.pop(0)
                    elif event == "stop":
                        break
            except ConnectionClosed:
                pass
            await openai_ws.close()

        async def send_to_twilio():
            nonlocal last_assistant_item, response_start_timestamp_twilio
            try:
                async for message in openai_ws:
                    response = json.loads(message)
                    kind = response.get("type")
                    if kind == "response.output_audio.delta" and "delta" in response:
                        media = {"event": "media", "streamSid": stream_sid, "media": {"payload": response["delta"]}}
                        await twilio_ws.send(json.dumps(media))
                        if response_start_timestamp_twilio is None:
                            response_start_timestamp_twilio = latest_media_timestamp
                        if response.get("item_id"):
                            last_assistant_item = response["item_id"]
                        if stream_sid:
                            await twilio_ws.send(
                                json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "responsePart"}})
                            )
                            mark_queue.append("responsePart")
                    elif kind == "input_audio_buffer.speech_started" and last_assistant_item:
                        await handle_speech_started_event()
            except ConnectionClosed:
                pass
            await twilio_ws.close()

        async def handle_speech_started_event():
            nonlocal last_assistant_item, response_start_timestamp_twilio
            if mark_queue and response_start_timestamp_twilio is not None:
                await openai_ws.send(
                    json.dumps(
                        {
                            "type": "conversation.item.truncate",
                            "item_id": last_assistant_item,
                            "content_index": 0,
                            "audio_end_ms": latest_media_timestamp - response_start_timestamp_twilio,
                        }
                    )
                )
                await twilio_ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))
                mark_queue.clear()
                last_assistant_item = None
                response_start_timestamp_twilio = None

        await asyncio.gather(receive_from_twilio(), send_to_twilio())


async def main():
    parser = argparse.ArgumentParser(description="websockets + uvloop relay (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="ws:// URL of the Realtime endpoint")
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def handler(twilio_ws):  # any path
        await handle_call(twilio_ws, args.upstream)

    async with serve(handler, args.host, args.port):
        await stop.wait()


if __name__ == "__main__":
    uvloop.run(main())
