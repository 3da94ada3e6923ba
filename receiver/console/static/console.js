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

// Actions: each a call to the API itself, with the session's cookie and the page's CSRF token,
// so that the console can do nothing the key's scopes do not allow.
(function () {
  "use strict";
  const token = (document.querySelector("meta[name=csrf-token]") || {}).content || "";
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) { return; }
    const output = document.getElementById(button.dataset.result);
    const confirmText = button.dataset.confirm;
    if (confirmText && !window.confirm(confirmText)) { return; }
    button.disabled = true;
    let body = button.dataset.body;
    let url = button.dataset.url;
    if (button.dataset.bodyFrom) {
      // An editor's JSON: its `name` goes in the URL, the rest is the body.
      const text = document.getElementById(button.dataset.bodyFrom).value;
      let parsed;
      try { parsed = JSON.parse(text); } catch (error) {
        if (output) { output.textContent = "not JSON: " + error.message; }
        button.disabled = false;
        return;
      }
      url += encodeURIComponent(parsed.name || "");
      delete parsed.name;
      body = JSON.stringify(parsed);
    }
    if (button.dataset.bodyForm) {
      // A form's filled fields, as the JSON body.
      const fields = {};
      new FormData(document.getElementById(button.dataset.bodyForm)).forEach(function (value, key) {
        if (String(value).trim()) { fields[key] = String(value).trim(); }
      });
      body = JSON.stringify(fields);
    }
    if (button.dataset.sinceHours) {
      const since = new Date(Date.now() - Number(button.dataset.sinceHours) * 3600 * 1000);
      body = JSON.stringify({ since: since.toISOString() });
    }
    fetch(url, {
      method: button.dataset.action,
      credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": token, Accept: "application/json" },
                             body ? { "Content-Type": "application/json" } : {}),
      body: body || undefined,
    })
      .then(function (answer) {
        if (answer.status === 204) { return { ok: true, json: {} }; }
        return answer.json().then(function (json) { return { ok: answer.ok, json: json }; });
      })
      .then(function (done) {
        const json = done.json;
        let said = (json.error || {}).message || "refused";
        const details = (json.error || {}).details;
        if (Array.isArray(details)) {
          said += ": " + details.map(function (d) { return d.field + ": " + d.error; }).join("; ");
        }
        if (done.ok) {
          said = json.result || (json.secret && "new secret (shown once): " + json.secret)
            || (typeof json.queued === "number" && "queued " + json.queued + " events")
            || (json.queued === true && "queued again") || "done";
        }
        if (output) { output.textContent = said; }
        if (done.ok && button.dataset.reload) { window.setTimeout(function () { window.location.reload(); }, 300); }
      })
      .catch(function () { if (output) { output.textContent = "failed: the hub did not answer"; } })
      .finally(function () { button.disabled = false; });
  });
})();

// Edit: a route's JSON into the editor.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-edit]");
    if (!button) { return; }
    const editor = document.getElementById(button.dataset.target);
    editor.value = button.dataset.edit;
    editor.focus();
  });
})();
