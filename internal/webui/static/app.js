// Hangar web UI: hash routing, session cookie + X-CSRF-Token for mutations.
// Live state comes from the server-sent events of GET /api/v1/events; where
// the server has none (404) the pages poll the REST lists every few seconds.
const main = document.getElementById('main');
let csrf = sessionStorage.getItem('csrf') || '';
const POLL_MS = 3000;

// ---- API ------------------------------------------------------------------

class APIError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = csrf;
  if (body !== undefined) { opts.headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(body); }
  const r = await fetch('/api/v1' + path, opts);
  const data = r.headers.get('Content-Type')?.includes('json') ? await r.json() : null;
  if (!r.ok) throw new APIError(r.status, data?.error?.message || `${r.status} ${r.statusText}`);
  return data;
}

// optional: null when the route is not there (yet: 404, or 405 where a POST
// route of the same shape matches) or not for the caller: history, usage, alerts.
async function optional(path) {
  try { return await api('GET', path); } catch (e) { if (e.status === 404 || e.status === 405 || e.status === 403) return null; throw e; }
}

const q = encodeURIComponent;

// ---- DOM helpers ----------------------------------------------------------

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

// show replaces the page's content (null and undefined parts left out).
// A live page re-renders on every change: what the user typed or chose in
// its forms, and the focus, are carried over to the new elements.
function show(...kids) {
  const page = location.hash;
  const key = (e) => `${e.form?.id || ''}/${e.id || e.name}`;
  const saved = new Map();
  let focused = null;
  if (main.dataset.page === page) {
    for (const e of main.querySelectorAll('input, select, textarea')) {
      saved.set(key(e), e.type === 'checkbox' ? e.checked : e.value);
      if (e === document.activeElement) focused = key(e);
    }
  }
  main.replaceChildren(...kids.filter((k) => k !== null && k !== undefined));
  main.dataset.page = page;
  for (const e of main.querySelectorAll('input, select, textarea')) {
    const k = key(e);
    if (!saved.has(k)) continue;
    if (e.type === 'checkbox') e.checked = saved.get(k); else e.value = saved.get(k);
    if (k === focused) e.focus();
  }
}

function table(id, head, rows) {
  return el('table', { id }, el('thead', {}, el('tr', {}, ...head.map((h) => el('th', {}, h)))), el('tbody', {}, ...rows));
}

function bar(used, total, label) {
  const pct = total > 0 ? Math.min(100, 100 * used / total) : 0;
  const b = el('span', { class: 'bar' + (pct >= 95 ? ' full' : pct >= 80 ? ' high' : ''), title: label || `${pct.toFixed(0)} %` }, el('span'));
  b.firstChild.style.width = pct.toFixed(1) + '%'; // CSSOM, not a style attribute: the CSP allows it
  return b;
}

function progressBar(fraction) {
  const p = el('progress', { max: '1', value: String(Math.max(0, Math.min(1, fraction || 0))) });
  return p;
}

function gib(bytes) { return (bytes / 2 ** 30).toFixed(1) + ' GiB'; }
function ago(t) { return t ? new Date(t).toLocaleString() : ''; }
function stateCell(state) { return el('td', { class: 'state state-' + (state || 'unknown') }, state || '?'); }

function flash(text, bad) {
  const f = document.getElementById('flash');
  f.textContent = text;
  f.className = bad ? 'error' : '';
  f.hidden = !text;
  clearTimeout(flash.timer);
  if (!bad && text) flash.timer = setTimeout(() => { f.hidden = true; }, 8000);
}

// act runs a mutating call and shows its outcome (a 403 too) to the user.
async function act(what, fn) {
  try {
    const r = await fn();
    flash(`${what}: ${r?.state ? 'operation ' + r.state : 'done'}`);
    if (r?.id && r?.kind) live.ops.set(r.id, r);
    await refreshSoon();
    return r;
  } catch (e) {
    flash(`${what}: ${e.message}`, true);
    return null;
  }
}

function button(label, id, fn) { return el('button', { type: 'button', id, 'data-action': label, onclick: fn }, label); }

// ---- who may do what (mirrors access.Can; the server decides) ------------

let me = null;
const rolePerms = { admin: ['read', 'operate', 'console', 'admin'], operator: ['read', 'operate', 'console'], viewer: ['read'], console: ['console'] };

function grantCovers(g, vm) {
  if (g.scope === 'pool') return true;
  if (!vm) return false;
  if (g.scope.startsWith('prefix:')) return vm.name.startsWith(g.scope.slice(7));
  if (g.scope.startsWith('tag:')) return (vm.tags || []).includes(g.scope.slice(4));
  return false;
}

function allows(grants, perm, vm) {
  return (grants || []).some((g) => (rolePerms[g.role] || []).includes(perm) && grantCovers(g, vm));
}

// can: perm on a VM spec (or the pool when vm is null); anyVM: on some VM.
function can(perm, vm) {
  if (!me) return false;
  if (me.admin && !me.limit?.length) return true;
  const ok = me.method === 'local' || me.method === 'certificate' || me.method === 'tokens-file' || allows(me.grants, perm, vm);
  return ok && (!me.limit?.length || allows(me.limit, perm, vm));
}
function canSomewhere(perm) {
  if (!me) return false;
  if (me.admin) return true;
  return (me.grants || []).some((g) => (rolePerms[g.role] || []).includes(perm));
}

// ---- live state -----------------------------------------------------------

const live = { hosts: new Map(), vms: new Map(), ops: new Map(), alerts: new Map(), pool: null, capacity: null, mode: '' };
let es = null;
let pollTimer = null;
let renderCurrent = null; // the page's re-render on a change, if it has one
let renderQueued = false;

function changed() {
  if (renderQueued || !renderCurrent) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; if (renderCurrent) renderCurrent(); });
}

function setMode(m) { live.mode = m; document.getElementById('live').textContent = m; }

function fill(map, list, key) {
  map.clear();
  for (const x of list || []) map.set(key(x), x);
}

// refresh reads every list once (the start, and each poll without events).
async function refresh() {
  const [hosts, vms, ops, cap, pool, alerts] = await Promise.all([
    optional('/hosts'), api('GET', '/vms'), api('GET', '/operations'), optional('/capacity'), optional('/pool'), optional('/alerts')]);
  fill(live.hosts, hosts, (h) => h.name);
  fill(live.vms, vms, (v) => v.spec.name);
  fill(live.ops, ops, (o) => o.id);
  fill(live.alerts, alerts?.alerts, (a) => a.id);
  live.capacity = cap;
  live.pool = pool;
  changed();
}

let refreshTimer = null;
function refreshSoon() {
  // With events the change arrives by itself; without, read again shortly.
  if (live.mode === 'live') return;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch(signedOut), 300);
}

let capTimer = null;
function capacitySoon() {
  if (capTimer) return;
  capTimer = setTimeout(async () => {
    capTimer = null;
    live.capacity = await optional('/capacity').catch(() => live.capacity);
    changed();
  }, 1000);
}

let opTimer = null;

function poll() {
  if (pollTimer) return;
  setMode('polling');
  pollTimer = setInterval(() => refresh().catch(signedOut), POLL_MS);
  // Progress bars move faster than the lists are read: the running
  // operations (a few) are read every second.
  opTimer = setInterval(() => {
    const running = [...live.ops.values()].filter((o) => o.state === 'pending' || o.state === 'running').slice(0, 10);
    for (const o of running) {
      api('GET', '/operations/' + q(o.id)).then((n) => { live.ops.set(n.id, n); changed(); }).catch(() => {});
    }
  }, 1000);
}

function startLive() {
  if (es || pollTimer) return;
  if (typeof EventSource === 'undefined') { poll(); return; }
  es = new EventSource('/api/v1/events', { withCredentials: true });
  let seen = null;
  const on = (type, fn) => es.addEventListener(type, (ev) => {
    let d;
    try { d = JSON.parse(ev.data); } catch { return; }
    fn(d);
    changed();
  });
  es.addEventListener('open', () => { seen = { hosts: new Set(), vms: new Set(), ops: new Set(), alerts: new Set() }; setMode('live'); });
  on('host', (h) => { live.hosts.set(h.name, h); seen?.hosts.add(h.name); capacitySoon(); });
  on('host-deleted', (d) => { live.hosts.delete(d.name); capacitySoon(); });
  on('vm', (v) => { live.vms.set(v.spec.name, v); seen?.vms.add(v.spec.name); capacitySoon(); });
  on('vm-deleted', (d) => { live.vms.delete(d.name); capacitySoon(); });
  on('operation', (o) => { live.ops.set(o.id, o); seen?.ops.add(o.id); });
  on('alert', (a) => { live.alerts.set(a.id, a); seen?.alerts.add(a.id); });
  on('alert-cleared', (d) => live.alerts.delete(d.id));
  on('pool', (p) => { live.pool = p; });
  // The caller's rights changed: the buttons follow them.
  on('whoami', (w) => { setMe(w); });
  on('synced', (d) => {
    // A stream that began with everything there is (full): drop what it
    // did not name. A resumed one sent only the changes since.
    if (!seen || !d.full) { seen = null; return; }
    for (const [k, set] of [['hosts', seen.hosts], ['vms', seen.vms], ['ops', seen.ops], ['alerts', seen.alerts]]) {
      for (const key of [...live[k].keys()]) if (!set.has(key)) live[k].delete(key);
    }
    seen = null;
  });
  es.addEventListener('error', () => {
    // A dropped stream reconnects by itself. A refusal closes the source
    // for good: a credential that no longer holds (the server ends the
    // stream of a revoked or expired session, and the reconnect gets 401)
    // goes to the login page; another (no events on this server: 404)
    // polls instead.
    if (es.readyState !== EventSource.CLOSED) { setMode('reconnecting'); return; }
    es = null;
    whoami().then(poll, (e) => { if (!signedOut(e)) poll(); });
  });
}

// signedOut sends the page to the login form after a 401 (and says so);
// other errors are left to the next read.
function signedOut(e) {
  if (e?.status !== 401) return false;
  me = null;
  first = true;
  location.hash = '#/login';
  return true;
}

function stopLive() {
  if (es) { es.close(); es = null; }
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  if (opTimer) { clearInterval(opTimer); opTimer = null; }
  setMode('');
}

// ---- pages ----------------------------------------------------------------

function loginPage() {
  stopLive();
  const f = el('form', { id: 'login' },
    el('label', {}, 'User ', el('input', { name: 'user', autocomplete: 'username' })),
    el('label', {}, ' Password ', el('input', { name: 'password', type: 'password', autocomplete: 'current-password' })),
    el('button', { type: 'submit' }, 'Log in'), el('p', { class: 'error', id: 'err' }));
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const d = await api('POST', '/login', { user: f.user.value, password: f.password.value });
      csrf = d?.csrfToken || '';
      sessionStorage.setItem('csrf', csrf);
      me = null;
      location.hash = '#/overview';
    } catch (e) { f.querySelector('#err').textContent = e.message; }
  });
  show(el('h2', {}, 'Log in'), f);
}

function vmCounts() {
  const counts = {};
  for (const v of live.vms.values()) {
    const s = v.status?.state || 'unknown';
    counts[s] = (counts[s] || 0) + 1;
  }
  return counts;
}

function overviewPage() {
  const render = () => {
    const cap = live.capacity;
    const capHosts = new Map((cap?.hosts || []).map((h) => [h.name, h]));
    const counts = vmCounts();
    const p = cap?.pool;
    const cards = el('div', { class: 'cards', id: 'pool-summary' },
      el('div', { class: 'card', id: 'master' }, 'Master', el('b', {}, live.pool?.master || '—')),
      el('div', { class: 'card' }, 'Hosts', el('b', { id: 'host-count' }, String(live.hosts.size)),
        p ? `${p.hostsAlive} alive, ${p.hostsDown} down, ${p.hostsMaintenance} in maintenance` : ''),
      el('div', { class: 'card', id: 'vm-counts', 'data-total': String(live.vms.size) }, 'VMs', el('b', { id: 'vm-total' }, String(live.vms.size)),
        ...Object.keys(counts).sort().map((s) => el('div', { 'data-state': s }, `${s}: `, el('span', { class: 'count' }, String(counts[s]))))),
      p ? el('div', { class: 'card' }, 'Pool CPUs', el('b', {}, `${p.allocatedCPUs} / ${p.cpus}`), bar(p.allocatedCPUs, p.cpus)) : null,
      p ? el('div', { class: 'card' }, 'Pool memory', el('b', {}, `${p.allocatedMemoryMiB} / ${p.memoryMiB} MiB`), bar(p.allocatedMemoryMiB, p.memoryMiB)) : null);
    const alerts = [...live.alerts.values()];
    const alertList = el('ul', { id: 'alerts' }, ...(alerts.length ? alerts.map((a) => el('li', { class: 'alert-' + a.severity, 'data-alert': a.id },
      `${a.severity}: ${a.message}`, el('span', { class: 'muted' }, ` since ${ago(a.since)}`))) : [el('li', { class: 'muted' }, 'no alerts')]));
    const rows = [...live.hosts.values()].sort((a, b) => a.name.localeCompare(b.name)).map((h) => {
      const c = capHosts.get(h.name) || {};
      const storage = (c.storage || h.storage || []).map((s) => el('div', {}, bar(s.usedBytes, s.totalBytes, s.pool),
        ` ${s.pool}: ${gib(s.usedBytes)} used, ${gib(s.freeBytes)} free`));
      const allocCPUs = c.allocatedCPUs ?? h.allocatedCPUs ?? 0;
      const state = [h.alive ? 'up' : 'down', h.liveness, h.maintenance ? 'maintenance' : '', h.role].filter(Boolean).join(', ');
      return el('tr', { 'data-host': h.name },
        el('td', { 'data-field': 'name' }, el('a', { href: '#/host/' + q(h.name) }, h.name), live.pool?.master === h.name ? el('span', { class: 'muted' }, ' (master)') : null),
        el('td', { class: h.alive ? '' : 'error', 'data-field': 'state' }, state),
        el('td', {}, bar(allocCPUs, h.cpus), ' ', el('span', { 'data-field': 'allocatedCPUs' }, String(allocCPUs)), ' / ',
          el('span', { 'data-field': 'cpus' }, String(h.cpus)), ' CPUs'),
        el('td', {}, bar(h.allocatedMemoryMiB, h.memoryMiB), ' ', el('span', { 'data-field': 'allocatedMemoryMiB' }, String(h.allocatedMemoryMiB)),
          ' / ', el('span', { 'data-field': 'memoryMiB' }, String(h.memoryMiB)), ' MiB',
          el('div', { class: 'muted' }, `${h.memoryMiB - h.allocatedMemoryMiB} MiB free`)),
        el('td', {}, ...storage),
        el('td', { 'data-field': 'vms' }, String(h.vms ?? 0)),
        el('td', { class: 'actions' }, can('admin', null) && h.alive && !h.maintenance
          ? button('Evacuate', 'evacuate-' + h.name, () => { if (confirm(`Evacuate ${h.name}?`)) act('evacuate ' + h.name, () => api('POST', `/hosts/${q(h.name)}/evacuate`, {})); })
          : null));
    });
    show(el('h2', {}, 'Pool overview'), cards, el('h3', {}, 'Alerts'), alertList, el('h3', {}, 'Hosts'),
      table('hosts', ['Host', 'State', 'CPU allocated', 'Memory allocated', 'Storage', 'VMs', ''], rows));
  };
  renderCurrent = render;
  render();
}

function hostPage(name) {
  const charts = chartBox(`/hosts/${q(name)}/history`, '#/host/' + q(name));
  const render = () => {
    const h = live.hosts.get(name);
    if (!h) { show(el('h2', {}, name), el('p', { class: 'error' }, 'no such host (removed?)')); return; }
    const vms = [...live.vms.values()].filter((v) => (v.status?.host || v.spec.host) === name)
      .sort((a, b) => a.spec.name.localeCompare(b.spec.name))
      .map((v) => el('tr', { 'data-vm': v.spec.name }, el('td', {}, el('a', { href: '#/vm/' + q(v.spec.name) }, v.spec.name)),
        stateCell(v.status?.state), el('td', {}, String(v.spec.cpus)), el('td', {}, `${v.spec.memoryMiB} MiB`)));
    show(
      el('h2', {}, 'Host ', el('span', { id: 'host-name' }, name)),
      el('dl', { class: 'spec', id: 'host-spec' },
        el('dt', {}, 'State'), el('dd', {}, [h.alive ? 'up' : 'down', h.liveness, h.maintenance ? 'maintenance' : '', h.role].filter(Boolean).join(', ')),
        el('dt', {}, 'CPUs'), el('dd', {}, `${h.allocatedCPUs ?? 0} / ${h.cpus} allocated`),
        el('dt', {}, 'Memory'), el('dd', {}, `${h.allocatedMemoryMiB} / ${h.memoryMiB} MiB allocated`),
        el('dt', {}, 'Master'), el('dd', {}, live.pool?.master === name ? 'yes' : 'no')),
      charts,
      el('h3', {}, 'VMs'), table('host-vms', ['Name', 'State', 'CPUs', 'Memory'], vms));
  };
  renderCurrent = render;
  render();
}

function vmsPage() {
  const filter = el('input', { id: 'vm-filter', placeholder: 'filter by name, host or tag', type: 'search' });
  const stateSel = el('select', { id: 'vm-state' }, el('option', { value: '' }, 'any state'));
  const tbody = el('tbody');
  const head = el('thead', {}, el('tr', {}, ...['VM', 'State', 'Host', 'CPUs', 'Memory', 'Tags'].map((h) => el('th', {}, h))));
  const render = () => {
    const f = filter.value.toLowerCase();
    const st = stateSel.value;
    const states = new Set();
    const rows = [];
    for (const v of [...live.vms.values()].sort((a, b) => a.spec.name.localeCompare(b.spec.name))) {
      const s = v.status?.state || '';
      states.add(s);
      if (st && s !== st) continue;
      const text = [v.spec.name, v.status?.host, v.spec.host, ...(v.spec.tags || [])].join(' ').toLowerCase();
      if (f && !text.includes(f)) continue;
      rows.push(el('tr', { 'data-vm': v.spec.name },
        el('td', {}, el('a', { href: '#/vm/' + q(v.spec.name) }, v.spec.name)), stateCell(s),
        el('td', {}, v.status?.host || v.spec.host || ''), el('td', {}, String(v.spec.cpus)), el('td', {}, `${v.spec.memoryMiB} MiB`),
        el('td', {}, (v.spec.tags || []).join(', '))));
    }
    tbody.replaceChildren(...rows);
    const have = new Set([...stateSel.options].map((o) => o.value));
    for (const s of [...states].sort()) if (!have.has(s)) stateSel.append(el('option', { value: s }, s));
  };
  filter.addEventListener('input', render);
  stateSel.addEventListener('change', render);
  show(el('h2', {}, 'Virtual machines'),
    el('p', {}, filter, ' ', stateSel, ' ', canSomewhere('operate') ? el('a', { href: '#/create', id: 'create-link' }, 'Create a VM') : null),
    el('table', { id: 'vms' }, head, tbody));
  renderCurrent = render;
  render();
}

function opRow(o) {
  return el('tr', { 'data-op': o.id, 'data-state': o.state },
    el('td', {}, o.kind), el('td', {}, o.target), stateCell(o.state),
    el('td', {}, progressBar(o.state === 'succeeded' ? 1 : o.progress?.fraction), ' ',
      el('span', { class: 'fraction' }, `${Math.round(100 * (o.state === 'succeeded' ? 1 : o.progress?.fraction || 0))} %`),
      o.progress?.phase ? el('span', { class: 'muted' }, ' ' + o.progress.phase) : null),
    el('td', { class: 'error' }, o.error ? o.error.message : '', ...(o.warnings || []).map((w) => el('div', { class: 'muted' }, w))),
    el('td', { class: 'muted' }, ago(o.updated || o.created)),
    el('td', {}, (o.state === 'pending' || o.state === 'running') && can('operate', live.vms.get(o.target)?.spec || null)
      ? button('Cancel', 'cancel-' + o.id, () => act('cancel', () => api('DELETE', '/operations/' + q(o.id)))) : null));
}

function opsTable(id, ops) {
  const sorted = ops.sort((a, b) => String(b.created).localeCompare(String(a.created))).slice(0, 200);
  return table(id, ['Kind', 'Target', 'State', 'Progress', 'Error', 'Updated', ''], sorted.map(opRow));
}

function operationsPage() {
  const render = () => {
    const ops = [...live.ops.values()];
    const running = ops.filter((o) => o.state === 'pending' || o.state === 'running');
    const done = ops.filter((o) => !(o.state === 'pending' || o.state === 'running'));
    show(el('h2', {}, 'Operations'), el('h3', {}, 'Running'), opsTable('ops-running', running),
      el('h3', {}, 'Recent'), opsTable('ops-recent', done));
  };
  renderCurrent = render;
  render();
}

const chartSeries = [
  ['CPU (cores)', 'cpuCores'], ['Memory (MiB)', 'memoryBytes', (v) => v / 2 ** 20],
  ['Disk read/write (KiB/s)', 'diskReadBps', (v) => v / 1024, 'diskWriteBps'], ['Network rx/tx (KiB/s)', 'netRxBps', (v) => v / 1024, 'netTxBps'],
];

// drawCharts draws the history at path into box: false when the server
// has no such route (the box stays hidden for good), true otherwise (a VM
// just started has no samples yet: hidden until it has).
async function drawCharts(box, path) {
  const h = await optional(path);
  if (!h || !h.samples?.length) { box.hidden = true; return !!h; }
  const { default: uPlot } = await import('/ui/vendor/uPlot.esm.js');
  box.hidden = false;
  box.replaceChildren();
  const t = h.samples.map((s) => s.t);
  for (const [title, a, scale, b] of chartSeries) {
    const f = scale || ((v) => v);
    const data = [t, h.samples.map((s) => f(s[a] || 0))];
    const series = [{}, { label: a, stroke: '#27a' }];
    if (b) { data.push(h.samples.map((s) => f(s[b] || 0))); series.push({ label: b, stroke: '#c62' }); }
    const div = el('div', { class: 'chart' });
    box.append(div);
    // eslint-disable-next-line no-new
    new uPlot({ title, width: 420, height: 180, series }, data, div);
  }
  return true;
}

// chartBox is a box of charts of the history at path, drawn now and every
// 10 s (the hosts sample every 10 s) while the page at hash is shown.
function chartBox(path, hash) {
  const box = el('div', { class: 'charts', id: 'charts', hidden: true });
  let history = true; // the server has the history route
  const redraw = () => drawCharts(box, path).then((ok) => { history = ok; }).catch(() => { box.hidden = true; });
  redraw();
  const again = setInterval(() => {
    if (location.hash !== hash) { clearInterval(again); return; }
    if (history) redraw();
  }, 10000);
  return box;
}

function vmActions(v) {
  const n = v.spec.name;
  const s = v.status?.state;
  const path = `/vms/${q(n)}`;
  if (!can('operate', v.spec)) {
    return el('p', { class: 'muted', id: 'read-only' }, 'read only: your grants allow no changes to this VM',
      can('console', v.spec) ? el('span', {}, ' — ', el('a', { href: '/ui/console.html#' + q(n), id: 'console-link' }, 'Console')) : null);
  }
  const a = (label, verb, query = '') => button(label, 'act-' + verb + (query ? '-force' : ''), () => act(`${label} ${n}`, () => api('POST', `${path}/${verb}${query}`)));
  const running = s === 'running';
  const hosts = [...live.hosts.values()].filter((h) => h.alive && h.name !== v.status?.host);
  const nameForm = (id, label, fn) => {
    const f = el('form', { class: 'inline', id }, el('input', { name: 'name', placeholder: 'name', required: true, pattern: '[a-z0-9]([a-z0-9-]*[a-z0-9])?' }),
      el('button', { type: 'submit' }, label));
    f.addEventListener('submit', (ev) => { ev.preventDefault(); const v = f.name.value; f.reset(); fn(v); });
    return f;
  };
  const migrate = el('form', { class: 'inline', id: 'migrate-form' }, el('select', { name: 'to', id: 'migrate-to' }, ...hosts.map((h) => el('option', { value: h.name }, h.name))),
    el('button', { type: 'submit', disabled: !hosts.length || !running, title: hosts.length ? 'live-migrate to the chosen host' : 'no other live host' }, 'Migrate'));
  migrate.addEventListener('submit', (ev) => { ev.preventDefault(); act(`migrate ${n}`, () => api('POST', `${path}/migrate`, { to: migrate.to.value })); });
  return el('div', { class: 'actions', id: 'vm-actions' },
    el('div', {},
      !running && s !== 'paused' ? a('Start', 'start') : null,
      running || s === 'paused' ? a('Stop', 'stop') : null,
      running || s === 'paused' ? a('Force stop', 'stop', '?force=true') : null,
      running ? a('Reboot', 'reboot') : null,
      running ? a('Pause', 'pause') : null,
      s === 'paused' ? a('Resume', 'resume') : null,
      can('console', v.spec) ? el('a', { href: '/ui/console.html#' + q(n), id: 'console-link' }, 'Console') : null,
      button('Delete', 'act-delete', () => { if (confirm(`Delete ${n} and its disks?`)) act(`delete ${n}`, () => api('DELETE', `${path}?force=true`)).then((r) => { if (r) location.hash = '#/vms'; }); })),
    el('div', {},
      nameForm('snapshot-form', 'Take snapshot', (sn) => act(`snapshot ${n}`, () => api('POST', `${path}/snapshots`, { name: sn }))),
      nameForm('clone-form', 'Clone', (c) => act(`clone ${n}`, () => api('POST', `${path}/clone`, { name: c }))),
      can('operate', null) ? nameForm('template-form', 'Make template', (t) => act(`template ${n}`, () => api('POST', `${path}/template`, { template: t }))) : null,
      migrate));
}

// resourcesText is a VM's resource controls (spec.resources) in words, '' when it has none.
function resourcesText(r) {
  if (!r) return '';
  return [
    r.cpuShares ? `CPU weight ${r.cpuShares}` : '',
    r.cpuLimit ? `CPU cap ${r.cpuLimit} cores` : '',
    r.cpuPinning ? `vCPUs pinned to ${r.cpuPinning}` : '',
    r.memoryLimitMiB ? `memory limit ${r.memoryLimitMiB} MiB` : '',
    r.balloonMiB ? `balloon target ${r.balloonMiB} MiB` : '',
    r.hugepages ? 'hugepages' : '',
  ].filter(Boolean).join(', ');
}

// diskLimitsText is a disk's I/O limits (disk.limits) in words.
function diskLimitsText(l) {
  if (!l) return '';
  const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB/s`;
  return [
    l.iops ? `${l.iops} IOPS` : '', l.iopsRead ? `${l.iopsRead} read IOPS` : '', l.iopsWrite ? `${l.iopsWrite} write IOPS` : '',
    l.bps ? mib(l.bps) : '', l.bpsRead ? `read ${mib(l.bpsRead)}` : '', l.bpsWrite ? `write ${mib(l.bpsWrite)}` : '',
    l.iopsMax ? `burst ${l.iopsMax} IOPS` : '', l.bpsMax ? `burst ${mib(l.bpsMax)}` : '', l.group ? `group ${l.group}` : '',
  ].filter(Boolean).join(', ');
}

// nicLimitsText is a NIC's bandwidth limits (nic.limits) in words, per direction as the guest sees it.
function nicLimitsText(l) {
  if (!l) return '';
  const rx = l.rxMbps || l.mbps || 0;
  const tx = l.txMbps || l.mbps || 0;
  return [rx ? `in ${rx} Mbit/s` : '', tx ? `out ${tx} Mbit/s` : ''].filter(Boolean).join(', ');
}

function vmPage(name) {
  let snaps = null;
  let usage = null;
  const charts = chartBox(`/vms/${q(name)}/history`, '#/vm/' + q(name));
  const load = async () => {
    [snaps, usage] = await Promise.all([optional(`/vms/${q(name)}/snapshots`), optional(`/vms/${q(name)}/usage`)]);
    changed();
  };
  const render = () => {
    const v = live.vms.get(name);
    if (!v) { show(el('h2', {}, name), el('p', { class: 'error' }, 'no such VM (deleted?)')); return; }
    const sp = v.spec;
    const st = v.status || {};
    const mayOperate = can('operate', sp);
    const snapRows = (snaps || st.snapshots || []).map((s) => el('tr', { 'data-snapshot': s.name },
      el('td', {}, s.name), el('td', {}, ago(s.created)), el('td', {}, s.memory ? 'with memory' : 'disks'),
      el('td', { class: 'actions' }, mayOperate ? [
        button('Commit', 'snap-commit-' + s.name, () => act(`commit ${s.name}`, () => api('DELETE', `/vms/${q(name)}/snapshots/${q(s.name)}`)).then(load)),
        button('Revert', 'snap-revert-' + s.name, () => act(`revert ${s.name}`, () => api('POST', `/vms/${q(name)}/snapshots/${q(s.name)}/revert`)).then(load)),
        button('Discard', 'snap-discard-' + s.name, () => act(`discard ${s.name}`, () => api('POST', `/vms/${q(name)}/snapshots/${q(s.name)}/revert?discard=true`)).then(load)),
      ].reduce((f, b) => { f.append(b); return f; }, document.createDocumentFragment()) : null)));
    const disks = (sp.disks || []).map((d, i) => {
      const ds = (st.disks || [])[i] || {};
      return el('tr', {}, el('td', {}, d.name || `disk${i}`), el('td', {}, d.media === 'cdrom' ? 'cdrom ' + (d.image || '(empty)') : d.image ? 'on image ' + d.image : d.volume || (d.sizeMiB ? `${d.sizeMiB} MiB` : '')),
        el('td', {}, d.bus || ''), el('td', { class: 'muted' }, [ds.pool, ds.volume].filter(Boolean).join('/')),
        el('td', { 'data-field': 'limits' }, diskLimitsText(d.limits)));
    });
    const nics = (sp.nics || []).map((n) => el('tr', {}, el('td', {}, n.mode), el('td', {}, n.bridge || ''), el('td', {}, n.mac || ''),
      el('td', {}, (n.forwards || []).map((f) => `${f.hostPort}→${f.guestPort}`).join(', ')),
      el('td', { 'data-field': 'limits' }, nicLimitsText(n.limits))));
    const ops = [...live.ops.values()].filter((o) => o.target === name);
    show(
      el('h2', {}, 'VM ', el('span', { id: 'vm-name' }, name), ' ', el('span', { id: 'vm-state', class: 'state-' + st.state }, st.state || '?')),
      vmActions(v),
      el('dl', { class: 'spec', id: 'vm-spec' },
        el('dt', {}, 'Host'), el('dd', {}, st.host || sp.host || '—'),
        el('dt', {}, 'CPUs'), el('dd', {}, String(sp.cpus) + (sp.cpuModel ? ` (${sp.cpuModel})` : '')),
        el('dt', {}, 'Memory'), el('dd', {}, `${sp.memoryMiB} MiB`),
        el('dt', {}, 'Resources'), el('dd', { id: 'vm-resources' }, resourcesText(sp.resources) || 'defaults'),
        el('dt', {}, 'Power (desired)'), el('dd', {}, sp.power || ''),
        el('dt', {}, 'Started'), el('dd', {}, ago(st.startedAt)),
        el('dt', {}, 'Accelerator'), el('dd', {}, st.accelerator || ''),
        el('dt', {}, 'Restarts'), el('dd', {}, String(st.restarts || 0)),
        el('dt', {}, 'Reason'), el('dd', {}, st.reason || ''),
        el('dt', {}, 'Tags'), el('dd', {}, (sp.tags || []).join(', ')),
        el('dt', {}, 'HA'), el('dd', {}, sp.ha ? JSON.stringify(sp.ha) : 'no')),
      usage ? el('div', { id: 'usage' }, el('h3', {}, 'Usage'), el('dl', { class: 'spec' },
        el('dt', {}, 'CPU'), el('dd', {}, `${(usage.cpuCores || 0).toFixed(2)} cores (${(usage.cpuSeconds || 0).toFixed(0)} s in all)`),
        el('dt', {}, 'Memory'), el('dd', {}, `${((usage.memoryBytes || 0) / 2 ** 20).toFixed(0)} MiB` +
          (usage.memoryLimitBytes ? ` of ${(usage.memoryLimitBytes / 2 ** 20).toFixed(0)} MiB limit` : '') +
          (usage.balloonBytes ? `; guest has ${(usage.balloonBytes / 2 ** 20).toFixed(0)} MiB (balloon)` : '')),
        el('dt', {}, 'Disk'), el('dd', {}, `read ${gib(usage.diskReadBytes || 0)}, written ${gib(usage.diskWriteBytes || 0)}`),
        el('dt', {}, 'Network'), el('dd', {}, `rx ${gib(usage.netRxBytes || 0)}, tx ${gib(usage.netTxBytes || 0)}`))) : null,
      charts,
      el('h3', {}, 'Disks'), table('disks', ['Name', 'Source', 'Bus', 'Volume', 'Limits'], disks),
      el('h3', {}, 'NICs'), table('nics', ['Mode', 'Bridge', 'MAC', 'Forwards', 'Limit'], nics),
      el('h3', {}, 'Snapshots'), table('snapshots', ['Name', 'Taken', 'Kind', ''], snapRows),
      el('h3', {}, 'Operations'), opsTable('vm-ops', ops));
  };
  renderCurrent = render;
  render();
  load().catch(() => {});
  // Snapshots change with operations: read them again when one of this VM's ends.
  // Usage is sampled every 10 s: read it again as often.
  let lastOps = '';
  let ticks = 0;
  const again = setInterval(() => {
    if (location.hash !== '#/vm/' + q(name) && location.hash !== '#/vm/' + name) { clearInterval(again); return; }
    const sig = [...live.ops.values()].filter((o) => o.target === name).map((o) => o.id + o.state).join();
    ticks++;
    if (sig !== lastOps || ticks % 10 === 0) { lastOps = sig; load().catch(() => {}); }
  }, 1000);
}

async function createPage() {
  const [templates, hosts] = await Promise.all([optional('/templates'), Promise.resolve([...live.hosts.values()])]);
  const f = el('form', { class: 'grid', id: 'create-form' },
    el('label', { for: 'c-name' }, 'Name'), el('input', { id: 'c-name', name: 'name', required: true, pattern: '[a-z0-9]([a-z0-9-]*[a-z0-9])?' }),
    el('label', { for: 'c-source' }, 'From'), el('select', { id: 'c-source', name: 'source' },
      el('option', { value: 'image' }, 'an image (overlay on it)'), el('option', { value: 'template' }, 'a template'),
      el('option', { value: 'iso' }, 'an ISO (with an empty disk)'), el('option', { value: 'empty' }, 'an empty disk')),
    el('label', { for: 'c-image' }, 'Image (pool/volume or a file in an import directory)'), el('input', { id: 'c-image', name: 'image' }),
    el('label', { for: 'c-template' }, 'Template'), el('select', { id: 'c-template', name: 'template' },
      ...(templates || []).map((t) => el('option', { value: t.name }, `${t.name} (${t.cpus} CPUs, ${t.memoryMiB} MiB)`))),
    el('label', { for: 'c-iso' }, 'ISO'), el('input', { id: 'c-iso', name: 'iso' }),
    el('label', { for: 'c-size' }, 'Disk size (MiB)'), el('input', { id: 'c-size', name: 'size', type: 'number', value: '1024', min: '1' }),
    el('label', { for: 'c-cpus' }, 'CPUs'), el('input', { id: 'c-cpus', name: 'cpus', type: 'number', value: '1', min: '1' }),
    el('label', { for: 'c-mem' }, 'Memory (MiB)'), el('input', { id: 'c-mem', name: 'memory', type: 'number', value: '256', min: '32' }),
    el('label', { for: 'c-host' }, 'Host'), el('select', { id: 'c-host', name: 'host' }, el('option', { value: '' }, 'the scheduler picks'),
      ...hosts.map((h) => el('option', { value: h.name }, h.name))),
    el('label', { for: 'c-nic' }, 'User-mode network'), el('input', { id: 'c-nic', name: 'nic', type: 'checkbox', checked: true }),
    el('label', { for: 'c-start' }, 'Start it'), el('input', { id: 'c-start', name: 'start', type: 'checkbox', checked: true }),
    el('span'), el('button', { type: 'submit', id: 'c-submit' }, 'Create'));
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = f.name.value;
    const start = f.start.checked;
    let r;
    if (f.source.value === 'template') {
      r = await act(`deploy ${name}`, () => api('POST', `/templates/${q(f.template.value)}/deploy`, { name, start }));
    } else {
      const disks = f.source.value === 'image' ? [{ image: f.image.value }]
        : f.source.value === 'iso' ? [{ sizeMiB: Number(f.size.value) }, { image: f.iso.value, media: 'cdrom' }] : [{ sizeMiB: Number(f.size.value) }];
      const spec = { name, cpus: Number(f.cpus.value), memoryMiB: Number(f.memory.value), disks };
      if (f.nic.checked) spec.nics = [{ mode: 'user' }];
      if (f.host.value) spec.host = f.host.value;
      r = await act(`create ${name}`, () => api('POST', '/vms' + (start ? '?start=true' : ''), spec));
    }
    if (r) location.hash = '#/vm/' + q(name);
  });
  show(el('h2', {}, 'Create a VM'), f);
  renderCurrent = null;
}

async function templatesPage() {
  const list = await optional('/templates') || [];
  const rows = list.map((t) => {
    const f = el('form', { class: 'inline' }, el('input', { name: 'name', placeholder: 'new VM name', required: true }),
      el('label', {}, el('input', { name: 'linked', type: 'checkbox' }), ' linked'),
      el('button', { type: 'submit' }, 'Deploy'));
    f.addEventListener('submit', (ev) => { ev.preventDefault(); act(`deploy ${f.name.value}`, () => api('POST', `/templates/${q(t.name)}/deploy`, { name: f.name.value, linked: f.linked.checked, start: true })); });
    return el('tr', { 'data-template': t.name }, el('td', {}, t.name), el('td', {}, t.host), el('td', {}, `${t.cpus} CPUs, ${t.memoryMiB} MiB`),
      el('td', {}, t.source || ''), el('td', {}, canSomewhere('operate') ? f : null));
  });
  show(el('h2', {}, 'Templates'), table('templates', ['Template', 'Host', 'Size', 'Made from', ''], rows));
  renderCurrent = null;
}

async function usersPage() {
  const users = await api('GET', '/users');
  const rows = users.map((u) => el('tr', { 'data-user': u.name }, el('td', {}, u.name),
    el('td', {}, (u.grants || []).map((g) => `${g.role}@${g.scope}`).join(', ')), el('td', { class: 'muted' }, ago(u.created)),
    el('td', {}, button('Delete', 'user-delete-' + u.name, () => { if (confirm(`Delete user ${u.name}?`)) act(`delete user ${u.name}`, () => api('DELETE', `/users/${q(u.name)}`)).then(usersPage); }))));
  const f = el('form', { class: 'inline', id: 'user-form' }, el('input', { name: 'name', placeholder: 'user', required: true }),
    el('input', { name: 'password', type: 'password', placeholder: 'password', required: true, autocomplete: 'new-password' }),
    el('select', { name: 'role' }, ...['viewer', 'operator', 'console', 'admin'].map((r) => el('option', { value: r }, r))),
    el('input', { name: 'scope', value: 'pool', placeholder: 'pool, prefix:P or tag:T' }), el('button', { type: 'submit' }, 'Add user'));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    act(`add user ${f.name.value}`, () => api('POST', '/users', { name: f.name.value, password: f.password.value, grants: [{ role: f.role.value, scope: f.scope.value }] })).then(usersPage);
  });
  show(el('h2', {}, 'Users'), table('users', ['User', 'Grants', 'Created', ''], rows), f);
  renderCurrent = null;
}

async function auditPage() {
  const recs = await api('GET', '/audit?limit=200');
  const list = Array.isArray(recs) ? recs : recs?.records || [];
  const rows = list.map((r) => el('tr', {}, el('td', { class: 'muted' }, ago(r.time)), el('td', {}, r.who || r.user || ''),
    el('td', {}, r.action || ''), el('td', {}, r.vm || r.target || ''), el('td', {}, r.source || ''),
    el('td', { class: r.status >= 400 ? 'error' : '' }, String(r.status ?? ''))));
  show(el('h2', {}, 'Audit log'), table('audit', ['When', 'Who', 'What', 'VM', 'From', 'Result'], rows));
  renderCurrent = null;
}

// ---- routing --------------------------------------------------------------

async function whoami() {
  setMe(await api('GET', '/whoami'));
}

function setMe(w) {
  me = w;
  document.getElementById('me').textContent = me.name;
  document.getElementById('nav-users').hidden = !can('admin', null);
  document.getElementById('nav-audit').hidden = !can('admin', null);
}

let first = true;
async function route() {
  const nav = document.getElementById('nav');
  const [page, arg] = location.hash.replace(/^#\//, '').split('/');
  renderCurrent = null;
  if (page === 'login') { nav.hidden = true; return loginPage(); }
  try {
    if (!me) await whoami();
    nav.hidden = false;
    if (first || !live.mode) { first = false; await refresh(); startLive(); }
    switch (page) {
      case 'vms': vmsPage(); break;
      case 'vm': vmPage(decodeURIComponent(arg || '')); break;
      case 'host': hostPage(decodeURIComponent(arg || '')); break;
      case 'create': await createPage(); break;
      case 'operations': operationsPage(); break;
      case 'templates': await templatesPage(); break;
      case 'users': await usersPage(); break;
      case 'audit': await auditPage(); break;
      default: overviewPage();
    }
  } catch (e) {
    if (e.status === 401) { nav.hidden = true; me = null; loginPage(); return; }
    show(el('p', { class: 'error' }, e.message));
  }
}

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/logout'); } catch { /* already out */ }
  sessionStorage.removeItem('csrf');
  me = null;
  first = true;
  location.hash = '#/login';
});
window.addEventListener('hashchange', route);
route();
