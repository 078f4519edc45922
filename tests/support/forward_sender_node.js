// A test sender: N records through Node.js fluent-logger with requireAckResponse (and a shared key).
//
// Usage: node forward_sender_node.js HOST PORT SENDER_ID COUNT [SHARED_KEY]
// With FLUENT_USERNAME (and FLUENT_PASSWORD) in the environment the handshake also gives that user
// (the server's user_auth); the environment keeps the password out of the process list.
// Records are {"request_id": "node-SENDER-I", ...}, emitted one after another. When an emit
// fails (ack timeout, connection lost) this caller does what a Node service must do: it emits
// the record again, on a fresh sender, under a new chunk id. Each such re-emit is printed as
// "reemit REQUEST_ID" so the test knows which records may be stored twice without ids.
'use strict';
const logger = require('fluent-logger');

const [host, port, sender, count, sharedKey] = process.argv.slice(2);
const total = parseInt(count, 10);

function makeSender() {
  const options = {
    host: host, port: parseInt(port, 10), timeout: 3.0, requireAckResponse: true,
    ackResponseTimeout: 5000, reconnectInterval: 300,
    internalLogger: { info() {}, error() {} },
  };
  if (sharedKey) {
    options.security = { clientHostname: 'node-' + sender, sharedKey: sharedKey };
    if (process.env.FLUENT_USERNAME) {
      options.security.username = process.env.FLUENT_USERNAME;
      options.security.password = process.env.FLUENT_PASSWORD || '';
    }
  }
  const s = logger.createFluentSender('test', options);
  s.on('error', () => {});
  return s;
}

let current = makeSender();

function send(i, attempt) {
  if (i >= total) {
    console.log('done');
    process.exit(0); // replaced senders may still hold reconnect timers
  }
  const requestId = 'node-' + sender + '-' + i;
  let settled = false;
  const retry = () => {
    if (settled) return;
    settled = true;
    console.log('reemit ' + requestId);
    try { current.end(); } catch (e) { /* already closed */ }
    current = makeSender();
    setTimeout(() => send(i, attempt + 1), 200);
  };
  const guard = setTimeout(retry, 8000);
  current.emit('node', { request_id: requestId, sender: sender, seq: i, prompt: 'What is 2 + 2?' }, (err) => {
    clearTimeout(guard);
    if (err) {
      retry();
      return;
    }
    if (settled) return;
    settled = true;
    if ((i + 1) % 1000 === 0) console.log('sent ' + (i + 1));
    setImmediate(() => send(i + 1, 0));
  });
}

send(0, 0);
