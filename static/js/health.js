// Live receiver health: subscribes to the "health" stream (docs/live-protocol.md) and
// writes rates and totals into the cells the page marked with data- attributes. Without
// this script (or without the connection) the page keeps the totals it was rendered with.
"use strict";
(function () {
  const STALE_MS = 5000; // a receiver whose summary is older no longer adds to the sums
  const MAX_PAUSE_MS = 30000;
  const UNITS = ["bytes", "KB", "MB", "GB", "TB", "PB"];

  function bytes(value) {
    // As Django's filesizeformat shows them, so live and rendered values look alike.
    if (value < 1024) return Math.round(value) + (value === 1 ? " byte" : " bytes");
    let unit = 0;
    while (value >= 1024 && unit < UNITS.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return value.toFixed(1) + "\u00a0" + UNITS[unit];
  }

  function shown(element, value) {
    if (value === null || value === undefined) return "unknown";
    if (element.dataset.format === "bytes") return bytes(value);
    const digits = Number.isInteger(value) ? 0 : 1;
    return value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }

  function fill(root, values) {
    for (const cell of root.querySelectorAll("[data-field]")) {
      const key = cell.dataset.field;
      if (Object.prototype.hasOwnProperty.call(values, key)) {
        cell.textContent = shown(cell, values[key]);
      }
    }
  }

  function start(section) {
    const status = document.querySelector("[data-live-status]");
    const latest = new Map(); // receiver name -> {health, at}
    let pause = 1000;

    function say(text) {
      if (status) status.textContent = text;
    }

    function update(health) {
      latest.set(health.receiver, { health: health, at: Date.now() });
      for (const row of document.querySelectorAll("tr[data-receiver]")) {
        if (row.dataset.receiver !== health.receiver) continue;
        if (row.dataset.address === undefined) fill(row, health);
      }
      for (const listener of health.listeners || []) {
        for (const row of document.querySelectorAll("tr[data-address]")) {
          if (row.dataset.receiver === health.receiver && row.dataset.address === listener.address) {
            fill(row, listener);
          }
        }
      }
      const sums = {};
      const now = Date.now();
      for (const entry of latest.values()) {
        if (now - entry.at > STALE_MS) continue;
        for (const key of ["datagrams_per_second", "bytes_per_second", "datagrams", "bytes", "open_files"]) {
          sums[key] = (sums[key] || 0) + (entry.health[key] || 0);
        }
      }
      for (const cell of section.querySelectorAll("[data-sum]")) {
        if (Object.prototype.hasOwnProperty.call(sums, cell.dataset.sum)) {
          cell.textContent = shown(cell, sums[cell.dataset.sum]);
        }
      }
    }

    function connect() {
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(scheme + "//" + window.location.host + section.dataset.liveUrl);
      socket.addEventListener("open", () => {
        pause = 1000;
        socket.send(JSON.stringify({ action: "subscribe", stream: "health" }));
      });
      socket.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        if (message.type === "subscribed") {
          say("live rates connected.");
        } else if (message.type === "error" && message.stream === "health") {
          say("live rates refused: " + (message.message || message.code));
        } else if (message.type === "updates") {
          for (const item of message.items || []) {
            if (item.stream === "health" && item.health) update(item.health);
          }
          // The server sends more only while fewer than 4 updates are unacknowledged
          // (docs/live-protocol.md): ack once they are drawn.
          if (Number.isInteger(message.seq)) {
            socket.send(JSON.stringify({ action: "ack", seq: message.seq }));
          }
        }
      });
      socket.addEventListener("close", (event) => {
        if (event.code === 4401) {
          say("live rates stopped: signed out.");
          return;
        }
        say("live rates disconnected; retrying.");
        window.setTimeout(connect, pause);
        pause = Math.min(pause * 2, MAX_PAUSE_MS);
      });
    }

    say("live rates connecting.");
    connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const section = document.getElementById("health-live");
    if (section && "WebSocket" in window) start(section);
  });
})();
