// gpt2 serve: the writing page. Plain JavaScript, no build step, no dependencies.
//
// When typing pauses (or on Ctrl+Space) the page asks POST /v1/completions, streaming, for `n`
// continuations of the text before the cursor and lists them as they arrive; Tab or a click
// inserts the highlighted one. A new keystroke aborts the request in flight, which the server
// sees as a disconnect and stops generating.
"use strict";

const $ = (id) => document.getElementById(id);
const editor = $("editor");
const list = $("suggestions");
const statusLine = $("status");
const settings = ["max-tokens", "temperature", "top-p", "n", "delay"];

let model = null;        // the id /v1/models reports
let timer = null;        // pending "ask after a pause"
let inflight = null;     // AbortController of the request in flight
let suggestions = [];    // {text, done}
let selected = 0;
let askedAt = -1;        // cursor position the shown suggestions continue from

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function readSettings() {
  const v = (id) => Number($(id).value);
  const temperature = v("temperature");
  return {
    max_tokens: v("max-tokens"),
    temperature,
    top_p: v("top-p"),
    n: temperature === 0 ? 1 : v("n"),  // greedy search has one answer
    delay: v("delay"),
  };
}

function showSettings() {
  for (const id of settings) {
    $(id + "-out").textContent = $(id).value;
    localStorage.setItem("gpt2-serve-" + id, $(id).value);
  }
  localStorage.setItem("gpt2-serve-auto", $("auto").checked ? "1" : "0");
}

function render() {
  list.replaceChildren();
  suggestions.forEach((s, i) => {
    const li = document.createElement("li");
    li.textContent = s.text;
    li.dataset.index = String(i);
    if (i === selected) li.classList.add("selected");
    if (!s.done) li.classList.add("pending");
    li.addEventListener("mousedown", (e) => { e.preventDefault(); accept(i); });
    list.appendChild(li);
  });
}

function clearSuggestions() {
  if (inflight) { inflight.abort(); inflight = null; }
  suggestions = [];
  selected = 0;
  askedAt = -1;
  render();
}

function schedule() {
  clearTimeout(timer);
  clearSuggestions();
  if (!$("auto").checked) { setStatus("Ctrl+Space asks for suggestions"); return; }
  setStatus("waiting for a pause…");
  timer = setTimeout(ask, readSettings().delay);
}

async function ask() {
  clearTimeout(timer);
  clearSuggestions();
  const cursor = editor.selectionStart;
  const prompt = editor.value.slice(0, cursor);
  const s = readSettings();
  const controller = new AbortController();
  inflight = controller;
  askedAt = cursor;
  suggestions = Array.from({ length: s.n }, () => ({ text: "", done: false }));
  render();
  setStatus("asking GPT-2…");
  const body = {
    prompt, max_tokens: s.max_tokens, temperature: s.temperature, top_p: s.top_p, n: s.n,
    stream: true, stream_options: { include_usage: true },
  };
  if (model) body.model = model;
  try {
    const resp = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `HTTP ${resp.status}`);
    }
    await readEvents(resp, (event) => {
      if (event.error) throw new Error(event.error.message);
      for (const c of event.choices || []) {
        const sug = suggestions[c.index];
        if (!sug) continue;
        sug.text += c.text;
        if (c.finish_reason) sug.done = true;
      }
      if (event.usage) showSpeed(event.usage);
      if (inflight === controller) render();
    });
    if (inflight === controller) {
      inflight = null;
      suggestions.forEach((x) => { x.done = true; });
      render();
      setStatus("Tab inserts · Alt+↑/↓ chooses · Esc dismisses");
    }
  } catch (e) {
    if (e.name === "AbortError") return;  // superseded by newer typing
    if (inflight === controller) { inflight = null; suggestions = []; render(); }
    setStatus(e.message, true);
  }
}

// Server-sent events: "data: {json}\n\n" blocks ending with "data: [DONE]".
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function showSpeed(usage) {
  if (usage.tokens_per_second) {
    $("tps").textContent = `${usage.tokens_per_second.toFixed(1)} tokens/s ` +
      `(${usage.completion_tokens} tokens)`;
  }
}

function accept(i) {
  const s = suggestions[i];
  if (!s || !s.text) return;
  const at = askedAt >= 0 ? askedAt : editor.selectionStart;
  editor.focus();
  editor.setRangeText(s.text, at, at, "end");
  // a fresh round continues from the new cursor, as Write With Transformer did
  schedule();
}

function move(step) {
  if (!suggestions.length) return;
  selected = (selected + step + suggestions.length) % suggestions.length;
  render();
}

editor.addEventListener("input", schedule);
// suggestions continue the text before the cursor they were asked at: moving it drops them
const moved = () => { if (suggestions.length && editor.selectionStart !== askedAt) clearSuggestions(); };
editor.addEventListener("click", moved);
editor.addEventListener("keyup", (e) => { if (!e.altKey) moved(); });
editor.addEventListener("keydown", (e) => {
  if (e.key === "Tab" && !e.shiftKey && suggestions.some((s) => s.text)) {
    e.preventDefault();
    const i = suggestions[selected] && suggestions[selected].text ? selected
      : suggestions.findIndex((s) => s.text);
    accept(i);
  } else if (e.key === "Escape") {
    clearTimeout(timer);
    clearSuggestions();
    setStatus("dismissed");
  } else if (e.key === " " && e.ctrlKey) {
    e.preventDefault();
    ask();
  } else if (e.altKey && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
    e.preventDefault();
    move(e.key === "ArrowDown" ? 1 : -1);
  }
});

for (const id of settings) {
  const saved = localStorage.getItem("gpt2-serve-" + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("input", showSettings);
}
if (localStorage.getItem("gpt2-serve-auto") === "0") $("auto").checked = false;
$("auto").addEventListener("change", showSettings);
showSettings();

fetch("/health").then((r) => r.json()).then((h) => {
  model = h.model;
  $("model").textContent = h.model;
  $("framework").textContent = h.framework;
  $("dtype").textContent = h.dtype;
  document.title = `Write With GPT-2 · ${h.model} (${h.framework})`;
}).catch((e) => setStatus(`server unreachable: ${e.message}`, true));
