// One sandbox: status, activity trail, CPU and memory graphs, live logs and a terminal.
import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { api, ApiError, socketUrl, type Json } from "./api";
import { button, bytes, el, repeatAfter, status, table } from "./dom";
import { Graph } from "./graph";
import type { PageContext } from "./main";

const MAX_LOG_CHARS = 200_000;

export async function sandboxPage(ctx: PageContext, sandboxId: string) {
  const path = `/api/sandboxes/${encodeURIComponent(sandboxId)}`;
  // Read first: a sandbox the caller may not see shows only the API's "not found".
  let current: Json = await api.get(path);
  if (!ctx.live()) return;
  const summary = el("div", { "data-testid": "sandbox-summary" });
  const problem = el("p", { class: "error", "data-testid": "sandbox-error" });
  const stop = button("Stop", async () => {
    problem.textContent = "";
    stop.disabled = true;
    try {
      await api.post(`${path}/stop`);
      await refresh();
    } catch (error) {
      problem.textContent = error instanceof ApiError ? error.message : String(error);
    } finally {
      stop.disabled = false;
    }
  }, { "data-testid": "stop" });

  const cpu = new Graph("CPU (millicores)", (v) => `${v.toFixed(0)}m`);
  const memory = new Graph("Memory", (v) => bytes(v));
  const statsNote = el("p", { class: "note", "data-testid": "stats-note" });
  const events = el("div", { "data-testid": "events" });
  const logs = el("pre", { class: "logs", "data-testid": "logs" });
  const terminalBox = el("div", { class: "terminal", "data-testid": "terminal" });

  ctx.root.append(
    el("h1", {}, "Sandbox ", el("code", {}, sandboxId)),
    problem,
    summary,
    stop,
    el("h2", {}, "Resources"),
    statsNote,
    el("div", { class: "graphs" }, cpu.canvas, memory.canvas),
    el("h2", {}, "Logs"),
    logs,
    el("h2", {}, "Terminal"),
    terminalBox,
    el("h2", {}, "Activity"),
    events,
  );

  // The terminal: xterm.js over a WebSocket bridged to StreamExec with a TTY.
  let terminalOpen = false;
  function openTerminal() {
    if (terminalOpen || status(current.sandbox_status) !== "running") return;
    terminalOpen = true;
    terminalBox.replaceChildren();
    const terminal = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, rows: 18 });
    const fit = new FitAddon();
    terminal.loadAddon(fit);
    terminal.open(terminalBox);
    fit.fit();
    const socket = new WebSocket(
      socketUrl(`${path}/terminal?cols=${terminal.cols}&rows=${terminal.rows}`),
    );
    socket.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    socket.onmessage = (message) => {
      if (typeof message.data === "string") {
        const control = JSON.parse(message.data);
        if (control.type === "exit") terminal.write(`\r\n[exited with ${control.code}]\r\n`);
        if (control.type === "error") terminal.write(`\r\n[${control.message}]\r\n`);
        return;
      }
      terminal.write(new Uint8Array(message.data));
    };
    terminal.onData((data) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    });
    terminal.onResize(({ cols, rows }) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "resize", cols, rows }));
    });
    const onWindowResize = () => fit.fit();
    window.addEventListener("resize", onWindowResize);
    ctx.onLeave(() => {
      window.removeEventListener("resize", onWindowResize);
      socket.close();
      terminal.dispose();
    });
  }
  terminalBox.append(el("p", { class: "note" }, "The terminal opens when the sandbox runs."));

  // The summary from the last read (the page's first read is the one above).
  function render() {
    openTerminal();
    summary.replaceChildren(
      table(
        ["Status", "Runner", "Profile", "Started", "Reason", "Exit code"],
        [[
          el("span", { "data-testid": "sandbox-status" }, status(current.sandbox_status)),
          el("code", {}, current.runner_id),
          current.profile_id,
          current.started_at_time ?? "",
          current.status_reason ?? "",
          current.exit_code ?? "",
        ]],
      ),
    );
  }
  async function refresh() {
    current = await api.get(path);
    render();
  }
  // Shown from the read above, not read again: a second read that failed (a dropped
  // connection) ended the page before its rounds began (a CI run's page stayed empty).
  // The rounds' reads may fail: the next round reads again.
  render();

  // The activity trail, read after the last event seen.
  let lastSeq = 0;
  const eventRows: Node[] = [];
  async function readEvents() {
    const { events: found } = await api.get(`${path}/events?after=${lastSeq}`);
    for (const e of found as Json[]) {
      lastSeq = Math.max(lastSeq, Number(e.seq));
      const data = typeof e.data === "string" ? e.data : JSON.stringify(e.data);
      eventRows.push(
        el("tr", {}, el("td", {}, e.at ?? ""), el("td", {}, e.kind), el("td", {}, e.actor), el("td", {}, data)),
      );
    }
    events.replaceChildren(
      el("table", {}, el("thead", {}, el("tr", {}, ...["At", "Kind", "Actor", "Details"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...eventRows)),
    );
  }

  // CPU as the rate of cgroup CPU seconds between two reads; memory as read.
  let previous: { at: number; cpu: number } | null = null;
  async function readStats() {
    const s = await api.get(`${path}/stats`);
    if (!s.available) {
      statsNote.textContent = "Resource numbers are not reachable for this sandbox (not running, or its runner is remote).";
      return;
    }
    statsNote.textContent = `${s.pids} processes · memory peak ${bytes(s.memory_peak_bytes)} · disk ${bytes(s.disk_bytes)}`;
    const now = performance.now() / 1000;
    if (previous) cpu.add(Math.max(0, ((s.cpu_seconds - previous.cpu) / (now - previous.at)) * 1000));
    previous = { at: now, cpu: s.cpu_seconds };
    memory.add(Number(s.memory_bytes));
  }

  const tick = async () => {
    await Promise.allSettled([refresh(), readEvents(), readStats()]);
  };
  await Promise.allSettled([readEvents(), readStats()]);  // the sandbox was just read
  repeatAfter(ctx, 2000, tick);

  // Live logs: bytes appended as text (never HTML), the oldest dropped past a bound.
  const decoder = new TextDecoder();
  const logSocket = new WebSocket(socketUrl(`${path}/logs`));
  logSocket.binaryType = "arraybuffer";
  logSocket.onmessage = (message) => {
    if (typeof message.data === "string") {
      const control = JSON.parse(message.data);
      if (control.type === "error") logs.append(`\n[logs: ${control.message}]\n`);
      return;
    }
    logs.append(decoder.decode(new Uint8Array(message.data), { stream: true }));
    if ((logs.textContent ?? "").length > MAX_LOG_CHARS) {
      logs.textContent = (logs.textContent ?? "").slice(-MAX_LOG_CHARS);
    }
    logs.scrollTop = logs.scrollHeight;
  };
  ctx.onLeave(() => logSocket.close());

}
