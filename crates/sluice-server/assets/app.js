// sluice dashboard. Live numbers come from the /v1/live WebSocket (one message per second),
// ranges from the query API. Every string that comes from data is put into the page with
// textContent, never as HTML.
'use strict';

const KEY_STORE = 'sluice.readKey';
const WINDOW = 300;
const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n || 0).toLocaleString('en-US');

let key = null;
let socket = null;
let retry = 1000;
let series = new Array(WINDOW).fill(0);
let liveAlerts = [];
let storedAlerts = [];
let storedAlertsNote = '';

// ---- the key: from the URL fragment (never sent to the server), else local storage ----------
function takeKeyFromFragment() {
  const m = /(?:^|[#&])key=([^&]+)/.exec(location.hash);
  if (!m) return;
  localStorage.setItem(KEY_STORE, decodeURIComponent(m[1]));
  // Keep the key out of the address bar (screenshots, shared screens); the bookmark still works.
  history.replaceState(null, '', location.pathname + location.search);
}

function showLogin(message) {
  $('dash').hidden = true;
  $('forget').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  setStatus(false, 'not connected');
}

async function start() {
  key = localStorage.getItem(KEY_STORE);
  if (!key) { showLogin(''); return; }
  // Check the key first: /v1/live answers 401/403 to a bad key, the current message otherwise.
  let check;
  try {
    check = await fetch('/v1/live', { headers: { Authorization: 'Bearer ' + key } });
  } catch (e) {
    setStatus(false, 'server unreachable');
    setTimeout(start, 3000);
    return;
  }
  if (check.status === 401 || check.status === 403) {
    localStorage.removeItem(KEY_STORE);
    let msg = 'This key was refused.';
    try { msg = (await check.json()).message || msg; } catch (e) { /* not JSON */ }
    showLogin(msg);
    return;
  }
  $('login').hidden = true;
  $('dash').hidden = false;
  $('forget').hidden = false;
  // A plain GET answers the current message: draw it at once, the socket takes over.
  try { const m = await check.json(); if (m && m.ts > 0) onLive(m); } catch (e) { /* not JSON */ }
  connect();
  loadRange();
}

// ---- live: the WebSocket ------------------------------------------------------------------
function setStatus(on, text) {
  const s = $('status');
  s.textContent = text;
  s.className = 'status ' + (on ? 'on' : 'off');
}

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  socket = new WebSocket(proto + '//' + location.host + '/v1/live?key=' + encodeURIComponent(key));
  socket.onopen = () => { retry = 1000; setStatus(true, 'live'); };
  socket.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    onLive(m);
  };
  socket.onclose = () => {
    setStatus(false, 'reconnecting…');
    socket = null;
    if (!key) return;
    setTimeout(start, retry);
    retry = Math.min(retry * 2, 15000);
  };
}

function onLive(m) {
  if (Array.isArray(m.last_5m)) {
    series = m.last_5m.slice(-WINDOW);
    while (series.length < WINDOW) series.unshift(0);
  } else {
    // The server sends the whole window again after any second we missed.
    series.push(m.total);
    series.splice(0, series.length - WINDOW);
  }
  $('rate').textContent = fmt(m.total);
  $('total-5m').textContent = fmt(m.total_5m);
  $('peak').textContent = fmt(Math.max(...series));
  $('clock').textContent = '· ' + new Date(m.ts * 1000).toLocaleTimeString();
  renderBacklog(m.backlog || {}, m.pending || {});
  renderByName(m.by_name || [], m.by_name_5m || []);
  liveAlerts = Array.isArray(m.alerts) ? m.alerts : [];
  renderAlerts();
  drawChart();
}

function renderBacklog(backlog, pending) {
  const groups = Object.keys(backlog).sort();
  $('backlog').textContent = groups.length
    ? groups.map((g) => g + ': ' + fmt(backlog[g]) + ' (' + fmt(pending[g]) + ')').join('\n')
    : 'no consumer group yet';
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c);
  return tr;
}

function renderByName(second, window5m) {
  const now = new Map(second.map((c) => [c.name, c.count]));
  const body = $('by-name');
  body.replaceChildren(...window5m.map((c) => row([
    cell(c.name, 'name'), cell(fmt(now.get(c.name)), 'num'), cell(fmt(c.count), 'num'),
  ])));
}

// Alerts: the live ones (pushed with each second) and those stored over the chosen range.
function renderAlerts() {
  const seen = new Set();
  const alerts = liveAlerts.concat(storedAlerts).filter((a) => {
    const id = [a.rule, a.subject, a.window_start].join('|');
    if (seen.has(id)) return false;
    seen.add(id);
    return true;
  }).slice(0, 50);
  $('alerts').replaceChildren(...alerts.map((a) => row([
    cell(a.rule), cell(a.subject, 'name'), cell(fmt(a.count), 'num'),
    cell(new Date(a.window_start).toLocaleTimeString() + ' – ' + new Date(a.window_end).toLocaleTimeString()),
  ])));
  $('alerts-note').textContent = alerts.length ? storedAlertsNote : (storedAlertsNote || 'No alerts.');
}

// ---- the chart: a canvas, no library ----------------------------------------------------------
function niceMax(v) {
  if (v <= 5) return 5;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
  return 10 * p;
}

function drawChart() {
  const canvas = $('chart');
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 48, right = 8, top = 8, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  const max = niceMax(Math.max(...series));
  const css = getComputedStyle(document.documentElement);
  ctx.font = '11px system-ui, sans-serif';
  ctx.strokeStyle = css.getPropertyValue('--line');
  ctx.fillStyle = css.getPropertyValue('--muted');
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(left + pw, y + 0.5); ctx.stroke();
    ctx.fillText(fmt((max * i) / 4), left - 6, y);
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (let m = 0; m <= 5; m++) {
    const x = left + (pw * (WINDOW - m * 60)) / (WINDOW - 1);
    ctx.fillText(m === 0 ? 'now' : '-' + m + 'm', Math.min(x, left + pw - 10), top + ph + 6);
  }
  const xy = (i) => [left + (pw * i) / (WINDOW - 1), top + ph - (ph * series[i]) / max];
  ctx.beginPath();
  ctx.moveTo(left, top + ph);
  for (let i = 0; i < series.length; i++) ctx.lineTo(...xy(i));
  ctx.lineTo(left + pw, top + ph);
  ctx.closePath();
  ctx.fillStyle = 'rgba(79, 179, 255, 0.18)';
  ctx.fill();
  ctx.beginPath();
  for (let i = 0; i < series.length; i++) (i ? ctx.lineTo : ctx.moveTo).call(ctx, ...xy(i));
  ctx.strokeStyle = css.getPropertyValue('--accent');
  ctx.lineWidth = 1.5;
  ctx.stroke();
}

// ---- ranges: the query API ------------------------------------------------------------------
async function query(path) {
  const res = await fetch(path, { headers: { Authorization: 'Bearer ' + key } });
  if (!res.ok) {
    let msg = 'HTTP ' + res.status;
    try { const b = await res.json(); if (b.message) msg += ': ' + b.message; } catch (e) { /* not JSON */ }
    if (res.status === 404) msg = 'not available on this server yet (HTTP 404)';
    throw new Error(msg);
  }
  return res.json();
}

function rangeParams() {
  const secs = Number($('range').value);
  const to = new Date();
  const from = new Date(to.getTime() - secs * 1000);
  return 'from=' + encodeURIComponent(from.toISOString()) + '&to=' + encodeURIComponent(to.toISOString());
}

async function loadRange() {
  if (!key) return;
  const params = rangeParams();
  try {
    const top = await query('/v1/query/top?' + params + '&limit=10');
    const events = Array.isArray(top.events) ? top.events : [];
    $('top').replaceChildren(...events.map((e) => row([cell(e.name, 'name'), cell(fmt(e.count), 'num')])));
    $('top-note').textContent = events.length ? '' : 'No events in this range.';
  } catch (e) {
    $('top').replaceChildren();
    $('top-note').textContent = 'Top events: ' + e.message;
  }
  try {
    const au = await query('/v1/query/active-users?' + params);
    const daily = Array.isArray(au.daily) ? au.daily : [];
    $('users-total').textContent = fmt(au.distinct);
    $('users').replaceChildren(...daily.map((d) => row([cell(d.day), cell(fmt(d.users), 'num')])));
    $('users-note').textContent = daily.length ? '' : 'No active users in this range.';
  } catch (e) {
    $('users').replaceChildren();
    $('users-total').textContent = '–';
    $('users-note').textContent = 'Active users: ' + e.message;
  }
  try {
    const al = await query('/v1/query/alerts?' + params);
    storedAlerts = Array.isArray(al.alerts) ? al.alerts : [];
    storedAlertsNote = '';
  } catch (e) {
    storedAlerts = [];
    storedAlertsNote = 'Stored alerts: ' + e.message;
  }
  renderAlerts();
}

// ---- wiring -------------------------------------------------------------------------------------
window.addEventListener('DOMContentLoaded', () => {
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const k = $('key-input').value.trim();
    if (!k) return;
    localStorage.setItem(KEY_STORE, k);
    $('key-input').value = '';
    start();
  });
  $('forget').addEventListener('click', () => {
    localStorage.removeItem(KEY_STORE);
    key = null;
    if (socket) socket.close();
    showLogin('');
  });
  $('range').addEventListener('change', loadRange);
  $('refresh').addEventListener('click', loadRange);
  window.addEventListener('resize', drawChart);
  window.addEventListener('hashchange', () => { takeKeyFromFragment(); if (socket) socket.close(); else start(); });
  setInterval(loadRange, 30000);
  takeKeyFromFragment();
  start();
});
