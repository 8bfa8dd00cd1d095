// An IoT Edge module written with the unmodified Azure IoT Node.js SDK over AMQP:
// azure-iot-device's ModuleClient.fromEnvironment(Amqp) reads the IOTEDGE_* environment,
// gets the trust bundle and its SAS signatures from the workload API, and dials
// IOTEDGE_GATEWAYHOSTNAME on 5671. Nothing here knows gatewayd.
//
//   node_amqp_module.js producer STATE_DIR COUNT   sends {"device": "producer", "i": n} to out1
//   node_amqp_module.js consumer STATE_DIR         receives on input in1 (the "inputMessage"
//                                                  event), completes each message
//
// What it did goes to files in STATE_DIR, each line synced: `acked` (producer: i once
// sendOutputEvent returned, i.e. the accepted disposition came), `received` (consumer: input
// name and i per message). The consumer opens only once STATE_DIR/go exists, so that its input
// waits in the gateway meanwhile.
'use strict';
const fs = require('fs');
const path = require('path');
const { ModuleClient, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');

const [role, stateDir, countArg] = process.argv.slice(2);

function append(name, line) {
  const fd = fs.openSync(path.join(stateDir, name), 'a');
  fs.writeSync(fd, line + '\n');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

function fail(err) {
  console.error('node module: ' + (err && (err.stack || err.message) || err));
  process.exit(1);
}

async function producer(count) {
  const client = await ModuleClient.fromEnvironment(Amqp);
  await client.open();
  for (let i = 0; i < count; i++) {
    const msg = new Message(JSON.stringify({ device: 'producer', i: i }));
    msg.properties.add('kind', 'temp');
    await client.sendOutputEvent('out1', msg);
    append('acked', String(i));
  }
}

function waitForGo() {
  return new Promise((resolve) => {
    const check = () => (fs.existsSync(path.join(stateDir, 'go')) ? resolve() : setTimeout(check, 50));
    check();
  });
}

async function consumer() {
  await waitForGo();
  const client = await ModuleClient.fromEnvironment(Amqp);
  client.on('error', fail);
  client.on('inputMessage', (inputName, msg) => {
    const body = JSON.parse(msg.getData().toString());
    append('received', inputName + ' ' + body.i);
    client.complete(msg, (err) => { if (err) fail(err); });
  });
  await client.open();
  append('connected', '1');
}

fs.mkdirSync(stateDir, { recursive: true });
const run = role === 'producer' ? producer(parseInt(countArg, 10)) : consumer();
run.then(() => setInterval(() => {}, 1 << 30), fail);  // a module runs until it is stopped
