// An example client of Sluice's gRPC API, on the generated stubs (src/gen/) and Connect's
// gRPC transport: it streams Generate, reads an error's google.rpc.ErrorInfo, and cancels
// a stream mid-way. Usage: node build/example.js [http://host:port of the router]
// tests/docs/test_typescript_client.py builds and runs it against a live suite and checks
// the JSON it prints.
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { RouterService } from "./gen/sluice/router/v1/router_pb.js";

const baseUrl = process.argv[2] ?? "http://localhost:8080"; // the Envoy edge
const client = createClient(RouterService, createGrpcTransport({ baseUrl }));
const headers = { authorization: "Bearer sk-sluice-dev" };
const prompt = { model: "default", messages: [{ role: "user", content: "Tell me about sluices" }] };

// 1. Stream one answer: metadata, data and progress events, then one complete.
const kinds: string[] = [];
let text = "";
let outputTokens = 0;
for await (const event of client.generate({ ...prompt, maxTokens: 8 }, { headers })) {
  kinds.push(event.event.case ?? "none");
  if (event.event.case === "data") text += event.event.value.text;
  if (event.event.case === "complete") outputTokens = event.event.value.usage?.outputTokens ?? 0;
}

// 2. An error before the first event is a gRPC status; its details say why.
let error = { code: "", reason: "", domain: "" };
try {
  for await (const _ of client.generate(prompt, { headers: { authorization: "Bearer sk-wrong" } })) {
    // never reached: the call fails before its first event
  }
} catch (err) {
  const failure = ConnectError.from(err);
  const [info] = failure.findDetails(ErrorInfoSchema);
  error = { code: String(failure.code), reason: info?.reason ?? "", domain: info?.domain ?? "" };
}

// 3. Cancel mid-stream: abort after three tokens of a long answer.
const abort = new AbortController();
let received = 0;
let cancelCode = "";
try {
  const stream = client.generate({ ...prompt, maxTokens: 400 }, { headers, signal: abort.signal });
  for await (const event of stream) {
    if (event.event.case === "data") received += event.event.value.tokenCount;
    if (received >= 3) abort.abort();
  }
} catch (err) {
  cancelCode = String(ConnectError.from(err).code);
}

console.log(JSON.stringify({ kinds, text, outputTokens, error, cancel: { received, cancelCode } }));
