// The page's Admin section, as RabbitMQ's page has it: users, vhosts, permissions, limits,
// policies, operator policies and shovels, each listed with forms to add, change and delete. Every
// change is a request to the management API; its refusal (RabbitMQ's reason) is shown as
// the API gives it. Loaded before hare.js, whose helpers ($, api, esc, enc, heading) it uses
// when a view is drawn.
"use strict";

const ADMIN_SECTIONS = [
  ["users", "Users"], ["vhosts", "Virtual hosts"], ["permissions", "Permissions"], ["limits", "Limits"],
  ["policies", "Policies"], ["operator-policies", "Operator policies"], ["shovels", "Shovels"],
];

function admin(section) {
  heading("Admin");
  $("#view").insertAdjacentHTML("beforeend", `<nav class="tabs">${ADMIN_SECTIONS.map(([k, label]) =>
    `<a href="#/admin/${k}" class="${k === section ? "active" : ""}" id="admin-tab-${k}">${esc(label)}</a>`).join("")}</nav>
    <div id="admin"></div><p class="error" id="admin-error"></p><p class="ok" id="admin-ok"></p>`);
  const draw = { users: adminUsers, vhosts: adminVhosts, permissions: adminPermissions, limits: adminLimits,
    policies: () => adminPolicies("policies"), "operator-policies": () => adminPolicies("operator-policies"),
    shovels: adminShovels }[section] || adminUsers;
  return draw();
}

// Runs a change, then says how it went and redraws the section's lists.
async function change(what, request, refresh) {
  $("#admin-error").textContent = "";
  $("#admin-ok").textContent = "";
  try {
    await request();
    $("#admin-ok").textContent = what;
  } catch (err) {
    $("#admin-error").textContent = err.message;
  }
  await refresh();
}

// A list as a table: `cols` are [key, label, format]; each row gets the `actions` buttons,
// which call `on(action, row)`.
function listTable(id, rows, cols, actions, on) {
  $(`#${id} tbody`).innerHTML = rows.map((r, i) => `<tr>${cols.map(([k, , fmt]) => `<td>${esc(fmt ? fmt(r) : r[k])}</td>`).join("")}
    <td>${actions.map((a) => `<button type="button" data-row="${i}" data-action="${a}" class="${a === "delete" ? "danger" : ""}">${a}</button>`).join(" ")}</td></tr>`).join("");
  $(`#${id} tbody`).querySelectorAll("button").forEach((b) => (b.onclick = () => on(b.dataset.action, rows[Number(b.dataset.row)])));
}

function tableHtml(id, cols) {
  return `<table id="${id}"><thead><tr>${cols.map(([, label]) => `<th>${esc(label)}</th>`).join("")}<th></th></tr></thead><tbody></tbody></table>`;
}

const value = (id) => $(`#${id}`).value;

function adminUsers() {
  const cols = [["name", "Name"], ["tags", "Tags", (u) => (u.tags || []).join(", ")]];
  $("#admin").innerHTML = `${tableHtml("users-table", cols)}
    <h3>Add or change a user</h3><form class="inline" id="user-form">
      <label>Name <input id="user-name" required></label>
      <label>Password <input id="user-password" type="password" placeholder="unchanged if empty"></label>
      <label>Tags <input id="user-tags" placeholder="administrator, monitoring, policymaker, management"></label>
      <button type="submit" id="user-submit">Save user</button></form>`;
  const refresh = async () => {
    const users = await api("/api/users");
    listTable("users-table", users, cols, ["edit", "delete"], (action, u) => {
      if (action === "edit") {
        $("#user-name").value = u.name;
        $("#user-tags").value = (u.tags || []).join(", ");
      } else if (confirm(`Delete user ${u.name}?`)) {
        change(`User ${u.name} deleted.`, () => api(`/api/users/${enc(u.name)}`, { method: "DELETE" }), refresh);
      }
    });
  };
  $("#user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = value("user-name");
    const body = { tags: value("user-tags") };
    if (value("user-password")) body.password = value("user-password");
    change(`User ${name} saved.`, async () => {
      // Without a new password, an existing user keeps its hash.
      if (!body.password) {
        const old = await api(`/api/users/${enc(name)}`).catch(() => null);
        if (old) Object.assign(body, { password_hash: old.password_hash, hashing_algorithm: old.hashing_algorithm });
      }
      return api(`/api/users/${enc(name)}`, { method: "PUT", body });
    }, refresh);
  });
  return refresh;
}

function adminVhosts() {
  const cols = [["name", "Name"], ["description", "Description"], ["tags", "Tags", (v) => (v.tags || []).join(", ")], ["messages", "Messages"]];
  $("#admin").innerHTML = `${tableHtml("vhosts-table", cols)}
    <h3>Add or change a virtual host</h3><form class="inline" id="vhost-form">
      <label>Name <input id="vhost-name" required></label>
      <label>Description <input id="vhost-description"></label>
      <label>Tags <input id="vhost-tags"></label>
      <button type="submit" id="vhost-submit">Save virtual host</button></form>`;
  const refresh = async () => {
    const vhosts = await api("/api/vhosts");
    listTable("vhosts-table", vhosts, cols, ["edit", "delete"], (action, v) => {
      if (action === "edit") {
        $("#vhost-name").value = v.name;
        $("#vhost-description").value = v.description || "";
        $("#vhost-tags").value = (v.tags || []).join(", ");
      } else if (confirm(`Delete virtual host ${v.name} and everything in it?`)) {
        change(`Virtual host ${v.name} deleted.`, () => api(`/api/vhosts/${enc(v.name)}`, { method: "DELETE" }), refresh);
      }
    });
  };
  $("#vhost-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = value("vhost-name");
    change(`Virtual host ${name} saved.`, () => api(`/api/vhosts/${enc(name)}`, {
      method: "PUT", body: { description: value("vhost-description"), tags: value("vhost-tags") },
    }), refresh);
  });
  return refresh;
}

function adminPermissions() {
  const cols = [["user", "User"], ["vhost", "Virtual host"], ["configure", "Configure"], ["write", "Write"], ["read", "Read"]];
  $("#admin").innerHTML = `${tableHtml("permissions-table", cols)}
    <h3>Set permissions</h3><form class="inline" id="permission-form">
      <label>User <input id="permission-user" required></label>
      <label>Virtual host <input id="permission-vhost" value="/" required></label>
      <label>Configure <input id="permission-configure" value=".*"></label>
      <label>Write <input id="permission-write" value=".*"></label>
      <label>Read <input id="permission-read" value=".*"></label>
      <button type="submit" id="permission-submit">Set permissions</button></form>`;
  const refresh = async () => {
    const perms = await api("/api/permissions");
    listTable("permissions-table", perms, cols, ["edit", "clear"], (action, p) => {
      if (action === "edit") {
        for (const k of ["user", "vhost", "configure", "write", "read"]) $(`#permission-${k}`).value = p[k];
      } else {
        change(`Permissions of ${p.user} in ${p.vhost} cleared.`, () => api(`/api/permissions/${enc(p.vhost)}/${enc(p.user)}`, { method: "DELETE" }), refresh);
      }
    });
  };
  $("#permission-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const [user, vhost] = [value("permission-user"), value("permission-vhost")];
    change(`Permissions of ${user} in ${vhost} set.`, () => api(`/api/permissions/${enc(vhost)}/${enc(user)}`, {
      method: "PUT", body: { configure: value("permission-configure"), write: value("permission-write"), read: value("permission-read") },
    }), refresh);
  });
  return refresh;
}

function adminLimits() {
  const cols = [["kind", "Of"], ["name", "Name"], ["limit", "Limit"], ["value", "Value"]];
  $("#admin").innerHTML = `${tableHtml("limits-table", cols)}
    <h3>Set a limit</h3><form class="inline" id="limit-form">
      <label>Of <select id="limit-kind"><option value="vhost">virtual host</option><option value="user">user</option></select></label>
      <label>Name <input id="limit-name" value="/" required></label>
      <label>Limit <select id="limit-limit"><option>max-connections</option><option>max-queues</option><option>max-channels</option></select></label>
      <label>Value <input id="limit-value" type="number" value="100" required></label>
      <button type="submit" id="limit-submit">Set limit</button></form>`;
  const path = (kind, name, limit) => `/api/${kind}-limits/${enc(name)}/${enc(limit)}`;
  const refresh = async () => {
    const rows = [];
    for (const kind of ["vhost", "user"]) {
      for (const entry of await api(`/api/${kind}-limits`)) {
        for (const [limit, v] of Object.entries(entry.value || {})) rows.push({ kind, name: entry[kind], limit, value: v });
      }
    }
    listTable("limits-table", rows, cols, ["delete"], (action, l) =>
      change(`Limit ${l.limit} of ${l.name} removed.`, () => api(path(l.kind, l.name, l.limit), { method: "DELETE" }), refresh));
  };
  $("#limit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const [kind, name, limit] = [value("limit-kind"), value("limit-name"), value("limit-limit")];
    change(`Limit ${limit} of ${name} set.`, () => api(path(kind, name, limit), { method: "PUT", body: { value: Number(value("limit-value")) } }), refresh);
  });
  return refresh;
}

// Policies and operator policies: the same form, to two paths.
function adminPolicies(kind) {
  const cols = [["vhost", "Virtual host"], ["name", "Name"], ["pattern", "Pattern"], ["apply-to", "Apply to"],
    ["definition", "Definition", (p) => JSON.stringify(p.definition)], ["priority", "Priority"]];
  const what = kind === "policies" ? "Policy" : "Operator policy";
  $("#admin").innerHTML = `${tableHtml("policies-table", cols)}
    <h3>Add or change ${what.toLowerCase()}</h3><form class="inline" id="policy-form">
      <label>Virtual host <input id="policy-vhost" value="/" required></label>
      <label>Name <input id="policy-name" required></label>
      <label>Pattern <input id="policy-pattern" placeholder="^orders\\." required></label>
      <label>Apply to <select id="policy-apply-to"><option value="all">queues and exchanges</option><option value="queues">queues</option><option value="exchanges">exchanges</option></select></label>
      <label>Priority <input id="policy-priority" type="number" value="0"></label>
      <label>Definition <textarea id="policy-definition" rows="2" cols="40" placeholder='{"max-length": 10000}' required></textarea></label>
      <button type="submit" id="policy-submit">Save ${what.toLowerCase()}</button></form>`;
  const refresh = async () => {
    const policies = await api(`/api/${kind}`);
    listTable("policies-table", policies, cols, ["edit", "delete"], (action, p) => {
      if (action === "edit") {
        for (const k of ["vhost", "name", "pattern", "apply-to", "priority"]) $(`#policy-${k}`).value = p[k];
        $("#policy-definition").value = JSON.stringify(p.definition);
      } else {
        change(`${what} ${p.name} deleted.`, () => api(`/api/${kind}/${enc(p.vhost)}/${enc(p.name)}`, { method: "DELETE" }), refresh);
      }
    });
  };
  $("#policy-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const [vhost, name] = [value("policy-vhost"), value("policy-name")];
    change(`${what} ${name} saved.`, () => {
      let definition;
      try {
        definition = JSON.parse(value("policy-definition"));
      } catch (err) {
        throw new Error(`The definition is not JSON: ${err.message}`);
      }
      return api(`/api/${kind}/${enc(vhost)}/${enc(name)}`, {
        method: "PUT",
        body: { pattern: value("policy-pattern"), definition, priority: Number(value("policy-priority")), "apply-to": value("policy-apply-to") },
      });
    }, refresh);
  });
  return refresh;
}

// Dynamic shovels: each with its state (from /api/shovels), a form for the common fields.
function adminShovels() {
  const cols = [["vhost", "Virtual host"], ["name", "Name"], ["source", "Source"], ["destination", "Destination"],
    ["state", "State"], ["moved", "Moved"]];
  $("#admin").innerHTML = `${tableHtml("shovels-table", cols)}
    <h3>Add or change a shovel</h3><form class="inline" id="shovel-form">
      <label>Virtual host <input id="shovel-vhost" value="/" required></label>
      <label>Name <input id="shovel-name" required></label>
      <label>Source URI <input id="shovel-src-uri" value="amqp://" required></label>
      <label>Source queue <input id="shovel-src-queue" required></label>
      <label>Destination URI <input id="shovel-dest-uri" value="amqp://" required></label>
      <label>Destination queue <input id="shovel-dest-queue" required></label>
      <label>Ack mode <select id="shovel-ack-mode"><option value="on-confirm">on confirm</option><option value="on-publish">on publish</option><option value="no-ack">no ack</option></select></label>
      <label>Delete after <select id="shovel-delete-after"><option value="never">never</option><option value="queue-length">queue length</option></select></label>
      <button type="submit" id="shovel-submit">Save shovel</button></form>`;
  const refresh = async () => {
    const [params, states] = await Promise.all([api("/api/parameters/shovel"), api("/api/shovels")]);
    const rows = params.map((p) => {
      const s = states.find((x) => x.vhost === p.vhost && x.name === p.name) || {};
      const v = p.value;
      return {
        vhost: p.vhost, name: p.name, value: v,
        source: `${v["src-uri"]} ${v["src-queue"] || v["src-exchange"] || ""}`,
        destination: `${v["dest-uri"]} ${v["dest-queue"] || v["dest-exchange"] || ""}`,
        state: s.state ? (s.reason ? `${s.state}: ${s.reason}` : s.state) : "",
        moved: s.messages_shovelled ?? "",
      };
    });
    listTable("shovels-table", rows, cols, ["edit", "delete"], (action, r) => {
      if (action === "edit") {
        $("#shovel-vhost").value = r.vhost;
        $("#shovel-name").value = r.name;
        for (const k of ["src-uri", "src-queue", "dest-uri", "dest-queue", "ack-mode"]) $(`#shovel-${k}`).value = r.value[k] || "";
        $("#shovel-delete-after").value = r.value["src-delete-after"] === "queue-length" ? "queue-length" : "never";
      } else {
        change(`Shovel ${r.name} deleted.`, () => api(`/api/parameters/shovel/${enc(r.vhost)}/${enc(r.name)}`, { method: "DELETE" }), refresh);
      }
    });
  };
  $("#shovel-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const [vhost, name] = [value("shovel-vhost"), value("shovel-name")];
    const v = {};
    for (const k of ["src-uri", "src-queue", "dest-uri", "dest-queue", "ack-mode"]) v[k] = value(`shovel-${k}`);
    v["src-delete-after"] = value("shovel-delete-after");
    change(`Shovel ${name} saved.`, () => api(`/api/parameters/shovel/${enc(vhost)}/${enc(name)}`, { method: "PUT", body: { value: v } }), refresh);
  });
  return refresh;
}
