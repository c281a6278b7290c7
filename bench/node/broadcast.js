'use strict';

// Reference broadcast server (Node `ws` 8): every message is sent to every
// other open client, with the same type, as the seed does it.
//
//   node broadcast.js 127.0.0.1:PORT [--deflate]

const { WebSocketServer, WebSocket } = require('ws');

const args = process.argv.slice(2);
const deflate = args.includes('--deflate');
const addr = args.find((a) => !a.startsWith('--')) || '127.0.0.1:9002';
const sep = addr.lastIndexOf(':');
const host = sep > 0 ? addr.slice(0, sep).replace(/^\[|\]$/g, '') : '127.0.0.1';
const port = Number(sep >= 0 ? addr.slice(sep + 1) : addr);

const wss = new WebSocketServer({
  host,
  port,
  maxPayload: 64 * 1024 * 1024,
  perMessageDeflate: deflate,
});

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    wss.clients.forEach((client) => {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => {
  const a = wss.address();
  const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  console.log(`listening on ${h}:${a.port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
