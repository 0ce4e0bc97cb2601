// Sluice's OpenAI-compatible API driven by the official `openai` JavaScript SDK.
//
//   node tests/js/openai_sdk.mjs <base_url> <api_key>   (or SLUICE_OPENAI_BASE_URL / SLUICE_OPENAI_API_KEY)
//
// <base_url> is the edge's `/v1` URL, e.g. http://127.0.0.1:8080/v1. Each case prints one
// JSON line {"case": ..., ...} with what the SDK returned or raised; nothing is asserted
// here: tests/e2e/test_openai_js_sdk.py reads the lines and asserts. A case that fails in
// an unexpected way prints {"case": ..., "unexpected": {...}} and the next case runs.
import OpenAI from "openai";

const [baseURL, apiKey] = [
  process.argv[2] ?? process.env.SLUICE_OPENAI_BASE_URL,
  process.argv[3] ?? process.env.SLUICE_OPENAI_API_KEY,
];
if (!baseURL || !apiKey) {
  console.error("usage: node openai_sdk.mjs <base_url ending in /v1> <api_key>");
  process.exit(2);
}

const MESSAGES = [{ role: "user", content: "Tell me about sluices" }];
// The provider's fault-injection header that makes it refuse with a 429 (needs
// provider.fault_injection); the test passes the one test_openai_edge.py uses.
const RATE_LIMIT_FAULT =
  process.env.SLUICE_OPENAI_RATE_LIMIT_FAULT ?? "rate_limit_rate=1,retry_after_ms=60000";
// The SDK's own retries would hide the first status (and wait out a 60 s retry-after).
const client = (key = apiKey) => new OpenAI({ apiKey: key, baseURL, maxRetries: 0, timeout: 30_000 });

// The SDK's exported error class the value is an instance of, most specific first.
const ERROR_CLASSES = [
  "AuthenticationError",
  "RateLimitError",
  "BadRequestError",
  "PermissionDeniedError",
  "NotFoundError",
  "UnprocessableEntityError",
  "InternalServerError",
  "APIConnectionTimeoutError",
  "APIConnectionError",
  "APIUserAbortError",
  "APIError",
  "OpenAIError",
];

function describeError(err) {
  return {
    sdk_class: ERROR_CLASSES.find((name) => err instanceof OpenAI[name]) ?? null,
    name: err?.constructor?.name ?? null,
    status: err?.status ?? null,
    type: err?.type ?? null,
    code: err?.code ?? null,
    param: err?.param ?? null,
    message: String(err?.message ?? err),
    request_id: err?.requestID ?? null,
    retry_after: err?.headers?.get?.("retry-after") ?? null,
    retry_after_ms: err?.headers?.get?.("retry-after-ms") ?? null, // the SDK's retries prefer it
  };
}

// The case's promise must reject (an SDK error); its observation is that error.
async function expectError(promise) {
  try {
    const value = await promise;
    value?.controller?.abort(); // a stream that was not refused: stop it
    return { raised: null, returned: value?.constructor?.name ?? typeof value };
  } catch (err) {
    return { raised: describeError(err) };
  }
}

const CASES = {
  async chat() {
    const { data: reply, response } = await client()
      .chat.completions.create({ model: "default", messages: MESSAGES, max_tokens: 8 })
      .withResponse();
    return {
      object: reply.object,
      id: reply.id,
      model: reply.model,
      text: reply.choices[0].message.content,
      role: reply.choices[0].message.role,
      finish_reason: reply.choices[0].finish_reason,
      usage: reply.usage ?? null,
      request_id: response.headers.get("x-request-id"),
    };
  },

  async stream() {
    const stream = await client().chat.completions.create({
      model: "default",
      messages: MESSAGES,
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const withChoice = chunks.filter((c) => c.choices.length > 0);
    return {
      chunks: chunks.length,
      content_chunks: withChoice.filter((c) => c.choices[0].delta.content).length,
      objects: [...new Set(chunks.map((c) => c.object))],
      ids: new Set(chunks.map((c) => c.id)).size,
      role: withChoice[0]?.choices[0].delta.role ?? null,
      text: withChoice.map((c) => c.choices[0].delta.content ?? "").join(""),
      finish_reason: withChoice.at(-1)?.choices[0].finish_reason ?? null,
      last_has_choices: chunks.at(-1)?.choices.length > 0,
      usage: chunks.at(-1)?.usage ?? null,
    };
  },

  // A stream that breaks after 3 tokens (fault injection): the server ends SSE with one
  // `data: {"error": ...}` line and no [DONE]; the SDK must raise, not end cleanly.
  async stream_error() {
    const stream = await client().chat.completions.create(
      { model: "default", messages: MESSAGES, max_tokens: 20, stream: true },
      { headers: { "x-sluice-fault": "drop_after_tokens=3" } },
    );
    let contentChunks = 0;
    let text = "";
    const outcome = await expectError(
      (async () => {
        for await (const chunk of stream) {
          const content = chunk.choices[0]?.delta.content;
          if (content) {
            contentChunks += 1;
            text += content;
          }
        }
      })(),
    );
    return { content_chunks: contentChunks, text, ...outcome };
  },

  async models() {
    const ids = [];
    for await (const model of client().models.list()) ids.push(model.id);
    return { ids };
  },

  async auth_error() {
    return expectError(
      client("sk-wrong").chat.completions.create({ model: "default", messages: MESSAGES }),
    );
  },

  // The same refusal on a streamed request: raised by create(), before any chunk.
  async auth_error_stream() {
    return expectError(
      client("sk-wrong").chat.completions.create({
        model: "default",
        messages: MESSAGES,
        stream: true,
      }),
    );
  },

  async bad_request() {
    return expectError(client().chat.completions.create({ model: "nope", messages: MESSAGES }));
  },

  async rate_limit() {
    return expectError(
      client().chat.completions.create(
        { model: "default", messages: MESSAGES },
        { headers: { "x-sluice-fault": RATE_LIMIT_FAULT } },
      ),
    );
  },
};

const only = (process.env.SLUICE_JS_CASES ?? "").split(",").filter(Boolean);
for (const [name, run] of Object.entries(CASES)) {
  if (only.length && !only.includes(name)) continue;
  let line;
  try {
    line = { case: name, ...(await run()) };
  } catch (err) {
    line = { case: name, unexpected: describeError(err) };
  }
  console.log(JSON.stringify(line));
}
