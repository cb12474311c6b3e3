// Tollgate's dashboard: signs in with a secret key kept in this tab's sessionStorage (never in a URL or a
// cookie), reads dashboard/data with it as a Bearer key every REFRESH_MS while the tab is visible, and draws
// what it gets. Every value from the ledger is written as text (textContent), never parsed as HTML.
"use strict";

(() => {
  const KEY = "tollgate.secret_key";
  const REFRESH_MS = 10000;
  const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777",
                   "#4b5563", "#65a30d", "#7c3aed", "#94a3b8"];
  const state = {by: "provider", metric: "provider_cost", account: "", filters: {}, data: null, chart: null,
                 timer: null, loading: false, again: false};
  const $ = (id) => document.getElementById(id);

  // -- signing in and out ------------------------------------------------------------------------

  function showSignIn(message) {
    stopRefreshing();
    $("session").hidden = true;
    $("dashboard").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").hidden = !message;
    $("sign-in-error").textContent = message || "";
    $("secret-key").value = "";
    $("secret-key").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    state.data = null;
    state.account = "";  // the next key may not see the account this one chose
    if (state.chart) {
      state.chart.destroy();
      state.chart = null;
    }
    for (const id of ["customers", "requests", "keys"]) $(id).tBodies[0].replaceChildren();
    showSignIn(message);
  }

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const secret = $("secret-key").value.trim();
    if (!secret) return;
    sessionStorage.setItem(KEY, secret);
    $("secret-key").value = "";
    refresh();
  });
  $("sign-out").addEventListener("click", () => signOut());

  // -- reading the data --------------------------------------------------------------------------

  function query() {
    const params = new URLSearchParams({by: state.by});
    if (state.account) params.set("account", state.account);
    for (const [name, value] of Object.entries(state.filters)) if (value) params.set(name, value);
    return params;
  }

  async function refresh() {
    const secret = sessionStorage.getItem(KEY);
    if (!secret) return showSignIn();
    if (state.loading) {  // a click while a read is on its way: read again, with the new choices, after it
      state.again = true;
      return;
    }
    state.loading = true;
    document.body.classList.add("loading");
    try {
      let response, body;
      try {
        response = await fetch("dashboard/data?" + query(), {
          headers: {Authorization: "Bearer " + secret}, cache: "no-store", credentials: "omit",
          referrerPolicy: "no-referrer"});
        body = await response.json();
      } catch (error) {
        return problem("The admin listener did not answer (" + error.message + "); retrying.");
      }
      if (!response.ok) {
        const message = (body && body.error && body.error.message) || response.statusText;
        // A key that never worked, or no longer does, is forgotten; other refusals leave the page as it was.
        if (response.status === 401 || !state.data) return signOut(message);
        return problem(message);
      }
      state.data = body;
      render(body);
      startRefreshing();
    } finally {
      state.loading = false;
      document.body.classList.remove("loading");
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  }

  function startRefreshing() {
    if (!state.timer) state.timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  }

  function stopRefreshing() {
    clearInterval(state.timer);
    state.timer = null;
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.data) refresh();
  });
  $("refresh").addEventListener("click", () => refresh());

  function problem(message) {
    $("problem").textContent = message;
    $("problem").hidden = false;
  }

  // -- controls ----------------------------------------------------------------------------------

  for (const button of document.querySelectorAll("[data-by]")) {
    button.addEventListener("click", () => {
      state.by = button.dataset.by;
      for (const other of document.querySelectorAll("[data-by]")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      refresh();
    });
  }
  $("metric").addEventListener("change", () => {
    state.metric = $("metric").value;
    if (state.data) drawChart(state.data.chart);
  });
  $("account").addEventListener("change", () => {
    state.account = $("account").value;
    refresh();
  });
  const FILTERS = ["provider", "model", "status", "customer", "key"];
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = Object.fromEntries(FILTERS.map((name) => [name, $("filter-" + name).value.trim()]));
    refresh();
  });
  $("filters-clear").addEventListener("click", () => {
    for (const name of FILTERS) $("filter-" + name).value = "";
    state.filters = {};
    refresh();
  });

  // -- drawing -----------------------------------------------------------------------------------

  const count = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString("en-US"));
  const money = (usd) => (usd === null || usd === undefined ? "" :
    usd.startsWith("-") ? "-$" + usd.slice(1) : "$" + usd);

  function render(data) {
    $("sign-in").hidden = true;
    $("session").hidden = false;
    $("dashboard").hidden = false;
    $("problem").hidden = true;
    const who = data.signed_in;
    $("signed-in-as").textContent = `${who.key_name} (${who.role} key of ${who.account})`;
    renderAccounts(data);
    $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    const cli = document.createElement("code");
    cli.textContent = data.period.cli;
    $("period").replaceChildren(`From ${data.period.since} to today (UTC dates), ` +
      (data.account === null ? "every account" : "account " + data.account) + ": the same period as ", cli, ".");
    const t = data.totals;
    const totals = {"total-requests": count(t.requests), "total-input-tokens": count(t.input_tokens),
                    "total-output-tokens": count(t.output_tokens), "total-provider-cost": money(t.provider_cost),
                    "total-charged": money(t.charged), "total-fees": money(t.fees), "total-margin": money(t.margin),
                    "total-unpriced": count(t.unpriced_requests), "total-unmetered": count(t.unmetered_requests),
                    "total-errors": count(t.errors_recorded)};
    for (const [id, text] of Object.entries(totals)) $(id).textContent = text;
    drawChart(data.chart);
    fillTable("customers", data.customers, customerRow);
    fillTable("requests", data.requests, requestRow);
    fillTable("keys", data.keys, keyRow);
    $("customers").classList.toggle("one-account", data.account !== null);
  }

  function renderAccounts(data) {
    const select = $("account");
    const admin = data.signed_in.role === "admin";
    const options = admin ? [["", "every account"], ...data.accounts.map((a) => [a, a])] :
      [[data.signed_in.account, data.signed_in.account]];
    const listed = JSON.stringify(options);
    if (select.dataset.listed !== listed) {  // rebuilt only when the accounts change, not under an open list
      select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
      select.dataset.listed = listed;
    }
    select.value = data.account === null ? "" : data.account;
    select.disabled = !admin;
  }

  function drawChart(chart) {
    const canvas = $("spend-chart");
    if (typeof Chart === "undefined") return problem("The chart library did not load.");
    const metric = state.metric;
    const colors = colorsOf(chart.series.map((series) => series.group));
    const datasets = chart.series.map((series, n) => ({
      label: series.group === null ? `(no ${chart.by})` : series.group,
      data: series[metric].map(Number),  // plotted as numbers; the tooltip shows the exact decimal
      exact: series[metric],
      backgroundColor: colors[n],
      stack: "spend",
    }));
    const labels = chart.labels.map((day) => day.slice(5));
    if (!state.chart) {
      state.chart = new Chart(canvas, {
        type: "bar",
        data: {labels, datasets},
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true,
                   ticks: {callback: (value) => (state.metric === "requests" ? value : "$" + value)}}},
          plugins: {legend: {position: "bottom"},
                    tooltip: {callbacks: {
                      title: (items) => (items.length ? fullDates()[items[0].dataIndex] : ""),
                      label: (item) => `${item.dataset.label}: ${state.metric === "requests" ? "" : "$"}` +
                                       item.dataset.exact[item.dataIndex]}}},
        },
      });
    } else {
      state.chart.data.labels = labels;
      state.chart.data.datasets = datasets;
      state.chart.update("none");
    }
    canvas.dataset.series = String(datasets.length);
    canvas.dataset.by = chart.by;
  }

  // A group keeps its colour from one refresh to the next: picked by its name, the next free one on a clash.
  function colorsOf(groups) {
    const taken = new Set();
    return groups.map((group) => {
      let n = [...String(group)].reduce((h, c) => (h * 31 + c.codePointAt(0)) >>> 0, 7) % PALETTE.length;
      for (let tries = 0; taken.has(n) && tries < PALETTE.length; tries++) n = (n + 1) % PALETTE.length;
      taken.add(n);
      return PALETTE[n];
    });
  }

  function fullDates() {
    return state.data ? state.data.chart.labels : [];
  }

  function fillTable(id, rows, toCells) {
    const body = $(id).tBodies[0];
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      for (const cell of toCells(row)) {
        const td = document.createElement("td");
        const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
        td.textContent = text === null || text === undefined ? "" : String(text);
        if (cls) td.className = cls;
        tr.append(td);
      }
      if (row.mark) tr.classList.add("mark-" + row.mark);
      return tr;
    }));
    const empty = $(id + "-empty");
    if (empty) empty.hidden = rows.length > 0;
  }

  const customerRow = (c) => [
    [c.account, "account-column"], c.customer_id, [money(c.balance), "num"], [money(c.available), "num"],
    [c.holds.count ? `${c.holds.count} (${money(c.holds.amount)})` : "0", "num"],
    [money(c.autopay_threshold), "num"], [money(c.cycle_fees), "num"],
    [c.mark === "depleted" ? "depleted" : c.mark === "low" ? "low balance" : "", c.mark ? "badge" : ""],
    limitsCell(c.limits),
  ];

  const requestRow = (r) => [
    r.created_at.slice(0, 19).replace("T", " "), [r.id, "mono"], r.key_name || r.key || "", r.customer_id || "",
    r.provider, r.model || "", [count(r.input_tokens), "num"], [count(r.output_tokens), "num"],
    [money(r.provider_cost), "num"], [money(r.fee), "num"],
    [r.latency_ms === null ? "" : r.latency_ms + " ms", "num"],
    [r.status === null ? "" : r.status, r.status >= 400 ? "num status-error" : "num"], r.flags.join(" "),
  ];

  const keyRow = (k) => [
    k.name, [k.id, "mono"], k.account, [k.prefix, "mono"], k.kind, k.role,
    k.created_at.slice(0, 19).replace("T", " "),
    k.revoked_at ? "revoked " + k.revoked_at.slice(0, 10) : k.status, limitsCell(k.limits),
  ];

  // A key's or customer's limits, one a line: "$1.20 / $10.00 this month, resets 2027-01-01 00:00 UTC".
  const PERIOD = {daily: "today", weekly: "this week", monthly: "this month", total: "in total"};

  function limitsCell(limits) {
    if (!limits) return ["", "limits"];
    const period = (use) => PERIOD[use.cycle] +
      (use.resets_at ? ", resets " + use.resets_at.slice(0, 16).replace("T", " ") + " UTC" : "");
    const {spend, requests, rpm, burst, tpm} = limits;
    const lines = [];
    if (spend) lines.push(`${money(spend.used)} / ${money(spend.limit)} ${period(spend)}`);
    if (requests) lines.push(`${count(requests.used)} / ${count(requests.limit)} requests ${period(requests)}`);
    if (rpm !== null) lines.push(`${count(rpm)} requests/min` + (burst !== null ? ` (burst ${count(burst)})` : ""));
    if (tpm !== null) lines.push(`${count(tpm)} tokens/min`);
    const reached = [spend, requests].some((use) => use && Number(use.used) >= Number(use.limit));
    return [lines.join("\n"), reached ? "limits limit-reached" : "limits"];
  }

  // -- start -------------------------------------------------------------------------------------

  if (sessionStorage.getItem(KEY)) refresh();
  else showSignIn();
})();
