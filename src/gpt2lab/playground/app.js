// The gpt2lab playground: plain JavaScript, no build step, nothing from the internet.
// It talks to the server it came from: /v1/completions (streamed), /api/analyze, /api/attention, /api/model.
"use strict";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------
// English and French
// ---------------------------------------------------------------------------

const TEXT = {
  en: {
    title: "playground", tagline: "Watch a GPT-2 think: what it expects next, how surprised it is, where it looks.",
    prompt: "Prompt", generate: "Generate", stop: "Stop", temperature: "Temperature", topp: "Top-p",
    topk: "Top-k (0: all)", maxtokens: "Max new tokens", seed: "Seed (empty: random)",
    "hint-temp": "Temperature 0 always takes the most likely token. Move it and watch the bars. Ctrl+Enter generates.",
    "next-title": "Next token",
    "next-hint": "The model's probabilities for the token that comes next: softmax(logits / temperature), after top-k and top-p. Grey: cut by the filters.",
    "text-title": "Tokens and surprise",
    "text-hint": "Each token coloured by its loss (how surprised the model was). Hover for details.",
    low: "expected", high: "surprising", "att-title": "Attention",
    "att-hint": "Pick a layer and a head. Row i shows where token i looks. Click a token to see where it looks.",
    layer: "Layer", head: "head", "model-title": "Model card",
    footer: "Served by gpt2lab on this machine; nothing is loaded from the internet. The same model answers OpenAI's completions API at /v1.",
    generating: "generating…", stopped: "stopped", done: (n, s) => `${n} tokens in ${s} s`,
    mean: (l) => `mean loss ${l} nats/token`,
    spread: (h, k) => `entropy ${h} bits: as uncertain as a fair choice among ${k} tokens`,
    cell: (a, b, p) => `${a} → ${b}: ${p}% of its attention`, dropped: (n) => `(the first ${n} tokens are beyond the context)`,
    tipId: "id", tipProb: "probability", tipLoss: "loss", tipGuess: "the model's top guesses here",
    looks: (t) => `Where ${t} looks (layer and head above); later tokens are hidden from it.`,
    card: { preset: "Preset", parameters: "Parameters", tokenizer: "Tokenizer", run: "Training run",
            bpb: "Val bits per byte", shape: "Shape", context: "Context", dtype: "Generates in", none: "—",
            shapeText: (c) => `${c.n_layers} layers × ${c.n_heads} heads, d_model ${c.d_model}` },
    error: "error",
  },
  fr: {
    title: "bac à sable", tagline: "Regardez un GPT-2 réfléchir : ce qu'il attend ensuite, sa surprise, où il regarde.",
    prompt: "Début du texte", generate: "Générer", stop: "Arrêter", temperature: "Température", topp: "Top-p",
    topk: "Top-k (0 : tous)", maxtokens: "Jetons nouveaux (max.)", seed: "Graine (vide : au hasard)",
    "hint-temp": "À température 0, le jeton le plus probable est toujours choisi. Bougez-la et regardez les barres. Ctrl+Entrée génère.",
    "next-title": "Jeton suivant",
    "next-hint": "Les probabilités du modèle pour le jeton suivant : softmax(logits / température), après top-k et top-p. En gris : écartés par les filtres.",
    "text-title": "Jetons et surprise",
    "text-hint": "Chaque jeton coloré selon sa perte (la surprise du modèle). Survolez pour les détails.",
    low: "attendu", high: "surprenant", "att-title": "Attention",
    "att-hint": "Choisissez une couche et une tête. La ligne i montre où regarde le jeton i. Cliquez sur un jeton pour voir où il regarde.",
    layer: "Couche", head: "tête", "model-title": "Fiche du modèle",
    footer: "Servi par gpt2lab sur cette machine ; rien n'est chargé depuis Internet. Le même modèle répond à l'API de complétions d'OpenAI sous /v1.",
    generating: "génération…", stopped: "arrêté", done: (n, s) => `${n} jetons en ${s} s`,
    mean: (l) => `perte moyenne ${l} nats/jeton`,
    spread: (h, k) => `entropie ${h} bits : autant d'incertitude qu'un choix équitable entre ${k} jetons`,
    cell: (a, b, p) => `${a} → ${b} : ${p} % de son attention`, dropped: (n) => `(les ${n} premiers jetons sortent du contexte)`,
    tipId: "id", tipProb: "probabilité", tipLoss: "perte", tipGuess: "les meilleurs paris du modèle ici",
    looks: (t) => `Où regarde ${t} (couche et tête ci-dessus) ; les jetons suivants lui sont cachés.`,
    card: { preset: "Préréglage", parameters: "Paramètres", tokenizer: "Tokeniseur", run: "Entraînement",
            bpb: "Bits par octet (validation)", shape: "Forme", context: "Contexte", dtype: "Génère en", none: "—",
            shapeText: (c) => `${c.n_layers} couches × ${c.n_heads} têtes, d_model ${c.d_model}` },
    error: "erreur",
  },
};

const state = {
  lang: localStorage.getItem("gpt2lab-lang") || "en",
  card: null, logits: null, top: [], tokens: [], promptLength: 0,
  attention: null, head: 0, query: null, controller: null, analyzeTimer: null, analyses: 0,
};
const t = (key) => TEXT[state.lang][key];

function setLanguage(lang) {
  state.lang = lang;
  localStorage.setItem("gpt2lab-lang", lang);
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const b of document.querySelectorAll(".lang button")) b.classList.toggle("on", b.dataset.lang === lang);
  drawCard();
  drawStatus();
  drawBars();
  drawTokens();
  drawHeads();
  drawQuery();
}

// ---------------------------------------------------------------------------
// Talking to the server
// ---------------------------------------------------------------------------

async function post(path, body, signal) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(body), signal});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

function samplingFields() {
  const seed = $("seed").value.trim();
  return {
    temperature: Number($("temperature").value), top_p: Number($("top-p").value),
    top_k: Math.max(0, Math.floor(Number($("top-k").value) || 0)),
    max_tokens: Math.max(1, Math.floor(Number($("max-tokens").value) || 1)),
    ...(seed === "" ? {} : {seed: Math.floor(Number(seed))}),
  };
}

async function generate() {
  const prompt = $("prompt").value;
  clearTimeout(state.analyzeTimer);
  state.analyses += 1;  // an analysis of the prompt still on its way is not drawn over the stream
  state.controller = new AbortController();
  setBusy(true);
  const out = $("output");
  out.textContent = "";
  out.appendChild(document.createTextNode(prompt));
  const fresh = document.createElement("span");
  fresh.className = "streaming";
  out.appendChild(fresh);
  let text = "", count = 0;
  const start = performance.now();
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: {"Content-Type": "application/json"}, signal: state.controller.signal,
      body: JSON.stringify({prompt, stream: true, ...samplingFields()}),
    });
    if (!response.ok) throw new Error((await response.json()).error.message);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        if (choice.text) {
          text += choice.text;
          count += 1;
          fresh.textContent = text;  // the page grows as the tokens arrive
          out.scrollTop = out.scrollHeight;
        }
      }
    }
    setStatus("done", count, ((performance.now() - start) / 1000).toFixed(2));
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped");
    else setStatus("error", e.message);
  } finally {
    state.controller = null;
    setBusy(false);
  }
  await analyze(prompt + text, prompt.length);
}

async function* events(response) {
  // Server-sent events: "data: {json}\n\n" ... "data: [DONE]\n\n"
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (true) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

function setStatus(key, ...args) {
  state.status = [key, args];
  drawStatus();
}

function drawStatus() {
  if (!state.status) return;
  const [key, args] = state.status, text = t(key);
  $("status").textContent = key === "error" ? `${text}: ${args[0]}` : typeof text === "function" ? text(...args) : text;
}

function setBusy(busy) {
  document.body.dataset.state = busy ? "generating" : "analyzing";  // analysis follows every generation
  $("generate").disabled = busy;
  $("stop").disabled = !busy;
  if (busy) setStatus("generating");
}

async function analyze(text, promptLength) {
  const ticket = ++state.analyses;  // a newer analysis or a generation makes this one stale
  document.body.dataset.state = "analyzing";
  try {
    const data = await post("/api/analyze", {text, top_k: 8});
    if (ticket !== state.analyses || state.controller) return;
    state.tokens = data.tokens;
    state.dropped = data.dropped;
    state.promptLength = promptLength;
    state.logits = decodeFloats(data.next.logits);
    state.order = Array.from(state.logits.keys()).sort((a, b) => state.logits[b] - state.logits[a]);
    state.text = text;
    state.top = data.next.top;
    drawTokens();
    drawBars();
    state.query = null;  // a new text: look from its last token
    await loadAttention(text, ticket);
  } catch (e) {
    setStatus("error", e.message);
  } finally {
    if (!state.controller && ticket === state.analyses) document.body.dataset.state = "idle";
  }
}

function decodeFloats(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

// ---------------------------------------------------------------------------
// Next token: the same logits, redrawn at every temperature
// ---------------------------------------------------------------------------

function nextDistribution() {
  // softmax(logits / T) over the whole vocabulary, then top-k and top-p, as the sampler does.
  const logits = state.logits, {temperature, top_k, top_p} = samplingFields();
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  const probs = new Float64Array(logits.length);
  if (temperature === 0) { probs[best] = 1; return probs; }
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += (probs[i] = Math.exp((logits[i] - logits[best]) / temperature));
  for (let i = 0; i < logits.length; i++) probs[i] /= total;
  const order = state.order;  // most likely first; the order does not depend on T
  let kept = 0, mass = 0;
  const keep = new Set();
  for (const id of order) {
    if ((top_k && kept >= top_k) || (mass >= top_p && kept > 0)) break;
    keep.add(id); kept += 1; mass += probs[id];
  }
  const filtered = new Float64Array(logits.length);
  const filters = top_k > 0 || top_p < 1;
  if (!filters) return probs;
  for (const id of keep) filtered[id] = probs[id] / mass;
  return filtered;
}

function drawBars() {
  if (!state.logits) return;
  const probs = nextDistribution();
  const shown = state.top.slice(0, 10);
  const max = Math.max(...shown.map((c) => probs[c.id]), 1e-9);
  $("bars").replaceChildren(...shown.map((c) => {
    const row = document.createElement("div");
    row.className = "bar" + (probs[c.id] === 0 ? " cut" : "");
    row.dataset.prob = probs[c.id].toFixed(6);
    row.innerHTML = `<span class="tok"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
    row.querySelector(".tok").textContent = visible(c.text);
    row.querySelector(".fill").style.width = `${(100 * probs[c.id] / max).toFixed(1)}%`;
    row.querySelector(".pct").textContent = `${(100 * probs[c.id]).toFixed(1)}%`;
    return row;
  }));
  let entropy = 0;
  for (const p of probs) if (p > 0) entropy -= p * Math.log2(p);
  $("spread").textContent = t("spread")(entropy.toFixed(2), Math.pow(2, entropy).toFixed(1));
}

const visible = (s) => s.replace(/\n/g, "↵").replace(/ /g, "·") || "∅";

// ---------------------------------------------------------------------------
// Tokens and surprise
// ---------------------------------------------------------------------------

function lossColour(loss) {
  const x = Math.min(loss / 8, 1);  // 0 nats: green, 8 nats and more: red
  return `hsl(${(140 - 140 * x).toFixed(0)} ${60 + 15 * x}% ${85 - 7 * x}%)`;
}

function drawTokens() {
  const out = $("output");
  if (!state.tokens.length) return;
  let offset = 0;
  out.replaceChildren(...state.tokens.map((tok, i) => {
    const span = document.createElement("span");
    span.className = "t" + (offset >= state.promptLength ? " gen" : "");
    offset += tok.text.length;
    span.textContent = tok.text;
    span.style.background = lossColour(tok.loss);
    span.dataset.index = i;
    return span;
  }));
  const mean = state.tokens.reduce((s, tok) => s + tok.loss, 0) / state.tokens.length;
  $("mean-loss").textContent = t("mean")(mean.toFixed(2)) + (state.dropped ? " " + t("dropped")(state.dropped) : "");
}

function showTip(event) {
  const span = event.target.closest(".t");
  const tip = $("tip");
  if (!span) { tip.hidden = true; return; }
  const tok = state.tokens[Number(span.dataset.index)];
  const guesses = tok.top.slice(0, 5).map((g) =>
    `<tr><td><code>${escape(visible(g.text))}</code></td><td>${(100 * g.prob).toFixed(1)}%</td></tr>`).join("");
  tip.innerHTML = `<code>${escape(visible(tok.text))}</code> · ${t("tipId")} ${tok.id}<br>` +
    `${t("tipProb")} ${(100 * tok.prob).toFixed(2)}% · ${t("tipLoss")} ${tok.loss.toFixed(2)}<br>` +
    `${t("tipGuess")}:<table>${guesses}</table>`;
  tip.hidden = false;
  tip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - 330)}px`;
  tip.style.top = `${event.clientY + 16}px`;
}

const escape = (s) => s.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

// ---------------------------------------------------------------------------
// Attention: a layer's heads as thumbnails, one head large, one token's row
// ---------------------------------------------------------------------------

async function loadAttention(text, ticket = state.analyses) {
  if (!text) return;
  const attention = await post("/api/attention", {text, layer: Number($("layer").value) || 0});
  if (ticket !== state.analyses || state.controller) return;
  state.attention = attention;
  if (state.query === null || state.query >= state.attention.tokens.length) state.query = state.attention.tokens.length - 1;
  drawHeads();
  drawHeatmap();
  drawQuery();
}

function paint(canvas, pattern, query) {
  // Row i, column j: how much token i attends to token j (square root, so weak links stay visible).
  const n = pattern.length, size = canvas.clientWidth > 100 ? 720 : 88, cell = size / n;
  canvas.width = size; canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#f3f4f8";
  ctx.fillRect(0, 0, size, size);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) {
    const v = Math.sqrt(pattern[i][j]);
    ctx.fillStyle = `rgb(${255 - v * 196 | 0}, ${255 - v * 164 | 0}, ${255 - v * 36 | 0})`;
    ctx.fillRect(j * cell, i * cell, Math.ceil(cell), Math.ceil(cell));
  }
  if (query !== null && query !== undefined) {
    ctx.strokeStyle = "#e8590c";
    ctx.lineWidth = Math.max(2, size / 180);
    ctx.strokeRect(0, query * cell, (query + 1) * cell, cell);
  }
}

function drawHeads() {
  const att = state.attention;
  if (!att) return;
  $("heads").replaceChildren(...att.patterns.map((pattern, h) => {
    const button = document.createElement("button");
    button.className = "head" + (h === state.head ? " on" : "");
    button.dataset.head = h;
    const canvas = document.createElement("canvas");
    paint(canvas, pattern, null);
    button.append(canvas, `${t("head")} ${h}`);
    button.addEventListener("click", () => { state.head = h; drawHeads(); drawHeatmap(); drawQuery(); });
    return button;
  }));
}

function drawHeatmap() {
  const att = state.attention;
  if (att) paint($("heatmap"), att.patterns[state.head], state.query);
}

function drawQuery() {
  const att = state.attention;
  if (!att) return;
  const row = att.patterns[state.head][state.query];
  $("att-tokens").replaceChildren(...att.tokens.map((tok, j) => {
    const span = document.createElement("span");
    span.textContent = tok;
    if (j === state.query) span.className = "query";
    else if (j > state.query) span.className = "later";
    else span.style.background = `rgba(59, 91, 219, ${Math.min(1, row[j] * 1.2).toFixed(3)})`;
    span.title = `${(100 * row[j]).toFixed(1)}%`;
    span.addEventListener("click", () => { state.query = j; drawHeatmap(); drawQuery(); });
    return span;
  }));
  $("att-caption").textContent = t("looks")(`“${visible(att.tokens[state.query])}”`);
}

function heatmapCell(event) {
  const box = event.target.getBoundingClientRect(), n = state.attention.tokens.length;
  const at = (x, size) => Math.min(n - 1, Math.max(0, Math.floor(x / size * n)));
  return [at(event.clientY - box.top, box.height), at(event.clientX - box.left, box.width)];
}

function hoverHeatmap(event) {
  const tip = $("tip");
  if (!state.attention) return;
  const [i, j] = heatmapCell(event), tokens = state.attention.tokens;
  if (j > i) { tip.hidden = true; return; }
  const p = (100 * state.attention.patterns[state.head][i][j]).toFixed(1);
  tip.innerHTML = t("cell")(`<code>${escape(visible(tokens[i]))}</code>`, `<code>${escape(visible(tokens[j]))}</code>`, p);
  tip.hidden = false;
  tip.style.left = `${event.clientX + 14}px`;
  tip.style.top = `${event.clientY + 16}px`;
}

function clickHeatmap(event) {
  if (!state.attention) return;
  state.query = heatmapCell(event)[0];
  drawHeatmap();
  drawQuery();
}

// ---------------------------------------------------------------------------
// Model card
// ---------------------------------------------------------------------------

function drawCard() {
  const c = state.card, L = t("card");
  if (!c) return;
  const rows = [
    [L.preset, c.preset || L.none], [L.parameters, c.parameters.toLocaleString(state.lang)],
    [L.shape, L.shapeText(c.config)], [L.context, `${c.config.n_ctx}`],
    [L.tokenizer, `${c.tokenizer.kind} (${c.tokenizer.n_vocab.toLocaleString(state.lang)})`],
    [L.run, c.run ? `${c.run}${c.step !== null ? ` · step ${c.step}` : ""}` : c.path],
    [L.bpb, c.val_bpb !== null ? c.val_bpb.toFixed(3) : L.none],
    [L.dtype, c.dtype],
  ];
  $("card").replaceChildren(...rows.map(([k, v]) => {
    const pair = document.createElement("div"), dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    pair.append(dt, dd);
    return pair;
  }));
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------

async function start() {
  state.card = await (await fetch("/api/model")).json();
  $("layer").replaceChildren(...Array.from({length: state.card.config.n_layers}, (_, i) => new Option(`${i}`, `${i}`)));
  setLanguage(state.lang);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  for (const b of document.querySelectorAll(".lang button")) b.addEventListener("click", () => setLanguage(b.dataset.lang));
  for (const [id, digits] of [["temperature", 2], ["top-p", 2]]) {
    $(id).addEventListener("input", () => { $(`${id}-value`).textContent = Number($(id).value).toFixed(digits); drawBars(); });
  }
  $("top-k").addEventListener("input", drawBars);
  $("prompt").addEventListener("input", () => {
    clearTimeout(state.analyzeTimer);
    state.analyzeTimer = setTimeout(() => analyze($("prompt").value, $("prompt").value.length), 350);
  });
  $("layer").addEventListener("change", () => loadAttention(currentText()));
  $("output").addEventListener("mousemove", showTip);
  $("output").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  $("heatmap").addEventListener("click", clickHeatmap);
  $("heatmap").addEventListener("mousemove", hoverHeatmap);
  $("heatmap").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !state.controller) generate();
  });
  await analyze($("prompt").value, $("prompt").value.length);
}

const currentText = () => state.text || $("prompt").value;

start();
