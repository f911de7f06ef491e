// The analytics page: polls the JSON API and draws its charts as SVG (no library, no CDN).
"use strict";

const CHARTS = [
  { metric: "completed", title: "Images completed" },
  { metric: "failed", title: "Images failed" },
  { metric: "success_rate", title: "Success rate", pct: true, target: 0.95 },
  { metric: "time_to_first_image_all", title: "Time to first image p95 (s)", pick: (v) => v.p95, target: 30 },
  { metric: "spend_usd", title: "Spend (USD)", money: true },
  { metric: "concurrent_jobs", title: "Concurrent jobs", target: 50 },
];

function fmt(value, kind) {
  if (value === null || value === undefined) return "–";
  if (kind === "pct") return (value * 100).toFixed(1) + "%";
  if (kind === "money") return "$" + value.toFixed(value < 1 ? 4 : 2);
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
  return String(value);
}

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children || []) node.append(child);
  return node;
}

const PROMISE_FORMAT = {
  success_rate: "pct", consistency: "pct", cost_per_image: "money", budget: "money",
  time_to_first_image: "s",
};

function renderPromises(body) {
  const box = document.getElementById("promises");
  box.replaceChildren(...body.promises.map((p) => {
    let value = fmt(p.value, PROMISE_FORMAT[p.name]);
    if (PROMISE_FORMAT[p.name] === "s" && p.value !== null) value = p.value.toFixed(1) + " s";
    if (p.name === "budget") value += " of $" + p.budget_usd + (p.alert ? " ⚠ 80% alert" : "");
    return el("div", { class: "card", "data-promise": p.name, "data-status": p.status }, [
      el("div", { class: "badge" }, [p.status]),
      el("div", { class: "value" }, [value]),
      el("div", { class: "label" }, [p.description + " — target " + p.target]),
    ]);
  }));
}

// "no face found in the image 3, face too small 1": why images went unscored, most first.
function notScoredReasons(byReason) {
  return Object.entries(byReason || {}).sort((a, b) => b[1] - a[1])
    .map(([reason, count]) => reason.replaceAll("_", " ") + " " + count).join(", ");
}

function renderTotals(t) {
  const cards = [
    ["requested", t.requested], ["completed", t.completed], ["failed", t.failed],
    ["success_rate", fmt(t.success_rate, "pct")], ["spend_usd", fmt(t.spend_usd, "money")],
    ["cost_per_image_usd", fmt(t.cost_per_image_usd, "money")],
    ["concurrent_jobs", t.concurrent_jobs], ["rejected", Object.values(t.rejected).reduce((a, b) => a + b, 0)],
    ["duplicates", t.duplicates],
    ["consistency_scored", t.consistency.scored], ["consistency_flagged", t.consistency.flagged],
    ["consistency_not_scored", t.consistency.not_scored, notScoredReasons(t.consistency.not_scored_by_reason)],
  ];
  document.getElementById("totals").replaceChildren(...cards.map(([name, value, detail]) =>
    el("div", { class: "card", "data-kpi": name }, [
      el("div", { class: "value" }, [String(value)]),
      el("div", { class: "label" }, [name.replaceAll("_", " ")]),
      ...(detail ? [el("div", { class: "detail" }, [detail])] : []),
    ])));
  const rows = (id, items, cells) => {
    document.querySelector(`#${id} tbody`).replaceChildren(...items.map((item) =>
      el("tr", {}, cells(item).map((c) => el("td", {}, [String(c)])))));
  };
  rows("cost", t.cost, (r) => [r.provider, r.model, r.images, fmt(r.spend_usd, "money"), fmt(r.cost_per_image_usd, "money")]);
  rows("users", t.users, (u) => [u.user, u.requested, u.completed, u.failed, fmt(u.spend_usd, "money")]);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function drawChart(chart, rows) {
  const W = 360, H = 150, L = 40, B = 20, T = 8;
  const points = rows.map((r) => ({ t: r.start, v: chart.pick ? (r.value ? chart.pick(r.value) : null) : r.value }))
    .filter((p) => p.v !== null && p.v !== undefined);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": chart.title });
  const max = Math.max(chart.target || 0, ...points.map((p) => p.v), chart.pct ? 1 : 1e-9);
  const t0 = points.length ? points[0].t : 0, t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (W - L - 8);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  root.append(svg("line", { x1: L, y1: y(0), x2: W - 4, y2: y(0), stroke: "#a6adbb" }));
  const top = svg("text", { x: 2, y: T + 8 }); top.textContent = fmt(max, chart.pct ? "pct" : "");
  const zero = svg("text", { x: 2, y: y(0) }); zero.textContent = "0";
  root.append(top, zero);
  if (chart.target !== undefined) {
    root.append(svg("line", { class: "target", x1: L, y1: y(chart.target), x2: W - 4, y2: y(chart.target) }));
  }
  if (points.length) {
    root.append(svg("polyline", { points: points.map((p) => `${x(p.t)},${y(p.v)}`).join(" ") }));
    for (const p of points) root.append(svg("circle", { cx: x(p.t), cy: y(p.v), r: 2.5 }));
    const label = svg("text", { x: L, y: H - 4 });
    label.textContent = new Date(t0 * 1000).toISOString().slice(11, 16) + " – " + new Date(t1 * 1000).toISOString().slice(11, 16) + " UTC";
    root.append(label);
  }
  const last = points.length ? points[points.length - 1].v : null;
  return el("div", { class: "card chart", "data-chart": chart.metric, "data-points": String(points.length) }, [
    el("div", { class: "label" }, [chart.title + ": " + fmt(last, chart.pct ? "pct" : chart.money ? "money" : "")]),
    root,
  ]);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

async function refresh() {
  try {
    const [promises, totals, ...series] = await Promise.all([
      getJSON("/api/v1/promises"), getJSON("/api/v1/totals"),
      ...CHARTS.map((c) => getJSON(`/api/v1/windows/minute/metrics/${c.metric}?last=60`)),
    ]);
    renderPromises(promises);
    renderTotals(totals);
    document.getElementById("charts").replaceChildren(...CHARTS.map((c, i) => drawChart(c, series[i].series)));
    document.getElementById("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (error) {
    document.getElementById("updated").textContent = "update failed: " + error.message;
  }
}

refresh();
setInterval(refresh, 2000);
