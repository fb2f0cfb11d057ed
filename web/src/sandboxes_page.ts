// The sandbox list with filters, and the form that starts one.
import { api, ApiError, type Json } from "./api";
import { el, link, repeatAfter, status, table } from "./dom";
import type { PageContext } from "./main";

const STATUSES = ["", "pending", "creating", "running", "paused", "terminating", "completed", "failed"];

export async function sandboxesPage(ctx: PageContext) {
  const query = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const statusSelect = el("select", { name: "status", "data-testid": "filter-status" });
  for (const s of STATUSES) statusSelect.append(el("option", { value: s }, s || "any status"));
  statusSelect.value = query.get("status") ?? "";
  const tag = el("input", { name: "tag", placeholder: "tag", value: query.get("tag") ?? "" });
  const profile = el("input", {
    name: "profile",
    placeholder: "profile",
    value: query.get("profile") ?? "",
  });
  const filters = el("form", { class: "filters" }, statusSelect, tag, profile);
  filters.append(el("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const wanted = new URLSearchParams();
    if (statusSelect.value) wanted.set("status", statusSelect.value);
    if (tag.value) wanted.set("tag", tag.value);
    if (profile.value) wanted.set("profile", profile.value);
    location.hash = `#/sandboxes?${wanted}`;
  });

  const image = el("input", { name: "image", value: "python:3.11", "data-testid": "start-image" });
  const command = el("input", {
    name: "command",
    placeholder: "shell command (default: sleep infinity)",
    "data-testid": "start-command",
    size: "50",
  });
  const tags = el("input", { name: "tags", placeholder: "tags, comma-separated", "data-testid": "start-tags" });
  const problem = el("p", { class: "error", "data-testid": "start-error" });
  const start = el(
    "form",
    { class: "start" },
    el("h2", {}, "Start a sandbox"),
    image,
    command,
    tags,
    el("button", { type: "submit", "data-testid": "start" }, "Start"),
    problem,
  );
  start.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    const text = command.value.trim();
    try {
      const started = await api.post("/api/sandboxes", {
        image: image.value,
        command: "/bin/sh",
        args: ["-c", text || "exec sleep infinity"],
        tags: tags.value,
      });
      location.hash = `#/sandboxes/${encodeURIComponent(started.sandbox_id)}`;
    } catch (error) {
      problem.textContent = error instanceof ApiError ? error.message : String(error);
    }
  });

  const list = el("div", { "data-testid": "sandboxes" });
  ctx.root.append(el("h1", {}, "Sandboxes"), start, filters, list);

  async function load() {
    const { sandboxes } = await api.get(`/api/sandboxes?${query}`);
    const rows = sandboxes.map((s: Json) => [
      link(`#/sandboxes/${encodeURIComponent(s.sandbox_id)}`, s.sandbox_id, {
        "data-testid": "sandbox-link",
      }),
      status(s.sandbox_status),
      el("code", {}, s.runner_id),
      s.profile_id,
      s.started_at_time ?? "",
    ]);
    list.replaceChildren(
      rows.length
        ? table(["Sandbox", "Status", "Runner", "Profile", "Started"], rows)
        : el("p", {}, "No sandboxes match."),
    );
  }

  await load();
  repeatAfter(ctx, 3000, load);
}
