// Lava's Node SDK through the rewrite endpoint: gateway(TARGET_URL, {format: 'openai'}) sends an OpenAI chat
// completion for a provider of another family; node lava_rewrite_scenario.mjs with BASE_URL (the gateway's
// listener + "/v1/"), SECRET_KEY, TARGET_URL and MODEL in the environment. Prints the answer (or the error) as JSON.
import { Lava } from "@lavapayments/nodejs";

const lava = new Lava(process.env.SECRET_KEY, { baseUrl: process.env.BASE_URL });
const out = {};
for (const [name, body] of [
  ["chat", { model: process.env.MODEL, max_tokens: 64, messages: [{ role: "user", content: "hello" }] }],
  ["untranslatable", { model: process.env.MODEL, logprobs: true, messages: [{ role: "user", content: "hello" }] }],
]) {
  try {
    out[name] = { ok: true, value: await lava.gateway(process.env.TARGET_URL, { format: "openai", body }) };
  } catch (error) {
    out[name] = { ok: false, error: String(error.message || error) };
  }
}
console.log(JSON.stringify(out));
