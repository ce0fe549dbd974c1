// Benchmark baseline, not part of relay: the Twilio <-> OpenAI Realtime relay as a team would
// write it in Node with a plain `http` server and the `ws` package, JSON.parse/JSON.stringify,
// one message per frame. Same per-call logic as the Twilio Python sample (forward media, send
// a mark after each audio delta, truncate + clear on barge-in). Twilio messages that arrive
// before the upstream socket is open are queued and sent once it opens.
//
//   node bench/baselines/node_ws/relay.js --port 5050 --upstream ws://127.0.0.1:9000/v1/realtime
'use strict';

const http = require('http');
const { WebSocket, WebSocketServer } = require('ws');

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: null, upstream: null };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s);
    if (!['--host', '--port', '--upstream'].includes(flag)) {
      console.error(`unknown argument: ${argv[i]}`);
      process.exit(2);
    }
    const value = inline !== undefined ? inline : argv[++i];
    if (flag === '--host') args.host = value;
    else if (flag === '--port') args.port = Number(value);
    else args.upstream = value;
  }
  if (!Number.isInteger(args.port) || !args.upstream) {
    console.error('usage: node relay.js [--host H] --port P --upstream ws://...');
    process.exit(2);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const OPENAI_API_KEY = process.env.OPENAI_API_KEY || 'sk-bench';
const SESSION_UPDATE = JSON.stringify({
  type: 'session.update',
  session: {
    type: 'realtime',
    model: 'gpt-realtime',
    output_modalities: ['audio'],
    audio: {
      input: { format: { type: 'audio/pcmu' }, turn_detection: { type: 'server_vad' } },
      output: { format: { type: 'audio/pcmu' }, voice: 'alloy' },
    },
    instructions: 'You are a helpful and bubbly AI assistant who answers any questions you are asked.',
  },
});

function handleCall(twilioWs) {
  const openaiWs = new WebSocket(args.upstream, { headers: { Authorization: `Bearer ${OPENAI_API_KEY}` } });
  const pending = []; // Twilio -> upstream messages sent before the upstream opened

  let streamSid = null;
  let latestMediaTimestamp = 0;
  let lastAssistantItem = null;
  let markQueue = [];
  let responseStartTimestampTwilio = null;

  function sendUpstream(text) {
    if (openaiWs.readyState === WebSocket.OPEN) openaiWs.send(text);
    else if (openaiWs.readyState === WebSocket.CONNECTING) pending.push(text);
  }

  openaiWs.on('open', () => {
    openaiWs.send(SESSION_UPDATE);
    for (const text of pending) openaiWs.send(text);
    pending.length = 0;
  });

  // A bad message ends this call only (an uncaught throw would take down every call).
  const guard = (fn) => (message) => {
    try {
      fn(message);
    } catch (err) {
      twilioWs.terminate();
      openaiWs.terminate();
    }
  };

  twilioWs.on('message', guard((message) => {
    const data = JSON.parse(message);
    switch (data.event) {
      case 'media':
        latestMediaTimestamp = Number(data.media.timestamp);
        sendUpstream(JSON.stringify({ type: 'input_audio_buffer.append', audio: data.media.payload }));
        break;
      case 'start':
        streamSid = data.start.streamSid;
        latestMediaTimestamp = 0;
        break;
      case 'mark':
        if (markQueue.length) markQueue.shift();
        break;
      case 'stop':
        openaiWs.close();
        break;
    }
  }));

  openaiWs.on('message', guard((message) => {
    const response = JSON.parse(message);
    if (response.type === 'response.output_audio.delta' && response.delta) {
      twilioWs.send(JSON.stringify({ event: 'media', streamSid, media: { payload: response.delta } }));
      if (responseStartTimestampTwilio === null) responseStartTimestampTwilio = latestMediaTimestamp;
      if (response.item_id) lastAssistantItem = response.item_id;
      if (streamSid) {
        twilioWs.send(JSON.stringify({ event: 'mark', streamSid, mark: { name: 'responsePart' } }));
        markQueue.push('responsePart');
      }
    } else if (response.type === 'input_audio_buffer.speech_started' && lastAssistantItem) {
      if (markQueue.length && responseStartTimestampTwilio !== null) {
        sendUpstream(JSON.stringify({
          type: 'conversation.item.truncate',
          item_id: lastAssistantItem,
          content_index: 0,
          audio_end_ms: latestMediaTimestamp - responseStartTimestampTwilio,
        }));
        twilioWs.send(JSON.stringify({ event: 'clear', streamSid }));
        markQueue = [];
        lastAssistantItem = null;
        responseStartTimestampTwilio = null;
      }
    }
  }));

  // Either side going away ends the call; errors stay with this call.
  twilioWs.on('close', () => openaiWs.close());
  openaiWs.on('close', () => twilioWs.close());
  twilioWs.on('error', () => openaiWs.terminate());
  openaiWs.on('error', () => twilioWs.terminate());
}

const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('WebSocket only\n');
});
const wss = new WebSocketServer({ server }); // any path
wss.on('connection', (ws) => {
  try {
    handleCall(ws);
  } catch (err) {
    ws.terminate();
  }
});
server.listen(args.port, args.host);

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
