/* Tally dashboard: reads the API with the org's key and draws what it says.
   Money arrives as integer micro-units and is formatted here, at the edge, exactly. */
"use strict";

(() => {
  const STORAGE_KEY = "tally.key";
  const REFRESH_MS = 15000;
  const $ = (id) => document.getElementById(id);
  const state = { key: null, period: null, timer: null, agent: null, run: null, daily: null };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, v);
    }
    const r = await fetch(url, {
      headers: { Authorization: `Bearer ${state.key}` },
      cache: "no-store",
    });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const e = (body && body.error) || {};
      throw new ApiError(r.status, e.code || "http_error", e.message || r.statusText);
    }
    return body;
  }

  /* ---- formatting, at the edge only ---- */

  function money(micros) {
    if (micros === null || micros === undefined) return "—"; // a key without billing:read
    const n = Number(micros);
    const abs = Math.abs(n);
    const units = Math.floor(abs / 1e6);
    let frac = String(abs % 1e6).padStart(6, "0").replace(/0+$/, "");
    if (frac.length < 2) frac = frac.padEnd(2, "0");
    return `${n < 0 ? "-" : ""}$${units.toLocaleString("en-US")}.${frac}`;
  }
  const moneyAxis = (micros) =>
    `$${(micros / 1e6).toLocaleString("en-US", { maximumFractionDigits: 4 })}`;
  const num = (n) => Number(n).toLocaleString("en-US");
  const compact = (n) =>
    Number(n).toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 1 });
  /* Storage in byte-seconds, shown in the largest unit-days that reads well. */
  function gbDays(bs) {
    const days = Number(bs) / 86400;
    for (const [unit, size] of [["GB", 1e9], ["MB", 1e6], ["KB", 1e3]]) {
      if (days >= size || unit === "KB") {
        const v = days / size;
        const digits = v > 0 && v < 0.01 ? { maximumSignificantDigits: 2 } : { maximumFractionDigits: 2 };
        return `${v.toLocaleString("en-US", digits)} ${unit}·days`;
      }
    }
    return "";
  }
  const plural = (n, one, many) => `${num(n)} ${Number(n) === 1 ? one : many}`;
  const utcDate = (iso) => new Date(iso.length === 10 ? `${iso}T00:00:00Z` : iso);
  const shortDay = (iso) =>
    utcDate(iso).toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
  const longDay = (iso) =>
    utcDate(iso).toLocaleDateString("en-US", {
      month: "short", day: "numeric", year: "numeric", timeZone: "UTC",
    });
  const stamp = (iso) =>
    `${utcDate(iso).toLocaleString("en-US", {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
      hour12: false, timeZone: "UTC",
    })} UTC`;

  const LINE_ITEMS = {
    llm: "LLM",
    tool_calls: "Tool calls",
    storage: "Storage",
    requests: "Gateway requests",
    sessions: "Sessions",
  };
  const lineItemName = (li) => LINE_ITEMS[li] || li;

  /* The quantity that means something for a line item, as (raw value, text). */
  function quantityOf(lineItem, f) {
    if (lineItem === "llm") return [f.tokens, `${num(f.tokens)} tokens`];
    if (lineItem === "tool_calls") {
      const failed = f.tool_calls - f.billable_tool_calls;
      return [f.billable_tool_calls, plural(f.billable_tool_calls, "call", "calls") +
        (failed ? ` (+${num(failed)} unbilled)` : "")];
    }
    if (lineItem === "requests") return [f.requests, plural(f.requests, "request", "requests")];
    if (lineItem === "storage") return [f.storage_byte_seconds, gbDays(f.storage_byte_seconds)];
    return [f.events, plural(f.events, "event", "events")];
  }

  /* ---- DOM helpers: text only, never markup from data ---- */

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return el;
  }
  /* A figure cell: the raw integer in data-value, the formatted text shown. */
  const cell = (metric, value, textValue) =>
    h("td", { "data-metric": metric, "data-value": value }, textValue);

  function table(el, head, rows, foot) {
    const parts = [h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))),
      h("tbody", {}, ...rows)];
    if (foot) parts.push(h("tfoot", {}, foot));
    el.replaceChildren(...parts);
  }

  /* ---- quota ---- */

  async function loadQuota() {
    try {
      return Object.assign({ full: true }, await api("/api/v2/quota"));
    } catch (e) {
      if (e.status === 401) throw e;
    }
    // The combined quota read is not served here: fall back to the token quota alone.
    const t = await api("/api/v2/quota/tokens");
    return {
      full: false, plan: null, status: null, trial_ends_at: null, pending_change: null,
      window_start: t.window_start, window_end: t.window_end, meters: { tokens: t },
    };
  }

  const METERS = [
    ["tokens", "Tokens", num],
    ["tool_calls", "Tool calls", num],
    ["requests", "Gateway requests", num],
    ["upstream_cost_micros", "Managed LLM spend", money],
    ["sessions", "Concurrent sessions", num],
    ["runs", "Runs", num],
  ];

  function meter(name, label, m, fmt) {
    const used = name === "sessions" ? m.active : m.used;
    const limit = m.limit;
    const pct = limit ? Math.min(100, (100 * (used || 0)) / limit) : 0;
    const fill = h("div", { class: `fill${pct >= 100 ? " full" : pct >= 80 ? " high" : ""}` });
    fill.style.width = `${pct.toFixed(1)}%`;
    const sub = [];
    if (limit !== null && limit !== undefined && used !== null && used !== undefined) {
      sub.push(`${fmt(m.remaining)} left`);
    }
    if (m.window_end) sub.push(`resets ${longDay(m.window_end)}`);
    const lines = [h("div", { class: "sub" }, sub.join(" · "))];
    if (name === "requests") {
      for (const [k, what] of [["minute", "this minute"], ["day", "today"]]) {
        const b = m[k];
        if (!b) continue;
        lines.push(h("div", { class: "sub", "data-window": k },
          `${what}: ${num(b.used)} of ${b.limit === null ? "unlimited" : num(b.limit)}`));
      }
    }
    return h("div", { class: "meter", "data-meter": name },
      h("div", { class: "name" }, label),
      h("div", { class: "figures" },
        h("span", { class: "used", "data-value": used }, used === null ? "unavailable" : fmt(used)),
        " of ",
        h("span", { class: "limit", "data-value": limit }, limit === null ? "unlimited" : fmt(limit))),
      h("div", { class: "bar" }, fill),
      ...lines);
  }

  function renderQuota(q) {
    const meters = METERS.filter(([name]) => q.meters && q.meters[name])
      .map(([name, label, fmt]) => meter(name, label, q.meters[name], fmt));
    $("meters").replaceChildren(...meters);
    const parts = [];
    if (q.plan) parts.push(`${q.plan} plan`);
    parts.push(`${longDay(q.window_start)} – ${q.window_end ? longDay(q.window_end) : "open"}`);
    if (q.pending_change) parts.push(describeChange(q.pending_change));
    $("period").textContent = parts.join(" · ");
    renderBanner(q);
  }

  function describeChange(change) {
    const to = change.plan || change.to_plan || change.new_plan || change.to;
    const at = change.effective_at || change.at || change.starts_at || change.effective_from;
    const what = to ? `changes to ${to}` : "a plan change is scheduled";
    return at ? `${what} on ${longDay(at)}` : what;
  }

  function renderBanner(q) {
    const b = $("banner");
    b.className = "banner";
    if (q.status === "trial") {
      const ends = q.trial_ends_at ? utcDate(q.trial_ends_at) : null;
      const left = ends ? Math.max(0, Math.ceil((ends - Date.now()) / 86400000)) : null;
      b.classList.add("trial");
      b.textContent = ends
        ? `Trial: ${left} day${left === 1 ? "" : "s"} left, ends ${longDay(q.trial_ends_at)}. ` +
          "Add a payment method to keep new runs going."
        : "Trial account.";
      b.dataset.status = "trial";
      b.hidden = false;
    } else if (q.status === "past_due") {
      b.classList.add("past_due");
      b.textContent = "Payment past due: new runs may be paused until the payment method is " +
        "updated. Agents and data are kept.";
      b.dataset.status = "past_due";
      b.hidden = false;
    } else {
      b.hidden = true;
      b.textContent = "";
      delete b.dataset.status;
    }
  }

  function periodOf(q) {
    const from = q.window_start.slice(0, 10);
    let to = q.window_end ? q.window_end.slice(0, 10) : null;
    if (!to || to === from) {
      const t = new Date(Date.now() + 86400000);
      to = t.toISOString().slice(0, 10);
    }
    return { from, to };
  }

  /* ---- spend ---- */

  function renderSummary(byAgent, credits) {
    const t = byAgent.total;
    const total = $("total-cost");
    total.textContent = money(t.cost_micros);
    total.dataset.micros = t.cost_micros;
    $("total-detail").textContent = `${num(t.tokens)} tokens · ${num(t.billable_tool_calls)} ` +
      `tool calls · ${gbDays(t.storage_byte_seconds)} storage · ${num(t.events)} events`;
    if (credits) renderCredits(credits);
  }

  function renderCredits(credits) {
    const bal = $("credit-balance");
    bal.textContent = money(credits.balance_micros);
    bal.dataset.micros = credits.balance_micros;
    bal.classList.toggle("negative", credits.balance_micros < 0);
    $("credit-detail").textContent = credits.started_at
      ? `${money(credits.topped_up_micros)} topped up, ${money(credits.spent_micros)} spent ` +
        `since ${longDay(credits.started_at)}`
      : "No credits yet: usage is debited from the first top-up on.";
    $("org-label").textContent = credits.org_id;
  }

  const DAILY_FORMAT = {
    cost_micros: [moneyAxis, money],
    tokens: [compact, num],
    billable_tool_calls: [compact, num],
    requests: [compact, num],
    events: [compact, num],
  };

  function renderDaily() {
    if (!state.daily) return;
    const metric = $("daily-metric").value;
    const [axis, full] = DAILY_FORMAT[metric];
    const points = state.daily.days.map((d) => ({ key: d.day, label: shortDay(d.day), value: d[metric] }));
    Charts.columns($("daily-chart"), points, {
      title: `Daily ${metric}`,
      minMax: metric === "cost_micros" ? 10000 : 10,
      format: (v, onAxis) => (onAxis ? axis(v) : full(v)),
      onClick: (day) => window.TallyBilling.openLog(day),  // that day's calls
    });
  }

  function figureCells(f) {
    return [
      cell("events", f.events, num(f.events)),
      cell("tokens", f.tokens, num(f.tokens)),
      cell("billable_tool_calls", f.billable_tool_calls, num(f.billable_tool_calls)),
      cell("storage_byte_seconds", f.storage_byte_seconds, gbDays(f.storage_byte_seconds)),
      cell("cost_micros", f.cost_micros, money(f.cost_micros)),
    ];
  }
  const FIGURE_HEAD = ["Events", "Tokens", "Tool calls", "Storage", "Spend"];
  const byCost = (a, b) => b.cost_micros - a.cost_micros || b.events - a.events;

  function renderAgents(body) {
    const rows = body.rows.slice().sort(byCost);
    Charts.hbars($("agent-chart"),
      rows.map((r) => ({ key: r.group.agent, label: r.group.agent, value: r.cost_micros })),
      { title: "Spend by agent", format: money, onClick: openAgent, emptyText: "No usage in this period." });
    table($("agent-table"), ["Agent", ...FIGURE_HEAD],
      rows.map((r) => h("tr", {
        class: `clickable${state.agent === r.group.agent ? " selected" : ""}`,
        "data-agent": r.group.agent, onclick: () => openAgent(r.group.agent),
      }, h("td", { class: "text" }, r.group.agent), ...figureCells(r))),
      h("tr", { "data-total": "" }, h("td", {}, "Total"), ...figureCells(body.total)));
  }

  function renderLineItems(byLine, byItem) {
    const rows = byLine.rows.slice().sort(byCost);
    Charts.hbars($("line-item-chart"),
      rows.map((r) => ({
        key: r.group.line_item, label: lineItemName(r.group.line_item), value: r.cost_micros,
        cls: r.group.line_item,
      })),
      { title: "Spend by line item", format: money, emptyText: "No usage in this period." });
    const order = Object.fromEntries(rows.map((r, i) => [r.group.line_item, i]));
    const items = byItem.rows.slice().sort((a, b) =>
      (order[a.group.line_item] ?? 99) - (order[b.group.line_item] ?? 99) || byCost(a, b));
    table($("line-item-table"), ["Line item", "Item", "Quantity", "Spend"],
      items.map((r) => {
        const [q, qText] = quantityOf(r.group.line_item, r);
        return h("tr", { "data-line-item": r.group.line_item, "data-item": r.group.item },
          h("td", { class: "text" }, h("span", { class: `swatch ${r.group.line_item}` }),
            lineItemName(r.group.line_item)),
          h("td", { class: "text" }, r.group.item || "—"),
          cell("quantity", q, qText),
          cell("cost_micros", r.cost_micros, money(r.cost_micros)));
      }),
      h("tr", { "data-total": "" }, h("td", {}, "Total"), h("td", {}), h("td", {}),
        cell("cost_micros", byItem.total.cost_micros, money(byItem.total.cost_micros))));
  }

  /* ---- drill-down: agent -> runs -> line items ---- */

  async function openAgent(agent) {
    state.agent = agent;
    document.querySelectorAll("#agent-table tbody tr").forEach((tr) =>
      tr.classList.toggle("selected", tr.dataset.agent === agent));
    const section = $("runs");
    $("runs-title").textContent = `Runs of ${agent}`;
    section.hidden = false;
    section.dataset.agent = agent;
    delete section.dataset.ready;
    try {
      const body = await api(`/api/v2/usage/agents/${encodeURIComponent(agent)}/runs`, {
        from: state.period.from, to: state.period.to,
      });
      if (state.agent !== agent) return;
      table($("runs-table"),
        ["Run", "Started", "Duration", "Events", "Tokens", "Tool calls", "Spend"],
        body.runs.map((r) => h("tr", {
          class: `clickable${state.run === r.run_id ? " selected" : ""}`,
          "data-run": r.run_id, onclick: () => openRun(r.run_id),
        },
        h("td", { class: "text" }, r.run_id),
        h("td", {}, stamp(r.first_ts)),
        h("td", {}, duration(r.first_ts, r.last_ts)),
        cell("events", r.events, num(r.events)),
        cell("tokens", r.tokens, num(r.tokens)),
        cell("billable_tool_calls", r.billable_tool_calls, num(r.billable_tool_calls)),
        cell("cost_micros", r.cost_micros, money(r.cost_micros)))));
      $("runs-note").textContent = (body.runs.length ? "" : "No runs started in this period. ") +
        (body.has_more ? `Showing the latest ${body.runs.length} runs. ` : "") +
        "Usage sent without a run_id belongs to no run and is not listed.";
      section.dataset.ready = "true";
    } catch (e) {
      failed(e);
    }
  }

  function duration(a, b) {
    const s = Math.round((utcDate(b) - utcDate(a)) / 1000);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  async function openRun(runId) {
    state.run = runId;
    document.querySelectorAll("#runs-table tbody tr").forEach((tr) =>
      tr.classList.toggle("selected", tr.dataset.run === runId));
    const section = $("run");
    $("run-title").textContent = `Run ${runId}`;
    section.hidden = false;
    section.dataset.run = runId;
    delete section.dataset.ready;
    try {
      const body = await api(`/api/v2/runs/${encodeURIComponent(runId)}/usage`);
      if (state.run !== runId) return;
      $("run-meta").textContent = `Agent ${body.agent_ids.join(", ")} · ${stamp(body.first_ts)} to ` +
        `${stamp(body.last_ts)} · ${num(body.total.events)} events`;
      table($("run-lines"), ["Line item", "Item", "Key", "Quantity", "Detail", "Spend"],
        body.line_items.map((li) => h("tr", {
          "data-line-item": li.line_item, "data-item": li.item, "data-key-mode": li.key_mode,
        },
        h("td", { class: "text" }, h("span", { class: `swatch ${li.line_item}` }),
          lineItemName(li.line_item)),
        h("td", { class: "text" }, li.item || "—"),
        h("td", { class: "text" }, li.key_mode),
        cell("quantity", li.quantity, lineQuantity(li)),
        h("td", { class: "text muted" }, lineDetail(li)),
        cell("cost_micros", li.cost_micros, money(li.cost_micros)))),
        h("tr", { "data-total": "" }, h("td", {}, "Total"), h("td", {}), h("td", {}), h("td", {}),
          h("td", {}),
          h("td", { id: "run-total-cost", "data-micros": body.total.cost_micros },
            money(body.total.cost_micros))));
      section.dataset.ready = "true";
    } catch (e) {
      failed(e);
    }
  }

  function lineQuantity(li) {
    if (li.line_item === "llm") return plural(li.quantity, "token", "tokens");
    if (li.line_item === "tool_calls") return plural(li.quantity, "call", "calls");
    if (li.line_item === "storage") return gbDays(li.quantity);
    if (li.line_item === "requests") return plural(li.quantity, "request", "requests");
    return plural(li.quantity, "event", "events");
  }

  function lineDetail(li) {
    const parts = [];
    if (li.line_item === "llm") {
      parts.push(`in ${num(li.input_tokens)} (cached ${num(li.cached_input_tokens)})`,
        `out ${num(li.output_tokens)}`);
    }
    if (li.line_item === "tool_calls" && li.billable !== li.quantity) {
      parts.push(`${num(li.quantity - li.billable)} not billed`);
    }
    if (li.key_mode === "test") parts.push("test key: free");
    if (li.unpriced) parts.push(`${num(li.unpriced)} unpriced`);
    return parts.join(" · ");
  }

  /* ---- alerts and webhook endpoints ---- */

  function alertFigure(d) {
    if (d.meter === "credits") return `balance ${money(d.used)}`;
    if (d.meter === "trial" || d.meter === "subscription" || d.meter === "webhook") return "";
    const of = d.limit === null ? "" : ` of ${num(d.limit)}`;
    return `${num(d.used)}${of} (threshold ${num(d.threshold)})`;
  }

  async function loadAlerts() {
    let alerts, hooks;
    try {
      [alerts, hooks] = await Promise.all([
        api("/api/v2/alerts", { limit: 20 }), api("/api/v2/webhooks"),
      ]);
    } catch (e) {
      if (e instanceof ApiError && e.status === 403 && e.code === "forbidden") {
        $("alerts").hidden = true;  // alerts and endpoints need billing:read
        return;
      }
      $("alert-note").textContent = `Alerts could not be loaded: ${e.message}`;
      return;
    }
    $("alerts").hidden = false;
    table($("alert-table"), ["When", "Alert", "Meter", "Figure"],
      alerts.alerts.map((a) => h("tr", { "data-alert": a.data.id, "data-type": a.type },
        h("td", {}, stamp(a.timestamp)), h("td", { class: "text" }, a.type),
        h("td", { class: "text" }, a.data.meter), h("td", {}, alertFigure(a.data)))));
    $("alert-note").textContent = alerts.alerts.length ? "" : "No alert has fired yet.";
    table($("webhook-table"), ["Endpoint", "State", "Failing since"],
      hooks.webhooks.map((w) => h("tr", { "data-webhook": w.id, "data-state": w.state },
        h("td", { class: "text" }, w.url), h("td", { class: "text" }, w.state),
        h("td", {}, w.failing_since ? stamp(w.failing_since) : "—"))));
    $("webhook-note").textContent = hooks.webhooks.length
      ? "" : "No endpoint: webhook alerts are a plan feature (POST /api/v2/webhooks).";
  }

  /* ---- loading ---- */

  /* A panel the key's scopes do not cover answers 403 `forbidden`: it is hidden, not an error. */
  const forbidden = (e) => {
    if (e instanceof ApiError && e.status === 403 && e.code === "forbidden") return null;
    throw e;
  };
  const maybe = (path, params) => api(path, params).catch(forbidden);

  async function loadAll() {
    const app = $("app");
    try {
      const q = await loadQuota().catch(forbidden);
      const range = q ? periodOf(q) : {};
      const [daily, byAgent, byLine, byItem, credits] = await Promise.all([
        maybe("/api/v2/usage/daily", range),
        maybe("/api/v2/usage/breakdown", Object.assign({ group_by: "agent" }, range)),
        maybe("/api/v2/usage/breakdown", Object.assign({ group_by: "line_item" }, range)),
        maybe("/api/v2/usage/breakdown", Object.assign({ group_by: "line_item,item" }, range)),
        maybe("/api/v2/credits"),
      ]);
      state.period = q ? range : daily ? { from: daily.from, to: daily.to } : periodOf(
        { window_start: new Date().toISOString(), window_end: null });
      state.daily = daily;
      const priced = Boolean(byAgent && byAgent.total.cost_micros !== null);
      const metric = $("daily-metric");
      const costOption = metric.querySelector('option[value="cost_micros"]');
      if (costOption) costOption.hidden = costOption.disabled = !priced;
      if (!priced && metric.value === "cost_micros") metric.value = "tokens";
      $("quota-card").hidden = !q;
      $("daily-card").hidden = $("usage-split").hidden = !daily;
      $("spend-card").hidden = !byAgent;
      $("credit-card").hidden = !credits;
      const hiddenParts = [!q && "quotas", !daily && "usage", !credits && "credits",
        daily && !priced && "cost figures"].filter(Boolean);
      $("scope-note").hidden = hiddenParts.length === 0;
      $("scope-note").textContent =
        `This key's scopes do not cover ${hiddenParts.join(", ")}: those are not shown.`;
      if (q) renderQuota(q);
      if (byAgent) renderSummary(byAgent, credits);
      else if (credits) renderCredits(credits);
      if (daily) {
        renderDaily();
        renderAgents(byAgent);
        renderLineItems(byLine, byItem);
      }
      window.TallyBilling.load();
      await loadAlerts();
      $("load-error").hidden = true;
      $("updated").textContent = `Updated ${stamp(new Date().toISOString())}` +
        (!q || q.full ? "" : " · limits other than tokens are not served by this Tally");
      app.dataset.ready = "true";
      app.dataset.loads = String(Number(app.dataset.loads || 0) + 1);
      app.dataset.from = state.period.from;
      app.dataset.to = state.period.to;
    } catch (e) {
      failed(e);
    }
  }

  function failed(e) {
    if (e instanceof ApiError && e.status === 401) {
      logout("That key was not accepted: it is unknown or revoked.");
      return;
    }
    const el = $("load-error");
    el.textContent = `Could not load: ${e.message}`;
    el.hidden = false;
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = setInterval(() => {
      if ($("auto-refresh").checked && !document.hidden && state.key) loadAll();
    }, REFRESH_MS);
  }

  function show(loggedIn) {
    $("login").hidden = loggedIn;
    $("app").hidden = !loggedIn;
    $("forget").hidden = !loggedIn;
    $("refresh").hidden = !loggedIn;
  }

  function logout(message) {
    state.key = null;
    state.agent = state.run = null;
    localStorage.removeItem(STORAGE_KEY);
    clearInterval(state.timer);
    delete $("app").dataset.ready;
    $("runs").hidden = $("run").hidden = true;
    $("org-label").textContent = "";
    $("login-error").textContent = message || "";
    show(false);
    $("key-input").focus();
  }

  async function login(key) {
    state.key = key;
    try {
      await maybe("/api/v2/quota/tokens"); // a key without quota:read is still a key
    } catch (e) {
      state.key = null;
      $("login-error").textContent = e.status === 401
        ? "That key was not accepted: it is unknown or revoked."
        : `Could not reach Tally: ${e.message}`;
      return;
    }
    localStorage.setItem(STORAGE_KEY, key);
    $("login-error").textContent = "";
    $("key-input").value = "";
    show(true);
    await loadAll();
    schedule();
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key-input").value.trim();
    if (key) login(key);
  });
  $("forget").addEventListener("click", () => logout());
  $("refresh").addEventListener("click", () => loadAll());
  $("daily-metric").addEventListener("change", renderDaily);
  $("runs-close").addEventListener("click", () => {
    state.agent = state.run = null;
    $("runs").hidden = $("run").hidden = true;
    document.querySelectorAll("#agent-table tbody tr").forEach((tr) => tr.classList.remove("selected"));
  });
  $("run-close").addEventListener("click", () => {
    state.run = null;
    $("run").hidden = true;
  });

  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved) {
    state.key = saved;
    show(true);
    loadAll().then(schedule);
  } else {
    show(false);
  }

  window.TallyDashboard = { money, api, key: () => state.key };
})();
