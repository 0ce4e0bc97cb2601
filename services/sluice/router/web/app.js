// The Sluice web page: SSE (POST /v1/generate through Envoy's transcoder) or gRPC-Web
// (RouterService/Generate), model list over gRPC-Web, cancel with an AbortController.
import {
  GrpcWebError, call, decodeGenerateEvent, decodeListModels, encodeGenerateRequest, unary,
} from "./grpcweb.js";

const SERVICE = "/sluice.router.v1.RouterService";
const $ = (id) => document.getElementById(id);
// ?grpc_web=<url> sends the gRPC-Web calls to that base URL, on this page's own origin
// only: the calls carry the pasted API key, so another origin is ignored (and refused by
// the page's connect-src 'self' anyway).
function sameOriginBase(value) {
  if (!value) return "";
  try {
    const url = new URL(value, location.href);
    if (url.origin === location.origin) return url.href.replace(/\/$/, "");
  } catch (_) {
    // not a URL: ignored like another origin
  }
  console.warn("ignoring ?grpc_web= outside this page's origin");
  document.body.dataset.grpcWebIgnored = "1";
  return "";
}
const grpcWebBase = sameOriginBase(new URLSearchParams(location.search).get("grpc_web"));

let controller = null;

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { authorization: `Bearer ${key}` } : {};
}

function setStatus(state, text = state) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function showError(text) {
  $("error").hidden = false;
  $("error").textContent = text;
}

function resetView() {
  $("output").textContent = "";
  $("error").hidden = true;
  $("error").textContent = "";
  for (const id of ["served-by", "fallback", "usage", "progress", "timing", "request-id", "trace-id"]) {
    $(id).textContent = "–";
  }
  for (const key of ["input", "output", "total"]) delete $("usage").dataset[key];
}

const stepName = (step) => (step || "").replace("FALLBACK_STEP_", "").toLowerCase() || "–";

// Applies one stream event; returns "complete" / "error" for a terminal event.
function applyEvent(event) {
  if (event.metadata) {
    const m = event.metadata;
    $("served-by").textContent = `${m.model} / ${m.provider} (attempt ${m.attempt})`;
    $("fallback").textContent = stepName(m.fallback_step);
    $("request-id").textContent = m.request_id;
    $("trace-id").textContent = m.trace_id || "(not traced)";
  } else if (event.data) {
    $("output").textContent += event.data.text;
  } else if (event.progress) {
    const p = event.progress;
    $("progress").textContent = `${p.output_tokens} tokens, ${Number(p.tokens_per_second).toFixed(1)} tokens/s`;
  } else if (event.complete) {
    const c = event.complete;
    const u = c.usage || {};
    $("usage").textContent =
      `input ${u.input_tokens ?? 0} · output ${u.output_tokens ?? 0} · total ${u.total_tokens ?? 0}`;
    $("usage").dataset.input = u.input_tokens ?? 0;
    $("usage").dataset.output = u.output_tokens ?? 0;
    $("usage").dataset.total = u.total_tokens ?? 0;
    $("fallback").textContent = stepName(c.fallback_step);
    $("timing").textContent =
      `first token ${c.time_to_first_token_ms} ms · total ${c.total_ms} ms · ${c.finish_reason}`;
    return "complete";
  } else if (event.error) {
    const e = event.error;
    showError(`${e.reason || "ERROR"}: ${e.message}`);
    return "error";
  }
  return null;
}

// An HTTP error reply: the google.rpc.Status JSON the edge produces.
async function httpError(response) {
  const raw = await response.text();
  try {
    const body = JSON.parse(raw);
    const reason = body.details?.find((d) => d.reason)?.reason;
    return `HTTP ${response.status}${reason ? ` · ${reason}` : ""}: ${body.message ?? raw}`;
  } catch {
    return `HTTP ${response.status}: ${raw.slice(0, 300)}`;
  }
}

async function* sseEvents(request, signal) {
  const response = await fetch("/v1/generate", {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream", ...authHeaders() },
    body: JSON.stringify({
      model: request.model,
      messages: [{ role: "user", content: request.prompt }],
      max_tokens: request.maxTokens,
    }),
    signal,
  });
  if (!response.ok) throw new Error(await httpError(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

async function* grpcWebEvents(request, signal) {
  const messages = call(grpcWebBase, `${SERVICE}/Generate`, encodeGenerateRequest(request),
    { headers: authHeaders(), signal });
  for await (const bytes of messages) yield decodeGenerateEvent(bytes);
}

async function send(event) {
  event.preventDefault();
  resetView();
  controller = new AbortController();
  $("send").disabled = true;
  $("cancel").disabled = false;
  setStatus("streaming", "streaming…");
  const request = {
    model: $("model").value,
    prompt: $("prompt").value,
    maxTokens: Number($("max-tokens").value) || 0,
  };
  const events = $("transport").value === "grpc-web"
    ? grpcWebEvents(request, controller.signal)
    : sseEvents(request, controller.signal);
  let outcome = null;
  try {
    for await (const ev of events) {
      outcome = applyEvent(ev) || outcome;
    }
    if (outcome === "complete") setStatus("complete");
    else if (outcome === "error") setStatus("error");
    else {
      setStatus("error");
      showError("the stream ended without a complete or error event (connection lost)");
    }
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("cancelled");
    } else {
      setStatus("error");
      showError(err instanceof GrpcWebError
        ? `gRPC ${err.code} ${err.codeName}: ${err.message}` : String(err.message || err));
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("cancel").disabled = true;
  }
}

async function loadModels() {
  const status = $("models-status");
  status.dataset.state = "loading";
  status.textContent = "loading (gRPC-Web ListModels)…";
  try {
    const reply = decodeListModels(
      await unary(grpcWebBase, `${SERVICE}/ListModels`, new Uint8Array(), { headers: authHeaders() }));
    const select = $("model");
    const current = select.value;
    select.replaceChildren(...reply.models.map((m) => new Option(
      `${m.id} (${m.backends.join(" → ")})`, m.id, false, m.id === current)));
    status.dataset.state = "ok";
    status.dataset.count = String(reply.models.length);
    status.textContent = `gRPC-Web ok: ${reply.models.length} model(s)`;
  } catch (err) {
    status.dataset.state = "error";
    status.dataset.code = err instanceof GrpcWebError ? String(err.code) : "";
    status.textContent = err instanceof GrpcWebError
      ? `gRPC-Web error ${err.code} ${err.codeName}: ${err.message}`
      : `gRPC-Web failed: ${err.message || err}`;
  }
}

$("ask").addEventListener("submit", send);
$("cancel").addEventListener("click", () => controller?.abort());
$("load-models").addEventListener("click", loadModels);
document.body.dataset.ready = "1";
