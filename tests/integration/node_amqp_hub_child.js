// Run by node with the unmodified Azure IoT Node.js device SDK over AMQP: twins, direct methods
// and cloud-to-device messages. argv: connection string, CA file. Prints one JSON line per event
// on stdout ("twin", "ready", "desired", "c2d"); exits 0 on "quit" from stdin. The handlers are
// the SDK's documented ones, used as a device application would.
'use strict';
const fs = require('fs');
const readline = require('readline');
const { Client } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');

const [connStr, caFile] = process.argv.slice(2);

function say(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

function fail(err) {
  console.error('node child: ' + (err && (err.stack || err.message) || err));
  process.exit(1);
}

async function main() {
  const client = Client.fromConnectionString(connStr, Amqp);
  await client.setOptions({ ca: fs.readFileSync(caFile, 'utf8') });
  client.on('message', (msg) => {
    const props = {};
    for (let i = 0; i < msg.properties.count(); i++) {
      const item = msg.properties.getItem(i);
      props[item.key] = item.value;
    }
    say({ event: 'c2d', data: msg.getData().toString(), props: props });
    client.complete(msg, (err) => { if (err) fail(err); });
  });
  client.onDeviceMethod('setLed', (request, response) => {
    response.send(200, { method: request.methodName, echo: request.payload }, (err) => {
      if (err) fail(err);
    });
  });
  await client.open();
  const twin = await client.getTwin();
  await new Promise((resolve, reject) => twin.properties.reported.update(
    { sdk: 'node', fw: '1.18' }, (err) => (err ? reject(err) : resolve())));
  const fresh = await client.getTwin();
  say({ event: 'twin', twin: { desired: fresh.properties.desired, reported: fresh.properties.reported } });
  let first = true;
  twin.on('properties.desired', (delta) => {
    if (first) { first = false; return; } // the whole desired document, at registration
    say({ event: 'desired', patch: delta });
  });
  say({ event: 'ready' });
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === 'quit') break;
  }
  await client.close();
}

main().then(() => process.exit(0), fail);
