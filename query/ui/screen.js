// CrowdTick web UI: the results screen (screen.html). Loaded after app.js, whose helpers it takes from window.CrowdTick.
"use strict";

(() => {
  const { $, fmtInt, sleep, fmtDuration, serverClock, api, errorText, LiveFeed, showConnection, renderBars, renderRate, rateSeries, hiddenText, STATE_LABEL, pollIdFromPath } = window.CrowdTick;

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

  window.CrowdTick.onPage("screen", initScreen);
})();
