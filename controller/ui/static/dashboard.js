// edgefleet dashboard: live refresh and confirmations, in plain JavaScript.
// An element with data-live-src is re-fetched every few seconds and its contents
// replaced when they changed; a 401 means the session ended, and refreshing stops.
// A form with data-confirm asks before it submits (the abort button).
(function () {
  "use strict";
  var PERIOD_MS = 2500;

  function startLive(element) {
    var status = document.querySelector("[data-live-status]");
    var last = null;
    function say(text, stale) {
      if (status) { status.textContent = text; status.classList.toggle("stale", stale); }
    }
    function refresh() {
      if (document.hidden) { return schedule(); }
      fetch(element.dataset.liveSrc, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status === 401) { throw new Error("expired"); }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          if (html !== last) { element.innerHTML = html; last = html; }
          say("Live: updated " + new Date().toLocaleTimeString() + ".", false);
          schedule();
        })
        .catch(function (error) {
          if (error.message === "expired") {
            say("Your session ended: reload the page to log in again.", true);
            return;  // stop: every further request would be refused too
          }
          say("Could not refresh (" + error.message + "); retrying.", true);
          schedule();
        });
    }
    function schedule() { window.setTimeout(refresh, PERIOD_MS); }
    schedule();
  }

  document.addEventListener("submit", function (event) {
    var message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-src]").forEach(startLive);
  });
})();
