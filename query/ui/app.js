// CrowdTick web UI: plain ES2020, no build step, no external resources.
// One file for the three pages; <body data-page="console|vote|screen"> picks the page.
"use strict";

(() => {
  // ---------------------------------------------------------------- helpers

  const $ = (sel, root = document) => root.querySelector(sel);

  /** Builds an element: h("div", {class: "x", onclick: f, dataset: {a: 1}}, "text", child). */
  function h(tag, attrs, ...kids) {
    const el = document.createElementNS(
      tag === "svg" || SVG_TAGS.has(tag) ? SVG_NS : HTML_NS,
      tag
    );
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const HTML_NS = "http://www.w3.org/1999/xhtml";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SVG_TAGS = new Set(["g", "rect", "line", "path", "text", "polyline", "circle", "title"]);

  const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString() : "–");
  const fmtPct = (n, total) => (total > 0 ? ((n * 100) / total).toFixed(1) : "0.0") + "%";
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
  }
  function fmtDateTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }
  function fmtDuration(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const hh = Math.floor(s / 3600);
    const mm = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return hh > 0 ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
  }

  // localStorage may throw (private mode, disabled storage): fall back to memory.
  const memoryStore = new Map();
  const store = {
    get(k) {
      try {
        const v = window.localStorage.getItem(k);
        return v === null ? (memoryStore.has(k) ? memoryStore.get(k) : null) : v;
      } catch {
        return memoryStore.has(k) ? memoryStore.get(k) : null;
      }
    },
    set(k, v) {
      memoryStore.set(k, v);
      try {
        window.localStorage.setItem(k, v);
      } catch {}
    },
    del(k) {
      memoryStore.delete(k);
      try {
        window.localStorage.removeItem(k);
      } catch {}
    },
    getJson(k) {
      try {
        return JSON.parse(this.get(k) || "null");
      } catch {
        return null;
      }
    },
    setJson(k, v) {
      this.set(k, JSON.stringify(v));
    },
  };

  // crypto.randomUUID exists only in secure contexts (https or localhost); a phone on
  // http://192.168.x.y has crypto.getRandomValues only.
  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === "function") {
      try {
        return crypto.randomUUID();
      } catch {}
    }
    const b = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(b);
    else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const x = Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  // The server's clock, estimated from the Date header of API answers (1 s resolution), so
  // countdowns and the votes/s window line up with the server's windows.
  const serverClock = {
    offset: 0,
    known: false,
    observe(res) {
      const d = res && res.headers && res.headers.get("Date");
      if (!d) return;
      const t = Date.parse(d);
      if (Number.isNaN(t)) return;
      // The header truncates to the second: the server's time is within [t, t + 1000).
      const candidate = t + 500 - Date.now();
      this.offset = this.known ? this.offset * 0.7 + candidate * 0.3 : candidate;
      this.known = true;
    },
    now() {
      return Date.now() + this.offset;
    },
  };

  // ---------------------------------------------------------------- HTTP API

  class ApiError extends Error {
    constructor(status, code, message, retryAfterMs) {
      super(message);
      this.status = status; // 0 = no answer (network error or timeout)
      this.code = code;
      this.retryAfterMs = retryAfterMs;
    }
  }

  function parseRetryAfter(v) {
    if (!v) return null;
    const secs = Number(v);
    if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
    const t = Date.parse(v);
    return Number.isNaN(t) ? null : Math.max(0, t - Date.now());
  }

  /**
   * fetch + JSON + the API's error shape. Resolves to {data, res}; rejects with ApiError.
   * Operator calls are authenticated by the session cookie (same-origin, HttpOnly); `key` is sent
   * only to sign in (`POST /v1/operator/session`).
   */
  async function api(path, { method = "GET", body, key, timeoutMs = 15000 } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["Authorization"] = "Bearer " + key;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body !== undefined ? JSON.stringify(body) : undefined,
        cache: "no-store",
        credentials: "same-origin",
        signal: ctl.signal,
      });
    } catch (e) {
      const timedOut = e && e.name === "AbortError";
      throw new ApiError(
        0,
        timedOut ? "timeout" : "network",
        timedOut ? "The server did not answer in time." : "Cannot reach the server (network error)."
      );
    } finally {
      clearTimeout(timer);
    }
    serverClock.observe(res);
    let text = "";
    try {
      text = await res.text();
    } catch {
      throw new ApiError(0, "network", "The connection broke while reading the answer.");
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {}
    if (!res.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(
        res.status,
        err.code || "http_" + res.status,
        err.message || `${res.status} ${res.statusText || "error"}`,
        parseRetryAfter(res.headers.get("Retry-After"))
      );
    }
    return { data, res };
  }

  function errorText(e) {
    if (e instanceof ApiError) return e.status ? `${e.message} (${e.status} ${e.code})` : e.message;
    return String((e && e.message) || e);
  }

  // ---------------------------------------------------------------- live results

  /**
   * Live results of one poll: WebSocket first, Server-Sent Events if the WebSocket cannot
   * connect, reconnecting with backoff. Keeps the highest `version` seen and drops anything
   * older, so a screen never shows a lower total (also across reconnects and transports).
   * An operator console is recognised by its session cookie; a studio screen passes its screen
   * `token` (never an operator key: the server refuses keys in URLs).
   */
  class LiveFeed {
    constructor(pollId, { token, onResults, onViewers, onStatus } = {}) {
      this.pollId = pollId;
      this.token = token || "";
      this.onResults = onResults || (() => {});
      this.onViewers = onViewers || (() => {});
      this.onStatus = onStatus || (() => {});
      this.version = -Infinity;
      this.mode = "ws";
      this.failures = 0; // consecutive connections that never delivered a message
      this.wsFailures = 0;
      this.sseFailures = 0;
      this.stopped = true;
      this.timer = null;
      this.ws = null;
      this.es = null;
      this.dropped = 0;
      this._online = () => this.reconnectNow();
      this._visible = () => {
        if (document.visibilityState === "visible" && !this.ws && !this.es) this.reconnectNow();
      };
    }

    start() {
      if (!this.stopped) return this;
      this.stopped = false;
      window.addEventListener("online", this._online);
      document.addEventListener("visibilitychange", this._visible);
      this.connect();
      return this;
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      window.removeEventListener("online", this._online);
      document.removeEventListener("visibilitychange", this._visible);
      this.teardown();
      this.status("stopped");
    }

    teardown() {
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        try {
          ws.close();
        } catch {}
      }
      if (this.es) {
        this.es.close();
        this.es = null;
      }
    }

    status(state) {
      this.state = state;
      this.onStatus(state, this.mode);
    }

    url(kind) {
      const q = this.token ? "?token=" + encodeURIComponent(this.token) : "";
      const path = `/v1/polls/${encodeURIComponent(this.pollId)}/${kind}${q}`;
      if (kind === "sse") return path;
      return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    }

    /** Feeds a results or viewers message (from the socket, SSE or a plain GET). */
    offer(msg) {
      if (!msg || typeof msg !== "object") return false;
      if (msg.type === "viewers") {
        this.onViewers(Number(msg.count) || 0);
        return true;
      }
      if (msg.error) return false;
      const v = Number(msg.version);
      if (Number.isFinite(v)) {
        if (v < this.version) {
          this.dropped++;
          return false; // older than what is on screen: never go back
        }
        this.version = v;
      }
      this.onResults(msg);
      return true;
    }

    receive(raw) {
      let msg;
      try {
        msg = JSON.parse(raw);
      } catch {
        return;
      }
      this.failures = 0;
      if (this.mode === "ws") this.wsFailures = 0;
      else this.sseFailures = 0;
      this.offer(msg);
    }

    connect() {
      clearTimeout(this.timer);
      if (this.stopped) return;
      this.teardown();
      if (this.mode === "ws" && "WebSocket" in window) this.connectWs();
      else if ("EventSource" in window) this.connectSse();
      else this.connectWs();
    }

    connectWs() {
      let delivered = false;
      let ws;
      this.status("connecting");
      try {
        ws = new WebSocket(this.url("ws"));
      } catch {
        this.lost(false);
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (this.ws === ws) this.status("live");
      };
      ws.onmessage = (ev) => {
        if (this.ws !== ws) return;
        delivered = true;
        this.receive(ev.data);
      };
      ws.onerror = () => {}; // a close event follows
      ws.onclose = () => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.lost(delivered);
      };
    }

    connectSse() {
      let delivered = false;
      this.status("connecting");
      const es = new EventSource(this.url("sse"));
      this.es = es;
      const onData = (ev) => {
        if (this.es !== es) return;
        delivered = true;
        this.receive(ev.data);
      };
      es.addEventListener("results", onData);
      es.addEventListener("viewers", onData);
      es.onmessage = onData;
      es.onopen = () => {
        if (this.es === es) this.status("live");
      };
      es.onerror = () => {
        if (this.es !== es) return;
        // Take reconnection into our own hands (backoff, transport switching).
        es.close();
        this.es = null;
        this.lost(delivered);
      };
    }

    lost(delivered) {
      if (this.stopped) return;
      if (!delivered) {
        this.failures++;
        if (this.mode === "ws") {
          // The socket never got through (proxy without WebSocket support, …): try SSE.
          if (++this.wsFailures >= 2 && "EventSource" in window) this.mode = "sse";
        } else if (++this.sseFailures >= 3) {
          this.mode = "ws";
          this.wsFailures = 0;
          this.sseFailures = 0;
        }
      } else {
        this.failures = 0;
      }
      const base = Math.min(15000, 500 * 2 ** Math.min(this.failures, 5));
      const delay = delivered ? 300 + Math.random() * 700 : base * (0.5 + Math.random() * 0.5);
      this.status("reconnecting");
      this.timer = setTimeout(() => this.connect(), delay);
    }

    reconnectNow() {
      if (this.stopped) return;
      if (this.ws && this.ws.readyState === WebSocket.OPEN) return;
      if (this.es && this.es.readyState === EventSource.OPEN) return;
      this.failures = 0;
      this.connect();
    }
  }

  function connectionLabel(state, mode) {
    const via = mode === "sse" ? "SSE" : "WebSocket";
    switch (state) {
      case "live":
        return `live (${via})`;
      case "connecting":
        return `connecting (${via})…`;
      case "reconnecting":
        return "connection lost, reconnecting…";
      default:
        return state;
    }
  }

  function showConnection(el, state, mode) {
    if (!el) return;
    el.textContent = connectionLabel(state, mode);
    el.dataset.state = state;
    el.dataset.transport = mode;
  }

  // ---------------------------------------------------------------- bar chart

  const PALETTE = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#a855f7", "#06b6d4", "#ec4899", "#84cc16"];
  const optionColor = (id) => PALETTE[id % PALETTE.length];

  /**
   * Horizontal bars (one <li data-option-id data-votes> per option) in `list`, updated in place so
   * the widths animate. `results.options` is [{id, label, votes}].
   */
  function renderBars(list, results) {
    const options = results.options || [];
    const total = options.reduce((s, o) => s + (Number(o.votes) || 0), 0);
    const max = options.reduce((m, o) => Math.max(m, Number(o.votes) || 0), 0);
    const key = options.map((o) => o.id + ":" + o.label).join("|");
    if (list.dataset.key !== key) {
      list.textContent = "";
      for (const o of options) {
        list.append(
          h(
            "li",
            { class: "bar", dataset: { optionId: o.id, votes: 0 }, style: `--c:${optionColor(o.id)}` },
            h("div", { class: "bar-label" }, o.label),
            h("div", { class: "bar-track" }, h("div", { class: "bar-fill" })),
            h(
              "div",
              { class: "bar-nums" },
              h("span", { class: "bar-count" }, "0"),
              h("span", { class: "bar-pct" }, "0.0%")
            )
          )
        );
      }
      list.dataset.key = key;
      list.style.setProperty("--n", String(Math.max(1, options.length)));
    }
    for (const o of options) {
      const li = list.querySelector(`li[data-option-id="${o.id}"]`);
      if (!li) continue;
      const votes = Number(o.votes) || 0;
      li.dataset.votes = String(votes);
      li.classList.toggle("lead", max > 0 && votes === max);
      // Width relative to the total (a share), so bars add up to 100 %.
      li.querySelector(".bar-fill").style.width = (total > 0 ? (votes * 100) / total : 0) + "%";
      li.querySelector(".bar-count").textContent = fmtInt(votes);
      li.querySelector(".bar-pct").textContent = fmtPct(votes, total);
      li.setAttribute("aria-label", `${o.label}: ${votes} votes, ${fmtPct(votes, total)}`);
    }
    return total;
  }

  // ---------------------------------------------------------------- votes per second chart

  /** A nice whole tick step ≥ v: 1, 2, 5 × 10^k. */
  function niceStep(v) {
    if (v <= 1) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /**
   * Votes per second as SVG bars: `series` is [{t (ms), votes}] of consecutive windows, oldest
   * first. Draws into `svg` (viewBox W×H) with a y axis and a time axis.
   */
  function renderRate(svg, series, { windowMs = 1000 } = {}) {
    // Drawn in CSS pixels of the element's current size, so text is never stretched.
    const box = svg.getBoundingClientRect();
    const W = Math.max(200, Math.round(box.width) || 800);
    const H = Math.max(80, Math.round(box.height) || 200);
    const fs = Math.round(Math.min(22, Math.max(11, H / 11)));
    const L = fs * 3.6,
      R = fs * 0.8,
      T = fs * 0.8,
      B = fs * 1.9;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.style.fontSize = fs + "px";
    svg.textContent = "";
    const n = Math.max(series.length, 1);
    const peak = series.reduce((m, p) => Math.max(m, p.votes), 0);
    const top = 4 * niceStep(peak / 4); // four whole-numbered grid steps
    const perSec = 1000 / windowMs;
    const x = (i) => L + ((W - L - R) * i) / n;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const grid = h("g", { class: "rate-grid" });
    for (let k = 0; k <= 4; k++) {
      const v = (top * k) / 4;
      grid.append(h("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      grid.append(
        h("text", { x: L - fs * 0.5, y: y(v) + fs * 0.35, "text-anchor": "end" }, fmtInt(v * perSec))
      );
    }
    svg.append(grid);
    const bars = h("g", { class: "rate-bars" });
    const bw = Math.max(1, (W - L - R) / n - 2);
    series.forEach((p, i) => {
      if (p.votes <= 0) return;
      bars.append(
        h(
          "rect",
          {
            x: x(i) + 1,
            y: y(p.votes),
            width: bw,
            height: Math.max(0, y(0) - y(p.votes)),
            rx: Math.min(3, bw / 3),
            class: i === series.length - 1 ? "latest" : null,
          },
          h("title", {}, `${new Date(p.t).toLocaleTimeString()}: ${p.votes} votes`)
        )
      );
    });
    svg.append(bars);
    const axis = h("g", { class: "rate-axis" });
    axis.append(h("line", { x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    const secs = Math.round((n * windowMs) / 1000);
    const fits = Math.max(1, Math.floor((W - L - R) / (fs * 4.5))); // labels that fit side by side
    const step = [10, 15, 20, 30, 60, 120, 300].find((st) => secs / st <= fits) || secs;
    for (let s = 0; s <= secs; s += step) {
      const i = n - (s * 1000) / windowMs;
      if (s > 0 && x(n) - x(i) < fs * 3.5) continue; // too close to "now"
      axis.append(
        h("text", { x: x(i), y: H - fs * 0.45, "text-anchor": s === 0 ? "end" : "middle" }, s === 0 ? "now" : `−${s}s`)
      );
    }
    svg.append(axis);
  }

  /** Fills the gaps of a sparse timeline: the last `span` windows ending at `endMs`. */
  function rateSeries(windows, endMs, windowMs, span) {
    const byStart = new Map();
    for (const w of windows || []) byStart.set(Number(w.start_ms), Number(w.votes) || 0);
    const end = Math.floor(endMs / windowMs) * windowMs;
    const out = [];
    for (let i = span - 1; i >= 0; i--) {
      const t = end - i * windowMs;
      out.push({ t, votes: byStart.get(t) || 0 });
    }
    return out;
  }

  // ---------------------------------------------------------------- shared poll text

  function hiddenText(poll) {
    if (!poll) return "Results are hidden for now.";
    if (poll.visibility === "after_close") {
      return poll.closes_at
        ? `Results are hidden until the poll closes (${fmtDateTime(poll.closes_at)}).`
        : "Results are hidden until the poll closes.";
    }
    if (poll.visibility === "on_reveal") return "Results are hidden until the host reveals them.";
    return "Results are hidden for now.";
  }

  const STATE_LABEL = { draft: "Draft", scheduled: "Scheduled", open: "Live", closed: "Closed" };

  function pollIdFromPath(prefix) {
    const rest = location.pathname.slice(prefix.length).replace(/\/+$/, "");
    return decodeURIComponent(rest.split("/")[0] || "");
  }

  // ================================================================ voter page

  function initVote() {
    const slug = pollIdFromPath("/p/");
    const el = {
      title: $("#poll-title"),
      status: $("#poll-status"),
      options: $("#options"),
      submit: $("#submit-vote"),
      error: $("#vote-error"),
      pending: $("#vote-pending"),
      retryNow: $("#retry-now"),
      receipt: $("#receipt"),
      live: $("#live"),
      hidden: $("#results-hidden"),
      bars: $("#bars"),
      total: $("#total-votes"),
      conn: $("#conn"),
      voter: $("#voter-id"),
    };

    let voterId = store.get("crowdtick.voter_id");
    if (!voterId) {
      voterId = uuid();
      store.set("crowdtick.voter_id", voterId);
    }
    el.voter.textContent = voterId.slice(0, 8);
    el.voter.title = voterId;

    const st = {
      poll: null,
      state: null, // the poll's state as last seen (poll or results message)
      selected: new Set(),
      attempt: null, // {vote_id, option_ids} while sending or retrying
      sending: false,
      receipt: null,
      retryTimer: null,
      retries: 0,
      feed: null,
      results: null,
    };
    const receiptKey = () => `crowdtick.receipt.${st.poll.id}.${st.poll.slug}`;
    const attemptKey = () => `crowdtick.attempt.${st.poll.id}.${st.poll.slug}`;

    function showError(msg) {
      el.error.hidden = !msg;
      el.error.textContent = msg || "";
    }
    function showPending(msg) {
      el.pending.hidden = !msg;
      $("#vote-pending-text").textContent = msg || "";
    }

    function labelOf(id) {
      const o = st.poll.options.find((o) => o.id === id);
      return o ? o.label : `#${id}`;
    }

    function renderStatus() {
      const p = st.poll;
      if (!p) return;
      const state = st.state || p.state;
      document.body.dataset.state = state;
      let text;
      if (st.receipt) text = "Thanks, your vote is in.";
      else if (state === "open") {
        text = p.max_choices > 1 ? `Pick up to ${p.max_choices}, then send your vote.` : "Tap your choice to vote.";
        if (p.closes_at) {
          const left = Date.parse(p.closes_at) - serverClock.now();
          if (left > 0) text += ` Voting closes in ${fmtDuration(left)}.`;
        }
      } else if (state === "closed") text = "Voting is closed.";
      else if (state === "scheduled" && p.opens_at) {
        const left = Date.parse(p.opens_at) - serverClock.now();
        text = left > 0 ? `Voting opens in ${fmtDuration(left)}.` : "Voting opens any moment now…";
      } else text = "Voting has not started yet. Stay tuned.";
      el.status.textContent = text;
    }

    function renderOptions() {
      const p = st.poll;
      const state = st.state || p.state;
      const multi = p.max_choices > 1;
      const locked = !!st.receipt || !!st.attempt || state !== "open";
      const chosen = st.receipt
        ? new Set(st.receipt.option_ids)
        : st.attempt
          ? new Set(st.attempt.option_ids)
          : st.selected;
      for (const btn of el.options.querySelectorAll("button[data-option-id]")) {
        const id = Number(btn.dataset.optionId);
        const on = chosen.has(id);
        btn.disabled = locked || (multi && !on && st.selected.size >= p.max_choices);
        btn.classList.toggle("selected", on);
        btn.setAttribute("aria-pressed", on ? "true" : "false");
        btn.classList.toggle("sending", !!st.attempt && on && st.sending);
      }
      el.submit.hidden = !multi || !!st.receipt;
      el.submit.disabled = locked || st.selected.size === 0;
      el.submit.textContent = st.attempt
        ? "Sending…"
        : st.selected.size > 0
          ? `Send vote (${st.selected.size} of ${p.max_choices})`
          : `Send vote (pick up to ${p.max_choices})`;
      renderStatus();
    }

    function renderReceipt() {
      const r = st.receipt;
      el.receipt.hidden = !r;
      if (!r) return;
      $("#receipt-choice").textContent = r.option_ids.map(labelOf).join(", ");
      $("#receipt-vote-id").textContent = r.vote_id;
      const t = $("#receipt-time");
      t.textContent = fmtDateTime(r.accepted_at);
      t.setAttribute("datetime", r.accepted_at || "");
      $("#receipt-position").textContent =
        r.partition !== undefined && r.offset !== undefined ? `partition ${r.partition}, offset ${r.offset}` : "";
      el.receipt.dataset.voteId = r.vote_id;
    }

    function buildOptions() {
      el.options.textContent = "";
      const multi = st.poll.max_choices > 1;
      el.options.setAttribute("aria-label", multi ? `Pick up to ${st.poll.max_choices}` : "Pick one");
      for (const o of st.poll.options) {
        el.options.append(
          h(
            "button",
            {
              type: "button",
              class: "option-btn" + (multi ? " toggle" : ""),
              dataset: { optionId: o.id },
              style: `--c:${optionColor(o.id)}`,
              "aria-pressed": "false",
              onclick: () => choose(o.id),
            },
            h("span", { class: "option-mark", "aria-hidden": "true" }),
            h("span", { class: "option-label" }, o.label)
          )
        );
      }
    }

    function choose(id) {
      if (st.attempt || st.receipt) return;
      if (st.poll.max_choices > 1) {
        if (st.selected.has(id)) st.selected.delete(id);
        else if (st.selected.size < st.poll.max_choices) st.selected.add(id);
        showError("");
        renderOptions();
      } else {
        st.selected = new Set([id]);
        startAttempt([id]);
      }
    }

    el.submit.addEventListener("click", () => {
      if (st.selected.size > 0) startAttempt([...st.selected]);
    });
    el.retryNow.addEventListener("click", () => {
      clearTimeout(st.retryTimer);
      send();
    });

    /** A new attempt: one vote_id, kept (also across reloads) until the server answers for good. */
    function startAttempt(optionIds) {
      st.attempt = { vote_id: uuid(), option_ids: optionIds.slice().sort((a, b) => a - b) };
      store.setJson(attemptKey(), st.attempt);
      st.retries = 0;
      showError("");
      send();
    }

    async function send() {
      const a = st.attempt;
      if (!a || st.sending) return;
      st.sending = true;
      showPending("");
      renderOptions();
      const body = { poll_id: st.poll.id, voter_id: voterId, vote_id: a.vote_id };
      if (st.poll.max_choices > 1) body.option_ids = a.option_ids;
      else body.option_id = a.option_ids[0];
      try {
        const { data } = await api("/v1/votes", { method: "POST", body });
        st.sending = false;
        if (st.attempt !== a) return;
        st.receipt = {
          vote_id: data.vote_id || a.vote_id,
          option_ids: a.option_ids,
          accepted_at: data.accepted_at,
          partition: data.partition,
          offset: data.offset,
          poll_id: st.poll.id,
        };
        store.setJson(receiptKey(), st.receipt);
        store.del(attemptKey());
        st.attempt = null;
        showPending("");
        renderReceipt();
        renderOptions();
        el.receipt.scrollIntoView({ block: "nearest", behavior: "smooth" });
      } catch (e) {
        st.sending = false;
        if (st.attempt !== a) return;
        handleFailure(e);
        renderOptions();
      }
    }

    function retryIn(ms, why) {
      clearTimeout(st.retryTimer);
      const due = Date.now() + ms;
      const tick = () => {
        const left = due - Date.now();
        if (left <= 0) return send();
        showPending(`${why} Trying again in ${Math.ceil(left / 1000)} s with the same vote, so it is never counted twice.`);
        st.retryTimer = setTimeout(tick, Math.min(1000, left));
      };
      tick();
    }

    function handleFailure(e) {
      const status = e instanceof ApiError ? e.status : 0;
      st.retries++;
      if (status === 0 || status === 503 || status === 429 || status >= 500) {
        // Not a verdict on the vote: resend the same vote_id.
        const backoff = Math.min(15000, 1000 * 2 ** Math.min(st.retries - 1, 4));
        const wait = e.retryAfterMs != null ? Math.max(e.retryAfterMs, 250) : backoff;
        const why =
          status === 0
            ? "No connection."
            : status === 429
              ? "Too many votes from this connection right now."
              : "The vote service is busy.";
        retryIn(wait, why);
        return;
      }
      // A definitive rejection (4xx): the attempt is over; say why.
      showPending("");
      st.attempt = null;
      store.del(attemptKey());
      showError(e.message || "The vote was rejected.");
      el.error.dataset.code = e.code || "";
      if (e.code === "poll_closed") st.state = "closed";
      if (e.code === "poll_not_open") refreshPoll();
      renderOptions();
    }

    // The poll's state comes from two sources (live messages, the poll itself); the latest wins.
    function onResults(r) {
      st.results = r;
      if (r.state && r.state !== st.state) {
        st.state = r.state;
        if (st.poll && r.state !== st.poll.state) refreshPoll();
        renderOptions();
      }
      renderResults();
    }

    function renderResults() {
      const r = st.results;
      if (!r) return;
      el.live.hidden = false;
      if (r.hidden) {
        el.hidden.hidden = false;
        el.hidden.textContent = hiddenText(st.poll);
        el.bars.hidden = true;
        $("#total-line").hidden = true;
        $("#live-title").textContent = "Results";
        return;
      }
      el.hidden.hidden = true;
      el.bars.hidden = false;
      $("#total-line").hidden = false;
      const total = renderBars(el.bars, r);
      el.total.textContent = fmtInt(r.total_votes != null ? r.total_votes : total);
      el.total.dataset.total = String(r.total_votes != null ? r.total_votes : total);
      $("#live-title").textContent = r.final ? "Final results" : r.state === "closed" ? "Results (counting…)" : "Live results";
    }

    let refreshing = false;
    async function refreshPoll() {
      if (refreshing) return;
      refreshing = true;
      try {
        const { data } = await api(`/v1/s/${encodeURIComponent(slug)}`);
        st.poll = data;
        st.state = data.state;
        renderOptions();
        renderResults();
      } catch {}
      refreshing = false;
    }

    async function load() {
      if (!slug) {
        el.title.textContent = "No poll code in this link.";
        return;
      }
      let data;
      for (let i = 0; ; i++) {
        try {
          ({ data } = await api(`/v1/s/${encodeURIComponent(slug)}`));
          break;
        } catch (e) {
          if (e.status === 404) {
            el.title.textContent = "This poll does not exist.";
            el.status.textContent = `There is no poll with the code “${slug}”. Check the link.`;
            document.body.dataset.state = "missing";
            return;
          }
          el.status.textContent = errorText(e) + " Retrying…";
          await sleep(Math.min(10000, 1000 * 2 ** Math.min(i, 3)));
        }
      }
      st.poll = data;
      st.state = data.state;
      document.title = `${data.title} · CrowdTick`;
      el.title.textContent = data.title;
      buildOptions();
      const saved = store.getJson(receiptKey());
      if (saved && saved.poll_id === data.id) {
        st.receipt = saved;
        renderReceipt();
      } else {
        const pending = store.getJson(attemptKey());
        if (pending && pending.vote_id && Array.isArray(pending.option_ids)) {
          // Reloaded while a vote was in flight: finish it with the same vote_id.
          st.attempt = pending;
          st.selected = new Set(pending.option_ids);
          send();
        }
      }
      renderOptions();
      st.feed = new LiveFeed(data.id, {
        onResults,
        onStatus: (s, m) => showConnection(el.conn, s, m),
      }).start();
      // Scheduled opening or closing happens without a message: check the clock.
      setInterval(() => {
        const p = st.poll;
        const now = serverClock.now();
        const state = st.state || p.state;
        if (state === "scheduled" && p.opens_at && now >= Date.parse(p.opens_at)) refreshPoll();
        else if (state === "open" && p.closes_at && now >= Date.parse(p.closes_at)) refreshPoll();
        renderStatus();
      }, 1000);
    }

    load();
  }

  // ================================================================ results screen

  function initScreen() {
    const id = pollIdFromPath("/screen/");
    const params = new URLSearchParams(location.search);
    // A studio screen shows embargoed counts with a screen token (minted by an operator).
    const token = params.get("token") || "";
    const withToken = token ? "?token=" + encodeURIComponent(token) : "";
    const el = {
      title: $("#poll-title"),
      state: $("#state-badge"),
      final: $("#final-badge"),
      bars: $("#bars"),
      hidden: $("#hidden-note"),
      total: $("#total-votes"),
      voters: $("#voters"),
      viewers: $("#viewers"),
      vpsNow: $("#vps-now"),
      vpsPeak: $("#vps-peak"),
      chart: $("#rate-chart"),
      conn: $("#conn"),
      countdown: $("#countdown"),
      qrBox: $("#qr-box"),
      qr: $("#qr"),
      voteUrl: $("#vote-url"),
    };
    // `state`: the poll's state from whichever source spoke last (a live message or the poll).
    const st = { poll: null, results: null, state: "", timeline: null, hidden: false, shownTotal: -1 };

    function renderPoll() {
      const p = st.poll;
      if (!p) return;
      el.title.textContent = p.title;
      document.title = `${p.title} · CrowdTick`;
      const voteUrl = `${location.host}/p/${p.slug}`;
      el.voteUrl.textContent = voteUrl;
      if (el.qr.getAttribute("src") !== `/qr/${p.slug}.svg`) el.qr.src = `/qr/${p.slug}.svg`;
      renderState();
    }

    function renderState() {
      const p = st.poll;
      const r = st.results;
      const state = st.state;
      el.state.textContent = STATE_LABEL[state] || state;
      el.state.dataset.state = state;
      document.body.dataset.state = state;
      const isFinal = !!(r && r.final);
      el.final.hidden = !isFinal;
      document.body.classList.toggle("is-final", isFinal);
      el.qrBox.hidden = !(p && (state === "open" || state === "scheduled" || state === "draft"));
      let cd = "";
      if (p && state === "open" && p.closes_at) {
        const left = Date.parse(p.closes_at) - serverClock.now();
        if (left > 0) cd = `closes in ${fmtDuration(left)}`;
      } else if (p && state === "scheduled" && p.opens_at) {
        const left = Date.parse(p.opens_at) - serverClock.now();
        if (left > 0) cd = `opens in ${fmtDuration(left)}`;
      } else if (state === "closed" && !isFinal) cd = "counting the last votes…";
      el.countdown.textContent = cd;
      el.countdown.hidden = !cd;
    }

    function onResults(r) {
      st.results = r;
      if (r.state && r.state !== st.state) {
        st.state = r.state;
        // The poll changed (opened, closed, revealed): fetch it for its times.
        if (st.poll && st.poll.state !== r.state) loadPoll();
      }
      renderResults();
    }

    function renderResults() {
      const r = st.results;
      if (!r) return;
      st.hidden = !!r.hidden;
      document.body.classList.toggle("is-hidden", st.hidden);
      if (r.hidden) {
        el.hidden.hidden = false;
        el.hidden.textContent = hiddenText(st.poll);
        el.bars.hidden = true;
        el.total.textContent = "–";
      } else {
        el.hidden.hidden = true;
        el.bars.hidden = false;
        const sum = renderBars(el.bars, r);
        const total = r.total_votes != null ? r.total_votes : sum;
        // The version filter already guarantees totals only grow; guard anyway.
        if (total >= st.shownTotal || r.final) {
          st.shownTotal = total;
          el.total.textContent = fmtInt(total);
          el.total.dataset.total = String(total);
        }
        el.voters.textContent = r.voters != null ? fmtInt(r.voters) : "–";
      }
      el.total.dataset.version = r.version != null ? String(r.version) : ""; // absent while hidden
      renderState();
    }

    async function loadPoll() {
      try {
        const { data } = await api(`/v1/polls/${encodeURIComponent(id)}`);
        st.poll = data;
        st.state = data.state;
        renderPoll();
        renderResults();
        return true;
      } catch (e) {
        if (e.status === 404) {
          el.title.textContent = `There is no poll ${id}.`;
          document.body.dataset.state = "missing";
          return false;
        }
        el.title.textContent = "Cannot load the poll: " + errorText(e);
        return null;
      }
    }

    let timelineBusy = false;
    async function loadTimeline() {
      if (timelineBusy || document.visibilityState === "hidden") return;
      timelineBusy = true;
      try {
        const { data } = await api(`/v1/polls/${encodeURIComponent(id)}/timeline${withToken}`, { timeoutMs: 5000 });
        st.timeline = data;
        renderTimeline();
      } catch {}
      timelineBusy = false;
    }

    function renderTimeline() {
      const tl = st.timeline;
      if (!tl) return;
      const windowMs = Number(tl.window_ms) || 1000;
      const windows = tl.windows || [];
      const last = windows.reduce((m, w) => Math.max(m, Number(w.start_ms) || 0), 0);
      // The last complete window (with a margin for the clock estimate and the processor's flush).
      let end = serverClock.now() - windowMs - 300;
      const state = st.state;
      if (state === "closed" && st.poll && st.poll.closed_at) end = Math.min(end, Date.parse(st.poll.closed_at));
      end = Math.max(end, last);
      const series = rateSeries(windows, end, windowMs, 60);
      renderRate(el.chart, series, { windowMs });
      el.chart.dataset.windows = String(windows.length);
      const now = series.length ? series[series.length - 1].votes : 0;
      const peak = windows.reduce((m, w) => Math.max(m, Number(w.votes) || 0), 0);
      const perSec = 1000 / windowMs;
      el.vpsNow.textContent = tl.hidden ? "–" : fmtInt(now * perSec);
      el.vpsNow.dataset.value = String(now * perSec);
      el.vpsPeak.textContent = tl.hidden ? "" : `peak ${fmtInt(peak * perSec)}/s`;
    }

    async function start() {
      if (!id) {
        el.title.textContent = "No poll id in this link.";
        return;
      }
      const feed = new LiveFeed(id, {
        token,
        onResults,
        onViewers: (n) => {
          el.viewers.textContent = fmtInt(n);
          el.viewers.dataset.count = String(n);
        },
        onStatus: (s, m) => showConnection(el.conn, s, m),
      });
      for (let i = 0; ; i++) {
        const ok = await loadPoll();
        if (ok === false) return;
        if (ok) break;
        await sleep(Math.min(10000, 1000 * 2 ** Math.min(i, 3)));
      }
      feed.start();
      // A first paint that does not wait for the socket (same version rule applies).
      api(`/v1/polls/${encodeURIComponent(id)}/results${withToken}`)
        .then(({ data }) => feed.offer(data))
        .catch((e) => {
          if (e.status !== 401) return;
          // An expired or foreign screen token: say so instead of retrying for ever.
          feed.stop();
          el.hidden.hidden = false;
          el.hidden.textContent = "This screen link is no longer valid (" + e.message + "). Ask the operator for a new one.";
          document.body.dataset.state = "unauthorized";
        });
      loadTimeline();
      setInterval(loadTimeline, 1000);
      window.addEventListener("resize", renderTimeline);
      setInterval(() => {
        renderState();
        const p = st.poll;
        const state = st.state;
        const now = serverClock.now();
        if (p && state === "scheduled" && p.opens_at && now >= Date.parse(p.opens_at) + 500) loadPoll();
        if (p && state === "open" && p.closes_at && now >= Date.parse(p.closes_at) + 500) loadPoll();
      }, 1000);
      window.__crowdtickFeed = feed; // for debugging from the console
    }

    start();
  }

  // ================================================================ operator console

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

  // ---------------------------------------------------------------- boot

  const CrowdTick = { api, ApiError, LiveFeed, renderBars, renderRate, rateSeries, uuid, serverClock };
  window.CrowdTick = CrowdTick;

  function boot() {
    const page = document.body.dataset.page;
    if (page === "vote") initVote();
    else if (page === "screen") initScreen();
    else if (page === "console") initConsole();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
