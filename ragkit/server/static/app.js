// ragkit's page: ask (streamed), search, open cited lines. Document text is only ever set as
// textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) sessionStorage.setItem("ragkit-token", decodeURIComponent(m[1]));
  return sessionStorage.getItem("ragkit-token");
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function call(method, url, body) {
  const res = await fetch(url, {
    method, headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(await errorText(res));
  return res;
}

async function errorText(res) {
  try {
    const data = await res.json();
    if (typeof data.error === "string") return data.error;
    if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg).join("; ");
  } catch (e) { /* not JSON */ }
  if (res.status === 401) return "this server needs a token: open the page as /#token=TOKEN";
  return `request failed (${res.status})`;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function location_(p) {
  const parts = [];
  if (p.page !== null && p.page !== undefined) parts.push(`page ${p.page}`);
  parts.push(p.start_line === p.end_line ? `line ${p.start_line}` : `lines ${p.start_line}–${p.end_line}`);
  return `${p.path} (${parts.join(", ")})`;
}

function openLink(text, where, cls) {
  const a = el("a", text, cls);
  a.href = "#";
  a.addEventListener("click", (ev) => { ev.preventDefault(); openDocument(where); });
  return a;
}

async function loadStatus() {
  try {
    const st = await (await call("GET", "/v1/status")).json();
    $("status").textContent =
      `index ${st.index}: ${st.documents} documents, ${st.chunks} passages` +
      (st.source ? ` from ${st.source}` : "") + ` · ${st.embedder}`;
  } catch (e) {
    $("status").textContent = "index unavailable: " + e.message;
  }
}

function renderResults(data) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of data.hits) {
    const li = el("li");
    li.append(openLink(location_(hit), hit));
    if (hit.heading) li.append(el("span", " § " + hit.heading, "where"));
    li.append(el("p", hit.text.split(/\s+/).join(" ").slice(0, 300), "snippet"));
    list.append(li);
  }
  if (!data.hits.length) list.append(el("li", "No passages found."));
  $("results-section").hidden = false;
}

function renderAnswer(answer) {
  const box = $("answer");
  box.replaceChildren();
  const byN = new Map(answer.citations.map((c) => [c.n, c]));
  // "[n]" markers become links to the cited lines; everything else stays plain text.
  for (const part of answer.answer.split(/(\[\d+\])/)) {
    const m = part.match(/^\[(\d+)\]$/);
    const c = m && byN.get(Number(m[1]));
    box.append(c ? openLink(part, c, "cite") : document.createTextNode(part));
  }
  $("abstained").hidden = !answer.abstained;
  $("incomplete").hidden = answer.complete;
  const list = $("citations");
  list.replaceChildren();
  for (const c of answer.citations) {
    const li = el("li");
    li.value = c.n;
    li.append(openLink(location_(c), c));
    li.append(el("p", "“" + c.quote + "”", "snippet"));
    list.append(li);
  }
}

async function streamAnswer(question) {
  const res = await call("POST", "/v1/ask", { question, stream: true });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", streamed = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse(block.split("\n").filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6)).join("\n"));
      if (kind === "text") {
        streamed += data.text;
        $("answer").textContent = streamed;
      } else if (kind === "answer") {
        renderAnswer(data);
      } else if (kind === "error") {
        throw new Error(data.error);
      }
    }
  }
}

async function openDocument(where) {
  showError("");
  const params = new URLSearchParams();
  if (where.page !== null && where.page !== undefined) params.set("page", where.page);
  const path = where.path.split("/").map(encodeURIComponent).join("/");
  try {
    const doc = await (await call("GET", `/v1/documents/${path}?${params}`)).json();
    const box = $("document");
    box.replaceChildren();
    let first = null;
    for (const section of doc.sections) {
      if (section.page !== null && doc.sections.length > 1) box.append(el("div", `page ${section.page}`, "page-break"));
      section.text.split("\n").forEach((text, i) => {
        const n = section.start_line + i;
        const line = el("div", undefined, "line");
        line.dataset.line = n;
        line.append(el("span", String(n), "n"), el("span", text, "t"));
        const samePage = where.page === null || where.page === undefined || section.page === where.page;
        if (samePage && n >= where.start_line && n <= where.end_line) {
          line.classList.add("hit");
          if (!first) first = line;
        }
        box.append(line);
      });
    }
    $("document-where").textContent = location_(where);
    $("document-section").hidden = false;
    // Scroll the document pane (not the page) to the cited lines, then bring the pane in view.
    box.scrollTop = first ? Math.max(0, first.offsetTop - 48) : 0;
    $("document-section").scrollIntoView({ block: "nearest" });
    $("document-title").focus({ preventScroll: true });
  } catch (e) {
    showError(e.message);
  }
}

async function onSubmit(ev) {
  ev.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  showError("");
  $("ask-button").disabled = true;
  $("answer-section").hidden = false;
  $("answer").textContent = "…";
  $("abstained").hidden = true;
  $("incomplete").hidden = true;
  $("citations").replaceChildren();
  const search = call("POST", "/v1/search", { query: question })
    .then((r) => r.json()).then(renderResults);
  try {
    await Promise.all([streamAnswer(question), search]);
  } catch (e) {
    showError(e.message);
  } finally {
    $("ask-button").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", onSubmit);
  loadStatus();
  $("question").focus();
});
