'use strict';

// Reference echo server (Node `ws` 8): every message comes back to its sender
// with the same type (text stays text, binary stays binary).
//
//   node echo.js 127.0.0.1:PORT [--deflate]
//
// --deflate enables permessage-deflate (RFC 7692) with ws's defaults.
// PORT may be 0: the line `listening on HOST:PORT` shows the real port.

const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const deflate = args.includes('--deflate');
const addr = args.find((a) => !a.startsWith('--')) || '127.0.0.1:9001';
const sep = addr.lastIndexOf(':');
const host = sep > 0 ? addr.slice(0, sep).replace(/^\[|\]$/g, '') : '127.0.0.1';
const port = Number(sep >= 0 ? addr.slice(sep + 1) : addr);

const wss = new WebSocketServer({
  host,
  port,
  // Autobahn 9.x sends messages up to 16 MiB; leave plenty of room.
  maxPayload: 64 * 1024 * 1024,
  perMessageDeflate: deflate,
});

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    ws.send(data, { binary: isBinary });
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
