// Every <time datetime="..."> shows UTC; hovering it shows the reader's local time.
"use strict";
(function () {
  function localise(root) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const when = new Date(element.getAttribute("datetime"));
      if (!Number.isNaN(when.getTime())) {
        element.title = when.toLocaleString() + " (local time)";
      }
    }
  }
  document.addEventListener("DOMContentLoaded", () => localise(document));
  window.jmirrorLocaliseTimes = localise;
})();
