// ray-gitops status page. Reads the daemon's read-only JSON API (/api/v1/) every few seconds and
// redraws what changed, without reloading the page. Plain JavaScript, no build step, nothing loaded
// from elsewhere. Every text that comes from the API is set as textContent, never as HTML: commit
// subjects, authors and messages are written by whoever can push to the repository.
"use strict";

(() => {
  const API = "/api/v1";
  const REFRESH_MS = 3000;
  const NO_MAX = 2 ** 31 - 1; // a worker group without maxReplicas
  const SYNC = { Synced: "ok", OutOfSync: "warn", Failed: "bad", Suspended: "muted", Stale: "warn",
                 Waiting: "info", Unverified: "bad", Removed: "muted" };
  const HEALTH = { Healthy: "ok", Progressing: "info", Degraded: "bad", Missing: "bad", Suspended: "muted",
                   Unknown: "muted" };
  const RESULT = { success: "ok", error: "bad", removed: "muted", succeeded: "ok", failed: "bad", stopped: "warn",
                   deleted: "muted",
                   created: "ok", configured: "ok", unchanged: "muted", recreated: "warn", submitted: "ok",
                   skipped: "muted" };
  const JOB = { SUCCEEDED: "ok", FAILED: "bad", STOPPED: "warn", RUNNING: "info", PENDING: "info" };
  const ACTION = { create: "info", update: "info", recreate: "warn", delete: "bad", submit: "info", skip: "muted" };

  const $ = (id) => document.getElementById(id);
  const drawn = new Map(); // section -> JSON of what it shows, so an unchanged section is left alone

  // -- building blocks ---------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const badge = (text, kinds) => el("span", { class: `badge ${kinds[text] || "muted"}`, text: text || "none" });
  const sub = (text) => el("span", { class: "sub", text });
  const short = (sha) => (sha || "").slice(0, 12);

  function changed(section, data) {
    const text = JSON.stringify(data === undefined ? null : data);
    if (drawn.has(section) && drawn.get(section) === text) return false;
    drawn.set(section, text);
    return true;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function when(seconds) {
    if (!seconds) return "";
    const d = new Date(seconds * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function ago(seconds) {
    const s = Math.max(0, Date.now() / 1000 - seconds);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  function time(seconds, relative) {
    if (!seconds) return sub("never");
    const node = el("time", { datetime: new Date(seconds * 1000).toISOString(), text: when(seconds) });
    return relative ? [node, el("span", { class: "sub ago", "data-ts": seconds, text: ago(seconds) })] : node;
  }
  function commit(revision, info) {
    const sha = el("code", { class: "sha", title: revision || "", text: short(revision) || "none" });
    if (!info) return [sha];
    return [sha, " ", el("span", { class: "subject", text: info.subject }),
      sub(`${info.author} \u00b7 committed ${when(info.commit_time)}`)];
  }

  // -- live state ------------------------------------------------------------------------------------
  let refreshed = 0;
  let lost = "";
  function showLive() {
    const announce = lost ? "Connection lost; retrying." : refreshed ? "Live." : "";
    if ($("announce").textContent !== announce) $("announce").textContent = announce; // said once per change
    const live = $("live");
    live.classList.toggle("lost", Boolean(lost));
    live.textContent = lost ? `Connection lost (${lost}); retrying` :
      document.hidden ? "Paused while the tab is hidden" :
      refreshed ? `Live: refreshed ${ago(refreshed)}, every ${REFRESH_MS / 1000} s` : "connecting";
  }
  function tickClocks() {
    for (const node of document.querySelectorAll(".ago")) node.textContent = ago(Number(node.dataset.ts));
  }

  async function getJSON(path) {
    const response = await fetch(API + path, { cache: "no-cache", headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.error || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // -- the overview ------------------------------------------------------------------------------------
  function drawSource(source, leading) {
    if (!changed("source", [source, leading])) return;
    const head = source.head ? ` \u00b7 head ${short(source.head.sha)}` : "";
    $("source").textContent = `${source.repo} \u00b7 ${source.branch}${head}`;
    const banners = [];
    if (!leading) {
      banners.push(el("p", { class: "banner warn", role: "status",
        text: "This replica is standing by (it does not hold the leader Lease): it reconciles nothing, so " +
          "what it shows is not current. Open the page of the replica that holds the Lease." }));
    }
    if (source.fetch_failure) {
      banners.push(el("p", { class: "banner warn", role: "alert",
        text: `Git fetch failing since ${when(source.fetch_failure.since)}: ${source.fetch_failure.reason}. ` +
          "The last good revision stays applied." }));
    }
    if (source.unverified) {
      banners.push(el("p", { class: "banner bad", role: "alert",
        text: `Branch head ${short(source.unverified.revision)} is not applied: ${source.unverified.reason}.` }));
    }
    $("banners").replaceChildren(...banners);
  }

  // With sharding: the replica that holds the environment's shard (another one's page is current for it).
  function owned(owner) {
    const who = owner.here ? "this replica" : owner.replica || "no replica yet";
    return `${who} (shard ${owner.shard})`;
  }

  function environmentRow(env) {
    const link = el("a", { href: `/environments/${encodeURIComponent(env.environment)}`, text: env.environment });
    const words = [env.environment, env.target, env.revision, env.sync_status, env.health_status, env.reason,
      env.commit ? `${env.commit.subject} ${env.commit.author}` : ""].join(" ").toLowerCase();
    return el("tr", { "data-environment": env.environment, "data-search": words },
      el("th", { scope: "row" }, link),
      el("td", { class: "target" }, env.target, env.owner && !env.owner.here ? sub(owned(env.owner)) : null),
      el("td", { class: "revision" }, commit(env.revision, env.commit)),
      el("td", { class: "sync" }, badge(env.sync_status, SYNC),
        env.reason ? el("span", { class: "reason", text: env.reason }) : null),
      el("td", { class: "health" }, badge(env.health_status, HEALTH)),
      el("td", { class: "updated" }, time(env.updated_at, true)));
  }

  function applyFilter() {
    const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of $("environments").tBodies[0].rows) {
      row.hidden = !words.every((w) => row.dataset.search.includes(w));
      if (!row.hidden) shown += 1;
    }
    const empty = $("overview-empty");
    const total = $("environments").tBodies[0].rows.length;
    empty.hidden = shown > 0;
    empty.textContent = total ? "No environment matches the filter." : "No environment has been reconciled yet.";
  }

  function chainStep(step) {
    const link = el("a", { class: "step-name", href: `/environments/${encodeURIComponent(step.environment)}`,
      text: step.environment });
    const wait = step.waiting_for;
    return el("li", { "data-environment": step.environment },
      link, step.sync_status ? badge(step.sync_status, SYNC) : sub("not reconciled yet"), " ",
      step.health_status ? badge(step.health_status, HEALTH) : null,
      el("span", { class: "sub" }, "at ", el("code", { class: "sha", title: step.revision || "",
        text: short(step.revision) || "none" }), step.commit ? ` ${step.commit.subject}` : ""),
      wait ? el("span", { class: "sub waiting", text: `waits for ${wait.environments.join(" and ")} to be ` +
        `Healthy at ${short(wait.revision)}${wait.commit ? ` (${wait.commit.subject})` : ""}` }) :
        step.depends_on.length ? sub(`after ${step.depends_on.join(", ")}`) : sub("first"));
  }

  function drawPromotions(chains) {
    $("promotions").hidden = !chains.length;
    $("chains").replaceChildren(...chains.map((steps) => el("ol", { class: "chain",
      "aria-label": `Promotion chain ${steps.map((s) => s.environment).join(", then ")}` }, steps.map(chainStep))));
  }

  async function refreshOverview() {
    const doc = await getJSON("/environments");
    drawSource(doc.source, doc.leading);
    if (changed("environments", doc.environments)) {
      $("environments").tBodies[0].replaceChildren(...doc.environments.map(environmentRow));
      applyFilter();
    }
    if (changed("promotions", doc.promotions)) drawPromotions(doc.promotions);
  }

  // -- one environment --------------------------------------------------------------------------------
  function drawSummary(env) {
    const rows = [
      ["Target", env.target],
      ["Revision", commit(env.revision, env.commit)],
      ["Sync", [badge(env.sync_status, SYNC), env.reason ? el("span", { class: "reason", text: env.reason }) : null]],
      ["Health", badge(env.health_status, HEALTH)],
      ["Last reconcile", time(env.updated_at, true)],
      ["Message", el("span", { class: "message", text: env.message || "" })],
    ];
    if (env.detail && env.detail.signer) rows.push(["Signed by", el("code", { text: env.detail.signer })]);
    if (env.owner) rows.push(["Reconciled by", owned(env.owner)]);
    $("env-summary").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
  }

  function lastAction(last) {
    if (!last) return sub("none recorded");
    return [badge(last.outcome, RESULT), " ", sub(`at ${short(last.revision)}, ${when(last.applied_at)}`)];
  }

  function drawObjects(objects) {
    $("objects").tBodies[0].replaceChildren(...objects.map((o) => el("tr", { "data-object": o.object },
      el("td", { text: o.kind }),
      el("th", { scope: "row", text: o.namespace ? `${o.namespace}/${o.name}` : o.name }),
      el("td", { title: o.health_message || "" }, badge(o.health, HEALTH),
        (o.warnings || []).map((w) => sub(`warning: ${w}`))),
      el("td", {}, lastAction(o.last_action)),
      el("td", {}, o.pending && o.pending !== "noop" ? badge(o.pending, ACTION) : sub("in sync")))));
  }

  function workerBar(group) {
    const max = group.max >= NO_MAX ? null : group.max;
    const top = Math.max(max === null ? 0 : max, group.desired, group.ready, group.min, 1);
    const pct = (n) => `${((100 * n) / top).toFixed(2)}%`;
    const label = `${group.ready} of ${group.desired} desired workers ready; min ${group.min}, ` +
      `max ${max === null ? "none" : max}`;
    const range = el("span", { class: "range" });
    range.style.left = pct(group.min);
    range.style.width = pct((max === null ? top : max) - group.min);
    const fill = el("span", { class: "fill" });
    fill.style.width = pct(Math.min(group.ready, top));
    const desired = el("span", { class: "desired" });
    desired.style.left = `calc(${pct(group.desired)} - 1px)`;
    return el("div", { class: "bar", role: "img", "aria-label": label, title: label,
      "data-ready": group.ready, "data-desired": group.desired }, range, fill, desired);
  }

  // The groups of a RayCluster (or a RayService's cluster) that still run the pod template Git replaced, as
  // `status` says it: KubeRay does not restart running Pods for a template change.
  function pendingRestart(what, restart) {
    const groups = Object.keys(restart || {}).sort();
    if (!groups.length) return null;
    return el("p", { class: "restart", "data-pending-restart": groups.join(" ") },
      badge("pending restart", { "pending restart": "warn" }),
      ` ${what}: ${groups.join(", ")} still run${groups.length === 1 ? "s" : ""} the old template (changed `,
      time(Math.min(...groups.map((g) => restart[g]))), ")");
  }

  function drawClusters(clusters, services) {
    const names = Object.keys(clusters).sort();
    const restarts = Object.keys(services).sort()
      .map((name) => pendingRestart(`RayService ${name}`, services[name].pendingRestart));
    if (!names.length) {
      $("clusters").replaceChildren(el("p", { class: "note", text: "No RayCluster in this environment." }),
        ...restarts.filter(Boolean));
      return;
    }
    $("clusters").replaceChildren(...names.map((name) => {
      const cluster = clusters[name];
      const groups = Object.keys(cluster.groups || {}).sort();
      return el("div", { class: "cluster", "data-cluster": name },
        el("h3", {}, `RayCluster ${name} `, badge(cluster.health, HEALTH)),
        pendingRestart(`RayCluster ${name}`, cluster.pendingRestart),
        el("table", { class: "grid" },
          el("caption", { class: "sr-only", text: `Workers per group of RayCluster ${name}` }),
          el("thead", {}, el("tr", {},
            ["Group", "Workers", "Ready / desired", "Min .. max"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, groups.map((g) => {
            const group = cluster.groups[g];
            return el("tr", { "data-group": g },
              el("th", { scope: "row", text: g }),
              el("td", {}, workerBar(group)),
              el("td", { class: "mono", text: `${group.ready} / ${group.desired}` }),
              el("td", { class: "mono",
                text: `${group.min} .. ${group.max >= NO_MAX ? "no max" : group.max}` }));
          }))),
        el("p", { class: "legend", "aria-hidden": "true" },
          el("span", { class: "swatch fill" }), "ready", el("span", { class: "swatch desired" }), "desired",
          el("span", { class: "swatch range" }), "min .. max"));
    }), ...restarts.filter(Boolean));
  }

  function drawJobs(jobs, runs) {
    const names = [...new Set([...Object.keys(jobs), ...runs.map((r) => r.job).filter(Boolean)])].sort();
    if (!names.length) {
      $("jobs").replaceChildren(el("p", { class: "note", text: "No RayJob in this environment." }));
      return;
    }
    $("jobs").replaceChildren(...names.map((name) => {
      const job = jobs[name];
      const mine = runs.filter((r) => r.job === name);
      const title = el("h3", {}, `RayJob ${name} `, job ? badge(job.health, HEALTH) : sub("(no longer in Git)"));
      if (!mine.length) return el("div", { class: "job", "data-job": name }, title, el("p", { class: "note",
        text: "No run recorded yet." }));
      return el("div", { class: "job", "data-job": name }, title,
        el("table", { class: "grid" },
          el("caption", { class: "sr-only", text: `Runs of RayJob ${name}, newest first` }),
          el("thead", {}, el("tr", {}, ["Submission id", "Status", "Started", "Duration", "Result"]
            .map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, mine.map((r) => el("tr", { "data-submission": r.submission_id },
            el("th", { scope: "row", class: "mono", text: r.submission_id }),
            el("td", {}, badge(r.status, JOB)),
            el("td", {}, time(r.start_time || r.submitted_at, false)),
            el("td", { class: "mono", text: r.duration === null ? (r.result ? "" : "running") : duration(r.duration) }),
            el("td", {}, r.result ? badge(r.result, RESULT) : sub("not ended")))))));
    }));
  }

  function diffBlock(text) {
    const pre = el("pre", { class: "diff" });
    for (const line of text.replace(/\n$/, "").split("\n")) {
      const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add" :
        line.startsWith("-") && !line.startsWith("---") ? "del" : "";
      pre.append(kind ? el("span", { class: kind, text: line }) : line, "\n");
    }
    return el("details", {}, el("summary", { text: "Diff" }), pre);
  }

  function drawPlan(plan) {
    const computed = plan.computed_at ? ` Computed ${when(plan.computed_at)}.` : "";
    const changes = plan.items.filter((item) => item.action !== "skip").length;
    const skipped = plan.items.length - changes ? ` ${plan.items.length - changes} skipped, as listed.` : "";
    const status = {
      unavailable: "No revision has been fetched yet, so there is no plan.",
      computing: "Computing the plan\u2026",
      refreshing: `Refreshing; showing the plan at ${short(plan.revision)}.${computed}`,
      ready: (changes ? `${changes} change(s) at revision ${short(plan.revision)}.` :
        `No changes: the target matches revision ${short(plan.revision)}.`) + skipped + computed,
    }[plan.status] || plan.status;
    $("plan-status").textContent = plan.error ? `The plan could not be computed: ${plan.error}` : status;
    if (!changed("plan", [plan.items, plan.error])) return;
    $("plan").hidden = !plan.items.length;
    $("plan").tBodies[0].replaceChildren(...plan.items.map((item) => el("tr", { "data-object": item.object },
      el("td", {}, badge(item.action, ACTION)),
      el("th", { scope: "row", text: item.object }),
      el("td", { text: item.reason }),
      el("td", {},
        item.changes.length ? el("ul", { class: "plain" }, item.changes.map((c) => el("li", {}, el("code", { text: c }))))
          : null,
        item.warnings.length ? el("ul", { class: "plain" }, item.warnings.map((w) => el("li", {}, badge("warning",
          { warning: "warn" }), " ", w))) : null,
        item.diff ? diffBlock(item.diff) : null))));
  }

  function copyButton(code, what) {
    const button = el("button", { type: "button", class: "copy", "aria-label": `Copy the command that ${what}`,
      text: "Copy" });
    button.addEventListener("click", async () => {
      let copied = false;
      try {
        await navigator.clipboard.writeText(code.textContent);
        copied = true;
      } catch (_) { // no clipboard API (plain http from another host): select it for Ctrl-C
        const range = document.createRange();
        range.selectNodeContents(code);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
      }
      button.textContent = copied ? "Copied" : "Selected: press Ctrl-C";
      setTimeout(() => { button.textContent = "Copy"; }, 2500);
    });
    return button;
  }

  function drawHistory(history, name) {
    $("history").tBodies[0].replaceChildren(...history.items.map((row) => {
      let rollback = sub(row.result === "success" ? "applied now" : "not applied");
      if (row.rollback) {
        const code = el("code", { text: row.rollback });
        rollback = el("div", { class: "command" }, code, copyButton(code, `rolls ${name} back to ${short(row.revision)}`));
      }
      return el("tr", { "data-revision": row.revision },
        el("th", { scope: "row" }, commit(row.revision, row.commit)),
        el("td", {}, time(row.commit_time, false)),
        el("td", {}, time(row.applied_at, false)),
        el("td", {}, badge(row.result, RESULT), row.signer ? sub(`signed by ${row.signer}`) : null),
        el("td", { class: "wrap", text: row.summary }),
        el("td", {}, rollback));
    }));
  }

  const state = { updated: null, revision: null };
  async function refreshEnvironment(name) {
    const path = `/environments/${encodeURIComponent(name)}`;
    const env = await getJSON(path);
    $("env-missing").hidden = true;
    const moved = env.updated_at !== state.updated || env.revision !== state.revision;
    const [plan, runs, history] = await Promise.all([getJSON(`${path}/plan`),
      moved ? getJSON(`${path}/runs`) : null, moved ? getJSON(`${path}/history`) : null]);
    state.updated = env.updated_at;
    state.revision = env.revision;
    const { objects, source, leading, ...summary } = env;
    drawSource(source, leading);
    drawHistoryHint(name, source);
    if (changed("summary", summary)) drawSummary(env);
    if (changed("objects", objects)) drawObjects(objects);
    const { clusters = {}, services = {}, jobs = {} } = env.detail;
    if (changed("clusters", [clusters, services])) drawClusters(clusters, services);
    if (runs && changed("jobs", [jobs, runs.items])) drawJobs(jobs, runs.items);
    if (history && changed("history", history.items)) drawHistory(history, name);
    drawPlan(plan);
  }

  function drawHistoryHint(name, source) {
    const hint = `Each command reverts, in a clean clone of ${source.repo} on branch ` +
      `${source.branch}, the commits after that revision that changed environments/${name}/. It pushes ` +
      "nothing: review the new commit, then git push (or add --push). The daemon applies it like any commit.";
    if ($("history-hint").textContent !== hint) $("history-hint").textContent = hint;
  }

  // -- the loop ----------------------------------------------------------------------------------------
  const match = window.location.pathname.match(/^\/environments\/([^/]+)$/);
  const name = match ? decodeURIComponent(match[1]) : null;
  let busy = false;

  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      if (name) await refreshEnvironment(name);
      else await refreshOverview();
      lost = "";
      refreshed = Date.now() / 1000;
    } catch (error) {
      if (name && error.status === 404) {
        $("env-missing").hidden = false;
        $("env-missing").textContent = `${error.message}.`;
        lost = "";
        if (!drawn.has("source")) getJSON("/environments").then((doc) => drawSource(doc.source, doc.leading), () => {});
      } else {
        lost = error.message || "network error";
      }
    } finally {
      busy = false;
      showLive();
    }
  }

  function start() {
    if (name) {
      document.title = `${name} \u00b7 ray-gitops`;
      $("env-name").textContent = `Environment ${name}`;
      $("environment").hidden = false;
    } else {
      $("overview").hidden = false;
      $("filter").addEventListener("input", applyFilter);
    }
    refresh();
    setInterval(refresh, REFRESH_MS);
    setInterval(() => { tickClocks(); showLive(); }, 1000);
    document.addEventListener("visibilitychange", () => { showLive(); refresh(); });
  }

  start();
})();
