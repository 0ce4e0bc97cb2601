// A minimal gRPC-Web client for the page: protobuf wire format by hand (varints,
// length-delimited fields, fixed64 doubles), 5-byte frames, trailers from the last
// frame or, for a trailers-only reply, from the HTTP headers (which CORS must expose).

const GRPC_CODES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
  "UNAUTHENTICATED",
];

export class GrpcWebError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
    this.codeName = GRPC_CODES[code] || String(code);
  }
}

// -- encoding -------------------------------------------------------------------------

export class Writer {
  constructor() { this.bytes = []; }
  varint(value) {
    let v = BigInt(value);
    if (v < 0n) v += 1n << 64n;
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v > 0n) byte |= 0x80;
      this.bytes.push(byte);
    } while (v > 0n);
    return this;
  }
  tag(field, wireType) { return this.varint((field << 3) | wireType); }
  int(field, value) { return value ? this.tag(field, 0).varint(value) : this; }
  bytesField(field, data) {
    this.tag(field, 2).varint(data.length);
    for (const b of data) this.bytes.push(b);
    return this;
  }
  string(field, value) {
    return value ? this.bytesField(field, new TextEncoder().encode(value)) : this;
  }
  message(field, writer) { return this.bytesField(field, writer.finish()); }
  finish() { return Uint8Array.from(this.bytes); }
}

// -- decoding -------------------------------------------------------------------------

// Reads a message into {fieldNumber: [values]}: varints as BigInt, length-delimited
// fields as Uint8Array, fixed64 as the 8 raw bytes; the schema-aware readers below
// turn those into objects.
export function decodeFields(buf) {
  const fields = {};
  let pos = 0;
  const readVarint = () => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error("truncated varint");
      const byte = buf[pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const key = Number(readVarint());
    const field = key >>> 3;
    let value;
    switch (key & 7) {
      case 0: value = readVarint(); break;
      case 1: value = buf.subarray(pos, pos + 8); pos += 8; break;
      case 2: {
        const len = Number(readVarint());
        value = buf.subarray(pos, pos + len);
        pos += len;
        break;
      }
      case 5: value = buf.subarray(pos, pos + 4); pos += 4; break;
      default: throw new Error(`unsupported wire type ${key & 7}`);
    }
    if (pos > buf.length) throw new Error("truncated field");
    (fields[field] ||= []).push(value);
  }
  return fields;
}

const text = (bytes) => (bytes ? new TextDecoder().decode(bytes) : "");
const num = (v) => (v === undefined ? 0 : Number(BigInt.asIntN(64, v)));
const dbl = (bytes) => (bytes ? new DataView(bytes.buffer, bytes.byteOffset, 8).getFloat64(0, true) : 0);
const first = (f, n) => (f[n] ? f[n][f[n].length - 1] : undefined);

const FALLBACK_STEPS = ["FALLBACK_STEP_UNSPECIFIED", "FALLBACK_STEP_PRIMARY",
  "FALLBACK_STEP_SECONDARY", "FALLBACK_STEP_CACHE", "FALLBACK_STEP_SIMPLIFIED"];
const FINISH = ["FINISH_REASON_UNSPECIFIED", "FINISH_REASON_STOP", "FINISH_REASON_LENGTH",
  "FINISH_REASON_TOOL_CALLS", "FINISH_REASON_CONTENT_FILTER", "FINISH_REASON_CANCELLED"];

function usage(bytes) {
  const f = decodeFields(bytes || new Uint8Array());
  return {
    input_tokens: num(first(f, 1)),
    output_tokens: num(first(f, 2)),
    total_tokens: num(first(f, 3)),
  };
}

// sluice.router.v1.ListModelsResponse -> {models: [{id, backends, default_max_tokens}]}
export function decodeListModels(bytes) {
  const f = decodeFields(bytes);
  return {
    models: (f[1] || []).map((m) => {
      const mf = decodeFields(m);
      return {
        id: text(first(mf, 1)),
        backends: (mf[2] || []).map(text),
        default_max_tokens: num(first(mf, 3)),
      };
    }),
  };
}

// sluice.router.v1.GenerateRequest
export function encodeGenerateRequest({ model, prompt, maxTokens }) {
  const message = new Writer().string(1, "user").string(2, prompt);
  return new Writer().string(1, model).message(2, message).int(3, maxTokens).finish();
}

// sluice.router.v1.GenerateEvent -> the same shape as the SSE JSON events.
export function decodeGenerateEvent(bytes) {
  const f = decodeFields(bytes);
  const sub = (n) => decodeFields(first(f, n));
  if (f[2]) {
    const m = sub(2);
    return { metadata: {
      request_id: text(first(m, 1)), trace_id: text(first(m, 2)), model: text(first(m, 3)),
      provider: text(first(m, 4)), attempt: num(first(m, 6)),
      fallback_step: FALLBACK_STEPS[num(first(m, 7))] } };
  }
  if (f[3]) {
    const d = sub(3);
    return { data: { text: text(first(d, 1)), token_count: num(first(d, 2)) } };
  }
  if (f[4]) {
    const p = sub(4);
    return { progress: { output_tokens: num(first(p, 1)), tokens_per_second: dbl(first(p, 2)) } };
  }
  if (f[5]) {
    const e = sub(5);
    return { error: { reason: text(first(e, 1)), message: text(first(e, 2)),
      grpc_code: text(first(e, 3)), usage: usage(first(e, 5)) } };
  }
  if (f[6]) {
    const c = sub(6);
    return { complete: { finish_reason: FINISH[num(first(c, 1))], usage: usage(first(c, 2)),
      fallback_step: FALLBACK_STEPS[num(first(c, 3))],
      time_to_first_token_ms: num(first(c, 4)), total_ms: num(first(c, 5)) } };
  }
  return {};
}

// -- framing and the call -------------------------------------------------------------

function frame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

function parseTrailers(bytes) {
  const trailers = {};
  for (const line of text(bytes).split("\r\n")) {
    const i = line.indexOf(":");
    if (i > 0) trailers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return trailers;
}

function statusError(status, message) {
  let decoded = message || "";
  try { decoded = decodeURIComponent(decoded); } catch { /* keep it as sent */ }
  return new GrpcWebError(Number(status), decoded || GRPC_CODES[Number(status)] || "error");
}

// Calls `method` ("/pkg.Service/Method") and yields each response message's bytes;
// throws GrpcWebError for a non-OK status (from trailers or trailers-only headers).
export async function* call(base, method, requestBytes, { headers = {}, signal } = {}) {
  const response = await fetch(base + method, {
    method: "POST",
    headers: {
      "content-type": "application/grpc-web+proto",
      "x-grpc-web": "1",
      "x-user-agent": "sluice-web/1",
      ...headers,
    },
    body: frame(requestBytes),
    signal,
  });
  const headerStatus = response.headers.get("grpc-status");
  if (headerStatus !== null && headerStatus !== "0") {
    throw statusError(headerStatus, response.headers.get("grpc-message"));
  }
  if (!response.ok) throw new GrpcWebError(2, `HTTP ${response.status}`);
  const reader = response.body.getReader();
  let buffered = new Uint8Array();
  let trailers = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (value) {
      const joined = new Uint8Array(buffered.length + value.length);
      joined.set(buffered);
      joined.set(value, buffered.length);
      buffered = joined;
    }
    while (buffered.length >= 5) {
      const length = new DataView(buffered.buffer, buffered.byteOffset).getUint32(1);
      if (buffered.length < 5 + length) break;
      const flags = buffered[0];
      const payload = buffered.slice(5, 5 + length);
      buffered = buffered.slice(5 + length);
      if (flags & 0x80) trailers = parseTrailers(payload);
      else yield payload;
    }
    if (done) break;
  }
  if (trailers === null) {
    if (headerStatus === "0") return;
    throw new GrpcWebError(13, "stream ended without a status (connection lost)");
  }
  if (trailers["grpc-status"] !== "0") {
    throw statusError(trailers["grpc-status"] ?? 2, trailers["grpc-message"]);
  }
}

export async function unary(base, method, requestBytes, options) {
  let result = null;
  for await (const message of call(base, method, requestBytes, options)) result = message;
  if (result === null) throw new GrpcWebError(13, "no response message");
  return result;
}
