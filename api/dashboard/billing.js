/* Tally dashboard: the call log and the invoices. Uses the page's API helper and formatting
   (window.TallyDashboard, set by app.js); text only, never markup from data. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const log = { params: {}, cursor: null, more: false };
  const D = () => window.TallyDashboard;

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return el;
  }

  /* ---- call log ---- */

  function billedText(e) {
    if (e.billed) return "billed";
    return e.not_billed_reason === "test_key" ? "not billed: test key" : "not billed: failed";
  }

  function logRow(e) {
    const what = e.model || e.connector || e.storage_kind || e.item || "";
    return h("tr", { "data-event": e.event_id, class: e.status === "failed" ? "failed" : "" },
      h("td", {}, e.ts.replace("T", " ").replace("Z", "")),
      h("td", { class: "text" }, e.type),
      h("td", { class: "text" }, e.agent_id),
      h("td", { class: "text" }, e.run_id),
      h("td", { class: "text" }, e.tool ? `${what} · ${e.tool}` : what),
      h("td", { "data-metric": "quantity", "data-value": e.quantity }, Number(e.quantity).toLocaleString("en-US")),
      h("td", { "data-metric": "cost_micros", "data-value": e.cost_micros }, D().money(e.cost_micros)),
      h("td", { class: "text", "data-billed": String(e.billed) }, billedText(e)));
  }

  async function loadLog(more) {
    const params = Object.assign({ limit: 50 }, log.params);
    const type = $("log-type").value, status = $("log-status").value;
    if (type) params.type = type;
    if (status) params.status = status;
    if (more && log.cursor) params.cursor = log.cursor;
    log.more = log.more || more;
    const body = h("tbody", {});
    const tableEl = $("log-table");
    try {
      const page = await D().api("/api/v2/logs/events", params);
      log.cursor = page.next_cursor;
      if (!more) {
        tableEl.replaceChildren(
          h("thead", {}, h("tr", {}, ...["Time (UTC)", "Type", "Agent", "Run", "Item", "Quantity", "Cost", "Billed"].map((t) => h("th", {}, t)))),
          body);
      }
      const tbody = tableEl.querySelector("tbody");
      page.events.forEach((e) => tbody.appendChild(logRow(e)));
      $("log-more").hidden = !log.cursor;
      $("log-note").textContent = tbody.children.length ? "" : "No calls in this range.";
      $("log-error").hidden = true;
      $("logs").hidden = false;
    } catch (e) {
      if (e.status === 403 && e.code === "forbidden") {
        $("logs").hidden = true;  // the key's scopes do not cover the call log
        return;
      }
      $("log-error").textContent = e.message;
      $("log-error").hidden = false;
    }
  }

  function openLog(day) {
    log.params = {};
    log.cursor = null;
    log.more = false;
    if (day) {
      const next = new Date(`${day}T00:00:00Z`);
      next.setUTCDate(next.getUTCDate() + 1);
      log.params = { from: day, to: next.toISOString().slice(0, 10) };
    }
    $("log-title").textContent = day ? `Calls on ${day}` : "Recent calls";
    $("logs").dataset.day = day || "";
    loadLog(false);
  }

  /* ---- invoices ---- */

  async function download(path, name) {
    const r = await fetch(path, { headers: { Authorization: `Bearer ${D().key()}` }, cache: "no-store" });
    if (!r.ok) return;
    const url = URL.createObjectURL(await r.blob());
    const a = h("a", { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function invoiceRow(inv) {
    const base = inv.status === "upcoming" ? "/api/v2/invoices/upcoming" : `/api/v2/invoices/${inv.id}`;
    const name = inv.status === "upcoming" ? "upcoming" : inv.id;
    const status = inv.status.replace("_", " ");
    return h("tr", { "data-invoice": inv.id, "data-status": inv.status, class: inv.status === "past_due" ? "past-due" : "" },
      h("td", {}, `${inv.period_start.slice(0, 10)} to ${inv.period_end.slice(0, 10)}`),
      h("td", { class: "text" }, inv.id === "upcoming" ? "(in progress)" : inv.id),
      h("td", { class: "text status" }, status),
      h("td", { "data-metric": "total_micros", "data-value": inv.total_micros }, D().money(inv.total_micros)),
      h("td", {},
        h("button", { type: "button", class: "link", onclick: () => download(`${base}/pdf`, `${name}.pdf`) }, "PDF"),
        " ",
        h("button", { type: "button", class: "link", onclick: () => download(`${base}/csv`, `${name}.csv`) }, "CSV")));
  }

  async function loadInvoices() {
    try {
      const [upcoming, list] = await Promise.all([
        D().api("/api/v2/invoices/upcoming"),
        D().api("/api/v2/invoices"),
      ]);
      $("invoice-table").replaceChildren(
        h("thead", {}, h("tr", {}, ...["Period", "Invoice", "Status", "Total", "Download"].map((t) => h("th", {}, t)))),
        h("tbody", {}, invoiceRow(upcoming), ...list.invoices.map(invoiceRow)));
      const due = list.invoices.filter((i) => i.status === "past_due").length;
      $("invoice-note").textContent = due ? `${due} past-due invoice${due > 1 ? "s" : ""}: settle with your payment provider.` : "";
      $("invoice-error").hidden = true;
      $("invoices").hidden = false;
    } catch (e) {
      if (e.status === 403 && e.code === "forbidden") {
        $("invoices").hidden = true;  // invoices need billing:read
        return;
      }
      $("invoice-error").textContent = e.message;
      $("invoice-error").hidden = false;
    }
  }

  function load() {
    loadInvoices();
    // A refresh reloads the first page, unless more pages have been read: they stay put.
    if (!log.more) openLog($("logs").dataset.day || null);
  }

  $("log-type").addEventListener("change", () => { log.cursor = null; loadLog(false); });
  $("log-status").addEventListener("change", () => { log.cursor = null; loadLog(false); });
  $("log-more").addEventListener("click", () => loadLog(true));
  $("log-all").addEventListener("click", () => openLog(null));

  window.TallyBilling = { load, openLog, loadInvoices };
})();
