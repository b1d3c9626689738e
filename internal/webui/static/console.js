// The browser's serial console: a single-use ticket, then a websocket to
// GET /api/v1/vms/{name}/console (binary messages carry the serial bytes).
import { Terminal } from '/ui/vendor/xterm.mjs';
import { FitAddon } from '/ui/vendor/addon-fit.mjs';

const name = decodeURIComponent(location.hash.replace(/^#/, ''));
const status = document.getElementById('status');
document.getElementById('title').textContent = name + ' console';
document.getElementById('back').href = '/#/vm/' + encodeURIComponent(name);
document.title = name + ' — Hangar console';

function say(text, bad) {
  status.textContent = text;
  status.className = bad ? 'error' : '';
}

const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000 });
const fit = new FitAddon();
term.loadAddon(fit);
term.open(document.getElementById('term'));
fit.fit();
window.addEventListener('resize', () => fit.fit());

async function connect() {
  const r = await fetch('/api/v1/vms/' + encodeURIComponent(name) + '/console/ticket', {
    method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': sessionStorage.getItem('csrf') || '' },
  });
  const d = await r.json().catch(() => null);
  if (!r.ok) { say(d?.error?.message || r.statusText, true); return; }
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/vms/${encodeURIComponent(name)}/console?ticket=${encodeURIComponent(d.ticket)}`);
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  ws.addEventListener('open', () => { say('connected'); term.focus(); });
  ws.addEventListener('message', (ev) => term.write(new Uint8Array(ev.data)));
  ws.addEventListener('close', (ev) => say('disconnected' + (ev.reason ? ': ' + ev.reason : ''), true));
  term.onData((s) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(s)); });
}
connect().catch((e) => say(e.message, true));
