// Building the page from data. Every string goes in as a text node or an attribute value,
// never as HTML: sandbox-controlled text (ids, tags, logs, reasons) cannot become markup.
import type { PageContext } from "./main";

type Child = Node | string | number | null | undefined | false;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function button(label: string, onClick: () => void, attrs: Record<string, string> = {}) {
  const node = el("button", { type: "button", ...attrs }, label);
  node.addEventListener("click", onClick);
  return node;
}

export function table(headers: string[], rows: Child[][], attrs: Record<string, string> = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", {}, cell))))),
  );
}

export function link(href: string, text: string, attrs: Record<string, string> = {}) {
  return el("a", { href, ...attrs }, text);
}

export function bytes(n: number): string {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export function status(value: string): string {
  return (value || "").replace(/^SANDBOX_STATUS_/, "").toLowerCase();
}

// Run `work` again `ms` after each run has finished, until the page is left. Not
// setInterval: on a slow platform that starts a new round while earlier ones still wait,
// and the browser's few connections per host fill with reads, so a click's request (a
// Stop) queues behind them.
export function repeatAfter(ctx: PageContext, ms: number, work: () => Promise<unknown>) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const round = async () => {
    await work().catch(() => {});
    if (ctx.live()) timer = setTimeout(round, ms);
  };
  if (!ctx.live()) return;
  timer = setTimeout(round, ms);
  ctx.onLeave(() => clearTimeout(timer));
}
