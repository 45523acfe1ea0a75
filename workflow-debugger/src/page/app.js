// The tidewater debugger page: plain JavaScript against the server's own routes.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { workflow: null, representation: null, run: null, source: null, runs: new Map() };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function say(message) {
  $("#status").textContent = message;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "content-type": "application/json", ...(options.headers || {}) },
  });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((body && (body.detail || body.error || body.message)) || response.statusText);
  }
  return body;
}

// ---------------------------------------------------------------- workflows and graph

async function loadWorkflows() {
  const { workflows } = await api("/workflows");
  const list = $("#workflows");
  list.replaceChildren();
  for (const name of workflows) {
    list.append(el("li", {}, el("button", { type: "button", "data-workflow": name, text: name, onclick: () => choose(name) })));
  }
  if (workflows.length && !state.workflow) await choose(workflows[0]);
}

async function choose(name) {
  state.workflow = name;
  for (const button of document.querySelectorAll("#workflows button")) {
    button.setAttribute("aria-current", String(button.dataset.workflow === name));
  }
  $("#workflow").hidden = false;
  $("#workflow-title").textContent = name;
  const [svg, schema, representation] = await Promise.all([
    fetch(`/debugger/graphs/${encodeURIComponent(name)}`).then((r) => (r.ok ? r.text() : "")),
    api(`/workflows/${encodeURIComponent(name)}/schema`),
    api(`/workflows/${encodeURIComponent(name)}/representation`),
  ]);
  state.representation = representation.graph;
  $("#graph").innerHTML = svg || "<p>No picture for this workflow.</p>";
  buildFields($("#start-fields"), schema.start, "start");
}

function markStep(step, running) {
  const node = document.querySelector(`#graph g[data-step="${CSS.escape(step)}"]`);
  if (!node) return;
  node.classList.toggle("running", running);
  node.classList.add("seen");
}

// ---------------------------------------------------------------- forms from JSON schemas

function resolve(schema, root) {
  let s = schema || {};
  for (let i = 0; i < 8 && s.$ref; i++) {
    const path = s.$ref.replace(/^#\//, "").split("/");
    s = path.reduce((node, key) => (node ? node[key] : undefined), root) || {};
  }
  return s;
}

function typeOf(schema) {
  const t = Array.isArray(schema.type) ? schema.type.find((x) => x !== "null") : schema.type;
  return t || (schema.properties ? "object" : "json");
}

function buildFields(container, schema, prefix) {
  container.replaceChildren();
  const root = schema || {};
  const top = resolve(root, root);
  const properties = top.properties;
  if (!properties) {
    const id = `${prefix}-value`;
    container.append(
      el("label", { for: id, text: "Input " }, el("small", { text: "(JSON)" })),
      el("textarea", { id, name: "__value", "data-kind": "json", text: top.default !== undefined ? JSON.stringify(top.default) : "" }),
    );
    return;
  }
  const required = new Set(top.required || []);
  for (const [key, raw] of Object.entries(properties)) {
    const field = resolve(raw, root);
    const kind = typeOf(field);
    const id = `${prefix}-${key}`;
    const hint = [kind, required.has(key) ? "required" : "optional", field.description].filter(Boolean).join(", ");
    container.append(el("label", { for: id, text: `${key} ` }, el("small", { text: `(${hint})` })));
    let input;
    if (kind === "boolean") {
      input = el("input", { id, name: key, type: "checkbox", "data-kind": kind });
      if (field.default === true) input.checked = true;
    } else if (kind === "integer" || kind === "number") {
      input = el("input", { id, name: key, type: "number", step: kind === "integer" ? "1" : "any", "data-kind": kind });
      if (field.default !== undefined) input.value = field.default;
    } else if (kind === "string") {
      input = el("input", { id, name: key, type: "text", "data-kind": kind });
      if (field.default !== undefined) input.value = field.default;
    } else {
      input = el("textarea", { id, name: key, "data-kind": "json" });
      if (field.default !== undefined) input.value = JSON.stringify(field.default);
    }
    if (required.has(key) && kind !== "boolean") input.required = true;
    container.append(input);
  }
}

function readFields(container) {
  const inputs = [...container.querySelectorAll("input, textarea")];
  const single = inputs.find((i) => i.name === "__value");
  if (single) return single.value.trim() ? JSON.parse(single.value) : null;
  const value = {};
  for (const input of inputs) {
    const kind = input.dataset.kind;
    if (kind === "boolean") value[input.name] = input.checked;
    else if (input.value === "") continue;
    else if (kind === "integer" || kind === "number") value[input.name] = Number(input.value);
    else if (kind === "json") value[input.name] = JSON.parse(input.value);
    else value[input.name] = input.value;
  }
  return value;
}

// ---------------------------------------------------------------- runs

async function start(event) {
  event.preventDefault();
  try {
    const input = readFields($("#start-fields"));
    const data = await api(`/workflows/${encodeURIComponent(state.workflow)}/run-nowait`, {
      method: "POST",
      body: JSON.stringify({ start_event: input }),
    });
    say(`run ${data.handler_id} started`);
    state.runs.set(data.handler_id, { workflow: state.workflow, status: data.status });
    renderRuns();
    watch(data.handler_id, state.workflow);
  } catch (error) {
    say(`could not start: ${error.message}`);
  }
}

async function refreshRuns() {
  try {
    const { handlers } = await api("/handlers");
    for (const h of handlers) state.runs.set(h.handler_id, { workflow: h.workflow_name, status: h.status });
    renderRuns();
  } catch (error) {
    say(`could not list runs: ${error.message}`);
  }
}

function renderRuns() {
  const body = $("#runs tbody");
  body.replaceChildren();
  for (const [id, run] of [...state.runs.entries()].reverse()) {
    const actions = el("td", {},
      el("button", { type: "button", text: "Watch", "aria-label": `Watch run ${id}`, onclick: () => watch(id, run.workflow) }));
    body.append(el("tr", { "data-run": id },
      el("td", {}, el("code", { text: id })),
      el("td", { text: run.workflow }),
      el("td", { class: `status-${run.status}`, "data-status": run.status, text: run.status }),
      actions));
  }
}

async function watch(id, workflow) {
  if (state.source) state.source.close();
  if (workflow && workflow !== state.workflow) await choose(workflow);
  for (const node of document.querySelectorAll("#graph g.running, #graph g.seen")) node.classList.remove("running", "seen");
  state.run = id;
  $("#run").hidden = false;
  $("#run-title").textContent = `Run ${id}`;
  $("#log").replaceChildren();
  $("#answer-form").hidden = true;
  const source = new EventSource(`/events/${encodeURIComponent(id)}?include_internal=true&after_sequence=-1`);
  state.source = source;
  source.onmessage = (message) => onEvent(id, JSON.parse(message.data));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) refreshRuns();
  };
}

function onEvent(id, event) {
  const types = event.types || [];
  const log = $("#log");
  let line;
  if (event.type === "StepStateChanged") {
    const running = event.value.step_state === "running";
    markStep(event.value.name, running);
    line = el("li", { class: "internal", text: `${event.value.name} ${running ? "started" : "finished"} (worker ${event.value.worker_id})` });
  } else if (types.includes("InputRequiredEvent")) {
    line = el("li", { class: "human", text: `${event.type} asks a human: ${JSON.stringify(event.value)}` });
    askHuman(event);
  } else if (types.includes("StopEvent") || event.type === "StopEvent") {
    const status = event.type === "StopEvent" ? "completed" : event.type.replace(/^Workflow|Event$/g, "").toLowerCase();
    line = el("li", { class: "end", "data-end": status, text: `${event.type}: ${JSON.stringify(event.value)}` });
    for (const node of document.querySelectorAll("#graph g.running")) node.classList.remove("running");
    $("#answer-form").hidden = true;
    if (state.source) state.source.close();
    say(`run ${id} ended: ${status}`);
    setTimeout(refreshRuns, 50);
  } else {
    line = el("li", { text: `${event.type}: ${JSON.stringify(event.value)}` });
  }
  log.append(line);
  log.scrollTop = log.scrollHeight;
}

function askHuman(request) {
  const nodes = (state.representation && state.representation.nodes) || [];
  const response = nodes.find((n) => (n.event_types || []).includes("HumanResponseEvent"));
  const form = $("#answer-form");
  form.dataset.type = response ? response.event_type : "";
  $("#answer-title").textContent = response ? `A human is asked: answer with ${response.event_type}` : "A human is asked";
  $("#answer-request").textContent = JSON.stringify(request.value, null, 2);
  buildFields($("#answer-fields"), response ? response.event_schema : null, "answer");
  form.hidden = false;
  const first = form.querySelector("input, textarea");
  if (first) first.focus();
}

async function answer(event) {
  event.preventDefault();
  const form = $("#answer-form");
  try {
    const value = readFields($("#answer-fields"));
    await api(`/events/${encodeURIComponent(state.run)}`, {
      method: "POST",
      body: JSON.stringify({ event: { type: form.dataset.type, value } }),
    });
    form.hidden = true;
    say("answer sent");
  } catch (error) {
    say(`could not answer: ${error.message}`);
  }
}

async function cancel() {
  if (!state.run) return;
  try {
    await api(`/handlers/${encodeURIComponent(state.run)}/cancel`, { method: "POST" });
    say(`run ${state.run} cancelled`);
    refreshRuns();
  } catch (error) {
    say(`could not cancel: ${error.message}`);
  }
}

$("#start-form").addEventListener("submit", start);
$("#answer-form").addEventListener("submit", answer);
$("#cancel-button").addEventListener("click", cancel);
loadWorkflows().then(refreshRuns).catch((error) => say(`could not load: ${error.message}`));
setInterval(refreshRuns, 3000);
