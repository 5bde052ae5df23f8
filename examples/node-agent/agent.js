#!/usr/bin/env node
// An AITBC agent in Node.js on @grpc/grpc-js: registers, holds StreamAssignments open,
// heartbeats, and runs each assignment (work, acknowledging it if it takes a while, then
// complete with a fenced report).
//
//   node agent.js --address HOST:PORT[,HOST:PORT...] --agent-id ID
//   (or AITBC_COORDINATOR_ADDRESS / AITBC_AGENT_ID; see README.md for the other flags)
// TLS: AITBC_TLS_CA_FILE (CA of the node's certificate), AITBC_TLS_CERT_FILE and
// AITBC_TLS_KEY_FILE (a client certificate, for mutual TLS); AITBC_TOKEN_FILE: a file holding
// the bearer token sent with every call.
"use strict";

const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const Module = require("node:module");
const { parseArgs } = require("node:util");

// The stubs live in generated/js, outside this package, so Node would look for their
// runtime (@bufbuild/protobuf) in generated/'s parents: add our node_modules to the search
// path (what NODE_PATH does) before loading them.
process.env.NODE_PATH = [path.join(__dirname, "node_modules"), process.env.NODE_PATH]
  .filter(Boolean).join(path.delimiter);
Module._initPaths();

const grpc = require("@grpc/grpc-js");
const { create, fromBinary, toBinary } = require("@bufbuild/protobuf");
const { AgentService } = require("../../generated/js/aitbc/coordinator/v1/agent_pb");
const { TaskService } = require("../../generated/js/aitbc/coordinator/v1/task_pb");

const { values: opts } = parseArgs({ options: {
  "address": { type: "string", default: process.env.AITBC_COORDINATOR_ADDRESS || "localhost:9001" },
  "agent-id": { type: "string", default: process.env.AITBC_AGENT_ID || "" },
  "agent-type": { type: "string", default: process.env.AITBC_AGENT_TYPE || "worker" },
  "capabilities": { type: "string", default: process.env.AITBC_CAPABILITIES || "" },
  "max-concurrency": { type: "string", default: process.env.AITBC_MAX_CONCURRENCY || "2" },
  "ca-file": { type: "string", default: process.env.AITBC_TLS_CA_FILE || "" },
  "cert-file": { type: "string", default: process.env.AITBC_TLS_CERT_FILE || "" },
  "key-file": { type: "string", default: process.env.AITBC_TLS_KEY_FILE || "" },
  "server-name": { type: "string", default: process.env.AITBC_TLS_SERVER_NAME || "" },
  "tls": { type: "boolean", default: false },
  "token-file": { type: "string", default: process.env.AITBC_TOKEN_FILE || "" },
} });
if (!opts["agent-id"]) {
  console.error("error: --agent-id (or AITBC_AGENT_ID) is required");
  process.exit(2);
}
const AGENT_ID = opts["agent-id"];
const ADDRESSES = opts.address.split(",").filter(Boolean);
const CALL_TIMEOUT_MS = 5000;
const SHUTDOWN_GRACE_MS = 5000;
const INITIAL_BACKOFF_MS = 250;
const ACK_AFTER_MS = 1000; // acknowledge only work still running after this long
// The server refuses client pings more often than every 10 s (GOAWAY after 2 strikes).
const CHANNEL_OPTIONS = { "grpc.keepalive_time_ms": 30000, "grpc.keepalive_timeout_ms": 10000 };
const TLS = Boolean(opts.tls || opts["ca-file"] || opts["cert-file"] || opts["key-file"]);
if (Boolean(opts["cert-file"]) !== Boolean(opts["key-file"])) {
  console.error("error: --cert-file and --key-file (AITBC_TLS_CERT_FILE, AITBC_TLS_KEY_FILE) go together");
  process.exit(2);
}
if (opts["server-name"]) CHANNEL_OPTIONS["grpc.ssl_target_name_override"] = opts["server-name"];
const isLoopback = (address) => {
  const host = address.startsWith("[") ? address.slice(1, address.indexOf("]")) : address.replace(/:\d+$/, "");
  return host === "localhost" || (net.isIP(host) === 4 && host.startsWith("127.")) || host === "::1";
};
if (opts["token-file"] && !TLS && !ADDRESSES.every(isLoopback)) {
  // A bearer token in the clear across a network is as good as published.
  console.error("error: a token is sent only over TLS (set AITBC_TLS_CA_FILE) or to a loopback address");
  process.exit(2);
}
// Files are read when a channel is made: a renewed client certificate is used on reconnect.
const readFile = (file) => (file ? fs.readFileSync(file) : null);
const channelCredentials = () => (TLS
  ? grpc.credentials.createSsl(readFile(opts["ca-file"]), readFile(opts["key-file"]), readFile(opts["cert-file"]))
  : grpc.credentials.createInsecure());
// The token goes as call metadata (grpc-js will not put call credentials on a plaintext
// channel, and loopback tests run plaintext); the file is re-read at most once a second.
const token = { value: "", readAt: 0 };
function callMetadata() {
  const metadata = new grpc.Metadata();
  if (!opts["token-file"]) return metadata;
  if (Date.now() - token.readAt >= 1000) {
    token.readAt = Date.now();
    try {
      token.value = fs.readFileSync(opts["token-file"], "utf8").trim() || token.value;
    } catch (err) {
      if (!token.value) throw err; // no token yet: say why (being replaced: keep the old one)
    }
  }
  metadata.set("authorization", `Bearer ${token.value}`);
  return metadata;
}

const log = (event, fields = {}) => console.log([`event=${event}`, `agent_id=${AGENT_ID}`,
  ...Object.entries(fields).map(([k, v]) => `${k}=${/^[^\s"=]*$/.test(v) ? v : JSON.stringify(v)}`)].join(" "));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const durationMs = (d, fallback) => (d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : fallback);

// A grpc-js client for a service descriptor of the generated code: methods by local name
// (registerAgent, streamAssignments, ...), messages (de)serialised by @bufbuild/protobuf.
function makeClient(service, address) {
  const definition = {};
  for (const m of service.methods) {
    definition[m.localName] = {
      path: `/${service.typeName}/${m.name}`, requestStream: false,
      responseStream: m.methodKind === "server_streaming",
      requestSerialize: (msg) => Buffer.from(toBinary(m.input, msg)),
      requestDeserialize: (buf) => fromBinary(m.input, buf),
      responseSerialize: (msg) => Buffer.from(toBinary(m.output, msg)),
      responseDeserialize: (buf) => fromBinary(m.output, buf),
    };
  }
  const Client = grpc.makeGenericClientConstructor(definition, service.name);
  const client = new Client(address, channelCredentials(), CHANNEL_OPTIONS);
  const schemas = Object.fromEntries(service.methods.map((m) => [m.localName, m.input]));
  client.call = (name, init) => new Promise((resolve, reject) => client[name](
    create(schemas[name], init), callMetadata(), { deadline: Date.now() + CALL_TIMEOUT_MS },
    (err, reply) => (err ? reject(err) : resolve(reply))));
  client.open = (name, init) => client[name](create(schemas[name], init), callMetadata());
  return client;
}

const state = { addressIndex: 0, agents: null, tasks: null, stopping: false,
  backoffMs: INITIAL_BACKOFF_MS, seen: new Set(), running: new Map() };
let wakeSession = () => {};

function connect() {
  for (const client of [state.agents, state.tasks]) client?.close();
  const address = ADDRESSES[state.addressIndex % ADDRESSES.length];
  state.agents = makeClient(AgentService, address);
  state.tasks = makeClient(TaskService, address);
  return address;
}

async function register() {
  const reply = await state.agents.call("registerAgent", {
    agentId: AGENT_ID, agentType: opts["agent-type"],
    capabilities: opts.capabilities.split(",").filter(Boolean),
    maxConcurrency: Number(opts["max-concurrency"]), labels: { runtime: "node" },
  });
  log("registered", { created: reply.created });
}

// One StreamAssignments call; resolves with why it ended: "draining", "heartbeat_refused"
// (FAILED_PRECONDITION: reopen), or the gRPC status code of its error.
function runStream() {
  return new Promise((resolve) => {
    let heartbeatMs = 10000;
    let timer = null;
    let ended = false;
    const done = (why) => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      stream.cancel();
      resolve(why);
    };
    wakeSession = () => done("stopping");
    const heartbeat = async () => {
      try {
        const reply = await state.agents.call("heartbeat", { agentId: AGENT_ID });
        heartbeatMs = durationMs(reply.heartbeatInterval, heartbeatMs);
      } catch (err) {
        log("heartbeat_failed", { code: grpc.status[err.code] });
        if (err.code === grpc.status.FAILED_PRECONDITION) return done("heartbeat_refused");
        if (err.code === grpc.status.NOT_FOUND) return done(grpc.status.NOT_FOUND);
      }
      if (!ended) timer = setTimeout(heartbeat, heartbeatMs);
    };
    const stream = state.agents.open("streamAssignments", { agentId: AGENT_ID });
    stream.on("data", ({ event }) => {
      if (event.case === "ready") {
        heartbeatMs = durationMs(event.value.heartbeatInterval, heartbeatMs);
        state.backoffMs = INITIAL_BACKOFF_MS;
        log("stream_ready", { node_id: event.value.nodeId, heartbeat_ms: heartbeatMs });
        timer = setTimeout(heartbeat, heartbeatMs);
      } else if (event.case === "assignment") {
        handleAssignment(event.value);
      } else if (event.case === "cancel") {
        const work = state.running.get(event.value.taskId);
        log("cancel", { task_id: event.value.taskId, attempt: event.value.attempt, reason: event.value.reason });
        if (work && work.attempt === event.value.attempt) work.cancel();
      } else if (event.case === "draining") {
        log("node_draining", { node_id: event.value.nodeId });
        done("draining");
      }
    });
    stream.on("error", (err) => done(err.code));
    stream.on("end", () => done(grpc.status.UNAVAILABLE));
  });
}

// Runs one attempt. The coordinator takes a completion straight from ASSIGNED, so only work
// still running after ACK_AFTER_MS (or a quarter of its lease) is acknowledged: it then shows
// RUNNING, its lease is renewed and it is not sent again when the stream reopens. A quick task
// costs one report. A repeat of an attempt in hand (the stream reopened before it was
// acknowledged) is ignored: work runs once per task_id + attempt.
async function handleAssignment(a) {
  const key = `${a.taskId}#${a.attempt}`;
  const report = (name, extra = {}) => state.tasks.call(name,
    { taskId: a.taskId, agentId: AGENT_ID, fencingToken: a.fencingToken, ...extra });
  const fields = { task_id: a.taskId, attempt: a.attempt };
  const refused = (err) => log("report_refused", { ...fields, code: grpc.status[err.code], message: err.details });
  if (state.seen.has(key)) return;
  state.seen.add(key);
  let finish = () => {};
  state.running.set(a.taskId, { attempt: a.attempt, cancel: () => finish(true) });
  try {
    log("assignment", { ...fields, task_type: a.taskType });
    const data = a.taskData || {};
    // Example work: wait delay_ms (if given), extending the lease at half its length.
    const leaseMs = durationMs(a.startToCloseTimeout, 300000);
    let acknowledging = Promise.resolve();
    const cancelled = await new Promise((resolve) => {
      // A refused acknowledgement: the attempt is no longer ours (cancelled, lease lost).
      const drop = (err) => { refused(err); finish(true); };
      const ack = setTimeout(() => { acknowledging = report("acknowledgeTask").catch(drop); },
        Math.min(ACK_AFTER_MS, leaseMs / 4));
      const extend = setInterval(() => report("extendTaskLease").catch(refused), leaseMs / 2);
      const timer = setTimeout(() => finish(false), Number(data.delay_ms) || 0);
      finish = (wasCancelled) => {
        clearTimeout(ack); clearInterval(extend); clearTimeout(timer); resolve(wasCancelled);
      };
    });
    await acknowledging; // an acknowledgement under way goes first: then it is not refused
    if (cancelled) return log("dropped", fields);
    const result = { handled_by: "node", agent_id: AGENT_ID, echo: data };
    for (let attempt = 1; ; attempt += 1) {
      try {
        await report("completeTask", { result });
        return log("completed", fields);
      } catch (err) {
        // Repeating a report is harmless: retry an outage; anything else is final.
        if (err.code !== grpc.status.UNAVAILABLE || attempt >= 5) throw err;
        await sleep(200 * 2 ** attempt);
      }
    }
  } catch (err) {
    // FAILED_PRECONDITION: the attempt is no longer ours (cancelled, lease lost): drop it.
    // After any failure a redelivery of this attempt runs it afresh.
    refused(err);
  } finally {
    state.running.delete(a.taskId);
    state.seen.delete(key);
  }
}

// Capped, jittered exponential backoff; a stream that became ready resets it.
async function backOff() {
  await sleep(state.backoffMs * (0.5 + Math.random()));
  state.backoffMs = Math.min(state.backoffMs * 2, 10000);
}

async function main() {
  let registered = false;
  while (!state.stopping) {
    const address = connect();
    try {
      if (!registered) { await register(); registered = true; }
    } catch (err) {
      log("register_failed", { address, code: grpc.status[err.code], message: err.details });
      if (err.code !== grpc.status.UNAVAILABLE && err.code !== grpc.status.DEADLINE_EXCEEDED) process.exit(1);
      state.addressIndex += 1; // another node may answer
      await backOff();
      continue;
    }
    if (state.stopping) break;
    const why = await runStream();
    if (state.stopping) break;
    log("stream_ended", { address, reason: typeof why === "number" ? grpc.status[why] : why });
    if (why === grpc.status.ABORTED) {
      log("replaced", { message: "another instance of this agent opened a stream; exiting" });
      process.exit(1);
    }
    if (why === grpc.status.NOT_FOUND) registered = false; // the coordinator forgot us
    if (why === "heartbeat_refused") continue; // same node, new stream, at once
    if (why === "draining" || why === grpc.status.UNAVAILABLE) state.addressIndex += 1;
    await backOff();
  }
}

async function shutdown(signal) {
  if (state.stopping) return;
  state.stopping = true;
  log("shutting_down", { signal });
  wakeSession(); // closes the stream: no new work
  const deadline = Date.now() + SHUTDOWN_GRACE_MS;
  while (state.running.size > 0 && Date.now() < deadline) await sleep(50);
  try {
    const reply = await state.agents.call("deregisterAgent", { agentId: AGENT_ID });
    log("deregistered", { existed: reply.existed });
  } catch (err) {
    log("deregister_failed", { code: grpc.status[err.code], message: err.details });
  }
  state.agents.close();
  state.tasks.close();
  process.exit(0);
}

process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
main().catch((err) => { console.error(err); process.exit(1); });
