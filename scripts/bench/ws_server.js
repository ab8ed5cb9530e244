// Node's ws package as a server, for scripts/bench_echo.py and bench_broadcast.py.
//
//   node ws_server.js PORT echo
//     echoes text as text and binary as binary, messages up to 64 MiB.
//   node ws_server.js PORT broadcast [deflate]
//     relays every message a client sends to every connected client (the sender
//     included) with the loop over wss.clients that ws' documentation shows. With
//     deflate, permessage-deflate is offered with ws' default settings except the
//     threshold (0: every message compressed, like the Python servers).
//
// Without deflate, permessage-deflate is off (ws' default for servers). One process,
// listening on 127.0.0.1; ws sets TCP_NODELAY on its sockets.
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const [port, mode, deflate] = process.argv.slice(2);
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: +port,
  backlog: 2048,
  maxPayload: 64 * 1024 * 1024,
  perMessageDeflate: deflate === 'deflate' ? { threshold: 0 } : false,
});

if (mode === 'echo') {
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
} else if (mode === 'broadcast') {
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  });
} else {
  console.error('usage: ws_server.js PORT echo|broadcast [deflate]');
  process.exit(2);
}
wss.on('listening', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
