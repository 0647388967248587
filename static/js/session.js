// Session live view: the rolling packet list (newest first, at most config.limit rows
// kept), pause/resume, a client-side filter, the totals and a packets/s + bytes/s chart
// of the last five minutes drawn on a plain canvas. List and chart start from the
// session's stored history, which the server sends once on subscribing.
"use strict";
(function () {
  const live = window.jmirrorLive;
  const config = live.readConfig();
  if (!config) return;
  const CHART_SECONDS = 300;

  const view = document.querySelector("[data-live-view]");
  view.hidden = false;
  const body = view.querySelector("[data-packets]");
  const note = view.querySelector("[data-list-note]");
  const pauseButton = view.querySelector("[data-pause]");
  const filterForm = view.querySelector("[data-filters]");
  const totals = document.querySelector("[data-totals]");
  const lastSeen = document.querySelector('time[data-field="last_seen"]');
  const canvas = view.querySelector("[data-chart]");

  const kept = []; // packet rows, oldest first, at most config.limit
  let historyDrawn = false; // the history is drawn once, not again on reconnecting
  let stored = 0; // rows of the stored history drawn at load (before any live row)
  let newestStored = null; // BigInt receive time of the newest of them
  let received = 0; // rows received since the page opened
  let skipped = 0; // rows the server left out (it sends at most 50 per update)
  let unseen = 0; // rows that arrived while paused
  let paused = false;
  let filter = { text: "", protocol: "", address: "", port: "" };
  const meter = new live.RateMeter();
  // One bucket per second for the chart: [second, packets, bytes].
  const buckets = [];

  function matches(row) {
    const address = `${row.src || ""} ${row.dst || ""}`.toLowerCase();
    if (filter.address && !address.includes(filter.address)) return false;
    if (filter.protocol && !row.protocol.toLowerCase().includes(filter.protocol)) return false;
    if (filter.port && String(row.sport) !== filter.port && String(row.dport) !== filter.port) {
      return false;
    }
    if (filter.text) {
      const all = [address, row.protocol, row.sport, row.dport, row.length, row.info || ""];
      if (!all.join(" ").toLowerCase().includes(filter.text)) return false;
    }
    return true;
  }

  // A receive time as the server sends it for links (time_ns_text): a JavaScript number
  // cannot hold a time in ns exactly, so only the string names one packet.
  const EXACT_TIME = /^[0-9]{1,19}$/;

  // The time, linked to the packet decoded when the page says the user may see content
  // (config.packetAtUrl): the server finds the stored packet by that exact time.
  function timeCell(row) {
    const cell = document.createElement("td");
    const when = live.timeElement(row.time_ns, false);
    const exact = row.time_ns_text;
    if (config.packetAtUrl && typeof exact === "string" && EXACT_TIME.test(exact)) {
      const link = document.createElement("a");
      link.href = `${config.packetAtUrl}?${new URLSearchParams({ at: exact })}`;
      link.append(when);
      cell.append(link);
    } else {
      cell.append(when);
    }
    return cell;
  }

  function rowElement(row) {
    const element = document.createElement("tr");
    element.append(timeCell(row));
    for (const [value, numeric] of [
      [row.src, false],
      [row.dst, false],
      [row.protocol, false],
      [row.sport, true],
      [row.dport, true],
      [row.length, true],
      [row.info, false],
    ]) {
      const cell = document.createElement("td");
      if (numeric) cell.className = "num";
      cell.textContent = value === null || value === undefined ? "" : String(value);
      element.append(cell);
    }
    return element;
  }

  function describe() {
    const shown = body.childElementCount;
    // Which packets the list is drawn from: those received live since the page opened,
    // after the last stored ones it was given on opening (the history).
    const of = stored
      ? `${live.formatCount(stored + received)} packets (${live.formatCount(stored)} stored before the page opened, ${live.formatCount(received)} received live since)`
      : `${live.formatCount(received)} packets received live since the page opened`;
    // While paused the list holds the rows of the moment it was paused, not `kept`.
    let text = paused
      ? `showing the ${live.formatCount(shown)} rows listed when paused, of ${of}`
      : `showing the latest ${live.formatCount(kept.length)} of ${of}`;
    if (!paused && shown !== kept.length) {
      text = `${live.formatCount(shown)} match the filter; ` + text;
    }
    if (stored + received > kept.length) text += ` (the list keeps the latest ${live.formatCount(config.limit)})`;
    if (skipped) text += `; ${live.formatCount(skipped)} rows not sent at this rate`;
    if (config.olderPackets) text += `; ${config.olderPackets}`;
    if (paused) text += ` · paused, ${live.formatCount(unseen)} new`;
    live.setText(note, text);
  }

  function renderAll() {
    const fragment = document.createDocumentFragment();
    for (let index = kept.length - 1; index >= 0; index -= 1) {
      if (matches(kept[index])) fragment.append(rowElement(kept[index]));
    }
    body.replaceChildren(fragment);
    describe();
  }

  function addRows(rows) {
    received += rows.length;
    for (const row of rows) kept.push(row);
    if (kept.length > config.limit) kept.splice(0, kept.length - config.limit);
    if (paused) {
      unseen += rows.length;
      describe();
      return;
    }
    const fragment = document.createDocumentFragment();
    for (let index = rows.length - 1; index >= 0; index -= 1) {
      if (matches(rows[index])) fragment.append(rowElement(rows[index]));
    }
    body.prepend(fragment);
    while (body.childElementCount > config.limit) body.lastElementChild.remove();
    describe();
  }

  function addTotals(summary) {
    const cell = (name) => totals.querySelector(`[data-field="${name}"]`);
    live.addToCell(cell("packets"), summary.packets, live.formatCount);
    live.addToCell(cell("bytes"), summary.bytes, live.formatBytes);
    live.addToCell(cell("stored"), summary.stored, live.formatCount);
    if (lastSeen) {
      const when = live.timeElement(summary.last_ns, true);
      lastSeen.setAttribute("datetime", when.getAttribute("datetime"));
      live.setText(lastSeen, when.textContent);
    }
  }

  function bucket(packets, bytes) {
    const second = Math.floor(Date.now() / 1000);
    const last = buckets[buckets.length - 1];
    if (last && last[0] === second) {
      last[1] += packets;
      last[2] += bytes;
    } else {
      buckets.push([second, packets, bytes]);
    }
    while (buckets.length && buckets[0][0] <= second - CHART_SECONDS) buckets.shift();
  }

  function drawSeries(context, width, height, index, colour, top, label) {
    const now = Math.floor(Date.now() / 1000);
    let max = 0;
    for (const entry of buckets) max = Math.max(max, entry[index]);
    const scale = max ? (height - 4) / max : 0;
    context.strokeStyle = colour;
    context.lineWidth = 1.5;
    context.beginPath();
    let previous = now - CHART_SECONDS;
    const x = (second) => ((second - (now - CHART_SECONDS)) / CHART_SECONDS) * width;
    const y = (value) => top + height - 2 - value * scale;
    context.moveTo(0, y(0));
    for (const entry of buckets) {
      // A second without an update had no traffic: the line drops to zero.
      if (entry[0] > previous + 1) {
        context.lineTo(x(previous + 1), y(0));
        context.lineTo(x(entry[0] - 1), y(0));
      }
      context.lineTo(x(entry[0]), y(entry[index]));
      previous = entry[0];
    }
    if (previous < now - 1) {
      context.lineTo(x(previous + 1), y(0));
      context.lineTo(width, y(0));
    }
    context.stroke();
    context.fillStyle = colour;
    context.fillText(label(max), 4, top + 12);
  }

  function draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    context.font = "11px system-ui, sans-serif";
    const half = height / 2;
    context.strokeStyle = "#d8dee6";
    context.beginPath();
    context.moveTo(0, half);
    context.lineTo(width, half);
    context.stroke();
    drawSeries(context, width, half, 1, "#0b5cad", 0, (max) => `max ${live.formatRate(max)} packets/s`);
    drawSeries(context, width, half, 2, "#b35c00", half, (max) => `max ${live.formatBytes(max)}/s`);
  }

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      unseen = 0;
      renderAll();
    } else {
      describe();
    }
  });
  filterForm.addEventListener("submit", (event) => event.preventDefault());
  filterForm.addEventListener("input", () => {
    const data = new FormData(filterForm);
    filter = {
      text: String(data.get("text") || "").trim().toLowerCase(),
      protocol: String(data.get("protocol") || "").trim().toLowerCase(),
      address: String(data.get("address") || "").trim().toLowerCase(),
      port: String(data.get("port") || "").trim(),
    };
    if (!paused) renderAll();
  });

  // A receive time as an exact integer (time_ns_text), for telling stored rows from live ones.
  function exactTime(row) {
    const text = row.time_ns_text;
    return typeof text === "string" && EXACT_TIME.test(text) ? BigInt(text) : null;
  }

  // The session's recent stored packets and per-second counts, sent once on subscribing:
  // they go below whatever live rows came first, and into the chart's seconds.
  function addHistory(message) {
    if (message.stream !== "session" || message.id !== config.session || historyDrawn) return;
    historyDrawn = true;
    const listed = new Set(kept.map((row) => row.time_ns_text));
    const rows = (message.rows || []).filter((row) => !listed.has(row.time_ns_text));
    stored = rows.length;
    for (const row of rows) {
      const exact = exactTime(row);
      if (exact !== null && (newestStored === null || exact > newestStored)) newestStored = exact;
    }
    kept.unshift(...rows);
    if (kept.length > config.limit) kept.splice(0, kept.length - config.limit);
    const now = Math.floor(Date.now() / 1000);
    const bySecond = new Map(buckets.map((entry) => [entry[0], entry]));
    for (const [second, packets, bytes] of message.seconds || []) {
      if (!Number.isInteger(second) || second <= now - CHART_SECONDS || second > now) continue;
      const entry = bySecond.get(second);
      if (entry) {
        entry[1] += packets;
        entry[2] += bytes;
      } else {
        bySecond.set(second, [second, packets, bytes]);
      }
    }
    buckets.splice(0, buckets.length, ...[...bySecond.values()].sort((a, b) => a[0] - b[0]));
    if (!paused) renderAll();
    draw();
  }

  live.connect(
    config,
    (items, dropped) => {
      skipped += dropped;
      const rows = [];
      for (const item of items) {
        const summary = item.stream === "session" && item.id === config.session && item.session;
        if (!summary) continue;
        addTotals(summary);
        meter.add(summary.packets, summary.bytes);
        bucket(summary.packets, summary.bytes);
        for (const row of summary.recent || []) {
          // A packet stored before the history was read and summarised after it: once.
          const exact = exactTime(row);
          if (newestStored !== null && exact !== null && exact <= newestStored) continue;
          rows.push(row);
        }
      }
      if (rows.length) addRows(rows);
    },
    addHistory,
  );

  // The totals are what the page loaded plus every summary since. A summary the page
  // missed (sent before it subscribed, or while the connection was down) would leave them
  // low for good, so they are raised to the recorded totals now and then; never lowered,
  // since the records trail the live summaries by up to a second.
  function raiseTo(name, value, format) {
    const cell = totals.querySelector(`[data-field="${name}"]`);
    if (!cell || typeof value !== "number" || value <= Number(cell.dataset.value || 0)) return;
    cell.dataset.value = String(value);
    cell.textContent = format(value);
  }

  async function catchUp() {
    if (!config.sessionApiUrl) return;
    try {
      const reply = await fetch(config.sessionApiUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!reply.ok) return;
      const recorded = await reply.json();
      raiseTo("packets", recorded.packets, live.formatCount);
      raiseTo("bytes", recorded.bytes, live.formatBytes);
      raiseTo("stored", recorded.stored_packets, live.formatCount);
    } catch (error) {
      // Offline for now: the next round tries again.
    }
  }
  setInterval(catchUp, 5000);

  setInterval(() => {
    const rate = meter.rate();
    live.setText(
      totals.querySelector('[data-field="rate"]'),
      `${live.formatRate(rate.packets)}/s · ${live.formatBytes(rate.bytes)}/s`,
    );
    draw();
  }, 1000);
  describe();
  draw();
})();
