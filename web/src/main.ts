// The console's single page: a hash router over the sign-in form and five pages.
import "./style.css";
import { api, ApiError, whenSignedOut, type Json } from "./api";
import { button, el, link } from "./dom";
import { runnersPage, profilesPage } from "./platform_pages";
import { sandboxesPage } from "./sandboxes_page";
import { sandboxPage } from "./sandbox_page";

const bar = document.getElementById("bar")!;
const page = document.getElementById("page")!;
let who: Json | null = null;
// What the page shown now must stop (timers, sockets, terminal) before another is shown.
let leave: (() => void)[] = [];

export type PageContext = {
  who: Json;
  onLeave: (stop: () => void) => void;
  root: HTMLElement;
  // False once another navigation has replaced this page (it must then draw nothing).
  live: () => boolean;
};

function clearPage() {
  for (const stop of leave) stop();
  leave = [];
  page.replaceChildren();
}

function renderBar() {
  if (!who) {
    bar.replaceChildren(el("strong", {}, "sandboxd console"));
    return;
  }
  bar.replaceChildren(
    el("strong", {}, "sandboxd console"),
    el(
      "nav",
      {},
      link("#/runners", "Runners"),
      link("#/profiles", "Profiles"),
      link("#/sandboxes", "Sandboxes"),
    ),
    el(
      "span",
      { class: "who", "data-testid": "who" },
      `${who.organization} · ${who.role} · ${who.key_id}`,
    ),
    button("Sign out", signOut, { "data-testid": "sign-out" }),
  );
}

async function signOut() {
  try {
    await api.post("/api/session/logout");
  } finally {
    who = null;
    location.hash = "#/";
    route();
  }
}

function signInForm() {
  const key = el("input", {
    type: "password",
    name: "api_key",
    autocomplete: "off",
    placeholder: "API key",
    "data-testid": "api-key",
  });
  const problem = el("p", { class: "error", "data-testid": "sign-in-error" });
  const form = el(
    "form",
    { class: "sign-in" },
    el("h1", {}, "Sign in"),
    el("p", {}, "Use an API key (sandboxd keys create, or the key `sandboxd up` printed)."),
    key,
    el("button", { type: "submit", "data-testid": "sign-in" }, "Sign in"),
    problem,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      who = await api.post("/api/session", { api_key: key.value });
      key.value = "";
      if (!location.hash || location.hash === "#/") location.hash = "#/runners";
      route();
    } catch (error) {
      problem.textContent = error instanceof ApiError ? error.message : String(error);
    }
  });
  return form;
}

// Each navigation has a number; one that was overtaken while it waited draws nothing.
let navigation = 0;

async function route() {
  const mine = ++navigation;
  clearPage();
  if (!who) {
    let found: Json | null = null;
    try {
      found = await api.get("/api/session");
    } catch {
      found = null;
    }
    if (mine !== navigation) return;
    who = found;
  }
  renderBar();
  if (!who) {
    page.append(signInForm());
    return;
  }
  const context: PageContext = {
    who,
    onLeave: (stop) => leave.push(stop),
    root: page,
    live: () => mine === navigation,
  };
  const path = location.hash.replace(/^#/, "") || "/runners";
  const sandbox = path.match(/^\/sandboxes\/([^/]+)$/);
  try {
    if (sandbox) await sandboxPage(context, decodeURIComponent(sandbox[1]));
    else if (path.startsWith("/sandboxes")) await sandboxesPage(context);
    else if (path.startsWith("/profiles")) await profilesPage(context);
    else await runnersPage(context);
  } catch (error) {
    page.append(el("p", { class: "error" }, error instanceof Error ? error.message : String(error)));
  }
}

whenSignedOut(() => {
  who = null;
  route();
});
window.addEventListener("hashchange", route);
route();
