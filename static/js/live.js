// The live websocket of the console pages (docs/live-protocol.md), shared by
// dashboard.js, case.js and session.js. A page says what it subscribes to in its
// <script type="application/json" id="live-config"> block; no inline script anywhere.
// Everything from the server is written with textContent, never as HTML.
"use strict";
(function () {
  // Reconnect pauses in ms, with jitter so that a restarted server is not hit at once.
  const BACKOFF = [1000, 2000, 5000, 10000, 30000];
  const PING_EVERY = 25000;
  const KB = 1024;

  function readConfig() {
    const element = document.getElementById("live-config");
    return element ? JSON.parse(element.textContent) : null;
  }

  const countFormat = new Intl.NumberFormat("en-US");
  function formatCount(value) {
    return countFormat.format(Math.round(value));
  }

  // Django's filesizeformat, so that live figures read like the rendered ones.
  function formatBytes(value) {
    const units = ["KB", "MB", "GB", "TB", "PB"];
    if (value < KB) {
      const whole = Math.round(value);
      return whole === 1 ? "1\u00a0byte" : `${whole}\u00a0bytes`;
    }
    let scaled = value / KB;
    let unit = 0;
    while (scaled >= KB && unit < units.length - 1) {
      scaled /= KB;
      unit += 1;
    }
    return `${scaled.toFixed(1)}\u00a0${units[unit]}`;
  }

  function formatRate(value) {
    return value >= 10 ? formatCount(value) : value.toFixed(1);
  }

  // A number cell rendered with data-value: adds an interval's count to it.
  function addToCell(cell, amount, format) {
    if (!cell || !amount) return;
    const total = Number(cell.dataset.value || 0) + amount;
    cell.dataset.value = String(total);
    cell.textContent = format(total);
  }

  function setText(element, text) {
    if (element && element.textContent !== text) element.textContent = text;
  }

  function timeElement(nanoseconds, withDate) {
    const when = new Date(nanoseconds / 1e6);
    const element = document.createElement("time");
    const iso = when.toISOString();
    element.setAttribute("datetime", iso);
    element.textContent = withDate ? iso.slice(0, 19).replace("T", " ") : iso.slice(11, 23);
    element.title = when.toLocaleString() + " (local time)";
    return element;
  }

  // Packets and bytes per second over a sliding window of the intervals the server
  // reports: right whatever the number of sessions or receivers adding to it.
  class RateMeter {
    constructor(windowMs = 2000) {
      this.windowMs = windowMs;
      this.events = [];
    }
    add(packets, bytes, now = performance.now()) {
      this.events.push([now, packets, bytes]);
    }
    rate(now = performance.now()) {
      while (this.events.length && this.events[0][0] < now - this.windowMs) this.events.shift();
      let packets = 0;
      let bytes = 0;
      for (const [, p, b] of this.events) {
        packets += p;
        bytes += b;
      }
      const seconds = this.windowMs / 1000;
      return { packets: packets / seconds, bytes: bytes / seconds };
    }
  }

  // Opens the websocket, subscribes to config.subscriptions and hands every `updates`
  // message to onUpdates(items, dropped), and a session's `history` (sent once after
  // subscribing) to onHistory(message) when given. Shows the state in [data-live-state].
  function connect(config, onUpdates, onHistory) {
    const state = document.querySelector("[data-live-state]");
    let attempt = 0;
    let finished = false;
    let pinger = null;

    function show(text, name) {
      if (!state) return;
      state.hidden = false;
      state.dataset.state = name;
      setText(state, text);
    }

    function open() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(`${scheme}//${location.host}/ws/live/`);
      socket.addEventListener("open", () => {
        for (const subscription of config.subscriptions) {
          socket.send(JSON.stringify(Object.assign({ action: "subscribe" }, subscription)));
        }
        pinger = setInterval(() => socket.send(JSON.stringify({ action: "ping" })), PING_EVERY);
      });
      socket.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        if (message.type === "subscribed") {
          attempt = 0;
          show("live", "live");
        } else if (message.type === "updates") {
          onUpdates(message.items || [], message.dropped || 0);
          // The server sends more only while fewer than 4 updates are unacknowledged:
          // acking after the page has drawn them is what keeps a frozen tab cheap.
          if (Number.isInteger(message.seq)) {
            socket.send(JSON.stringify({ action: "ack", seq: message.seq }));
          }
        } else if (message.type === "history") {
          if (onHistory) onHistory(message);
        } else if (
          message.type === "revoked" ||
          (message.type === "error" && message.code === "forbidden")
        ) {
          finished = true;
          show("no access", "off");
          socket.close();
        }
      });
      socket.addEventListener("close", (event) => {
        clearInterval(pinger);
        if (event.code === 4401) {
          show("signed out", "off");
          return;
        }
        if (finished) return;
        const pause = BACKOFF[Math.min(attempt, BACKOFF.length - 1)];
        attempt += 1;
        show("reconnecting", "reconnecting");
        setTimeout(open, pause * (0.75 + Math.random() * 0.5));
      });
    }

    if (!config.subscriptions.length) return;
    show("connecting", "reconnecting");
    open();
  }

  window.jmirrorLive = {
    readConfig,
    connect,
    formatCount,
    formatBytes,
    formatRate,
    addToCell,
    setText,
    timeElement,
    RateMeter,
  };
})();
