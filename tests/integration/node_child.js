// A device application on the unmodified Azure IoT Node.js SDK (azure-iot-device with
// azure-iot-device-mqtt's MqttWs: MQTT over WebSocket, wss://{GatewayHostName}:443; or
// azure-iot-device-amqp's Amqp, amqps://{GatewayHostName}:5671, or AmqpWs, AMQP over WebSocket
// on wss://{GatewayHostName}:443/$iothub/websocket).
//
//   node node_child.js CONNECTION_STRING CA_FILE [mqtt-ws|amqp|amqp-ws]
//
// Prints one JSON line per event on stdout: twin, reported, ready, desired, method, c2d,
// acked (a message whose sendEvent called back without error), send_error. Reads commands on
// stdin: "send FROM TO" sends messages FROM..TO-1 one after the other, "quit" closes and exits.
'use strict';

const fs = require('fs');
const readline = require('readline');
const { Client, Message } = require('azure-iot-device');

const [connStr, caFile, transportName = 'mqtt-ws'] = process.argv.slice(2);
const TRANSPORTS = {
  'mqtt-ws': () => require('azure-iot-device-mqtt').MqttWs,
  'amqp': () => require('azure-iot-device-amqp').Amqp,
  'amqp-ws': () => require('azure-iot-device-amqp').AmqpWs,
};
const client = Client.fromConnectionString(connStr, TRANSPORTS[transportName]());
const deviceId = /DeviceId=([^;]+)/.exec(connStr)[1];

function say(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

function properties(message) {
  const out = {};
  for (const p of message.properties.propertyList) out[p.key] = p.value;
  return out;
}

function payloadOf(request) {
  const raw = request.payload;
  if (Buffer.isBuffer(raw)) return raw.length ? JSON.parse(raw.toString()) : null;
  return raw === undefined ? null : raw;
}

function sendOne(i) {
  const message = new Message(JSON.stringify({ device: deviceId, i }));
  message.messageId = 'node-' + i;
  message.contentType = 'application/json';
  message.contentEncoding = 'utf-8';
  message.properties.add('temperature', '21.5');
  message.properties.add('site name', 'north/gate');
  return client.sendEvent(message); // resolves once the gateway's PUBACK (accepted) came
}

async function send(from, to) {
  for (let i = from; i < to; i++) {
    for (;;) { // the SDK retries within an operation; a failed one is sent again
      try {
        await sendOne(i);
        say({ event: 'acked', i });
        break;
      } catch (err) {
        say({ event: 'send_error', i, error: String(err) });
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 20)); // a sensor's pace
  }
  say({ event: 'sent', to });
}

async function main() {
  client.setOptions({ ca: fs.readFileSync(caFile, 'utf8') });
  client.on('error', (err) => say({ event: 'error', error: String(err) }));
  client.on('disconnect', () => say({ event: 'disconnect' }));
  client.on('message', (message) => {
    say({ event: 'c2d', data: message.data.toString(), props: properties(message) });
    client.complete(message, () => {});
  });
  client.onDeviceMethod('setLed', (request, response) => {
    const body = { method: request.methodName, echo: payloadOf(request) };
    say({ event: 'method', name: request.methodName });
    response.send(200, body, () => {});
  });
  await client.open();
  const twin = await client.getTwin();
  say({ event: 'twin', twin: { desired: twin.properties.desired,
                               reported: twin.properties.reported } });
  await new Promise((resolve, reject) => twin.properties.reported.update(
    { sdk: 'node', fw: '1.18' }, (err) => (err ? reject(err) : resolve())));
  say({ event: 'reported' });
  twin.on('properties.desired', (patch) => say({ event: 'desired', patch }));
  say({ event: 'ready' });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [command, ...args] = line.trim().split(/\s+/);
    if (command === 'send') send(Number(args[0]), Number(args[1]));
    if (command === 'quit') break;
  }
  await client.close();
  process.exit(0);
}

main().catch((err) => {
  say({ event: 'fatal', error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
