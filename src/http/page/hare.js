// The Hare management page: a client of the management API (the same one rabbitmqadmin
// uses), with hash routes for its views. It keeps a short history of samples in memory to
// draw the charts; nothing is stored but the login, in this tab's sessionStorage.
"use strict";

const POLL_MS = 2000;
const HISTORY = 90;
const PAGE_SIZE = 50;

let auth = sessionStorage.getItem("hare-auth");
let timer = null;
const samples = {};

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const enc = encodeURIComponent;
const num = (n) => (n === undefined || n === null ? "" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }));
const get = (o, path) => path.split(".").reduce((v, k) => (v == null ? undefined : v[k]), o);

async function api(path, opts = {}) {
  const r = await fetch(path, {
    method: opts.method || "GET",
    headers: { Authorization: "Basic " + auth, "Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest" },
    body: opts.body ? JSON.stringify(opts.body) : undefined,
  });
  if (r.status === 401) {
    logout("Login refused");
    throw new Error("not authorised");
  }
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((body && body.reason) || r.statusText);
  return body;
}

function logout(message) {
  auth = null;
  sessionStorage.removeItem("hare-auth");
  $("#nav").hidden = true;
  $("#who").textContent = "";
  $("#view").innerHTML = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

$("#login").addEventListener("submit", async (e) => {
  e.preventDefault();
  auth = btoa($("#login-user").value + ":" + $("#login-password").value);
  try {
    const me = await api("/api/whoami");
    sessionStorage.setItem("hare-auth", auth);
    $("#login").hidden = true;
    start(me);
  } catch (err) {
    logout("Login refused");
  }
});

function start(me) {
  $("#nav").hidden = false;
  $("#who").innerHTML = esc(me.name) + ' <a href="#" id="logout">log out</a>';
  $("#logout").onclick = (e) => { e.preventDefault(); logout(); };
  if (!location.hash) location.hash = "#/overview";
  route();
}

window.addEventListener("hashchange", route);

// A view is rendered once and refreshed every POLL_MS by its own `refresh`.
function route() {
  if (!auth) return;
  clearInterval(timer);
  const parts = location.hash.replace(/^#\//, "").split("/").map(decodeURIComponent);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", location.hash.startsWith(a.getAttribute("href"))));
  const views = { overview, connections, channels, exchanges, queues };
  let view;
  if (parts[0] === "queues" && parts.length === 3) view = () => queuePage(parts[1], parts[2]);
  else if (parts[0] === "exchanges" && parts.length === 3) view = () => exchangePage(parts[1], parts[2]);
  else if (parts[0] === "admin") view = () => admin(parts[1] || "users");
  else view = views[parts[0]] || overview;
  const refresh = view();
  const tick = () => refresh().catch((err) => { const e = $("#view-error"); if (e) e.textContent = err.message; });
  tick();
  timer = setInterval(tick, POLL_MS);
}

// ---- charts: a line chart on a canvas, from the samples kept in `samples` ----

function remember(key, values) {
  const h = (samples[key] = samples[key] || []);
  h.push({ t: Date.now(), ...values });
  if (h.length > HISTORY) h.shift();
  return h;
}

const COLORS = ["#b4492d", "#2e6fba", "#3c9a5f", "#8a5cc2"];

function chart(id, title, series) {
  return `<div class="chart"><div>${esc(title)}</div><canvas id="${id}" width="420" height="150"></canvas>
    <div class="legend">${series.map((s, i) => `<i style="background:${COLORS[i]}"></i>${esc(s[1])}`).join("")}</div></div>`;
}

function draw(id, samples, series) {
  const c = document.getElementById(id);
  if (!c) return;
  const g = c.getContext("2d");
  const W = c.width, H = c.height, pad = 30;
  g.clearRect(0, 0, W, H);
  const max = Math.max(1, ...samples.flatMap((s) => series.map(([k]) => s[k] || 0)));
  g.strokeStyle = "#d9dee7";
  g.fillStyle = "#667085";
  g.font = "10px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + ((H - pad) * i) / 4;
    g.beginPath(); g.moveTo(pad, y); g.lineTo(W - 4, y); g.stroke();
    g.fillText(num((max * (4 - i)) / 4), 0, y + 3);
  }
  series.forEach(([k], i) => {
    g.strokeStyle = COLORS[i];
    g.lineWidth = 1.5;
    g.beginPath();
    samples.forEach((s, j) => {
      const x = pad + ((W - pad - 4) * j) / Math.max(1, HISTORY - 1);
      const y = pad / 2 + (H - pad) * (1 - (s[k] || 0) / max);
      j ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  });
}

const rate = (o, k) => get(o, `message_stats.${k}_details.rate`) || 0;

// ---- tables: server-side pagination, sorting and filtering (the API's own parameters) ----

function table(id, path, columns, link) {
  const state = { page: 1, sort: columns[0][0], reverse: false, name: "" };
  $("#view").insertAdjacentHTML("beforeend", `
    <div class="toolbar"><input id="${id}-filter" placeholder="Filter by name">
      <span class="pager" id="${id}-pager"></span><span id="${id}-count"></span></div>
    <table id="${id}"><thead><tr>${columns.map(([k, label]) => `<th data-key="${k}">${esc(label)}</th>`).join("")}</tr></thead><tbody></tbody></table>`);
  $(`#${id}-filter`).addEventListener("input", (e) => { state.name = e.target.value; state.page = 1; refresh(); });
  document.querySelectorAll(`#${id} th`).forEach((th) => th.addEventListener("click", () => {
    const k = th.dataset.key;
    state.reverse = state.sort === k ? !state.reverse : false;
    state.sort = k;
    refresh();
  }));
  async function refresh() {
    const q = `page=${state.page}&page_size=${PAGE_SIZE}&sort=${enc(state.sort)}&sort_reverse=${state.reverse}&name=${enc(state.name)}`;
    const r = await api(`${path}${path.includes("?") ? "&" : "?"}${q}`);
    document.querySelectorAll(`#${id} th`).forEach((th) => {
      th.classList.toggle("sorted", th.dataset.key === state.sort);
      th.classList.toggle("reverse", th.dataset.key === state.sort && state.reverse);
    });
    $(`#${id} tbody`).innerHTML = r.items.map((row) => `<tr>${columns.map(([k, , fmt], i) => {
      const v = fmt ? fmt(row) : get(row, k);
      const text = typeof v === "number" ? num(v) : esc(v);
      const cell = i === 0 && link ? `<a href="${link(row)}">${text}</a>` : text;
      return `<td class="${typeof v === "number" ? "num" : ""}">${cell}</td>`;
    }).join("")}</tr>`).join("");
    $(`#${id}-count`).textContent = `${r.filtered_count} of ${r.total_count}`;
    const pager = $(`#${id}-pager`);
    pager.innerHTML = r.page_count > 1
      ? `<button ${r.page <= 1 ? "disabled" : ""} data-p="${r.page - 1}">&lsaquo;</button> page ${r.page} of ${r.page_count} <button ${r.page >= r.page_count ? "disabled" : ""} data-p="${r.page + 1}">&rsaquo;</button>`
      : "";
    pager.querySelectorAll("button").forEach((b) => (b.onclick = () => { state.page = Number(b.dataset.p); refresh(); }));
  }
  return refresh;
}

function heading(title) {
  $("#view").innerHTML = `<h2>${esc(title)}</h2><p class="error" id="view-error"></p>`;
}

// ---- views ----

function overview() {
  heading("Overview");
  $("#view").insertAdjacentHTML("beforeend", `<div class="cards" id="cards"></div><div class="charts">
    ${chart("c-rates", "Message rates (msg/s)", [["publish", "publish"], ["deliver", "deliver / get"], ["ack", "ack"]])}
    ${chart("c-depth", "Queued messages", [["ready", "ready"], ["unacked", "unacknowledged"]])}</div>`);
  return async () => {
    const o = await api("/api/overview");
    const t = o.object_totals, q = o.queue_totals;
    $("#cards").innerHTML = [
      ["Connections", t.connections], ["Channels", t.channels], ["Exchanges", t.exchanges], ["Queues", t.queues],
      ["Consumers", t.consumers], ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged],
      ["Publish /s", rate(o, "publish")], ["Deliver /s", rate(o, "deliver_get")],
    ].map(([k, v]) => `<div class="card"><b id="card-${k.toLowerCase().replace(/\W+/g, "-")}">${num(v)}</b><span>${k}</span></div>`).join("");
    const h = remember("overview", {
      publish: rate(o, "publish"), deliver: rate(o, "deliver_get"), ack: rate(o, "ack"),
      ready: q.messages_ready, unacked: q.messages_unacknowledged,
    });
    draw("c-rates", h, [["publish"], ["deliver"], ["ack"]]);
    draw("c-depth", h, [["ready"], ["unacked"]]);
  };
}

function connections() {
  heading("Connections");
  return table("connections-table", "/api/connections", [
    ["name", "Name"], ["user", "User"], ["vhost", "Vhost"], ["channels", "Channels"], ["recv_oct", "Received B"], ["send_oct", "Sent B"],
    ["auth_mechanism", "Login"], ["ssl_protocol", "TLS", (r) => (r.ssl ? `${r.ssl_protocol} ${r.ssl_cipher}` : "")],
    ["peer_cert_subject", "Client certificate", (r) => r.peer_cert_subject || ""],
  ]);
}

function channels() {
  heading("Channels");
  return table("channels-table", "/api/channels", [
    ["name", "Name"], ["user", "User"], ["consumer_count", "Consumers"], ["messages_unacknowledged", "Unacked"],
    ["prefetch_count", "Prefetch"], ["message_stats.publish_details.rate", "Publish /s", (r) => rate(r, "publish")],
    ["message_stats.deliver_get_details.rate", "Deliver /s", (r) => rate(r, "deliver_get")],
  ]);
}

function exchanges() {
  heading("Exchanges");
  return table("exchanges-table", "/api/exchanges", [
    ["name", "Name", (r) => r.name || "(AMQP default)"], ["vhost", "Vhost"], ["type", "Type"], ["durable", "Durable", (r) => (r.durable ? "D" : "")],
  ], (r) => `#/exchanges/${enc(r.vhost)}/${enc(r.name || "amq.default")}`);
}

function queues() {
  heading("Queues");
  return table("queues-table", "/api/queues", [
    ["name", "Name"], ["vhost", "Vhost"], ["messages_ready", "Ready"], ["messages_unacknowledged", "Unacked"],
    ["consumers", "Consumers"], ["message_stats.publish_details.rate", "In /s", (r) => rate(r, "publish")],
    ["message_stats.deliver_get_details.rate", "Out /s", (r) => rate(r, "deliver_get")],
    ["time_in_queue_us.p99", "p99 wait ms", (r) => (r.time_in_queue_us ? r.time_in_queue_us.p99 / 1000 : 0)],
  ], (r) => `#/queues/${enc(r.vhost)}/${enc(r.name)}`);
}

const bytes = (b) => (b < 1024 ? `${num(b)} B` : b < 1048576 ? `${num(b / 1024)} KiB` : b < 1073741824 ? `${num(b / 1048576)} MiB` : `${num(b / 1073741824)} GiB`);
const seconds = (s) => (s === null || s === undefined ? "—" : s < 120 ? `${num(s)} s` : s < 7200 ? `${num(s / 60)} min` : `${num(s / 3600)} h`);

function publishForm(vhost, exchange, routingKey) {
  return `<h3>Publish a message</h3><form class="inline" id="publish-form">
    <label>Routing key <input id="publish-key" value="${esc(routingKey)}"></label>
    <label>Payload <input id="publish-payload" size="40"></label>
    <label><span><input type="checkbox" id="publish-persistent"> persistent</span></label>
    <button type="submit" id="publish-submit">Publish</button><span id="publish-result"></span></form>`;
}

function wirePublish(vhost, exchange) {
  $("#publish-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await api(`/api/exchanges/${enc(vhost)}/${enc(exchange)}/publish`, {
        method: "POST",
        body: {
          routing_key: $("#publish-key").value, payload: $("#publish-payload").value, payload_encoding: "string",
          properties: $("#publish-persistent").checked ? { delivery_mode: 2 } : {},
        },
      });
      $("#publish-result").className = r.routed ? "ok" : "error";
      $("#publish-result").textContent = r.routed ? "Message published." : "Message published, but not routed.";
    } catch (err) {
      $("#publish-result").className = "error";
      $("#publish-result").textContent = err.message;
    }
  });
}

function queuePage(vhost, name) {
  heading(`Queue ${name}`);
  const key = `queue:${vhost}/${name}`;
  $("#view").insertAdjacentHTML("beforeend", `<div class="cards" id="q-cards"></div><p class="legend" id="q-effective"></p><div class="charts">
    ${chart("q-depth", "Queued messages", [["ready", "ready"], ["unacked", "unacknowledged"]])}
    ${chart("q-rates", "Message rates (msg/s)", [["in", "publish"], ["out", "deliver / get"], ["ack", "ack"]])}</div>
    <h3>Time in queue and time to ack (last one to two minutes, sampled messages)</h3>
    <table id="q-latency"><thead><tr><th>distribution</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th></tr></thead><tbody></tbody></table>
    <div id="q-stream" hidden><h3>Stream</h3><div class="cards" id="q-stream-cards"></div>
      <h3>Stream protocol subscriptions</h3><table id="q-stream-subs"><thead><tr><th>connection</th><th>subscription</th><th>offset</th><th>lag</th><th>consumed</th><th>credits</th><th>active</th></tr></thead><tbody></tbody></table></div>
    <h3>Consumers</h3><table id="q-consumers"><thead><tr><th>tag</th><th>channel</th><th>ack required</th><th>prefetch</th></tr></thead><tbody></tbody></table>
    <h3>Bindings</h3><table id="q-bindings"><thead><tr><th>from</th><th>routing key</th></tr></thead><tbody></tbody></table>
    ${publishForm(vhost, "amq.default", name)}
    <h3>Get messages</h3><form class="inline" id="get-form">
      <label>Ack mode <select id="get-ackmode"><option value="ack_requeue_true">Nack, requeue</option><option value="ack_requeue_false">Ack (remove)</option><option value="reject_requeue_false">Reject, drop</option></select></label>
      <label>Messages <input id="get-count" type="number" value="1" min="1" max="100"></label>
      <button type="submit" id="get-submit">Get messages</button></form><div id="get-result"></div>
    <h3>Danger</h3><form class="inline"><button type="button" class="danger" id="purge">Purge</button>
      <button type="button" class="danger" id="delete">Delete queue</button><span id="danger-result"></span></form>`);
  wirePublish(vhost, "amq.default");
  $("#get-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const msgs = await api(`/api/queues/${enc(vhost)}/${enc(name)}/get`, {
        method: "POST", body: { count: Number($("#get-count").value), ackmode: $("#get-ackmode").value, encoding: "auto", truncate: 50000 },
      });
      $("#get-result").innerHTML = msgs.length
        ? msgs.map((m) => `<pre class="payload get-message">${esc(m.payload)}</pre><div class="legend">exchange ${esc(m.exchange || "(default)")}, routing key ${esc(m.routing_key)}, ${m.redelivered ? "redelivered, " : ""}${m.message_count} left</div>`).join("")
        : `<p id="get-empty">Queue is empty.</p>`;
    } catch (err) {
      $("#get-result").innerHTML = `<p class="error">${esc(err.message)}</p>`;
    }
  });
  $("#purge").onclick = async () => {
    await api(`/api/queues/${enc(vhost)}/${enc(name)}/contents`, { method: "DELETE" });
    $("#danger-result").textContent = "Purged.";
  };
  $("#delete").onclick = async () => {
    if (!confirm(`Delete queue ${name}?`)) return;
    await api(`/api/queues/${enc(vhost)}/${enc(name)}`, { method: "DELETE" });
    location.hash = "#/queues";
  };
  return async () => {
    const q = await api(`/api/queues/${enc(vhost)}/${enc(name)}`);
    const f = q.forecast;
    $("#q-cards").innerHTML = [
      ["Ready", num(q.messages_ready), "q-ready"], ["Unacked", num(q.messages_unacknowledged), "q-unacked"],
      ["Consumers", num(q.consumers), "q-consumers-count"], ["In /s", num(f.rate_in), "q-in"], ["Out /s", num(f.rate_out), "q-out"],
      ["Time to empty", seconds(f.time_to_empty_s), "q-empty"], ["Time to full", seconds(f.time_to_full_s), "q-full"],
      ["Expected wait", seconds(f.expected_wait_s), "q-wait"],
      ["Policy", esc(q.policy || "none"), "q-policy"], ["Operator policy", esc(q.operator_policy || "none"), "q-operator-policy"],
    ].map(([k, v, id]) => `<div class="card"><b id="${id}">${v}</b><span>${k}</span></div>`).join("");
    $("#q-effective").textContent = Object.keys(q.effective_policy_definition || {}).length
      ? `Effective policy definition: ${JSON.stringify(q.effective_policy_definition)}` : "";
    const h = remember(key, { ready: q.messages_ready, unacked: q.messages_unacknowledged, in: f.rate_in, out: f.rate_out, ack: rate(q, "ack") });
    draw("q-depth", h, [["ready"], ["unacked"]]);
    draw("q-rates", h, [["in"], ["out"], ["ack"]]);
    const ms = (us) => num(us / 1000);
    $("#q-latency tbody").innerHTML = [["time in queue", q.time_in_queue_us], ["time to ack", q.time_to_ack_us]]
      .map(([k, p]) => `<tr><td>${k}</td><td class="num">${num(p.count)}</td><td class="num">${ms(p.p50)}</td><td class="num">${ms(p.p90)}</td><td class="num">${ms(p.p99)}</td><td class="num">${ms(p.max)}</td></tr>`).join("");
    const consumers = (await api(`/api/consumers/${enc(vhost)}`)).filter((c) => c.queue.name === name);
    $("#q-consumers tbody").innerHTML = consumers.map((c) => `<tr><td>${esc(c.consumer_tag)}</td><td>${esc(c.channel_details.name)}</td><td>${c.ack_required}</td><td class="num">${c.prefetch_count}</td></tr>`).join("");
    if (q.type === "stream") {
      $("#q-stream").hidden = false;
      $("#q-stream-cards").innerHTML = [
        ["First offset", num(q.first_offset), "q-stream-first"],
        ["Committed offset", q.committed_offset === null ? "none" : num(q.committed_offset), "q-stream-committed"],
        ["Segments", num(q.segments), "q-stream-segments"], ["Size", bytes(q.stream_size_bytes), "q-stream-size"],
      ].map(([k, v, id]) => `<div class="card"><b id="${id}">${v}</b><span>${k}</span></div>`).join("");
      const subs = (await api(`/api/stream/consumers/${enc(vhost)}`)).filter((c) => c.queue.name === name);
      $("#q-stream-subs tbody").innerHTML = subs.map((c) => `<tr><td>${esc(c.connection_details.name)}</td><td class="num">${c.subscription_id}</td><td class="num">${num(c.offset)}</td><td class="num">${num(c.offset_lag)}</td><td class="num">${num(c.consumed)}</td><td class="num">${num(c.credits)}</td><td>${c.active}</td></tr>`).join("");
    }
    const bindings = await api(`/api/queues/${enc(vhost)}/${enc(name)}/bindings`);
    $("#q-bindings tbody").innerHTML = bindings.map((b) => `<tr><td>${esc(b.source || "(AMQP default)")}</td><td>${esc(b.routing_key)}</td></tr>`).join("");
  };
}

function exchangePage(vhost, name) {
  heading(`Exchange ${name === "amq.default" ? "(AMQP default)" : name}`);
  $("#view").insertAdjacentHTML("beforeend", `<div class="cards" id="x-cards"></div>
    <h3>Bindings from this exchange</h3><table id="x-bindings"><thead><tr><th>to</th><th>type</th><th>routing key</th></tr></thead><tbody></tbody></table>
    ${publishForm(vhost, name, "")}`);
  wirePublish(vhost, name);
  return async () => {
    const x = await api(`/api/exchanges/${enc(vhost)}/${enc(name)}`);
    $("#x-cards").innerHTML = [["Type", x.type], ["Durable", x.durable ? "yes" : "no"], ["Internal", x.internal ? "yes" : "no"],
      ["Policy", x.policy || "none", "x-policy"],
      ["In /s", num(rate(x, "publish_in")), "x-in"], ["Out /s", num(rate(x, "publish_out")), "x-out"]]
      .map(([k, v, id]) => `<div class="card"><b${id ? ` id="${id}"` : ""}>${esc(v)}</b><span>${k}</span></div>`).join("");
    const b = await api(`/api/exchanges/${enc(vhost)}/${enc(name)}/bindings/source`);
    $("#x-bindings tbody").innerHTML = b.map((b) => `<tr><td>${esc(b.destination)}</td><td>${esc(b.destination_type)}</td><td>${esc(b.routing_key)}</td></tr>`).join("");
  };
}

// Start: with a login kept in this tab, straight to the views.
if (auth) {
  api("/api/whoami").then(start).catch(() => logout());
} else {
  logout();
}
