// On every page. Signed in: installs the service worker (offline reading). Signed out (after
// signing out, or once the session ended): wipes this browser's copy of rooms, messages and
// the outbox, and the cached pages.
import { wipe } from './store.js';

// Absent on pages that do not know (error pages): then nothing happens.
const session = document.querySelector('meta[name="conclave-signed-in"]')?.content;

if (session === 'yes') {
  if ('serviceWorker' in navigator && window.isSecureContext) {
    navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((error) => {
      console.warn('offline reading is not available:', error);
    });
  }
} else if (session === 'no' && 'indexedDB' in window) {
  (async () => {
    const databases = indexedDB.databases ? await indexedDB.databases() : [{ name: 'conclave' }];
    const cached = 'caches' in window ? await caches.keys() : [];
    if (databases.some((d) => d.name === 'conclave') || cached.length > 0) await wipe();
  })().catch((error) => console.warn('could not clear the offline copy:', error));
}
