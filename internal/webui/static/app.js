// Hangar web UI: hash routing, session cookie + X-CSRF-Token for mutations.
const main = document.getElementById('main');
let csrf = sessionStorage.getItem('csrf') || '';

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = csrf;
  if (body !== undefined) { opts.headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(body); }
  const r = await fetch('/api/v1' + path, opts);
  const data = r.headers.get('Content-Type')?.includes('json') ? await r.json() : null;
  if (!r.ok) throw new Error(data?.error?.message || r.statusText);
  return data;
}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}

function loginPage() {
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
      location.hash = '#/overview';
    } catch (e) { f.querySelector('#err').textContent = e.message; }
  });
  main.replaceChildren(f);
}

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, 100 * used / total) : 0;
  const b = el('span', { class: 'bar' }, el('span'));
  b.firstChild.style.width = pct.toFixed(1) + '%';
  return b;
}

async function overview() {
  const hosts = await api('GET', '/hosts');
  const list = Array.isArray(hosts) ? hosts : (hosts?.hosts || hosts?.items || []);
  const t = el('table', { id: 'hosts' }, el('tr', {}, el('th', {}, 'Host'), el('th', {}, 'State'),
    el('th', {}, 'CPUs'), el('th', {}, 'Memory allocated'), el('th', {}, 'VMs')));
  for (const h of list) {
    const mem = h.memoryMiB ?? 0, used = h.allocatedMemoryMiB ?? 0;
    const state = (h.alive ? 'up' : 'down') + (h.maintenance ? ', maintenance' : '') + (h.role ? ', ' + h.role : '');
    t.append(el('tr', { 'data-host': h.name ?? '' }, el('td', {}, h.name ?? ''), el('td', { class: h.alive ? '' : 'error' }, state),
      el('td', {}, String(h.cpus ?? '')), el('td', {}, bar(used, mem), ` ${used} / ${mem} MiB`), el('td', {}, String(h.vms ?? 0))));
  }
  main.replaceChildren(el('h2', {}, 'Pool overview'), t);
}

async function vms() {
  const d = await api('GET', '/vms');
  const list = Array.isArray(d) ? d : (d?.vms || d?.items || []);
  const t = el('table', { id: 'vms' }, el('tr', {}, el('th', {}, 'VM'), el('th', {}, 'State'), el('th', {}, 'Host')));
  const rows = list.map((v) => el('tr', { 'data-vm': v.spec?.name ?? '' }, el('td', {}, v.spec?.name ?? ''),
    el('td', {}, v.status?.state ?? ''), el('td', {}, v.status?.host ?? '')));
  t.append(...rows);
  const filter = el('input', { id: 'vm-filter', placeholder: 'filter by name, state or host' });
  filter.addEventListener('input', () => {
    const q = filter.value.toLowerCase();
    for (const r of rows) r.hidden = q !== '' && !r.textContent.toLowerCase().includes(q);
  });
  main.replaceChildren(el('h2', {}, 'Virtual machines'), filter, t);
}

async function route() {
  const nav = document.getElementById('nav');
  const page = location.hash.replace(/^#\//, '') || 'overview';
  if (page === 'login') { nav.hidden = true; return loginPage(); }
  try {
    nav.hidden = false;
    if (page === 'vms') await vms(); else await overview();
  } catch (e) {
    nav.hidden = true;
    loginPage();
  }
}

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/logout'); } catch (e) { /* already out */ }
  sessionStorage.removeItem('csrf');
  location.hash = '#/login';
});
window.addEventListener('hashchange', route);
route();
