// Run by node with the unmodified Azure IoT Node.js device SDK over AMQP (azure-iot-device-amqp).
// argv: connection string, CA file, device id, count. Sends `count` telemetry messages with
// custom properties, a message id and the JSON content type, exactly as a device application
// would (each sendEvent waits for the gateway's accepted disposition), prints "sent N" per
// message, then exits 0; any error exits 1 with the SDK's message.
'use strict';
const fs = require('fs');
const { Client, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');

const [connStr, caFile, deviceId, countArg] = process.argv.slice(2);
const count = parseInt(countArg, 10);

function fail(err) {
  console.error('node child: ' + (err && (err.stack || err.message) || err));
  process.exit(1);
}

async function main() {
  const client = Client.fromConnectionString(connStr, Amqp);
  await client.setOptions({ ca: fs.readFileSync(caFile, 'utf8') });
  await client.open();
  for (let i = 0; i < count; i++) {
    const msg = new Message(JSON.stringify({ device: deviceId, i: i }));
    msg.messageId = 'node-' + i;
    msg.contentType = 'application/json';
    msg.contentEncoding = 'utf-8';
    msg.properties.add('temperature', '21.5');
    msg.properties.add('site name', 'north/gate');
    await client.sendEvent(msg);
    console.log('sent ' + i);
  }
  await client.close();
}

main().then(() => process.exit(0), fail);
