/* Tally's charts: plain SVG drawn in the page, no library and nothing fetched. */
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function node(name, attrs, parent) {
    const el = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function text(parent, x, y, content, attrs) {
    const t = node("text", Object.assign({ x, y }, attrs || {}), parent);
    t.textContent = content;
    return t;
  }

  function empty(container, message) {
    container.replaceChildren();
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = message;
    container.appendChild(p);
  }

  /* A "nice" axis top at or above `max`: 1, 2 or 5 times a power of ten. */
  function niceMax(max) {
    if (max <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
    return 10 * p;
  }

  /* Vertical bars, one per point: points = [{key, label, value}]. */
  function columns(container, points, opts) {
    const format = opts.format;
    if (!points.length) return empty(container, opts.emptyText || "Nothing to show.");
    const W = 900, H = 240, left = 70, right = 10, top = 12, bottom = 34;
    const plotW = W - left - right, plotH = H - top - bottom;
    const max = niceMax(Math.max(opts.minMax || 1, ...points.map((p) => p.value)));
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "" });
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4, y = top + plotH - (plotH * i) / 4;
      node("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid-line" }, svg);
      text(svg, left - 6, y + 4, format(v, true), { "text-anchor": "end" });
    }
    const step = plotW / points.length, barW = Math.max(1, step * 0.72);
    const every = Math.ceil(points.length / 12);
    points.forEach((p, i) => {
      const h = (plotH * p.value) / max, x = left + i * step + (step - barW) / 2;
      const rect = node("rect", {
        x: x.toFixed(2), y: (top + plotH - h).toFixed(2), width: barW.toFixed(2),
        height: Math.max(0, h).toFixed(2), class: "bar", "data-day": p.key, "data-value": p.value,
      }, svg);
      node("title", {}, rect).textContent = `${p.label}: ${format(p.value, false)}`;
      if (opts.onClick) {
        rect.classList.add("clickable");
        rect.addEventListener("click", () => opts.onClick(p.key));
      }
      if (i % every === 0) text(svg, x + barW / 2, H - bottom + 16, p.label, { "text-anchor": "middle" });
    });
    container.replaceChildren(svg);
  }

  /* Horizontal bars, largest first: items = [{key, label, value, cls}]. */
  function hbars(container, items, opts) {
    const format = opts.format;
    if (!items.length) return empty(container, opts.emptyText || "Nothing to show.");
    const W = 560, row = 26, left = 140, right = 110, top = 4;
    const H = top * 2 + row * items.length;
    const max = Math.max(1, ...items.map((it) => it.value));
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "" });
    items.forEach((it, i) => {
      const y = top + i * row, w = ((W - left - right) * Math.max(0, it.value)) / max;
      const g = node("g", { class: opts.onClick ? "clickable" : "", "data-key": it.key }, svg);
      const label = it.label.length > 20 ? it.label.slice(0, 19) + "…" : it.label;
      text(g, left - 8, y + row / 2 + 4, label, { "text-anchor": "end", class: "label" });
      const rect = node("rect", {
        x: left, y: y + 4, width: Math.max(1, w).toFixed(2), height: row - 8,
        class: `hbar ${it.cls || ""}`, "data-value": it.value,
      }, g);
      node("title", {}, rect).textContent = `${it.label}: ${format(it.value)}`;
      text(g, left + w + 6, y + row / 2 + 4, format(it.value));
      if (opts.onClick) g.addEventListener("click", () => opts.onClick(it.key));
    });
    container.replaceChildren(svg);
  }

  return { columns, hbars, niceMax };
})();
