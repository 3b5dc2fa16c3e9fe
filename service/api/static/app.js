// recsmith web page: the assistant chat (SSE over fetch) and the copy studio.
// Vanilla JS, no build step. All data goes into the DOM as text, never as HTML.
"use strict";

const KEY_STORE = "recsmith.apiKey";
const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------------------------------
// API access
// ---------------------------------------------------------------------------------------
function authHeaders(extra = {}) {
  const h = { ...extra };
  const key = localStorage.getItem(KEY_STORE);
  if (key) h["X-API-Key"] = key;
  return h;
}

class ApiError extends Error {
  constructor(status, message, fields) {
    super(message);
    this.status = status;
    this.fields = fields || [];
  }
}

async function toApiError(r) {
  let message = `${r.status} ${r.statusText}`;
  let fields = [];
  try {
    const body = await r.json();
    if (body && body.error) {
      message = body.error.message;
      fields = body.error.fields || [];
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(r.status, message, fields);
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (!r.ok) throw await toApiError(r);
  return r.status === 204 ? null : r.json();
}

function showError(err) {
  const banner = $("#banner");
  let text = err instanceof ApiError ? err.message : String(err && err.message || err);
  if (err instanceof ApiError && err.status === 401) {
    text = "An API key is needed (or the one saved is wrong): enter it at the top right.";
    $("#api-key").focus();
  }
  banner.textContent = text;
  banner.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { banner.hidden = true; }, 8000);
}

function money(price, currency) {
  if (price === null || price === undefined) return "";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "USD" })
      .format(price);
  } catch (_) {
    return `${price} ${currency || ""}`;
  }
}

// ---------------------------------------------------------------------------------------
// Key field and tabs
// ---------------------------------------------------------------------------------------
function initKey() {
  const input = $("#api-key");
  const state = $("#key-state");
  const stored = localStorage.getItem(KEY_STORE) || "";
  input.value = stored;
  const show = () => {
    const has = !!localStorage.getItem(KEY_STORE);
    state.textContent = has ? "saved" : (document.body.dataset.needsKey === "true" ? "needed" : "");
  };
  show();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = input.value.trim();
    if (v) localStorage.setItem(KEY_STORE, v); else localStorage.removeItem(KEY_STORE);
    show();
    $("#banner").hidden = true;
  });
}

function initTabs() {
  document.querySelectorAll(".tab").forEach((tab) => {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".tab").forEach((t) => {
        const on = t === tab;
        t.classList.toggle("active", on);
        t.setAttribute("aria-selected", String(on));
        $(`#tab-${t.dataset.tab}`).hidden = !on;
      });
      if (tab.dataset.tab === "studio") loadCopy();
    });
  });
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------
let conversationId = null;

function productCard(p, cited) {
  const node = $("#tpl-card").content.firstElementChild.cloneNode(true);
  node.dataset.productId = p.id;
  if (cited) node.classList.add("cited");
  $(".label", node).textContent = p.label ? `[${p.label}]` : "";
  $(".title", node).textContent = p.title;
  $(".price", node).textContent = money(p.price, p.currency);
  $(".cat", node).textContent = p.category || "";
  $(".pid", node).textContent = p.id;
  const stock = $(".stock", node);
  stock.textContent = p.in_stock === false ? "out of stock" : "in stock";
  if (p.in_stock === false) stock.classList.add("out");
  return node;
}

function addMessage(role, text) {
  const box = $("#messages");
  const hint = $(".hint", box);
  if (hint) hint.remove();
  const msg = document.createElement("div");
  msg.className = `msg ${role}`;
  const answer = document.createElement("span");
  answer.className = "answer";
  answer.textContent = text;
  msg.appendChild(answer);
  box.appendChild(msg);
  box.scrollTop = box.scrollHeight;
  return msg;
}

// Server-sent events from a fetch body: blocks separated by a blank line.
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function renderFinal(msg, final) {
  $(".answer", msg).textContent = final.answer;
  const cited = new Set(final.cited || []);
  if (final.products && final.products.length) {
    const grid = document.createElement("div");
    grid.className = "cards";
    grid.setAttribute("data-testid", "product-cards");
    for (const p of final.products) grid.appendChild(productCard(p, cited.has(p.id)));
    msg.appendChild(grid);
  }
  const notes = [];
  if (final.degraded) notes.push("The model could not answer fully; these are the closest matches.");
  else if (final.suggested && final.products && final.products.length) notes.push("Suggestions");
  if (notes.length) {
    const n = document.createElement("span");
    n.className = "note";
    n.textContent = notes.join(" · ");
    msg.appendChild(n);
  }
}

async function sendChat(text) {
  addMessage("user", text);
  const bot = addMessage("bot", "");
  bot.classList.add("streaming");
  const answer = $(".answer", bot);
  const send = $("#chat-send");
  send.disabled = true;
  try {
    const body = { message: text };
    if (conversationId) body.conversation_id = conversationId;
    const r = await fetch("/v1/assistant/chat", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
    if (!r.ok) throw await toApiError(r);
    for await (const ev of sseEvents(r)) {
      if (ev.event === "token") {
        answer.textContent += ev.data.text;
        $("#messages").scrollTop = $("#messages").scrollHeight;
      } else if (ev.event === "final") {
        conversationId = ev.data.conversation_id;
        renderFinal(bot, ev.data);
      } else if (ev.event === "error") {
        throw new Error(ev.data.error ? ev.data.error.message : "the answer broke off");
      }
    }
  } catch (err) {
    if (!answer.textContent) bot.remove();
    showError(err);
  } finally {
    bot.classList.remove("streaming");
    send.disabled = false;
    $("#messages").scrollTop = $("#messages").scrollHeight;
  }
}

function initChat() {
  $("#chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#chat-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    sendChat(text);
  });
  $("#chat-new").addEventListener("click", () => {
    conversationId = null;
    $("#messages").replaceChildren();
    addMessage("bot", "New conversation. What are you looking for?");
  });
}

// ---------------------------------------------------------------------------------------
// Copy studio
// ---------------------------------------------------------------------------------------
const selected = new Map(); // product id -> product
const titles = new Map(); // product id -> title (for the review list)

function renderSelected() {
  const ul = $("#selected");
  ul.replaceChildren();
  for (const [id, p] of selected) {
    const li = document.createElement("li");
    li.dataset.productId = id;
    li.append(document.createTextNode(p.title.length > 38 ? p.title.slice(0, 36) + "…" : p.title));
    const x = document.createElement("button");
    x.type = "button";
    x.title = "Remove";
    x.textContent = "×";
    x.addEventListener("click", () => { selected.delete(id); renderSelected(); });
    li.appendChild(x);
    ul.appendChild(li);
  }
  $("#selected-count").textContent = String(selected.size);
}

async function search(q) {
  const ul = $("#search-results");
  ul.replaceChildren();
  const params = new URLSearchParams({ limit: "20" });
  if (q) params.set("q", q);
  const page = await api("GET", `/v1/products?${params}`);
  for (const p of page.items) {
    titles.set(p.id, p.title);
    const li = document.createElement("li");
    li.dataset.productId = p.id;
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = p.title;
    const price = document.createElement("span");
    price.className = "muted";
    price.textContent = money(p.price, p.currency);
    const add = document.createElement("button");
    add.type = "button";
    add.className = "ghost";
    add.textContent = selected.has(p.id) ? "Added" : "Add";
    add.setAttribute("data-testid", "add-product");
    add.addEventListener("click", () => {
      if (selected.size >= 20) return showError(new Error("At most 20 products at a time."));
      selected.set(p.id, p);
      add.textContent = "Added";
      renderSelected();
    });
    li.append(t, price, add);
    ul.appendChild(li);
  }
  if (!page.items.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "No products found.";
    ul.appendChild(li);
  }
}

function copyNode(r) {
  const node = $("#tpl-copy").content.firstElementChild.cloneNode(true);
  fillCopy(node, r);
  const area = $(".text", node);
  const act = async (fn) => {
    node.classList.add("busy");
    try { fillCopy(node, await fn()); } catch (err) { showError(err); }
    finally { node.classList.remove("busy"); }
  };
  $(".save", node).addEventListener("click", () =>
    act(() => api("PATCH", `/v1/copy/${node.dataset.copyId}`, { text: area.value })));
  $(".approve", node).addEventListener("click", () => {
    const edited = area.value.trim() !== (node.dataset.shown || "").trim();
    act(() => api("POST", `/v1/copy/${node.dataset.copyId}/approve`,
      edited ? { text: area.value } : {}));
  });
  $(".reject", node).addEventListener("click", () =>
    act(() => api("POST", `/v1/copy/${node.dataset.copyId}/reject`, { reason: "" })));
  return node;
}

function fillCopy(node, r) {
  node.dataset.copyId = String(r.id);
  node.dataset.status = r.status;
  node.dataset.shown = r.text || "";
  $(".task", node).textContent = r.task;
  const pid = r.product_id || (r.product_ids || []).join(", ");
  $(".ptitle", node).textContent = titles.get(r.product_id) || pid;
  const status = $(".status", node);
  status.textContent = r.status;
  status.className = `status pill ${r.status}`;
  status.setAttribute("data-testid", "copy-status");
  $(".text", node).value = r.text || "";
  const checks = $(".checks", node);
  checks.replaceChildren();
  const failed = r.failed_checks || [];
  const pill = (text, cls, title) => {
    const s = document.createElement("span");
    s.className = `pill ${cls}`;
    s.textContent = text;
    if (title) s.title = title;
    checks.appendChild(s);
  };
  if (r.refused) pill("refused", "bad", r.note);
  if (!failed.length) pill("checks passed", "good");
  for (const name of failed) pill(name, "bad", (r.checks[name] || {}).detail || "");
  if (r.edited_text) pill("edited", "");
  if (r.cached) pill("from store", "");
  $(".prov", node).textContent =
    `#${r.id} · ${r.language} · ${r.model_id} · ${r.template}@${r.template_version}`;
}

function upsertCopy(results, prepend) {
  const list = $("#copy-list");
  const empty = $(".empty", list);
  if (empty) empty.remove();
  for (const r of results) {
    const existing = list.querySelector(`[data-copy-id="${r.id}"]`);
    if (existing) { fillCopy(existing, r); continue; }
    const node = copyNode(r);
    if (prepend) list.prepend(node); else list.appendChild(node);
  }
}

async function loadCopy() {
  const status = $("#review-filter").value;
  const params = new URLSearchParams({ limit: "50" });
  if (status) params.set("status", status);
  try {
    const page = await api("GET", `/v1/copy?${params}`);
    const list = $("#copy-list");
    list.replaceChildren();
    if (!page.items.length) {
      const d = document.createElement("div");
      d.className = "empty";
      d.textContent = "Nothing here yet: pick products and generate.";
      list.appendChild(d);
    }
    await fillTitles(page.items.map((r) => r.product_id).filter(Boolean));
    upsertCopy(page.items, false);
  } catch (err) { showError(err); }
}

async function fillTitles(ids) {
  const missing = [...new Set(ids)].filter((id) => !titles.has(id)).slice(0, 30);
  await Promise.all(missing.map(async (id) => {
    try { titles.set(id, (await api("GET", `/v1/products/${encodeURIComponent(id)}`)).title); }
    catch (_) { /* deleted product: the id is shown */ }
  }));
}

async function generate() {
  if (!selected.size) return showError(new Error("Pick at least one product first."));
  const task = $("#gen-task").value;
  const body = {
    product_ids: [...selected.keys()],
    tone: $("#gen-tone").value.trim() || "friendly",
    length: $("#gen-length").value,
    variants: Math.max(1, Math.min(8, parseInt($("#gen-variants").value, 10) || 1)),
    regenerate: $("#gen-regenerate").checked,
  };
  const lang = $("#gen-language").value;
  if (lang) body.language = lang;
  const go = $("#gen-go");
  go.disabled = true;
  go.textContent = "Writing…";
  try {
    const out = await api("POST", `/v1/copy/${task}`, body);
    upsertCopy(out.results.slice().reverse(), true);
  } catch (err) {
    showError(err);
  } finally {
    go.disabled = false;
    go.textContent = "Generate";
  }
}

async function download(format) {
  const params = new URLSearchParams({ format });
  const status = $("#review-filter").value;
  if (status) params.set("status", status);
  try {
    const r = await fetch(`/v1/copy/export?${params}`, { headers: authHeaders() });
    if (!r.ok) throw await toApiError(r);
    const blob = await r.blob();
    const cd = r.headers.get("content-disposition") || "";
    const m = /filename="([^"]+)"/.exec(cd);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = m ? m[1] : `recsmith-copy.${format}`;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  } catch (err) { showError(err); }
}

function initStudio() {
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("#search-input").value.trim()).catch(showError);
  });
  $("#gen-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  $("#review-filter").addEventListener("change", loadCopy);
  $("#review-refresh").addEventListener("click", loadCopy);
  $("#export-csv").addEventListener("click", () => download("csv"));
  $("#export-jsonl").addEventListener("click", () => download("jsonl"));
}

document.addEventListener("DOMContentLoaded", () => {
  initKey();
  initTabs();
  initChat();
  initStudio();
});
