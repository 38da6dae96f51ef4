// The official OpenAI Node SDK against the embedded server: one chat unstreamed, then the
// same request through the SDK's stream helper and as a raw stream with include_usage.
// Usage: node stream_check.mjs BASE_URL MODEL; prints one JSON object for the Python test.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "local", maxRetries: 0 });
const request = {
  model,
  messages: [{ role: "user", content: "Which code goes with item 3?" }],
  max_tokens: 8,
  temperature: 0,
};

const plain = await client.chat.completions.create(request);

const helper = client.chat.completions.stream(request);
let helperDeltas = "";
helper.on("content", (delta) => {
  helperDeltas += delta;
});
const final = await helper.finalChatCompletion();

const raw = await client.chat.completions.create({
  ...request,
  stream: true,
  stream_options: { include_usage: true },
});
const chunks = [];
for await (const chunk of raw) chunks.push(chunk);

let typedError = null;
try {
  await client.chat.completions.create({ ...request, model: "no-such-model", stream: true });
} catch (error) {
  typedError = { name: error.constructor.name, status: error.status, code: error.code };
}

console.log(
  JSON.stringify({
    plain: { text: plain.choices[0].message.content, finish: plain.choices[0].finish_reason },
    helper: {
      text: final.choices[0].message.content,
      deltas: helperDeltas,
      finish: final.choices[0].finish_reason,
    },
    raw: {
      first_delta: chunks[0]?.choices[0]?.delta ?? null,
      text: chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
      finish: chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean),
      usage: chunks.at(-1)?.usage ?? null,
      last_choices: chunks.at(-1)?.choices.length ?? null,
    },
    typed_error: typedError,
  }),
);
