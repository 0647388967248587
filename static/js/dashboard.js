// Dashboard: adds the `dashboard` stream's interval counts to each case's totals and
// shows its packet and byte rates.
"use strict";
(function () {
  const live = window.jmirrorLive;
  const config = live.readConfig();
  if (!config) return;
  const cases = new Map();
  for (const row of document.querySelectorAll("tr[data-case]")) {
    const cell = (name) => row.querySelector(`[data-field="${name}"]`);
    cases.set(Number(row.dataset.case), {
      packets: cell("packets"),
      bytes: cell("bytes"),
      pps: cell("pps"),
      bps: cell("bps"),
      meter: new live.RateMeter(),
    });
  }

  function showRates() {
    const now = performance.now();
    for (const entry of cases.values()) {
      const rate = entry.meter.rate(now);
      live.setText(entry.pps, live.formatRate(rate.packets));
      live.setText(entry.bps, live.formatBytes(rate.bytes) + "/s");
    }
  }

  live.connect(config, (items) => {
    for (const item of items) {
      const entry = item.stream === "dashboard" && cases.get(item.id);
      if (!entry || !item.case) continue;
      entry.meter.add(item.case.packets, item.case.bytes);
      live.addToCell(entry.packets, item.case.packets, live.formatCount);
      live.addToCell(entry.bytes, item.case.bytes, live.formatBytes);
    }
    showRates();
  });
  // Rates fall back to zero when the updates stop.
  setInterval(showRates, 1000);
})();
