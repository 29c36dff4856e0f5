// The Vercel AI SDK (`ai` + `@ai-sdk/openai`, pinned in package.json) against mlx-oss serve, unmodified:
// a two-step tool loop (the model calls get_weather, the SDK runs it and sends the result back, the
// model answers). Usage: node vercel.mjs generate|stream responses|chat [default|store|nostore]
// Env: MLX_OSS_BASE_URL, MLX_OSS_MODEL. Prints one JSON line: the text, steps, tool calls and results.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, isStepCount, jsonSchema, streamText, tool } from "ai";

const [mode, api, store = "default"] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: process.env.MLX_OSS_BASE_URL, apiKey: "none" });
const model = api === "chat" ? openai.chat(process.env.MLX_OSS_MODEL) : openai.responses(process.env.MLX_OSS_MODEL);

const calls = [];
const tools = {
  get_weather: tool({
    description: "Current weather in a city",
    inputSchema: jsonSchema({
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
      additionalProperties: false,
    }),
    execute: async ({ city }) => {
      calls.push(city);
      return { city, temperature_c: 21 };
    },
  }),
};

const options = {
  model,
  tools,
  stopWhen: isStepCount(3),
  prompt: "What is the weather in Paris?",
  maxRetries: 0,
  ...(store === "default" ? {} : { providerOptions: { openai: { store: store === "store" } } }),
};

let result;
if (mode === "stream") {
  const s = streamText({ ...options, onError: ({ error }) => { throw error; } });
  let streamed = "";
  for await (const delta of s.textStream) streamed += delta;
  result = { text: await s.text, streamed, steps: (await s.steps).length, finishReason: await s.finishReason };
} else {
  const r = await generateText(options);
  result = { text: r.text, steps: r.steps.length, finishReason: r.finishReason };
}
console.log(JSON.stringify({ ...result, executed: calls }));
