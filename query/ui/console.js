// CrowdTick web UI: the operator console (index.html). Loaded after app.js, whose helpers it takes from window.CrowdTick.
"use strict";

(() => {
  const { $, h, fmtInt, fmtTime, store, ApiError, api, errorText, LiveFeed, showConnection, renderBars, STATE_LABEL } = window.CrowdTick;

  function initConsole() {
    // Older versions kept the key in localStorage; the console now signs in once and holds only
    // an HttpOnly session cookie (the key is never stored in the browser).
    const LEGACY_KEY_STORE = "crowdtick.operator_key";
    const el = {
      keyPanel: $("#key-panel"),
      keyForm: $("#key-form"),
      keyInput: $("#key-input"),
      keyStatus: $("#key-status"),
      keyChange: $("#key-change"),
      signOut: $("#sign-out"),
      flash: $("#flash"),
      form: $("#create-form"),
      createError: $("#create-error"),
      polls: $("#polls"),
      empty: $("#polls-empty"),
      refresh: $("#refresh-polls"),
    };
    store.del(LEGACY_KEY_STORE);
    // Signed in: the session cookie is valid (the server says until when).
    let session = null; // {expires_at} or null
    const cards = new Map(); // poll id -> Card

    let flashTimer = null;
    function flash(msg, kind = "error") {
      el.flash.hidden = false;
      el.flash.textContent = msg;
      el.flash.dataset.kind = kind;
      clearTimeout(flashTimer);
      flashTimer = setTimeout(() => (el.flash.hidden = true), kind === "error" ? 12000 : 4000);
    }

    function renderKey() {
      const signedIn = !!session;
      el.keyPanel.hidden = signedIn;
      el.signOut.hidden = !signedIn;
      el.keyStatus.textContent = signedIn ? `Signed in until ${fmtTime(session.expires_at)}` : "Not signed in";
      el.keyStatus.dataset.valid = String(signedIn);
      document.body.classList.toggle("no-key", !signedIn);
    }

    function setSession(s) {
      const was = !!session;
      session = s;
      renderKey();
      if (was !== !!s) for (const c of cards.values()) c.rekey();
    }

    /** Signs in: the key goes to the server once and is not kept; the cookie carries the session. */
    el.keyForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const v = el.keyInput.value.trim();
      if (!v) return;
      try {
        const { data } = await api("/v1/operator/session", { method: "POST", key: v, timeoutMs: 5000 });
        el.keyInput.value = "";
        setSession(data);
        flash("Signed in (the key is not stored in this browser).", "ok");
      } catch (e) {
        setSession(null);
        flash("The server did not accept this operator key: " + errorText(e));
      }
    });

    async function checkSession() {
      try {
        const { data } = await api("/v1/operator/session", { timeoutMs: 5000 });
        setSession(data.via === "session" ? data : null);
      } catch (e) {
        if (e.status === 401) setSession(null);
      }
    }
    el.keyChange.addEventListener("click", () => {
      el.keyPanel.hidden = false;
      el.keyInput.focus();
    });
    el.signOut.addEventListener("click", async () => {
      try {
        await api("/v1/operator/session", { method: "DELETE", timeoutMs: 5000 });
      } catch {}
      setSession(null);
      flash("Signed out.", "ok");
    });

    function authProblem(e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        setSession(null);
        return " Sign in with the operator key.";
      }
      return "";
    }

    // ----- create form
    el.form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      el.createError.hidden = true;
      const f = el.form.elements;
      const options = f.options.value
        .split("\n")
        .map((s) => s.trim())
        .filter(Boolean);
      const body = {
        title: f.title.value.trim(),
        options,
        max_choices: Number(f.max_choices.value) || 1,
        visibility: f.visibility.value,
        open: f.open.checked,
      };
      const closesIn = f.closes_in_secs.value.trim();
      if (closesIn !== "") body.closes_in_secs = Number(closesIn);
      const problems = [];
      if (!body.title) problems.push("a title");
      if (options.length < 2) problems.push("at least two options (one per line)");
      if (options.length > 64) problems.push("at most 64 options");
      if (problems.length) {
        el.createError.hidden = false;
        el.createError.textContent = "The poll needs " + problems.join(" and ") + ".";
        return;
      }
      if (!session) {
        el.keyPanel.hidden = false;
        el.createError.hidden = false;
        el.createError.textContent = "Sign in with the operator key first.";
        return;
      }
      const btn = $("#create-btn");
      btn.disabled = true;
      try {
        const { data } = await api("/v1/polls", { method: "POST", body });
        flash(`Created poll #${data.id} “${data.title}”.`, "ok");
        f.title.value = "";
        f.options.value = "";
        upsert(data, { expand: true, top: true });
      } catch (e) {
        el.createError.hidden = false;
        el.createError.textContent = errorText(e) + authProblem(e);
      } finally {
        btn.disabled = false;
      }
    });

    // ----- poll cards
    class Card {
      constructor(poll) {
        this.poll = poll;
        this.expanded = false;
        this.feed = null;
        this.rejTimer = null;
        this.results = null;
        this.confirmTimer = null;
        this.build();
        this.update(poll);
      }

      build() {
        const p = this.poll;
        const act = (action, label) =>
          h("button", { type: "button", class: "btn", dataset: { action }, onclick: () => this.action(action) }, label);
        this.el = h(
          "article",
          { class: "poll-card", dataset: { pollId: p.id } },
          h(
            "header",
            { class: "poll-head" },
            h(
              "button",
              { type: "button", class: "poll-toggle", "aria-expanded": "false", onclick: () => this.toggle() },
              h("span", { class: "chev", "aria-hidden": "true" }),
              h("span", { class: "poll-id" }, `#${p.id}`),
              h("span", { class: "poll-title" }, p.title)
            ),
            h("span", { class: "badge state" }),
            h("span", { class: "chip vis" }),
            h("span", { class: "poll-when" }),
            h("div", { class: "actions" }, act("open", "Open"), act("close", "Close"), act("reveal", "Reveal"))
          ),
          h("p", { class: "card-error", role: "alert", hidden: true }),
          h(
            "div",
            { class: "poll-body", hidden: true },
            h(
              "section",
              { class: "panel live-panel" },
              h(
                "h3",
                {},
                "Live counts ",
                h("span", { class: "embargo-note" }),
                h("span", { class: "conn", dataset: { state: "stopped" } })
              ),
              h("ol", { class: "bars compact" }),
              h(
                "p",
                { class: "totals" },
                "Total ",
                h("strong", { class: "live-total" }, "–"),
                " · voters ",
                h("span", { class: "live-voters" }, "–"),
                " · version ",
                h("span", { class: "live-version" }, "–"),
                h("span", { class: "badge final", hidden: true }, "FINAL")
              )
            ),
            h(
              "section",
              { class: "panel rej-panel" },
              h("h3", {}, "Rejections ", h("span", { class: "rej-updated muted" })),
              h("table", { class: "rej" }, h("tbody"))
            ),
            h(
              "section",
              { class: "panel share-panel" },
              h("h3", {}, "Share"),
              h("img", { class: "qr", alt: `QR code of the voter link of poll ${p.id}`, width: 160, height: 160 }),
              h(
                "div",
                { class: "share-links" },
                h("label", {}, "Short link"),
                h(
                  "div",
                  { class: "short-row" },
                  h("input", { class: "short-link", readonly: true, "aria-label": "Short link", onclick: (e) => e.target.select() }),
                  h("button", { type: "button", class: "btn small copy", onclick: () => this.copy() }, "Copy")
                ),
                h(
                  "ul",
                  { class: "link-list" },
                  h("li", {}, h("a", { class: "vote-link", target: "_blank", rel: "noopener" }, "Voter page")),
                  h("li", {}, h("a", { class: "screen-link", target: "_blank", rel: "noopener" }, "Results screen (TV)")),
                  h(
                    "li",
                    { class: "screen-key-item" },
                    h(
                      "a",
                      {
                        class: "screen-key-link",
                        target: "_blank",
                        rel: "noopener",
                        title: "The results screen with embargoed counts, with a screen token for this poll that expires in 4 hours: for the studio only, never on air",
                        onclick: (e) => this.openStudioScreen(e),
                      },
                      "Studio preview (shows embargoed counts)"
                    )
                  )
                )
              )
            )
          )
        );
        this.q = (sel) => this.el.querySelector(sel);
      }

      /** A fresh poll (list, action): its state is the latest word. */
      update(poll) {
        this.poll = poll;
        this.state = poll.state;
        this.render();
      }

      render() {
        const p = this.poll;
        const state = this.state || p.state;
        this.q(".poll-title").textContent = p.title;
        const badge = this.q(".badge.state");
        badge.textContent = STATE_LABEL[state] || state;
        badge.dataset.state = state;
        this.el.dataset.state = state;
        const vis = { live: "results live", after_close: "results after close", on_reveal: p.revealed ? "revealed" : "results on reveal" };
        this.q(".chip.vis").textContent = vis[p.visibility] || p.visibility;
        this.q(".chip.vis").title = `visibility: ${p.visibility}` + (p.max_choices > 1 ? `, up to ${p.max_choices} choices` : "");
        let when = `created ${fmtTime(p.created_at)}`;
        if (state === "open" && p.closes_at) when = `closes ${fmtTime(p.closes_at)}`;
        else if (state === "scheduled" && p.opens_at) when = `opens ${fmtTime(p.opens_at)}`;
        else if (state === "closed" && (p.closed_at || p.closes_at)) when = `closed ${fmtTime(p.closed_at || p.closes_at)}`;
        this.q(".poll-when").textContent = when;
        const btn = (a) => this.q(`button[data-action="${a}"]`);
        btn("open").disabled = state === "open" || state === "closed";
        btn("close").disabled = state === "closed";
        btn("reveal").hidden = p.visibility !== "on_reveal";
        btn("reveal").disabled = p.revealed;
        const url = `${location.origin}/p/${p.slug}`;
        this.q(".short-link").value = url;
        this.q(".vote-link").href = `/p/${p.slug}`;
        this.q(".screen-link").href = `/screen/${p.id}`;
        this.q(".screen-key-link").href = `/screen/${p.id}`;
        this.q(".screen-key-item").hidden = p.visibility === "live" || !session;
        if (this.expanded && !this.q(".qr").getAttribute("src")) this.q(".qr").src = `/qr/${p.slug}.svg`;
        const note = this.q(".embargo-note");
        const embargoed = (p.visibility === "after_close" && state !== "closed") || (p.visibility === "on_reveal" && !p.revealed);
        note.textContent = embargoed ? "(embargoed: the public sees “hidden”)" : "";
      }

      toggle(force) {
        const on = force === undefined ? !this.expanded : force;
        if (on === this.expanded) return;
        this.expanded = on;
        this.el.classList.toggle("expanded", on);
        this.q(".poll-toggle").setAttribute("aria-expanded", String(on));
        this.q(".poll-body").hidden = !on;
        if (on) {
          this.q(".qr").src = `/qr/${this.poll.slug}.svg`;
          this.startLive();
        } else this.stopLive();
      }

      startLive() {
        this.stopLive();
        this.feed = new LiveFeed(this.poll.id, {
          onResults: (r) => this.onResults(r),
          onStatus: (s, m) => showConnection(this.q(".conn"), s, m),
        }).start();
        this.loadRejections();
        this.rejTimer = setInterval(() => this.loadRejections(), 2000);
      }

      stopLive() {
        if (this.feed) this.feed.stop();
        this.feed = null;
        clearInterval(this.rejTimer);
        this.rejTimer = null;
      }

      rekey() {
        this.render();
        if (this.expanded) this.startLive();
      }

      onResults(r) {
        const prev = this.state;
        this.results = r;
        if (r.state) this.state = r.state;
        if (r.hidden) {
          this.q(".live-total").textContent = "hidden";
          this.q(".embargo-note").textContent = "(not signed in: counts are hidden)";
        } else {
          const total = renderBars(this.q(".bars"), r);
          const t = r.total_votes != null ? r.total_votes : total;
          this.q(".live-total").textContent = fmtInt(t);
          this.q(".live-total").dataset.total = String(t);
          this.q(".live-voters").textContent = fmtInt(r.voters);
        }
        this.q(".live-version").textContent = r.version != null ? String(r.version) : "–";
        this.q(".badge.final").hidden = !r.final;
        if (r.state && prev && r.state !== prev) refreshList();
        this.render();
      }

      async loadRejections() {
        if (!session || this.rejBusy) return;
        this.rejBusy = true;
        try {
          const { data } = await api(`/v1/polls/${this.poll.id}/rejections`, { timeoutMs: 5000 });
          this.renderRejections(data);
          this.clearError();
        } catch (e) {
          this.showError("Rejections: " + errorText(e) + authProblem(e));
        } finally {
          this.rejBusy = false;
        }
      }

      renderRejections(d) {
        const tbody = this.q("table.rej tbody");
        tbody.textContent = "";
        const row = (stage, name, value, help) =>
          h(
            "tr",
            { dataset: { stage, kind: name } },
            h("th", { scope: "row", title: help }, `${stage} · ${name.replace(/_/g, " ")}`),
            h("td", { class: value > 0 ? "num nonzero" : "num" }, fmtInt(Number(value) || 0))
          );
        const help = {
          "edge.closed": "votes that arrived after the close (refused at the edge)",
          "edge.invalid": "unknown option, too many choices, bad voter id",
          "edge.rate_limited": "refused by the rate limiter (429)",
          "edge.malformed": "bad JSON or missing fields",
          "processor.duplicate": "a second vote by the same voter (not counted)",
          "processor.late": "accepted but after the close instant (not counted)",
          "processor.closed": "counted as closed by the processor",
          "processor.invalid": "invalid when counted",
        };
        let sum = 0;
        for (const stage of ["edge", "processor"]) {
          for (const [name, v] of Object.entries(d[stage] || {})) {
            sum += Number(v) || 0;
            tbody.append(row(stage, name, v, help[`${stage}.${name}`] || ""));
          }
        }
        if (d.late_for_window !== undefined) {
          tbody.append(row("timeline", "late_for_window", d.late_for_window, "counted, but too late for its votes/s window"));
        }
        tbody.append(h("tr", { class: "sum" }, h("th", { scope: "row" }, "rejected in all"), h("td", { class: "num" }, fmtInt(sum))));
        this.q(".rej-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      }

      async action(action) {
        const b = this.q(`button[data-action="${action}"]`);
        if (action === "close" && !b.classList.contains("confirm")) {
          // Closing a live vote is final: ask for a second click.
          b.classList.add("confirm");
          b.textContent = "Really close?";
          clearTimeout(this.confirmTimer);
          this.confirmTimer = setTimeout(() => {
            b.classList.remove("confirm");
            b.textContent = "Close";
          }, 4000);
          return;
        }
        clearTimeout(this.confirmTimer);
        b.classList.remove("confirm");
        if (action === "close") b.textContent = "Close";
        if (!session) {
          el.keyPanel.hidden = false;
          this.showError("Sign in with the operator key first.");
          return;
        }
        b.disabled = true;
        try {
          const { data } = await api(`/v1/polls/${this.poll.id}/${action}`, { method: "POST" });
          this.clearError();
          this.update(data);
          flash(`Poll #${data.id}: ${action} done (${STATE_LABEL[data.state] || data.state}).`, "ok");
        } catch (e) {
          const msg = `${action[0].toUpperCase() + action.slice(1)} failed: ${errorText(e)}${authProblem(e)}`;
          this.showError(msg);
          flash(`Poll #${this.poll.id}: ${msg}`);
          this.render();
        }
      }

      /** Mints a screen token for this poll and opens the studio screen with it (never the key). */
      async openStudioScreen(ev) {
        ev.preventDefault();
        const link = ev.currentTarget;
        try {
          const { data } = await api(`/v1/polls/${this.poll.id}/screen-token`, { method: "POST", body: {}, timeoutMs: 5000 });
          link.href = data.screen_url;
          link.dataset.expiresAt = data.expires_at;
          window.open(data.screen_url, "_blank", "noopener");
        } catch (e) {
          this.showError("Studio screen link: " + errorText(e) + authProblem(e));
        }
      }

      showError(msg) {
        const p = this.q(".card-error");
        p.hidden = false;
        p.textContent = msg;
      }
      clearError() {
        this.q(".card-error").hidden = true;
      }

      async copy() {
        const input = this.q(".short-link");
        try {
          await navigator.clipboard.writeText(input.value);
          flash("Link copied.", "ok");
        } catch {
          input.select();
          try {
            document.execCommand("copy");
            flash("Link copied.", "ok");
          } catch {
            flash("Select the link and copy it.", "ok");
          }
        }
      }

      destroy() {
        this.stopLive();
        this.el.remove();
      }
    }

    function upsert(poll, { expand = false, top = false } = {}) {
      let c = cards.get(poll.id);
      if (!c) {
        c = new Card(poll);
        cards.set(poll.id, c);
        if (top) el.polls.prepend(c.el);
        else el.polls.append(c.el);
      } else c.update(poll);
      if (expand) c.toggle(true);
      el.empty.hidden = cards.size > 0;
      return c;
    }

    // The list comes in pages (newest first); "Show older polls" keeps one more page listed.
    const PAGE = 100;
    let pagesShown = 1;
    const older = document.createElement("button");
    older.type = "button";
    older.className = "btn small ghost";
    older.textContent = "Show older polls";
    older.hidden = true;
    el.polls.after(older);
    older.addEventListener("click", () => {
      pagesShown += 1;
      refreshList();
    });

    // The first `pagesShown` pages, following each page's `next` link.
    async function fetchPolls() {
      const polls = [];
      let path = `/v1/polls?limit=${PAGE}`;
      for (let page = 0; path && page < pagesShown; page++) {
        const { data } = await api(path);
        polls.push(...((data && data.polls) || []));
        path = (data && data.next) || null;
      }
      return { polls, hasMore: Boolean(path) };
    }

    let first = true;
    let listBusy = false;
    async function refreshList() {
      if (listBusy) return;
      listBusy = true;
      try {
        const { polls, hasMore } = await fetchPolls();
        older.hidden = !hasMore;
        const seen = new Set();
        // Newest first, as the API lists them.
        let prev = null;
        for (const p of polls) {
          seen.add(p.id);
          const c = upsert(p);
          if (prev ? prev.el.nextSibling !== c.el : el.polls.firstChild !== c.el) {
            if (prev) prev.el.after(c.el);
            else el.polls.prepend(c.el);
          }
          prev = c;
        }
        for (const [id, c] of cards) if (!seen.has(id)) (c.destroy(), cards.delete(id));
        if (first) {
          first = false;
          // Follow the polls that matter: the open ones, else the newest (at most 4 sockets).
          const open = polls.filter((p) => p.state === "open").slice(0, 4);
          for (const p of open.length ? open : polls.slice(0, 1)) cards.get(p.id).toggle(true);
        }
        el.empty.hidden = cards.size > 0;
        $("#list-error").hidden = true;
      } catch (e) {
        $("#list-error").hidden = false;
        $("#list-error").textContent = "Cannot list the polls: " + errorText(e);
      } finally {
        listBusy = false;
      }
    }

    el.refresh.addEventListener("click", refreshList);
    renderKey();
    checkSession();
    refreshList();
    setInterval(refreshList, 5000);
  }

  window.CrowdTick.onPage("console", initConsole);
})();
