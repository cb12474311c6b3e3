// Lava's own Node SDK (@lavapayments/nodejs) and OpenAI's, pointed at Tollgate by one base URL:
// node lava_sdk_scenario.mjs, with BASE_URL (the gateway's listener + "/v1/") and SECRET_KEY in the environment.
// Every call's answer (or the error it threw) is printed as one JSON object for tests/test_lava_sdk.py to check.
import { Lava } from "@lavapayments/nodejs";
import OpenAI from "openai";

const lava = new Lava(process.env.SECRET_KEY, { baseUrl: process.env.BASE_URL });
const run = process.env.RUN_ID;
const out = {};

async function step(name, call) {
  try {
    out[name] = { ok: true, value: await call() };
  } catch (error) {
    out[name] = { ok: false, error: String(error.message || error) };
  }
  return out[name].value;
}

// Reads again until `done(answer)`: the gateway's writer commits a request a moment after answering it.
async function until(read, done, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const answer = await read();
    if (done(answer) || Date.now() > deadline) return answer;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const chat = { model: "mock-1", messages: [{ role: "user", content: "hello" }] };

// customers
const customer = await step("customers.create", () => lava.customers.create({
  reference_id: `ref-${run}`, email: "ada@example.com", phone: "+15550100", name: "Ada Lovelace",
  metadata: { plan: "pro" },
}));
const id = customer?.customer_id;
await step("customers.retrieve", () => lava.customers.retrieve(id));
await step("customers.update", () => lava.customers.update(id, { name: "Ada King", metadata: { plan: "team" } }));
await step("customers.list", () => lava.customers.list({ limit: 100 }));
await step("customers.topup", () => lava.request("POST", `customers/${id}/topups`, { data: { amount: "5.00" } }));
await step("customers.getSubscription", () => lava.customers.getSubscription(id));

// meters
const meter = await step("meters.create", () => lava.meters.create({
  name: `Chat ${run}`, meter_slug: `chat-${run}`, rate_type: "fixed", tier_type: "tokens_1m",
  tiers: [{ start: "0", rate: "20" }, { start: "1000000", rate: "10" }],
}));
await step("meters.retrieve", () => lava.meters.retrieve(meter.meter_id));
await step("meters.retrieve_by_slug", () => lava.meters.retrieve(meter.meter_slug));
await step("meters.update", () => lava.meters.update(meter.meter_id, { name: `Chat v2 ${run}` }));
await step("meters.list", () => lava.meters.list({ limit: 100 }));

// the gateway: merchant billing, customer billing, and OpenAI's SDK on lava.providers.openai
await step("gateway.merchant", () => lava.gateway("https://api.openai.com/v1/chat/completions", { body: chat }));
await step("gateway.customer", () => lava.gateway("https://api.openai.com/v1/chat/completions",
  { body: chat, customer_id: id, meter_slug: meter.meter_slug }));
const token = lava.generateForwardToken({ customer_id: id, meter_slug: meter.meter_slug });
const openai = new OpenAI({ apiKey: token, baseURL: lava.providers.openai });
await step("openai.chat", () => openai.chat.completions.create(chat));
await step("openai.stream", async () => {
  const stream = await openai.chat.completions.create({ ...chat, stream: true, stream_options: { include_usage: true } });
  let text = "", usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  return { text, usage };
});
const byok = lava.generateForwardToken({ customer_id: null, meter_slug: null });
await step("openai.tracking_token", () => new OpenAI({ apiKey: byok, baseURL: lava.providers.openai })
  .chat.completions.create(chat));

// requests and usage
await step("requests.create", () => lava.requests.create({
  request_id: `reported-${run}`, customer_id: id, meter_slug: meter.meter_slug,
  input_tokens: 1000, output_tokens: 500, metadata: { source: "batch" },
}));
await step("requests.create_again", () => lava.requests.create({
  request_id: `reported-${run}`, customer_id: id, meter_slug: meter.meter_slug,
  input_tokens: 1000, output_tokens: 500, metadata: { source: "batch" },
}));
await step("requests.list", () => until(() => lava.requests.list({ customer_id: id, limit: 100 }),
  (page) => page.data.length >= 4));  // 3 proxied (the last may still be on its way to the ledger) + 1 reported
await step("requests.list_by_metadata", () => lava.requests.list({ metadata_filters: { source: "batch" }, limit: 100 }));
await step("requests.retrieve", () => lava.requests.retrieve(`reported-${run}`));
const today = new Date().toISOString().slice(0, 10);
await step("usage.retrieve", () => lava.usage.retrieve({ start: today, customer_id: id }));

// keys
const secret = await step("secretKeys.create", () => lava.secretKeys.create({ name: `backend-${run}` }));
await step("secretKeys.list", () => lava.secretKeys.list({ limit: 100 }));
await step("secretKeys.new_key_works", () => new Lava(secret.secret_key, { baseUrl: process.env.BASE_URL }).models.list());
await step("secretKeys.delete", () => lava.secretKeys.delete(secret.secret_key_id));
await step("secretKeys.deleted_key_refused", () => new Lava(secret.secret_key, { baseUrl: process.env.BASE_URL }).models.list());
const spend = await step("spendKeys.create", () => lava.spendKeys.create({
  name: `app-${run}`, allowed_models: ["mock-*"], allowed_providers: ["openai"], expires_at: "2099-01-01T00:00:00Z",
  spend_limit: { amount: "50", cycle: "monthly" }, request_limit: { count: 1000, cycle: "daily" },
  rate_limit: { rpm: 600, burst: 100 }, tpm: 1000000,  // tpm: Tollgate's own, beside Lava's limits
}));
await step("spendKeys.list", () => lava.spendKeys.list({ limit: 100 }));
// The spend key pays for gateway requests: OpenAI's SDK with it as its API key, on lava.providers.openai.
const app = new OpenAI({ apiKey: spend?.key, baseURL: lava.providers.openai, maxRetries: 0 });
let served = 0;
const spendChat = async () => {
  const answer = await app.chat.completions.create(chat);
  served += 1;
  return answer;
};
await step("spendKeys.chat", spendChat);
await step("spendKeys.chat_again", spendChat);
await step("spendKeys.retrieve", () => until(() => lava.spendKeys.retrieve(spend.spend_key_id),
  (key) => key.current_requests >= 2));
await step("spendKeys.update", () => lava.spendKeys.update(spend.spend_key_id, {
  spend_limit: { amount: "75.5", cycle: "weekly" }, request_limit: { count: 500, cycle: "weekly" }, rate_limit: null,
}));
await step("spendKeys.invalid_limit", () => lava.spendKeys.update(spend.spend_key_id, {
  spend_limit: { amount: "10", cycle: "hourly" },
}));
await step("spendKeys.pause", () => lava.spendKeys.update(spend.spend_key_id, { status: "paused" }));
await step("spendKeys.paused_refused", async () => {  // once the gateway's key cache sees the pause
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      await spendChat();
    } catch (error) {
      return { status: error.status, code: error.code };
    }
    if (Date.now() > deadline) throw new Error("the paused key was still served after 10 s");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
});
await step("spendKeys.rotate", () => lava.spendKeys.rotate(spend.spend_key_id));
await step("spendKeys.revoke", () => lava.spendKeys.revoke(spend.spend_key_id));
await step("spendKeys.retrieve_revoked", () => until(() => lava.spendKeys.retrieve(spend.spend_key_id),
  (key) => key.current_requests >= served));
out["spendKeys.served"] = { ok: true, value: served };

// webhooks
const hook = await step("webhooks.create", () => lava.webhooks.create({ name: `billing-${run}`, url: "https://example.com/hook" }));
await step("webhooks.list", () => lava.webhooks.list({ limit: 100 }));
await step("webhooks.retrieve", () => lava.webhooks.retrieve(hook.webhook_id));
await step("webhooks.update", () => lava.webhooks.update(hook.webhook_id, { url: "https://example.com/hook2" }));
await step("webhooks.delete", () => lava.webhooks.delete(hook.webhook_id));

// models, what Tollgate does not do, errors, and deleting the customer
await step("models.list", () => lava.models.list());
await step("checkoutSessions.create", () => lava.checkoutSessions.create({ checkout_mode: "credit_bundle", origin_url: "https://example.com" }));
await step("subscriptions.listPlans", () => lava.subscriptions.listPlans());
await step("creditBundles.list", () => lava.creditBundles.list());
await step("customers.retrieve_missing", () => lava.customers.retrieve("cus_does_not_exist"));
await step("meters.create_invalid", () => lava.meters.create({ name: "bad", rate_type: "fixed", tier_type: "parsecs", tiers: [] }));
await step("customers.retrieve_before_delete", () => lava.customers.retrieve(id));
await step("customers.delete", () => lava.customers.delete(id));
await step("customers.retrieve_deleted", () => lava.customers.retrieve(id));

console.log(JSON.stringify(out));
