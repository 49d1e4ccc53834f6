// Conclave's service worker: keeps the app shell (styles, scripts, icon) and the pages this
// person opened, so rooms stay readable offline. Pages go to the network first and fall back to
// the copy from the last visit; static files are served from the cache and refreshed behind.
// Nothing but GET requests of our own origin is touched; the API and the WebSocket never are.

const SHELL = 'conclave-shell-v2';
const PAGES = 'conclave-pages-v1';
const SHELL_FILES = [
  '/static/css/conclave.css',
  '/static/js/live.js',
  '/static/js/assistant.js',
  '/static/vendor/highlight/highlight.min.js',
  '/static/vendor/highlight/github.min.css',
  '/static/vendor/highlight/github-dark.min.css',
  '/static/js/store.js',
  '/static/js/offline.js',
  '/static/js/report-errors.js',
  '/static/favicon.svg',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(SHELL_FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key !== SHELL && key !== PAGES) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

/// Pages worth keeping for offline reading: the room list, rooms, and assistant chats.
function keepable(url) {
  return url.pathname === '/rooms' || /^\/rooms\/\d+$/.test(url.pathname)
    || url.pathname === '/assistant' || /^\/assistant\/\d+$/.test(url.pathname);
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith('/api/')) return;
  if (request.mode === 'navigate') {
    event.respondWith((async () => {
      try {
        const response = await fetch(request);
        if (response.ok && keepable(url) && !url.search) {
          const cache = await caches.open(PAGES);
          await cache.put(url.pathname, response.clone());
        }
        return response;
      } catch (offline) {
        const cached = await caches.match(url.pathname, { cacheName: PAGES });
        if (cached) return cached;
        return new Response(
          '<!doctype html><meta charset="utf-8"><title>Offline — Conclave</title>'
          + '<link rel="stylesheet" href="/static/css/conclave.css">'
          + '<main id="main"><h1>You are offline</h1><p>This page was not opened before, so there is no '
          + 'copy of it here. Rooms you opened are still readable: <a href="/rooms">your rooms</a>.</p></main>',
          { status: 503, headers: { 'Content-Type': 'text/html; charset=utf-8' } },
        );
      }
    })());
    return;
  }
  if (url.pathname.startsWith('/static/')) {
    event.respondWith((async () => {
      const cache = await caches.open(SHELL);
      const cached = await cache.match(request);
      const fresh = fetch(request).then((response) => {
        if (response.ok) cache.put(request, response.clone());
        return response;
      }).catch(() => undefined);
      return cached ?? (await fresh) ?? Response.error();
    })());
  }
});
