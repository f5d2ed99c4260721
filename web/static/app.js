// Verge dashboard: a small single-page application without dependencies.
// Every view polls one JSON endpoint of /dashboard/api/ every 2 s and
// updates its DOM in place; the topology graph keeps its elements keyed by
// service so that 500 nodes cost attribute updates, not a rebuild. Text is
// always set through textContent, never parsed as HTML.
(() => {
  'use strict';

  const API = '/dashboard/api/';
  const POLL_MS = 2000;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const COLORS = { good: '#16a34a', warn: '#d97706', bad: '#dc2626', idle: '#94a3b8' };
  const GRPC_CODES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
    'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED',
    'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];

  // ---- DOM helpers -------------------------------------------------------

  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function addKids(e, kids) {
    for (const c of kids.flat(Infinity)) {
      if (c == null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
  }
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    addKids(e, kids);
    return e;
  }
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    addKids(e, kids);
    return e;
  }
  function fill(e, ...kids) {
    e.replaceChildren();
    addKids(e, kids);
    return e;
  }
  function card(title, ...kids) {
    return h('section', { class: 'card' }, title ? h('h2', { text: title }) : null, ...kids);
  }

  // ---- formatting --------------------------------------------------------

  function fmtRate(r) {
    if (!r) return '0';
    if (r >= 1e6) return (r / 1e6).toFixed(1) + 'M';
    if (r >= 1e4) return (r / 1e3).toFixed(0) + 'k';
    if (r >= 1e3) return (r / 1e3).toFixed(1) + 'k';
    if (r >= 100) return r.toFixed(0);
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }
  function fmtPct(sr) {
    const p = sr * 100;
    if (p >= 100) return '100%';
    if (p >= 99) return p.toFixed(2) + '%';
    return p.toFixed(1) + '%';
  }
  function fmtLat(sec) {
    if (!sec) return '–';
    if (sec < 0.001) return (sec * 1e6).toFixed(0) + ' µs';
    if (sec < 0.01) return (sec * 1e3).toFixed(2) + ' ms';
    if (sec < 1) return (sec * 1e3).toFixed(0) + ' ms';
    return sec.toFixed(2) + ' s';
  }
  // fmtTick labels an axis tick: nice ticks need no trailing zeros.
  function fmtTick(v) {
    if (Math.abs(v) >= 1e4) return fmtRate(v);
    return String(Number(v.toPrecision(6)));
  }
  function fmtBytes(b) {
    if (!b) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b.toFixed(0) : b.toFixed(1)) + ' ' + u[i];
  }
  function fmtSpan(sec) {
    sec = Math.max(0, Math.round(sec));
    if (sec < 60) return sec + 's';
    if (sec < 3600) return Math.floor(sec / 60) + 'm' + (sec < 600 && sec % 60 ? ' ' + (sec % 60) + 's' : '');
    if (sec < 86400) return Math.floor(sec / 3600) + 'h' + (Math.floor(sec / 60) % 60 ? ' ' + (Math.floor(sec / 60) % 60) + 'm' : '');
    return Math.floor(sec / 86400) + 'd ' + (Math.floor(sec / 3600) % 24) + 'h';
  }
  function ago(t) {
    const d = Date.parse(t);
    if (!d || d < 0) return '–';
    return fmtSpan((Date.now() - d) / 1000) + ' ago';
  }
  function clock(ms, secs) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + (secs ? ':' + p(d.getSeconds()) : '');
  }
  function shortVer(v) { return v ? (v.length > 10 ? v.slice(0, 8) + '…' : v) : '–'; }
  function healthOf(sr, requests) {
    if (!requests) return 'idle';
    if (sr >= 0.99) return 'good';
    if (sr >= 0.95) return 'warn';
    return 'bad';
  }
  function healthLabel(hl) {
    return { good: 'healthy', warn: 'degraded', bad: 'failing', idle: 'no traffic' }[hl] || hl;
  }
  function svcLink(id) {
    return h('a', { href: '#/service/' + encodeURIComponent(id), text: id });
  }
  function statusText(e) {
    if (e.grpcStatus >= 0 && e.protocol === 'grpc') return 'gRPC ' + (GRPC_CODES[e.grpcStatus] || e.grpcStatus);
    if (!e.status) return 'no response';
    return 'HTTP ' + e.status;
  }

  // ---- tooltip -----------------------------------------------------------

  const tip = document.getElementById('tooltip');
  function showTip(ev, title, rows) {
    fill(tip, h('div', null, h('b', { text: title })),
      rows.map(([k, v]) => h('div', { class: 'row' }, h('span', { text: k }), h('span', { text: v }))));
    tip.hidden = false;
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
    tip.style.left = x + 'px';
    tip.style.top = y + 'px';
  }
  function hideTip() { tip.hidden = true; }

  // ---- header: summary and live state ------------------------------------

  function setSummary(sm) {
    const part = (n, label, alert) => h('span', { class: alert ? 'alert' : null }, h('b', { text: n }), ' ' + label);
    fill(document.getElementById('stats'),
      part(sm.services, 'services'),
      part(sm.workloads, 'workloads'),
      sm.unhealthy ? part(sm.unhealthy, 'unhealthy', true) : null,
      part(sm.connected + '/' + sm.proxies, 'proxies connected'),
      sm.nacks ? part(sm.nacks, sm.nacks === 1 ? 'NACK' : 'NACKs', true) : null);
  }
  function setLive(ok, info) {
    const el = document.getElementById('live');
    el.dataset.state = ok ? 'live' : 'offline';
    document.getElementById('live-text').textContent = ok
      ? 'live · ' + clock(Date.parse(info) || Date.now(), true)
      : 'offline · retrying';
    el.title = ok ? 'refreshed every 2 s' : info;
  }

  // ---- router and polling ------------------------------------------------

  const main = document.getElementById('main');
  const state = { view: null, gen: 0, timer: 0, ctrl: null };

  function route() {
    const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
    let page = 'topology';
    let view;
    if (hash.startsWith('service/')) {
      page = 'service';
      view = serviceView(hash.slice('service/'.length));
    } else if (hash === 'workloads') {
      page = 'workloads';
      view = workloadsView();
    } else if (hash === 'policies') {
      page = 'policies';
      view = policiesView();
    } else if (hash === 'errors') {
      page = 'errors';
      view = errorsView();
    } else {
      view = topologyView();
    }
    if (state.view && state.view.destroy) state.view.destroy();
    hideTip();
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.page === page || (page === 'service' && a.dataset.page === 'topology'));
    }
    fill(main, view.el);
    state.view = view;
    restart();
  }

  // restart fetches at once and then every POLL_MS; a generation number
  // drops answers to requests of an earlier view or query.
  function restart() {
    state.gen++;
    clearTimeout(state.timer);
    if (state.ctrl) state.ctrl.abort();
    tick(state.gen);
  }

  async function tick(gen) {
    const view = state.view;
    const ctrl = new AbortController();
    state.ctrl = ctrl;
    try {
      const resp = await fetch(view.url(), { signal: ctrl.signal, cache: 'no-store' });
      if (!resp.ok) throw new Error(resp.status + ' ' + (await resp.text()).trim());
      const data = await resp.json();
      if (gen !== state.gen) return;
      view.render(data);
      if (data.summary) setSummary(data.summary);
      setLive(true, data.generated);
    } catch (err) {
      if (gen !== state.gen || err.name === 'AbortError') return;
      setLive(false, String(err.message || err));
    }
    if (gen === state.gen) state.timer = setTimeout(() => tick(gen), POLL_MS);
  }

  function segmented(options, current, onPick) {
    const el = h('div', { class: 'seg', role: 'group' });
    for (const [value, label] of options) {
      const b = h('button', { type: 'button', class: value === current ? 'on' : null, text: label });
      b.addEventListener('click', () => {
        for (const o of el.children) o.classList.remove('on');
        b.classList.add('on');
        onPick(value);
      });
      el.append(b);
    }
    return el;
  }

  // ---- topology ----------------------------------------------------------

  function topologyView() {
    let win = sessionStorage.getItem('verge.window') || '60s';
    let filter = '';
    let hover = null;
    let moved = false; // the user zoomed or panned: keep their view
    let layoutSig = '';
    let world = { w: 1, h: 1 };
    let tf = { x: 0, y: 0, k: 1 };
    let data = null;
    const nodes = new Map(); // id -> {g, data}
    const edges = new Map(); // "src>dst" -> {path, data}
    const pos = new Map(); // id -> {x, y}

    const svg = s('svg', { id: 'graph', role: 'img', 'aria-label': 'service topology' });
    const defs = s('defs');
    for (const [k, c] of Object.entries(COLORS)) {
      defs.append(s('marker', {
        id: 'arrow-' + k, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 9, markerHeight: 9,
        markerUnits: 'userSpaceOnUse', orient: 'auto',
      }, s('path', { d: 'M0,0 L10,5 L0,10 z', fill: c })));
    }
    const vp = s('g');
    const gEdges = s('g');
    const gNodes = s('g');
    const idleTitle = s('text', { class: 'idle-title' });
    vp.append(gEdges, gNodes, idleTitle);
    svg.append(defs, vp);

    const legend = h('div', { class: 'legend' },
      h('span', null, h('i', { class: 'good' }), '≥ 99% success'),
      h('span', null, h('i', { class: 'warn' }), '≥ 95%'),
      h('span', null, h('i', { class: 'bad' }), '< 95%'),
      h('span', null, h('i', { class: 'idle' }), 'no traffic'),
      h('span', null, (() => {
        const l = s('svg', { width: 30, height: 10 });
        l.append(s('path', { d: 'M1,5 H29', stroke: '#64748b', 'stroke-width': 2, 'stroke-dasharray': '6 4' }));
        return l;
      })(), 'cross-zone'),
      h('span', { class: 'muted', text: 'edge width: request rate' }));
    const zoom = h('div', { class: 'zoom' },
      h('button', { type: 'button', class: 'plain', title: 'zoom in', text: '+', onclick: () => zoomBy(1.3) }),
      h('button', { type: 'button', class: 'plain', title: 'zoom out', text: '−', onclick: () => zoomBy(1 / 1.3) }),
      h('button', { type: 'button', class: 'plain', title: 'fit to screen', text: '⤢', onclick: () => { moved = false; fit(); } }));
    const graphCard = h('div', { class: 'card graph' }, h('div', { class: 'graph-head' }, legend, zoom), svg);

    const kpis = h('div', { class: 'kpis' });
    const busiest = h('ul', { class: 'rank' });
    const failing = h('ul', { class: 'rank' });
    const side = h('aside', { class: 'side' },
      card('Mesh', kpis), card('Busiest services', busiest), card('Lowest success rate', failing));

    const search = h('input', {
      type: 'search', placeholder: 'Find a service…', 'aria-label': 'find a service',
      oninput: (e) => { filter = e.target.value.trim().toLowerCase(); applyFocus(); },
      onkeydown: (e) => {
        if (e.key !== 'Enter' || !filter) return;
        const hit = [...nodes.keys()].find((id) => id.toLowerCase().includes(filter));
        if (hit) location.hash = '#/service/' + encodeURIComponent(hit);
      },
    });
    const toolbar = h('div', { class: 'toolbar' },
      h('h1', { text: 'Service topology' }),
      segmented([['60s', '1 min'], ['5m', '5 min'], ['15m', '15 min']], win, (v) => {
        win = v;
        sessionStorage.setItem('verge.window', v);
        restart();
      }),
      h('span', { class: 'spacer' }), search);
    const el = h('div', null, toolbar, h('div', { class: 'topo' }, graphCard, side));

    // Pan and zoom.
    function apply() {
      vp.setAttribute('transform', `translate(${tf.x.toFixed(1)},${tf.y.toFixed(1)}) scale(${tf.k.toFixed(4)})`);
      svg.classList.toggle('nolabels', tf.k < 0.62);
    }
    function fit() {
      const r = svg.getBoundingClientRect();
      if (!r.width || !r.height) return;
      const k = Math.min(r.width / world.w, r.height / world.h, 1.5) * 0.97;
      tf = { k, x: (r.width - world.w * k) / 2, y: (r.height - world.h * k) / 2 };
      apply();
    }
    function zoomAt(px, py, factor) {
      const k = Math.min(4, Math.max(0.08, tf.k * factor));
      tf.x = px - (px - tf.x) * (k / tf.k);
      tf.y = py - (py - tf.y) * (k / tf.k);
      tf.k = k;
      moved = true;
      apply();
    }
    function zoomBy(f) {
      const r = svg.getBoundingClientRect();
      zoomAt(r.width / 2, r.height / 2, f);
    }
    svg.addEventListener('wheel', (e) => {
      e.preventDefault();
      const r = svg.getBoundingClientRect();
      zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    let drag = null;
    svg.addEventListener('pointerdown', (e) => {
      if (e.target.closest('.node') || e.button !== 0) return;
      drag = { x: e.clientX - tf.x, y: e.clientY - tf.y, id: e.pointerId };
      svg.setPointerCapture(e.pointerId);
      svg.classList.add('dragging');
    });
    svg.addEventListener('pointermove', (e) => {
      if (!drag) return;
      tf.x = e.clientX - drag.x;
      tf.y = e.clientY - drag.y;
      moved = true;
      apply();
    });
    const endDrag = () => {
      if (!drag) return;
      svg.releasePointerCapture(drag.id);
      drag = null;
      svg.classList.remove('dragging');
    };
    svg.addEventListener('pointerup', endDrag);
    svg.addEventListener('pointercancel', endDrag);
    const onResize = () => { if (!moved) fit(); };
    window.addEventListener('resize', onResize);

    function edgePath(a, b) {
      const r = 11;
      if (a === b) return '';
      if (b.x > a.x + 1) {
        const x1 = a.x + r;
        const x2 = b.x - r - 3;
        const dx = Math.max(24, (x2 - x1) / 2);
        return `M${x1},${a.y} C${x1 + dx},${a.y} ${x2 - dx},${b.y} ${x2},${b.y}`;
      }
      // A call back to an earlier column (a cycle) or within one: bow it
      // to the side so that it does not run through the nodes.
      const dx = b.x - a.x;
      const dy = b.y - a.y;
      const len = Math.hypot(dx, dy) || 1;
      const off = Math.min(140, 36 + len * 0.3);
      const cx = (a.x + b.x) / 2 + (dy / len) * off;
      const cy = (a.y + b.y) / 2 - (dx / len) * off;
      const unit = (p, q, d) => {
        const l = Math.hypot(q.x - p.x, q.y - p.y) || 1;
        return [p.x + (q.x - p.x) / l * d, p.y + (q.y - p.y) / l * d];
      };
      const [sx, sy] = unit(a, { x: cx, y: cy }, r);
      const [ex, ey] = unit(b, { x: cx, y: cy }, r + 3);
      return `M${sx.toFixed(1)},${sy.toFixed(1)} Q${cx.toFixed(1)},${cy.toFixed(1)} ${ex.toFixed(1)},${ey.toFixed(1)}`;
    }
    function width(rate) { return Math.min(9, 1.5 + 1.6 * Math.log10(1 + rate)); }

    function nodeTip(ev, n) {
      showTip(ev, n.id, [
        ['health', healthLabel(n.health)],
        ['requests', fmtRate(n.requestRate) + ' /s'],
        ['success', n.requests ? fmtPct(n.successRate) : '–'],
        ['p50 / p99', fmtLat(n.p50) + ' / ' + fmtLat(n.p99)],
        ['endpoints', n.registered ? n.healthy + ' healthy of ' + n.endpoints : 'not registered'],
        ...(n.zones && n.zones.length ? [['zones', n.zones.join(', ')]] : []),
      ]);
    }
    function edgeTip(ev, e) {
      showTip(ev, e.source + ' → ' + e.destination, [
        ['protocol', e.protocol || '–'],
        ['requests', fmtRate(e.requestRate) + ' /s'],
        ['success', e.requests ? fmtPct(e.successRate) : '–'],
        ['p50 / p99', fmtLat(e.p50) + ' / ' + fmtLat(e.p99)],
        ...(e.crossZone ? [['cross-zone', fmtRate(e.crossZoneRate) + ' /s']] : []),
        ...(e.zones && e.zones.length ? [['zones', e.zones.join(', ')]] : []),
      ]);
    }

    function makeNode(id) {
      const g = s('g', { class: 'node', 'data-id': id, tabindex: 0 });
      // The label sits above the node: edges leave and enter at the
      // sides, so they never cross their own node's name.
      const label = s('text', { x: 0, y: -14, 'text-anchor': 'middle' });
      g.append(s('circle', { r: 9 }), label);
      const rec = { g, label, data: null };
      g.addEventListener('click', () => { location.hash = '#/service/' + encodeURIComponent(id); });
      g.addEventListener('keydown', (e) => { if (e.key === 'Enter') location.hash = '#/service/' + encodeURIComponent(id); });
      g.addEventListener('pointerenter', (e) => { hover = id; applyFocus(); nodeTip(e, rec.data); });
      g.addEventListener('pointermove', (e) => nodeTip(e, rec.data));
      g.addEventListener('pointerleave', () => { hover = null; applyFocus(); hideTip(); });
      gNodes.append(g);
      nodes.set(id, rec);
      return rec;
    }
    function makeEdge(key) {
      const path = s('path', { class: 'edge' });
      const rec = { path, data: null };
      path.addEventListener('pointermove', (e) => edgeTip(e, rec.data));
      path.addEventListener('pointerleave', hideTip);
      gEdges.append(path);
      edges.set(key, rec);
      return rec;
    }

    function applyFocus() {
      let keep = null;
      if (hover) {
        keep = new Set([hover]);
        for (const { data: e } of edges.values()) {
          if (e.source === hover) keep.add(e.destination);
          if (e.destination === hover) keep.add(e.source);
        }
      } else if (filter) {
        keep = new Set([...nodes.keys()].filter((id) => id.toLowerCase().includes(filter)));
      }
      svg.classList.toggle('focus', keep !== null);
      for (const [id, n] of nodes) n.g.classList.toggle('hl', keep !== null && keep.has(id));
      for (const { path, data: e } of edges.values()) {
        const on = keep !== null && (hover ? e.source === hover || e.destination === hover : keep.has(e.source) || keep.has(e.destination));
        path.classList.toggle('hl', on);
      }
    }

    function render(d) {
      data = d;
      const sig = d.nodes.map((n) => n.id).join(',') + '|' + d.edges.map((e) => e.source + '>' + e.destination).join(',');
      const relayout = sig !== layoutSig;
      if (relayout) {
        layoutSig = sig;
        world = { w: d.width, h: d.height };
        pos.clear();
        for (const n of d.nodes) pos.set(n.id, { x: n.x, y: n.y });
      }

      const seen = new Set();
      let idleTop = Infinity;
      for (const n of d.nodes) {
        seen.add(n.id);
        const rec = nodes.get(n.id) || makeNode(n.id);
        rec.data = n;
        const p = pos.get(n.id) || { x: n.x, y: n.y };
        rec.g.setAttribute('class', 'node ' + n.health + (n.registered ? '' : ' unregistered') + (rec.g.classList.contains('hl') ? ' hl' : ''));
        if (relayout) rec.g.setAttribute('transform', `translate(${p.x},${p.y})`);
        if (rec.label.dataset.id !== n.id) {
          rec.label.dataset.id = n.id;
          const name = n.name.length > 24 ? n.name.slice(0, 23) + '…' : n.name;
          fill(rec.label, name, n.namespace ? s('tspan', { class: 'sub', text: '.' + n.namespace }) : null);
        }
        if (n.layer < 0) idleTop = Math.min(idleTop, p.y);
      }
      for (const [id, rec] of nodes) {
        if (!seen.has(id)) { rec.g.remove(); nodes.delete(id); }
      }
      const seenE = new Set();
      for (const e of d.edges) {
        const key = e.source + '>' + e.destination;
        seenE.add(key);
        const rec = edges.get(key) || makeEdge(key);
        rec.data = e;
        if (relayout || !rec.path.getAttribute('d')) {
          rec.path.setAttribute('d', edgePath(pos.get(e.source), pos.get(e.destination)));
        }
        rec.path.setAttribute('class', 'edge ' + e.health + (e.crossZone ? ' cross' : '') + (rec.path.classList.contains('hl') ? ' hl' : ''));
        rec.path.setAttribute('stroke-width', width(e.requestRate).toFixed(2));
        rec.path.setAttribute('marker-end', `url(#arrow-${e.health})`);
      }
      for (const [key, rec] of edges) {
        if (!seenE.has(key)) { rec.path.remove(); edges.delete(key); }
      }
      if (idleTop < Infinity) {
        idleTitle.setAttribute('x', 31);
        idleTitle.setAttribute('y', idleTop - 34);
        idleTitle.textContent = 'No traffic in the last ' + fmtSpan(d.windowSeconds);
      } else {
        idleTitle.textContent = '';
      }
      svg.classList.toggle('dense', d.edges.length > 250);
      if (relayout && !moved) fit();
      applyFocus();
      renderSide(d);
    }

    function renderSide(d) {
      let rate = 0;
      let req = 0;
      let fail = 0;
      for (const n of d.nodes) { rate += n.requestRate; req += n.requests; fail += n.failures; }
      const sr = req ? 1 - fail / req : 1;
      const hl = healthOf(sr, req);
      const sm = d.summary;
      const kpi = (v, l, cls) => h('div', { class: 'kpi' }, h('div', { class: 'v ' + (cls || ''), text: v }), h('div', { class: 'l', text: l }));
      fill(kpis,
        kpi(fmtRate(rate), 'requests / s'),
        kpi(req ? fmtPct(sr) : '–', 'success rate', 't-' + hl),
        kpi(String(d.nodes.length), 'services in graph'),
        kpi(String(d.edges.length), 'edges'),
        kpi(sm.connected + '/' + sm.proxies, 'proxies connected'),
        kpi(String(sm.unhealthy), 'unhealthy workloads', sm.unhealthy ? 't-bad' : ''));
      const item = (n, val) => h('li', { onclick: () => { location.hash = '#/service/' + encodeURIComponent(n.id); } },
        h('span', { class: 'swatch ' + n.health }), h('span', { class: 'name', text: n.id, title: n.id }), h('span', { class: 'val', text: val }));
      const busy = d.nodes.filter((n) => n.requests > 0).sort((a, b) => b.requestRate - a.requestRate).slice(0, 6);
      fill(busiest, busy.length ? busy.map((n) => item(n, fmtRate(n.requestRate) + ' /s')) : h('li', { class: 'empty', text: 'No traffic in the window' }));
      const worst = d.nodes.filter((n) => n.requests > 0 && n.health !== 'good').sort((a, b) => a.successRate - b.successRate).slice(0, 6);
      fill(failing, worst.length ? worst.map((n) => item(n, fmtPct(n.successRate))) : h('li', { class: 'empty', text: 'Every service is at 99% or better' }));
    }

    return {
      el,
      url: () => API + 'topology?window=' + encodeURIComponent(win),
      render,
      destroy: () => window.removeEventListener('resize', onResize),
      graphData: () => data,
    };
  }

  // ---- charts ------------------------------------------------------------

  function niceTicks(lo, hi, n) {
    const raw = (hi - lo) / n;
    const e = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / e;
    const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
    const out = [];
    for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    if (out[out.length - 1] < hi) out.push(out[out.length - 1] + step);
    return out;
  }

  // lineChart draws series (arrays of numbers or null for gaps) over times
  // (ms) into host as an SVG sized to the host's width.
  function lineChart(host, { series, times, fmt, tickFmt, lo, hi, area, stepMs }) {
    const W = Math.max(300, Math.floor(host.clientWidth || 600));
    const H = 200;
    const L = 58;
    const R = 16;
    const T = 14;
    const B = 26;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, height: H, role: 'img' });
    const vals = series.flatMap((x) => x.values).filter((v) => v != null && isFinite(v));
    let ymin = lo != null ? Math.min(lo, ...vals) : 0;
    let ymax = vals.length ? Math.max(...vals) : 1;
    if (hi != null) ymax = Math.max(hi, ymax);
    if (ymax <= ymin) ymax = ymin + (ymin === 0 ? 1 : Math.abs(ymin) * 0.1);
    const ticks = niceTicks(ymin, ymax, 4);
    ymin = ticks[0];
    ymax = ticks[ticks.length - 1];
    const t1 = times.length ? times[times.length - 1] : Date.now();
    const t0 = times.length > 1 ? times[0] : t1 - (stepMs || 1000) * 60;
    const X = (t) => L + (t - t0) / (t1 - t0 || 1) * (W - L - R);
    const Y = (v) => T + (1 - (v - ymin) / (ymax - ymin)) * (H - T - B);

    const grid = s('g', { class: 'grid' });
    const axis = s('g', { class: 'axis' });
    for (const t of ticks) {
      grid.append(s('line', { x1: L, x2: W - R, y1: Y(t), y2: Y(t) }));
      axis.append(s('text', { x: L - 8, y: Y(t) + 4, 'text-anchor': 'end', text: (tickFmt || fmt)(t) }));
    }
    const secs = t1 - t0 < 10 * 60 * 1000;
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (t1 - t0) * i / 4;
      axis.append(s('text', { x: X(t), y: H - 7, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle', text: clock(t, secs) }));
    }
    svg.append(grid, s('line', { class: 'baseline', x1: L, x2: W - R, y1: H - B, y2: H - B }), axis);

    for (const [si, sr] of series.entries()) {
      let d = '';
      let run = [];
      const runs = [];
      sr.values.forEach((v, i) => {
        if (v == null || !isFinite(v)) { if (run.length) runs.push(run); run = []; return; }
        run.push([X(times[i]), Y(v)]);
      });
      if (run.length) runs.push(run);
      for (const r of runs) {
        d += 'M' + r.map(([x, y]) => x.toFixed(1) + ',' + y.toFixed(1)).join(' L');
        if (r.length === 1) d += ' h1';
        if (area && si === 0) {
          const base = Y(Math.max(ymin, 0));
          svg.append(s('path', {
            class: 'area', fill: sr.color,
            d: `M${r[0][0].toFixed(1)},${base} L` + r.map(([x, y]) => x.toFixed(1) + ',' + y.toFixed(1)).join(' L') + ` L${r[r.length - 1][0].toFixed(1)},${base} Z`,
          }));
        }
      }
      if (d) svg.append(s('path', { class: 'line', stroke: sr.color, d }));
    }
    if (!vals.length) {
      svg.append(s('text', { x: (L + W - R) / 2, y: H / 2, 'text-anchor': 'middle', class: 'axis', fill: '#94a3b8', text: 'No traffic reported in this window' }));
    }

    // Hover: a crosshair and the values of the nearest step.
    const cross = s('line', { class: 'cross', y1: T, y2: H - B, visibility: 'hidden' });
    const overlay = s('rect', { x: L, y: T, width: W - L - R, height: H - T - B, fill: 'transparent' });
    overlay.addEventListener('pointermove', (ev) => {
      if (!times.length) return;
      const r = svg.getBoundingClientRect();
      const x = (ev.clientX - r.left) * (W / r.width);
      let best = 0;
      for (let i = 1; i < times.length; i++) if (Math.abs(X(times[i]) - x) < Math.abs(X(times[best]) - x)) best = i;
      cross.setAttribute('x1', X(times[best]));
      cross.setAttribute('x2', X(times[best]));
      cross.setAttribute('visibility', 'visible');
      showTip(ev, clock(times[best], true), series.map((sr) => [sr.name, sr.values[best] == null ? '–' : fmt(sr.values[best])]));
    });
    overlay.addEventListener('pointerleave', () => { cross.setAttribute('visibility', 'hidden'); hideTip(); });
    svg.append(cross, overlay);
    fill(host, svg);
  }

  function chartCard(title, keys) {
    const body = h('div', { class: 'card-body' });
    const el = h('section', { class: 'card chart' }, h('h2', { text: title }),
      keys && keys.length > 1 ? h('div', { class: 'keys' }, keys.map(([n, c]) => {
        const i = h('i');
        i.style.background = c;
        return h('span', null, i, n);
      })) : null, body);
    return { el, body };
  }

  // ---- tables shared by pages --------------------------------------------

  function table(cols, rows, empty) {
    if (!rows.length) return h('div', { class: 'empty', text: empty });
    return h('table', { class: 'data' },
      h('thead', null, h('tr', null, cols.map(([label, cls]) => h('th', { class: cls || null, text: label })))),
      h('tbody', null, rows));
  }

  function edgeRows(list, peer) {
    return table([[peer], ['Protocol'], ['Requests/s', 'num'], ['Success', 'num'], ['p50', 'num'], ['p99', 'num'], ['Zones']],
      list.map((e) => {
        const id = peer === 'Caller' ? e.source : e.destination;
        return h('tr', { class: 'click', onclick: () => { location.hash = '#/service/' + encodeURIComponent(id); } },
          h('td', null, h('span', { class: 'swatch ' + e.health }), ' ', svcLink(id)),
          h('td', { text: e.protocol || '–' }),
          h('td', { class: 'num', text: fmtRate(e.requestRate) }),
          h('td', { class: 'num t-' + e.health, text: e.requests ? fmtPct(e.successRate) : '–' }),
          h('td', { class: 'num', text: fmtLat(e.p50) }),
          h('td', { class: 'num', text: fmtLat(e.p99) }),
          h('td', null, e.crossZone ? h('span', { class: 'badge warn', text: 'cross-zone' }) : null, ' ', h('span', { class: 'muted', text: (e.zones || []).join(', ') })));
      }), peer === 'Caller' ? 'No callers in the last minute' : 'No calls to other services in the last minute');
  }

  function errorRows(list, empty) {
    return table([['Time'], ['Source → destination'], ['Request'], ['Status'], ['Duration', 'num'], ['Proxy'], ['Trace']],
      list.map((e) => h('tr', null,
        h('td', { title: new Date(e.time).toISOString(), text: ago(e.time) }),
        h('td', null, e.source || '?', ' → ', e.destination),
        h('td', { class: 'mono', text: [e.method, (e.authority || '') + (e.path || '')].filter(Boolean).join(' ') || e.protocol }),
        h('td', null, h('span', { class: 'badge bad', text: statusText(e) }), e.flags ? h('span', { class: 'muted mono', text: ' ' + e.flags }) : null),
        h('td', { class: 'num', text: fmtLat(e.duration / 1e9) }),
        h('td', { class: 'mono', text: e.proxy + (e.direction ? ' (' + e.direction + ')' : '') }),
        h('td', { class: 'mono', title: e.traceId || null, text: e.traceId ? e.traceId.slice(0, 12) + '…' : '–' }))), empty);
  }

  function proxyCell(w) {
    if (!w.proxied) return h('span', { class: 'faint', text: 'no proxy' });
    if (w.proxy && w.proxy.connected) {
      return [h('span', { class: 'badge good', text: 'connected' }), h('div', { class: 'muted', text: 'since ' + ago(w.proxy.connectedAt).replace(' ago', '') })];
    }
    return h('span', { class: 'badge bad', text: 'disconnected' });
  }

  function xdsCell(p) {
    if (!p || !p.types || !p.types.length) return h('span', { class: 'faint', text: '–' });
    const chips = p.types.map((t) => {
      const cls = t.nack ? 'nack' : t.inSync ? 'sync' : 'pending';
      const title = `${t.type}: sent ${t.sent || '–'}, accepted ${t.acked || '–'}` + (t.nack ? `\nrejected: ${t.nack}` : '') + `\nupdated ${ago(t.updatedAt)}`;
      return h('span', { class: 'chip ' + cls, title, text: t.type + ' ' + shortVer(t.acked) });
    });
    const nacks = p.types.filter((t) => t.nack).map((t) => h('div', { class: 't-bad', text: `${t.type} rejected: ${t.nack.length > 140 ? t.nack.slice(0, 139) + '…' : t.nack}` }));
    return [h('div', { class: 'chips' }, chips), nacks];
  }

  function certCell(w) {
    const c = w.certificate;
    if (!c) return h('span', { class: 'faint', text: w.proxied ? 'no SVID issued' : '–' });
    const left = (Date.parse(c.expiresAt) - Date.now()) / 1000;
    const life = (Date.parse(c.expiresAt) - Date.parse(c.issuedAt)) / 1000;
    const cls = left <= 0 ? 'bad' : left < life * 0.25 ? 'warn' : 'good';
    return [
      h('div', { class: 'mono', title: c.spiffeID + '\nserial ' + c.serial + '\nissued ' + c.issuedAt, text: c.serial.slice(0, 12) + (c.serial.length > 12 ? '…' : '') }),
      h('div', { class: 't-' + cls, text: left <= 0 ? 'expired' : 'expires in ' + fmtSpan(left) }),
      w.certificates > 1 ? h('div', { class: 'faint', text: w.certificates + ' valid for this identity' }) : null,
    ];
  }

  function workloadRow(w) {
    const pr = w.process;
    return h('tr', null,
      h('td', null, h('div', { text: w.namespace + '/' + w.name }), w.serviceAccount ? h('div', { class: 'faint', text: 'sa ' + w.serviceAccount }) : null),
      h('td', null, (w.services || []).map((id) => h('div', null, svcLink(id)))),
      h('td', { class: 'nw' }, h('div', { class: 'mono', text: w.address }), w.zone ? h('div', { class: 'muted', text: w.zone }) : null),
      h('td', null, h('span', { class: 'badge ' + w.health, text: w.health })),
      h('td', { class: 'nw' }, proxyCell(w)),
      h('td', null, xdsCell(w.proxy)),
      h('td', { class: 'nw' }, certCell(w)),
      h('td', { class: 'num', title: pr ? 'CPU time ' + pr.process.cpuSeconds.toFixed(1) + ' s' : null, text: pr ? pr.cpuPercent.toFixed(1) + '%' : '–' }),
      h('td', { class: 'num', title: pr ? pr.process.goroutines + ' goroutines' : null, text: pr ? fmtBytes(pr.process.rssBytes) : '–' }));
  }
  const workloadCols = [['Workload'], ['Services'], ['Address'], ['Health'], ['Proxy'], ['xDS config (accepted)'], ['SVID'], ['CPU', 'num'], ['Memory', 'num']];

  function policyRows(list, expanded, onToggle, empty) {
    const rows = [];
    for (const p of list) {
      const key = p.kind + '/' + p.namespace + '/' + p.name;
      const applies = p.scope === 'mesh' ? h('span', { class: 'badge kind', text: 'whole mesh' })
        : p.scope === 'namespace' ? h('span', null, 'namespace ', h('b', { text: p.namespace }))
          : (p.targets || []).map((t) => h('div', null, svcLink(t.split(':')[0]), t.includes(':') ? h('span', { class: 'muted', text: ':' + t.split(':')[1] }) : null));
      rows.push(h('tr', { class: 'click', onclick: () => onToggle(key) },
        h('td', null, h('span', { class: 'badge kind', text: p.kind })),
        h('td', null, h('span', { class: 'muted', text: p.namespace + '/' }), p.name),
        h('td', null, applies),
        h('td', null, (p.backends || []).map((b) => h('div', { class: 'mono', text: b }))),
        h('td', { text: p.summary || '–' }),
        h('td', { class: 'num muted', title: p.created, text: ago(p.created).replace(' ago', '') })));
      if (expanded.has(key)) {
        rows.push(h('tr', { class: 'detail' }, h('td', { colspan: 6 }, h('pre', { class: 'spec', text: JSON.stringify(p.spec, null, 2) }))));
      }
    }
    return table([['Kind'], ['Name'], ['Applies to'], ['Backends'], ['Summary'], ['Age', 'num']], rows, empty);
  }

  // ---- service page ------------------------------------------------------

  function serviceView(id) {
    let win = sessionStorage.getItem('verge.serviceWindow') || '15m';
    let last = null;
    const expanded = new Set();
    const title = h('h1', { text: id });
    const badge = h('span', { class: 'badge idle' });
    const meta = h('span', { class: 'muted' });
    const kpis = h('div', { class: 'kpi-row' });
    const charts = {
      rate: chartCard('Request rate (req/s)'),
      success: chartCard('Success rate'),
      latency: chartCard('Latency', [['p50', '#0ea5e9'], ['p99', '#8b5cf6']]),
      errors: chartCard('Failed requests (req/s)'),
    };
    const callers = h('div');
    const callees = h('div');
    const workloads = h('div');
    const policies = h('div');
    const errors = h('div');
    const el = h('div', null,
      h('div', { class: 'crumb' }, h('a', { href: '#/', text: 'Topology' }), ' › ', id),
      h('div', { class: 'toolbar' }, title, badge, meta, h('span', { class: 'spacer' }),
        segmented([['5m', '5 min'], ['15m', '15 min'], ['1h', '1 hour'], ['6h', '6 hours']], win, (v) => {
          win = v;
          sessionStorage.setItem('verge.serviceWindow', v);
          restart();
        })),
      kpis,
      h('div', { class: 'charts' }, charts.rate.el, charts.success.el, charts.latency.el, charts.errors.el),
      h('div', { class: 'grid2' }, card('Callers', callers), card('Calls', callees)),
      h('div', { class: 'stack' }, card('Workloads', workloads), card('Routes and policies in effect', policies), card('Recent errors', errors)));

    function drawCharts(d) {
      const pts = d.series.points || [];
      const times = pts.map((p) => Date.parse(p.time));
      const stepMs = d.stepSeconds * 1000;
      lineChart(charts.rate.body, { times, stepMs, fmt: fmtRate, tickFmt: fmtTick, area: true, series: [{ name: 'requests/s', color: '#4f46e5', values: pts.map((p) => p.requestRate) }] });
      lineChart(charts.success.body, {
        times, stepMs, lo: 95, hi: 100, fmt: (v) => (v >= 99.995 ? '100' : v.toFixed(2)) + '%', tickFmt: (v) => fmtTick(v) + '%',
        series: [{ name: 'success', color: '#16a34a', values: pts.map((p) => (p.requests ? p.successRate * 100 : null)) }],
      });
      lineChart(charts.latency.body, {
        times, stepMs, fmt: (v) => fmtLat(v / 1000).replace('–', '0'),
        series: [
          { name: 'p50', color: '#0ea5e9', values: pts.map((p) => (p.requests ? p.p50 * 1000 : null)) },
          { name: 'p99', color: '#8b5cf6', values: pts.map((p) => (p.requests ? p.p99 * 1000 : null)) },
        ],
      });
      lineChart(charts.errors.body, {
        times, stepMs, fmt: fmtRate, tickFmt: fmtTick, area: true,
        series: [{ name: 'failed/s', color: '#dc2626', values: pts.map((p) => p.failures / (d.stepSeconds || 1)) }],
      });
    }

    function render(d) {
      last = d;
      badge.className = 'badge ' + d.health;
      badge.textContent = healthLabel(d.health);
      meta.textContent = d.registered
        ? (d.ports || []).map((p) => p.port + (p.targetPort && p.targetPort !== p.port ? '→' + p.targetPort : '') + '/' + p.protocol).join(', ')
        : 'not registered: seen in traffic only';
      const kpi = (v, l, cls) => h('section', { class: 'card kpi' }, h('div', { class: 'v ' + (cls || ''), text: v }), h('div', { class: 'l', text: l }));
      fill(kpis,
        kpi(fmtRate(d.requestRate), 'requests / s (1 min)'),
        kpi(d.requests ? fmtPct(d.successRate) : '–', 'success rate', 't-' + d.health),
        kpi(fmtLat(d.p50), 'p50 latency'),
        kpi(fmtLat(d.p99), 'p99 latency'),
        kpi(d.healthy + '/' + d.endpoints, 'healthy endpoints', d.healthy < d.endpoints ? 't-bad' : ''),
        kpi(String((d.errors || []).length), 'recent errors', (d.errors || []).length ? 't-bad' : ''));
      drawCharts(d);
      fill(callers, edgeRows(d.inbound || [], 'Caller'));
      fill(callees, edgeRows(d.outbound || [], 'Callee'));
      fill(workloads, table(workloadCols, (d.workloads || []).map(workloadRow), 'No workloads selected'));
      const toggle = (key) => { if (!expanded.delete(key)) expanded.add(key); render(last); };
      fill(policies, policyRows(d.policies || [], expanded, toggle, 'No route or policy applies to this service'));
      fill(errors, errorRows(d.errors || [], 'No failed requests sampled'));
    }
    const onResize = () => { if (last) drawCharts(last); };
    window.addEventListener('resize', onResize);
    return {
      el,
      url: () => API + 'services/' + encodeURIComponent(id) + '?window=' + win,
      render,
      destroy: () => window.removeEventListener('resize', onResize),
    };
  }

  // ---- workloads page ----------------------------------------------------

  const MAX_ROWS = 250;

  function workloadsView() {
    let q = '';
    let last = null;
    const note = h('div');
    const count = h('span', { class: 'muted' });
    const body = h('div');
    const proxyless = h('div');
    const search = h('input', {
      type: 'search', placeholder: 'Filter workloads…', 'aria-label': 'filter workloads',
      oninput: (e) => { q = e.target.value.trim().toLowerCase(); if (last) render(last); },
    });
    const el = h('div', null,
      h('div', { class: 'toolbar' }, h('h1', { text: 'Workloads and proxies' }), count, h('span', { class: 'spacer' }), search),
      note, card(null, body), h('div', { class: 'stack' }, h('div', { class: 'section-title', text: 'Proxyless xDS clients' }), card(null, proxyless)));

    function render(d) {
      last = d;
      fill(note, d.certificatesError ? h('div', { class: 'note', text: 'Certificate state unavailable: ' + d.certificatesError }) : null);
      const all = d.workloads || [];
      const match = q ? all.filter((w) => (w.namespace + '/' + w.name + ' ' + (w.services || []).join(' ') + ' ' + w.address + ' ' + w.health).toLowerCase().includes(q)) : all;
      count.textContent = match.length === all.length ? all.length + ' workloads' : match.length + ' of ' + all.length + ' workloads';
      fill(body, table(workloadCols, match.slice(0, MAX_ROWS).map(workloadRow), q ? 'No workload matches' : 'No workloads registered'),
        match.length > MAX_ROWS ? h('div', { class: 'more', text: `Showing ${MAX_ROWS} of ${match.length}; filter to narrow down.` }) : null);
      fill(proxyless, table([['Node'], ['Connected'], ['xDS config (accepted)']], (d.proxyless || []).map((p) => h('tr', null,
        h('td', { class: 'mono', text: p.id }),
        h('td', null, p.connected ? h('span', { class: 'badge good', text: 'since ' + ago(p.connectedAt).replace(' ago', '') }) : h('span', { class: 'badge bad', text: 'disconnected' })),
        h('td', null, xdsCell(p)))), 'No proxyless clients connected'));
    }
    return { el, url: () => API + 'workloads', render };
  }

  // ---- routes and policies page ------------------------------------------

  function policiesView() {
    let q = '';
    let kind = '';
    let last = null;
    const expanded = new Set();
    const body = h('div');
    const note = h('div');
    const kinds = ['HTTPRoute', 'GRPCRoute', 'DestinationPolicy', 'FaultInjection', 'MeshTLS', 'AuthorizationPolicy'];
    const search = h('input', {
      type: 'search', placeholder: 'Filter by name or service…', 'aria-label': 'filter policies',
      oninput: (e) => { q = e.target.value.trim().toLowerCase(); if (last) render(last); },
    });
    const el = h('div', null,
      h('div', { class: 'toolbar' }, h('h1', { text: 'Routes and policies' }),
        segmented([['', 'All'], ...kinds.map((k) => [k, k])], kind, (v) => { kind = v; if (last) render(last); }),
        h('span', { class: 'spacer' }), search),
      note, card(null, body));
    function render(d) {
      last = d;
      fill(note, d.ready ? null : h('div', { class: 'note', text: 'The registry has not finished its first listing; the list may be incomplete.' }));
      const list = (d.policies || []).filter((p) => (!kind || p.kind === kind) &&
        (!q || (p.namespace + '/' + p.name + ' ' + (p.targets || []).join(' ') + ' ' + (p.backends || []).join(' ') + ' ' + p.summary).toLowerCase().includes(q)));
      const toggle = (key) => { if (!expanded.delete(key)) expanded.add(key); render(last); };
      fill(body, policyRows(list, expanded, toggle, 'No routes or policies in effect'));
    }
    return { el, url: () => API + 'policies', render };
  }

  // ---- errors page -------------------------------------------------------

  function errorsView() {
    let q = '';
    let last = null;
    const body = h('div');
    const search = h('input', {
      type: 'search', placeholder: 'Filter by service, path, status…', 'aria-label': 'filter errors',
      oninput: (e) => { q = e.target.value.trim().toLowerCase(); if (last) render(last); },
    });
    const el = h('div', null,
      h('div', { class: 'toolbar' }, h('h1', { text: 'Recent errors' }), h('span', { class: 'muted', text: 'failed requests sampled by the proxies, newest first' }), h('span', { class: 'spacer' }), search),
      card(null, body));
    function render(d) {
      last = d;
      const list = (d.errors || []).filter((e) => !q || [e.source, e.destination, e.method, e.path, e.authority, statusText(e), e.proxy].join(' ').toLowerCase().includes(q));
      fill(body, errorRows(list, q ? 'No error matches' : 'No failed requests sampled recently'));
    }
    return { el, url: () => API + 'errors?limit=200', render };
  }

  window.addEventListener('hashchange', route);
  route();
})();
