// Live updates of the messages list: the API's own event stream (cookie session), each new
// event refetching the rows as the page's filters show them (at most twice a second).
(function () {
  "use strict";
  const table = document.querySelector("[data-live-rows]");
  if (!table || !window.EventSource) { return; }
  const state = document.getElementById("live-state");
  const rows = document.getElementById("rows");
  const url = new URL(table.dataset.liveRows, window.location.href);
  url.searchParams.set("fragment", "rows");
  let pending = null;

  function refresh() {
    pending = null;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (answer) { return answer.ok ? answer.text() : Promise.reject(answer.status); })
      .then(function (html) { rows.innerHTML = html; state.textContent = "live updates: on (updated " + new Date().toLocaleTimeString() + ")"; })
      .catch(function (status) { state.textContent = "live updates: refresh failed (" + status + ")"; });
  }

  const stream = new EventSource("/v1/events/stream?after=" + encodeURIComponent(table.dataset.liveAfter || ""));
  stream.onopen = function () { state.textContent = "live updates: on"; };
  stream.onerror = function () { state.textContent = "live updates: reconnecting"; };
  function onEvent() { if (pending === null) { pending = window.setTimeout(refresh, 500); } }
  ["message.status", "message.inbound", "message.summary"].forEach(function (type) {
    stream.addEventListener(type, onEvent);
  });
  stream.onmessage = onEvent;
})();
