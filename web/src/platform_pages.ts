// Runners (live capacity, health, cordon/drain, admin actions) and profiles with bindings.
import { api, ApiError, type Json } from "./api";
import { button, bytes, el, repeatAfter, table } from "./dom";
import type { PageContext } from "./main";

function state(runner: Json): string {
  if (runner.draining) return `draining (deadline ${runner.drain_deadline ?? "now"})`;
  if (runner.cordoned) return "cordoned";
  // Its starts keep failing: placement skips it for a while (sandboxd runners status says why).
  if (runner.backed_off_until) return `starts failing: skipped until ${runner.backed_off_until}`;
  return "schedulable";
}

export async function runnersPage(ctx: PageContext) {
  const body = el("div", { "data-testid": "runners" });
  const problem = el("p", { class: "error" });
  ctx.root.append(el("h1", {}, "Runners"), problem, body);

  async function act(runnerId: string, action: string) {
    problem.textContent = "";
    try {
      await api.post(`/api/runners/${encodeURIComponent(runnerId)}/${action}`, {
        deadline_seconds: action === "drain" ? 300 : 0,
      });
      await load();
    } catch (error) {
      problem.textContent = error instanceof ApiError ? error.message : String(error);
    }
  }

  async function load() {
    const { runners } = await api.get("/api/runners");
    const rows = runners.map((r: Json) => {
      const res = r.resources ?? {};
      const cap = r.capabilities ?? {};
      const actions = ctx.who.is_admin
        ? el(
            "span",
            { class: "actions" },
            button("Cordon", () => act(r.runner_id, "cordon"), { "data-testid": "cordon" }),
            button("Uncordon", () => act(r.runner_id, "uncordon"), { "data-testid": "uncordon" }),
            button("Drain", () => act(r.runner_id, "drain"), { "data-testid": "drain" }),
          )
        : "";
      return [
        el("code", {}, r.runner_id),
        el("span", { class: r.healthy ? "ok" : "bad" }, r.healthy ? "healthy" : "unhealthy"),
        el("span", { "data-testid": "runner-state" }, state(r)),
        `${res.available_cpu_millicores ?? 0}m (requested ${res.requested_cpu_millicores ?? 0}m` +
          ` of ${res.allocatable_cpu_millicores ?? cap.max_cpu_millicores ?? 0}m` +
          ` ×${res.cpu_overcommit_ratio ?? 1})`,
        `${bytes(Number(res.available_memory_bytes ?? 0))} (requested ` +
          `${bytes(Number(res.requested_memory_bytes ?? 0))} of ` +
          `${bytes(Number(res.allocatable_memory_bytes ?? cap.max_memory_bytes ?? 0))}` +
          ` ×${res.memory_overcommit_ratio ?? 1})`,
        String(res.running_sandboxes ?? 0),
        (r.profile_names ?? []).join(", "),
        actions,
      ];
    });
    body.replaceChildren(
      table(
        ["Runner", "Health", "State", "CPU free", "Memory free", "Sandboxes", "Profiles", ""],
        rows,
      ),
    );
  }

  await load();
  repeatAfter(ctx, 3000, load);
}

export async function profilesPage(ctx: PageContext) {
  const { profiles } = await api.get("/api/profiles");
  if (!ctx.live()) return;
  const rows = profiles.map((p: Json) => [
    el("code", {}, p.profile_name),
    el("code", {}, p.runner_id),
    (p.supported_architectures ?? []).join(", "),
    (p.supported_gpu_types ?? []).join(", ") || "–",
    (p.egress_modes ?? []).map((m: Json) => m.name).join(", "),
    (p.service_exposure_modes ?? []).map((m: Json) => m.name).join(", "),
  ]);
  ctx.root.append(
    el("h1", {}, "Profiles and bindings"),
    el("p", {}, "Each row is a profile bound to a runner."),
    table(["Profile", "Bound to runner", "Architectures", "GPUs", "Egress", "Exposure"], rows, {
      "data-testid": "profiles",
    }),
  );
}
