import type { OrgDocument } from './org-document';

export interface PageModel {
  gatewayId: string;
  buildId: string;
  state: string;
  organizationId: string | null;
  organizationName: string | null;
  doc: OrgDocument;
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

/** The default app's page: which organization and build this gateway serves, the data, and a WebSocket echo check. */
export function renderPage(m: PageModel): string {
  const org = m.organizationId
    ? `<p>Organization <code id="org">${escapeHtml(m.organizationId)}</code>${m.organizationName ? ` (<span id="org-name">${escapeHtml(m.organizationName)}</span>)` : ''}</p>`
    : `<p id="org-none">This gateway serves no organization right now.</p>`;
  const notes = m.doc.notes.map((n) => `<li>${escapeHtml(n)}</li>`).join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Gateway ${escapeHtml(m.gatewayId)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:44rem}code{background:#eee;padding:0 .2rem}dt{font-weight:600}</style>
</head><body>
<h1>Demiurge gateway <code id="gateway">${escapeHtml(m.gatewayId)}</code></h1>
${org}
<dl>
<dt>Build</dt><dd><code id="build">${escapeHtml(m.buildId)}</code></dd>
<dt>State</dt><dd id="state">${escapeHtml(m.state)}</dd>
<dt>Counter</dt><dd id="counter">${m.doc.counter}</dd>
<dt>Notes</dt><dd><ul id="notes">${notes}</ul></dd>
<dt>WebSocket echo</dt><dd id="ws-status">connecting…</dd>
</dl>
<p><button id="increment" type="button">+1</button>
<input id="note" maxlength="200" placeholder="a note"> <button id="add-note" type="button">Add note</button></p>
<script>
(function () {
  function post(body) {
    return fetch('/_app/data', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
      .then(function (r) { return r.json(); }).then(function () { location.reload(); });
  }
  document.getElementById('increment').onclick = function () { post({ increment: 1 }); };
  document.getElementById('add-note').onclick = function () { var v = document.getElementById('note').value; if (v) post({ note: v }); };
  var status = document.getElementById('ws-status');
  var sent = 'echo ' + Date.now();
  var ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onopen = function () { ws.send(sent); };
  ws.onmessage = function (e) { status.textContent = e.data === sent ? 'ok: ' + e.data : 'unexpected: ' + e.data; status.dataset.ok = String(e.data === sent); ws.close(); };
  ws.onerror = function () { status.textContent = 'failed'; status.dataset.ok = 'false'; };
})();
</script>
</body></html>
`;
}
