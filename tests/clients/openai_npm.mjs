// The openai npm SDK (pinned in package.json) against mlx-oss serve, unmodified: one chat completion and
// one streamed Responses call. Env: MLX_OSS_BASE_URL, MLX_OSS_MODEL. Prints one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.MLX_OSS_BASE_URL, apiKey: "none", maxRetries: 0 });
const model = process.env.MLX_OSS_MODEL;

const chat = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Say hello" }],
});

const events = [];
let streamed = "";
const stream = await client.responses.create({ model, input: "Say hello again", stream: true });
let final = null;
for await (const ev of stream) {
  events.push(ev.type);
  if (ev.type === "response.output_text.delta") streamed += ev.delta;
  if (ev.type === "response.completed") final = ev.response;
}

console.log(JSON.stringify({
  chat: {
    content: chat.choices[0].message.content,
    reasoning: chat.choices[0].message.reasoning ?? null,
    finish_reason: chat.choices[0].finish_reason,
    usage: chat.usage,
  },
  response: { streamed, status: final?.status, output_text: final?.output?.flatMap((o) => o.content ?? [])
    .filter((c) => c.type === "output_text").map((c) => c.text).join(""), usage: final?.usage },
  events,
}));
