// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var left = Math.round((Date.parse(el.getAttribute("datetime")) - now) / 1000);
      if (isNaN(left)) return;
      if (left <= 0) { el.textContent = "expired"; return; }
      var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      el.textContent = "in " + (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
    });
  }
  function live() {
    var box = document.querySelector("[data-live]");
    if (!box || !window.EventSource) return;
    var source = new EventSource(box.getAttribute("data-live"));
    var pending = false;
    source.addEventListener("ready", function () { box.setAttribute("data-live-ready", "1"); });
    source.addEventListener("changed", function () {
      if (pending) return;
      pending = true;
      setTimeout(function () {
        pending = false;
        if (window.htmx) {
          htmx.ajax("GET", box.getAttribute("data-rows"), { target: box, swap: "innerHTML" }).then(tick);
        }
      }, 100);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { tick(); setInterval(tick, 1000); live(); });
})();
