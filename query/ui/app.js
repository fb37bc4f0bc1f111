// CrowdTick web UI: plain ES2020, no build step, no external resources.
// The helpers every page shares (this file), then one script per page: vote.js, screen.js and
// console.js, each run on the page whose <body data-page="…"> names it.
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

  // ---------------------------------------------------------------- pages

  // Each page's script (vote.js, screen.js, console.js) registers its init here; it runs once the
  // document is parsed, on the page <body data-page="…"> names.
  function onPage(name, init) {
    if (document.body.dataset.page !== name) return;
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
    else init();
  }

  window.CrowdTick = { $, h, HTML_NS, SVG_NS, SVG_TAGS, fmtInt, fmtPct, sleep, fmtTime, fmtDateTime, fmtDuration, memoryStore, store, uuid, serverClock, ApiError, parseRetryAfter, api, errorText, LiveFeed, connectionLabel, showConnection, PALETTE, optionColor, renderBars, niceStep, renderRate, rateSeries, hiddenText, STATE_LABEL, pollIdFromPath, onPage };
})();
