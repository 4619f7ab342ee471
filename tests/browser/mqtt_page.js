// Small promise wrappers around MQTT.js for the browser test (tests/websocket/test_websocket_browser.py).
// The test drives them through WebDriver and checks what they return; nothing is decided here.
"use strict";

window.edgemq = {
  client: null,
  messages: [],
  errors: [],

  connect(url, options) {
    return new Promise((resolve) => {
      const client = mqtt.connect(url, Object.assign({ reconnectPeriod: 0, connectTimeout: 10000 }, options));
      this.client = client;
      client.on("message", (topic, payload, packet) => {
        this.messages.push({
          topic: topic,
          payload: new TextDecoder().decode(payload),
          qos: packet.qos,
          retain: packet.retain,
        });
      });
      client.on("error", (err) => {
        this.errors.push(String(err));
        resolve({ error: String(err) });
      });
      client.on("close", () => resolve({ error: "closed before CONNACK: " + this.errors.join("; ") }));
      client.on("connect", (connack) => {
        document.getElementById("status").textContent = "connected";
        resolve({ sessionPresent: connack.sessionPresent, returnCode: connack.returnCode ?? connack.reasonCode ?? 0 });
      });
    });
  },

  subscribe(filter, qos) {
    return new Promise((resolve) => {
      this.client.subscribe(filter, { qos: qos }, (err, granted) =>
        resolve(err ? { error: String(err) } : { granted: granted.map((g) => g.qos) }));
    });
  },

  publish(topic, payload, qos, retain) {
    // The callback runs when the QoS flow is complete (PUBACK, or PUBCOMP for QoS 2).
    return new Promise((resolve) => {
      this.client.publish(topic, payload, { qos: qos, retain: !!retain }, (err) =>
        resolve(err ? { error: String(err) } : { ok: true }));
    });
  },

  waitForMessages(count, timeoutMs) {
    return new Promise((resolve) => {
      const deadline = Date.now() + timeoutMs;
      const poll = () => {
        if (this.messages.length >= count || Date.now() > deadline) {
          resolve(this.messages.slice());
        } else {
          setTimeout(poll, 20);
        }
      };
      poll();
    });
  },

  end() {
    return new Promise((resolve) => {
      if (!this.client) { resolve({ ok: true }); return; }
      this.client.end(false, {}, () => resolve({ ok: true }));
      this.client = null;
    });
  },
};
