"use strict";
// npm test: signs requests with the standardwebhooks library and sends them
// to the receiver on a loopback port.
const test = require("node:test");
const assert = require("node:assert/strict");
const { Webhook } = require("standardwebhooks");
const { createApp, Dedup } = require("./server");

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER = "whsec_cmVwbGFjZS1tZS13aXRoLTMyLXJhbmRvbS1ieXRlcyE=";
const BODY = '{"id":"evt_1","type":"order.created","created_at":"2025-01-02T03:04:05Z","data":{"order_id":"o-1"}}';

async function start(t, onEvent) {
  const events = [];
  const app = createApp({
    secrets: SECRET,
    onEvent: async (e) => {
      if (onEvent) await onEvent(e);
      events.push(e);
    },
  });
  const server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  t.after(() => server.close());
  return { url: `http://127.0.0.1:${server.address().port}/webhooks`, events };
}

async function post(url, { secret = SECRET, id, at = new Date(), body = BODY, sendBody = body }) {
  const sig = new Webhook(secret).sign(id, at, body);
  const res = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
      "webhook-signature": sig,
    },
    body: sendBody,
  });
  await res.text();
  return res.status;
}

test("verifies signatures", async (t) => {
  const { url, events } = await start(t);
  assert.equal(await post(url, { id: "evt_ok" }), 200);
  assert.deepEqual(events, [{ id: "evt_ok", type: "order.created", created_at: "2025-01-02T03:04:05Z", data: { order_id: "o-1" } }]);

  assert.equal(await post(url, { id: "evt_wrong", secret: OTHER }), 401, "wrong secret");
  assert.equal(await post(url, { id: "evt_old", at: new Date(Date.now() - 10 * 60 * 1000) }), 401, "stale timestamp");
  assert.equal(await post(url, { id: "evt_tampered", sendBody: BODY.replace("o-1", "o-2") }), 401, "tampered body");
  const unsigned = await fetch(url, { method: "POST", body: BODY });
  assert.equal(unsigned.status, 401, "unsigned");
  assert.equal(events.length, 1);
});

test("verifies a raw body that is not JSON", async (t) => {
  const { url, events } = await start(t);
  assert.equal(await post(url, { id: "evt_raw", body: "plain text" }), 200);
  assert.equal(events[0].data, "plain text");
});

test("answers duplicates without reprocessing", async (t) => {
  const { url, events } = await start(t);
  for (let i = 0; i < 3; i++) assert.equal(await post(url, { id: "evt_dup" }), 200);
  assert.equal(events.length, 1);
});

test("failed processing is retried", async (t) => {
  let fail = true;
  const { url, events } = await start(t, () => {
    if (fail) throw new Error("database down");
  });
  assert.equal(await post(url, { id: "evt_retry" }), 500);
  fail = false;
  assert.equal(await post(url, { id: "evt_retry" }), 200);
  assert.equal(events.length, 1);
});

test("a duplicate while the first is in progress is answered 409", async (t) => {
  let release;
  const gate = new Promise((r) => (release = r));
  let started;
  const begun = new Promise((r) => (started = r));
  const { url, events } = await start(t, async () => {
    started();
    await gate;
  });
  const first = post(url, { id: "evt_slow" });
  await begun;
  assert.equal(await post(url, { id: "evt_slow" }), 409);
  release();
  assert.equal(await first, 200);
  assert.equal(events.length, 1);
});

test("dedup is bounded and forgets after its ttl", () => {
  const d = new Dedup(2, 60_000);
  const now = 1_000_000;
  for (const id of ["a", "b", "c"]) {
    assert.equal(d.begin(id, now), "new");
    d.done(id, now);
  }
  assert.equal(d.entries.size, 2);
  assert.equal(d.begin("a", now), "new", "oldest id forgotten");
  d.done("a", now);
  assert.equal(d.begin("c", now), "done");
  assert.equal(d.begin("c", now + 60_000), "new", "forgotten after the ttl");
});

test("refuses a missing or malformed secret", () => {
  assert.throws(() => createApp({ secrets: "", onEvent() {} }), /WEBHOOK_SECRET is not set/);
  assert.throws(() => createApp({ secrets: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", onEvent() {} }), /whsec_/);
});

test("verifies v1a (ed25519) signatures with a whpk_ key", async (t) => {
  const crypto = require("node:crypto");
  const pair = () => {
    const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
    const raw = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url");
    return { privateKey, whpk: "whpk_" + raw.toString("base64") };
  };
  const warren = pair();
  const stranger = pair();
  const events = [];
  const app = createApp({ secrets: warren.whpk, onEvent: (e) => events.push(e) });
  const server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  t.after(() => server.close());
  const url = `http://127.0.0.1:${server.address().port}/webhooks`;
  const send = async (id, key, body = BODY, at = new Date()) => {
    const ts = String(Math.floor(at.getTime() / 1000));
    const sig = crypto.sign(null, Buffer.from(`${id}.${ts}.${BODY}`), key).toString("base64");
    const res = await fetch(url, {
      method: "POST",
      headers: { "webhook-id": id, "webhook-timestamp": ts, "webhook-signature": `v1,bm9wZQ== v1a,${sig}` },
      body,
    });
    await res.text();
    return res.status;
  };
  assert.equal(await send("evt_v1a", warren.privateKey), 200);
  assert.equal(await send("evt_other_key", stranger.privateKey), 401, "another key");
  assert.equal(await send("evt_tampered", warren.privateKey, BODY.replace("o-1", "o-2")), 401, "tampered body");
  assert.equal(await send("evt_stale", warren.privateKey, BODY, new Date(Date.now() - 10 * 60 * 1000)), 401, "stale");
  assert.deepEqual(events.map((e) => e.id), ["evt_v1a"]);
  assert.throws(() => createApp({ secrets: "whpk_AAAA", onEvent() {} }), /32 bytes/);
});
