// On every page of a signed-in person: installs the service worker (offline reading), and
// wipes this browser's copy of rooms, messages and the outbox when they sign out.
import { wipe } from './store.js';

if ('serviceWorker' in navigator && window.isSecureContext) {
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((error) => {
    console.warn('offline reading is not available:', error);
  });
}

for (const form of document.querySelectorAll('form[action="/logout"]')) {
  form.addEventListener('submit', (event) => {
    if (form.dataset.wiped) return;
    event.preventDefault();
    wipe().finally(() => {
      form.dataset.wiped = 'yes';
      form.submit();
    });
  });
}
