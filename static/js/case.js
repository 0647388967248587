// Case page: adds the `case` stream's interval counts to the sessions, intercepts and
// case totals, and adds a row for a session that starts while the page is open.
"use strict";
(function () {
  const live = window.jmirrorLive;
  const config = live.readConfig();
  if (!config) return;
  const loadedAt = Date.now();
  const body = document.querySelector("[data-sessions]");
  const caseCards = document.querySelector(`[data-case="${config.case}"]`);
  const rows = new Map();

  function field(element, name) {
    return element ? element.querySelector(`[data-field="${name}"]`) : null;
  }

  function track(row) {
    const entry = { row, meter: new live.RateMeter(), linked: Boolean(row.querySelector("a")) };
    rows.set(row.dataset.stream, entry);
    return entry;
  }
  for (const row of body.querySelectorAll("tr[data-stream]")) track(row);

  // A Contrail session's summary has mid config.contrailMid and its analyzer port as
  // sid: it has no mirror or session id to show, so the cells say what the page says.
  function isContrail(summary) {
    return config.contrailMid !== undefined && Number(summary.mid) === config.contrailMid;
  }

  function midCell(summary) {
    if (isContrail(summary)) return linkedCell(config.contrailMidText, summary.session_id);
    return linkedCell("0x" + Number(summary.mid).toString(16), summary.session_id);
  }

  function sidCell(summary) {
    if (isContrail(summary)) return linkedCell(`analyzer port ${summary.sid}`, summary.session_id);
    return linkedCell("0x" + Number(summary.sid).toString(16), summary.session_id);
  }

  function linkedCell(text, sessionId) {
    const cell = document.createElement("td");
    cell.className = "mono";
    if (sessionId) {
      const link = document.createElement("a");
      link.href = config.sessionUrl.replace("/0/", `/${sessionId}/`);
      link.textContent = text;
      cell.append(link);
    } else {
      cell.textContent = text;
    }
    return cell;
  }

  function textCell(text) {
    const cell = document.createElement("td");
    cell.textContent = text;
    return cell;
  }

  function numberCell(name, value, text) {
    const cell = document.createElement("td");
    cell.className = "num";
    cell.dataset.field = name;
    if (value !== null) cell.dataset.value = "0";
    cell.textContent = text;
    return cell;
  }

  function newRow(summary, key) {
    const row = document.createElement("tr");
    row.dataset.stream = key;
    const router = config.routers[String(summary.router_id)] || `router #${summary.router_id}`;
    const lastSeen = document.createElement("td");
    lastSeen.dataset.field = "last_seen";
    const firstSeen = document.createElement("td");
    firstSeen.append(live.timeElement(summary.first_ns, true));
    row.append(
      textCell(summary.liid),
      textCell(router),
      midCell(summary),
      sidCell(summary),
      firstSeen,
      lastSeen,
      numberCell("packets", 0, "0"),
      numberCell("bytes", 0, "0\u00a0bytes"),
      numberCell("pps", null, "–"),
    );
    const empty = body.querySelector("[data-empty]");
    if (empty) empty.remove();
    body.prepend(row);
    const entry = track(row);
    entry.linked = Boolean(summary.session_id);
    return entry;
  }

  function count(target, summary, isNew) {
    if (!target) return;
    live.addToCell(field(target, "packets"), summary.packets, live.formatCount);
    live.addToCell(field(target, "bytes"), summary.bytes, live.formatBytes);
    if (isNew) live.addToCell(field(target, "sessions"), 1, live.formatCount);
  }

  function showRates() {
    const now = performance.now();
    for (const entry of rows.values()) {
      live.setText(field(entry.row, "pps"), live.formatRate(entry.meter.rate(now).packets));
    }
  }

  live.connect(config, (items) => {
    for (const item of items) {
      const summary = item.stream === "case" && item.id === config.case && item.session;
      if (!summary) continue;
      const key = `${summary.router_id}:${summary.mid}:${summary.sid}`;
      let entry = rows.get(key);
      // A stream whose first packet came after the page loaded is a new session (a
      // subscriber login); any other unknown stream is an older session on another page.
      const isNew = !entry && summary.first_ns / 1e6 >= loadedAt - 1000;
      if (!entry && config.addSessions) entry = newRow(summary, key);
      if (entry) {
        if (!entry.linked && summary.session_id) {
          entry.row.children[2].replaceWith(midCell(summary));
          entry.row.children[3].replaceWith(sidCell(summary));
          entry.linked = true;
        }
        entry.meter.add(summary.packets, summary.bytes);
        count(entry.row, summary, false);
        const lastSeen = field(entry.row, "last_seen");
        lastSeen.replaceChildren(live.timeElement(summary.last_ns, true));
      }
      count(document.querySelector(`tr[data-intercept="${summary.intercept_id}"]`), summary, isNew);
      count(caseCards, summary, isNew);
    }
    showRates();
  });
  setInterval(showRates, 1000);
})();
