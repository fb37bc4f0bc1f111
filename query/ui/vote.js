// CrowdTick web UI: the voter page (vote.html). Loaded after app.js, whose helpers it takes from window.CrowdTick.
"use strict";

(() => {
  const { $, h, fmtInt, sleep, fmtDateTime, fmtDuration, store, uuid, serverClock, ApiError, api, errorText, LiveFeed, showConnection, optionColor, renderBars, hiddenText, pollIdFromPath } = window.CrowdTick;

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
        // A busy service's Retry-After (taken as at most 15 s) times 1 to 2 at random: voters
        // shed in the same moment come back spread out, however long they were told to wait.
        const told = e.retryAfterMs != null ? Math.max(e.retryAfterMs, 250) : null;
        const wait =
          told == null ? backoff : status === 503 ? Math.min(15000, told) * (1 + Math.random()) : told;
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

  window.CrowdTick.onPage("vote", initVote);
})();
