// The official OpenAI Node SDK reads the embedded server's tool calls: unstreamed, through the
// SDK's stream helper, and from a raw stream whose deltas are accumulated here.
// Usage: node tools_check.mjs BASE_URL MODEL TOOL_JSON; prints one JSON object for the test.
import OpenAI from "openai";

const [baseURL, model, tool] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "local", maxRetries: 0 });
const request = {
  model,
  messages: [{ role: "user", content: "Which code goes with item 3?" }],
  tools: [JSON.parse(tool)],
  max_tokens: 40,
  temperature: 0,
};

const plain = await client.chat.completions.create(request);

const helper = client.chat.completions.stream(request);
const done = [];
helper.on("tool_calls.function.arguments.done", (event) => done.push(event.name));
const final = await helper.finalChatCompletion();

const raw = await client.chat.completions.create({ ...request, stream: true });
const calls = [];
const finish = [];
for await (const chunk of raw) {
  const choice = chunk.choices[0];
  if (!choice) continue;
  if (choice.finish_reason) finish.push(choice.finish_reason);
  for (const delta of choice.delta?.tool_calls ?? []) {
    calls[delta.index] ??= { id: delta.id, type: delta.type, name: "", arguments: "" };
    calls[delta.index].name += delta.function?.name ?? "";
    calls[delta.index].arguments += delta.function?.arguments ?? "";
  }
}

const call = (message) =>
  (message.tool_calls ?? []).map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments }));
console.log(
  JSON.stringify({
    plain: { calls: call(plain.choices[0].message), finish: plain.choices[0].finish_reason },
    helper: { calls: call(final.choices[0].message), finish: final.choices[0].finish_reason, done },
    raw: { calls, finish },
  }),
);
