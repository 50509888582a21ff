"use strict";
// Sample webhook receiver for warren, in Node.js.
//
// POST /webhooks: verify the Standard Webhooks signature with the official
// `standardwebhooks` package on the raw body, skip events already processed
// (warren delivers at least once and keeps the same webhook-id across
// retries and redeliveries), and log each new event as one JSON line.
//
// Environment:
//   WEBHOOK_SECRET  whsec_... secret shared with warren, and/or whpk_...
//                   public keys of warren's ed25519 (whsk_) signing keys,
//                   which verify its v1a signatures; several, separated by
//                   spaces, are all accepted, for rotation (at least one)
//   PORT            port to listen on (default 8080)
//   HOST            address to listen on (default: every interface)

const crypto = require("node:crypto");
const express = require("express");
const { Webhook } = require("standardwebhooks");

const MAX_BODY = "1mb";

// Dedup is a bounded, in-memory set of webhook ids with a time to live. A
// Map iterates in insertion order, so re-inserting an id on every hit keeps
// the least recently seen id first, to be dropped when the set is full.
// It is per process: several replicas need a shared store instead (Redis
// SET NX with a TTL, a unique key in the database the handler writes to).
class Dedup {
  constructor(max = 100_000, ttlMs = 24 * 60 * 60 * 1000) {
    this.max = max;
    this.ttlMs = ttlMs;
    this.entries = new Map(); // id -> { seen: ms, done: bool }
  }

  // begin claims id for processing: "new", or "in_progress" / "done".
  begin(id, now = Date.now()) {
    this.expire(now);
    const e = this.entries.get(id);
    if (e) {
      if (!e.done) return "in_progress";
      this.touch(id, { seen: now, done: true });
      return "done";
    }
    this.touch(id, { seen: now, done: false });
    return "new";
  }

  // done records that id was processed.
  done(id, now = Date.now()) {
    this.touch(id, { seen: now, done: true });
  }

  // forget drops id after failed processing, so warren's retry is processed.
  forget(id) {
    this.entries.delete(id);
  }

  touch(id, entry) {
    this.entries.delete(id);
    this.entries.set(id, entry);
    while (this.entries.size > this.max) {
      this.entries.delete(this.entries.keys().next().value);
    }
  }

  expire(now) {
    for (const [id, e] of this.entries) {
      if (now - e.seen < this.ttlMs) break; // the rest were seen later
      this.entries.delete(id);
    }
  }
}

// ED25519_SPKI is the DER prefix that makes a raw 32-byte ed25519 public
// key a SubjectPublicKeyInfo, which node:crypto reads.
const ED25519_SPKI = Buffer.from("302a300506032b6570032100", "hex");
const TOLERANCE_S = 5 * 60;

// PublicKeyVerifier checks Standard Webhooks v1a (ed25519) signatures over
// "id.timestamp.body", which the official library does not verify yet.
class PublicKeyVerifier {
  constructor(whpk) {
    const raw = Buffer.from(whpk.slice("whpk_".length), "base64");
    if (raw.length !== 32) throw new Error("a whpk_ key is the base64 of 32 bytes");
    this.key = crypto.createPublicKey({ key: Buffer.concat([ED25519_SPKI, raw]), format: "der", type: "spki" });
  }

  verify(body, headers) {
    const id = headers["webhook-id"];
    const ts = headers["webhook-timestamp"];
    const sigs = headers["webhook-signature"];
    if (!id || !ts || !sigs) throw new Error("missing webhook headers");
    if (Math.abs(Date.now() / 1000 - Number(ts)) > TOLERANCE_S) throw new Error("timestamp too old or too new");
    const signed = Buffer.concat([Buffer.from(`${id}.${ts}.`), body]);
    for (const entry of sigs.split(" ")) {
      const [version, sig] = entry.split(",");
      if (version === "v1a" && sig && crypto.verify(null, signed, this.key, Buffer.from(sig, "base64"))) return;
    }
    throw new Error("no matching v1a signature");
  }
}

function verifiers(secretList) {
  const secrets = (secretList || "").split(/\s+/).filter(Boolean);
  if (secrets.length === 0) {
    throw new Error("WEBHOOK_SECRET is not set (want the whsec_... secret configured in warren)");
  }
  return secrets.map((s, i) => {
    if (s.startsWith("whpk_")) return new PublicKeyVerifier(s);
    if (!s.startsWith("whsec_")) {
      throw new Error(`WEBHOOK_SECRET: secret ${i + 1} does not start with whsec_ or whpk_`);
    }
    const wh = new Webhook(s);
    return { verify: (body, headers) => wh.verify(body, headers, { jsonParse: false }) };
  });
}

// verify throws the last library error unless some secret verifies the request.
function verify(whs, body, headers) {
  let lastErr;
  for (const wh of whs) {
    try {
      // Raw and cloudevents bodies that are not JSON verify too; the body
      // is parsed below.
      wh.verify(body, headers);
      return;
    } catch (err) {
      lastErr = err;
    }
  }
  throw lastErr;
}

// parseEvent reads warren's envelope format ({"id","type","created_at","data"});
// for the raw and cloudevents formats it falls back to the ce-* headers.
function parseEvent(id, headers, body) {
  let json;
  try {
    json = JSON.parse(body.toString("utf8"));
  } catch {
    json = undefined;
  }
  if (json && typeof json === "object" && typeof json.type === "string") {
    return { id, type: json.type, created_at: json.created_at, data: json.data };
  }
  return {
    id,
    type: headers["ce-type"],
    created_at: headers["ce-time"],
    data: json !== undefined ? json : body.toString("utf8"),
  };
}

function log(level, msg, fields) {
  console.log(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }));
}

// createApp builds the express app. onEvent(event) does the work for each
// new event; if it throws (or rejects) the answer is 500 and warren retries.
function createApp({ secrets, onEvent, dedup = new Dedup() }) {
  const whs = verifiers(secrets);
  const app = express();

  app.get("/healthz", (_req, res) => res.sendStatus(200));

  // The signature covers the exact bytes sent: read the body raw, whatever
  // its content-type, and verify before parsing.
  app.post("/webhooks", express.raw({ type: () => true, limit: MAX_BODY }), async (req, res) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const id = req.headers["webhook-id"];
    try {
      verify(whs, body, req.headers);
    } catch (err) {
      log("WARN", "rejected: bad signature", { webhook_id: id, err: err.message });
      return res.status(401).send("invalid signature");
    }

    const state = dedup.begin(id);
    if (state === "done") {
      log("INFO", "duplicate, already processed", { webhook_id: id });
      return res.sendStatus(200);
    }
    if (state === "in_progress") {
      // The first copy may still fail: a non-2xx makes warren retry this one.
      log("INFO", "duplicate, still in progress", { webhook_id: id });
      return res.status(409).send("already in progress");
    }

    const event = parseEvent(id, req.headers, body);
    try {
      await onEvent(event);
    } catch (err) {
      dedup.forget(id);
      log("ERROR", "processing failed", { webhook_id: id, type: event.type, err: String(err) });
      return res.status(500).send("processing failed");
    }
    dedup.done(id);
    res.sendStatus(200);
  });

  return app;
}

// The sample's "business logic": one log line per new event.
function logEvent(event) {
  log("INFO", "event received", { webhook_id: event.id, type: event.type, created_at: event.created_at, data: event.data });
}

module.exports = { createApp, Dedup, parseEvent };

if (require.main === module) {
  const port = Number(process.env.PORT || 8080);
  const host = process.env.HOST || undefined;
  let app;
  try {
    app = createApp({ secrets: process.env.WEBHOOK_SECRET, onEvent: logEvent });
  } catch (err) {
    console.error(err.message);
    process.exit(1);
  }
  const server = app.listen(port, host, () => log("INFO", "listening", { host, port, path: "/webhooks" }));
  const stop = () => server.close(() => process.exit(0)); // finish requests in progress
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
