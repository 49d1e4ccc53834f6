// The browser's own copy of what this person opened, for offline reading (IndexedDB
// "conclave"): rooms, the newest messages of each room, and the outbox of messages written
// while offline. Everything here is wiped when the person signs out.

const NAME = 'conclave';
const VERSION = 1;
/// Messages kept per room (the newest).
export const KEEP_PER_ROOM = 300;

let opening;

function open() {
  opening ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(NAME, VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore('rooms', { keyPath: 'id' });
      const messages = db.createObjectStore('messages', { keyPath: 'id' });
      messages.createIndex('room', ['room_id', 'id']);
      const outbox = db.createObjectStore('outbox', { keyPath: 'idempotency_key' });
      outbox.createIndex('created', 'created');
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opening;
}

function done(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onerror = () => reject(transaction.error);
    transaction.onabort = () => reject(transaction.error);
  });
}

function all(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export async function saveRoom(room) {
  const db = await open();
  const tx = db.transaction('rooms', 'readwrite');
  tx.objectStore('rooms').put(room);
  await done(tx);
}

/// Stores messages (as the API shows them) and keeps only the newest of each room.
export async function saveMessages(messages) {
  if (messages.length === 0) return;
  const db = await open();
  const tx = db.transaction('messages', 'readwrite');
  const store = tx.objectStore('messages');
  for (const message of messages) store.put(message);
  const rooms = new Set(messages.map((m) => m.room_id));
  for (const room of rooms) {
    const range = IDBKeyRange.bound([room, 0], [room, Number.MAX_SAFE_INTEGER]);
    const keys = await all(store.index('room').getAllKeys(range));
    for (const key of keys.slice(0, Math.max(0, keys.length - KEEP_PER_ROOM))) store.delete(key);
  }
  await done(tx);
}

/// The stored messages of a room after `after`, oldest first.
export async function messagesAfter(room, after) {
  const db = await open();
  const range = IDBKeyRange.bound([room, after + 1], [room, Number.MAX_SAFE_INTEGER]);
  return all(db.transaction('messages').objectStore('messages').index('room').getAll(range));
}

export async function queue(item) {
  const db = await open();
  const tx = db.transaction('outbox', 'readwrite');
  tx.objectStore('outbox').put(item);
  await done(tx);
}

/// Messages waiting to be sent, oldest first.
export async function queued() {
  const db = await open();
  return all(db.transaction('outbox').objectStore('outbox').index('created').getAll());
}

export async function unqueue(key) {
  const db = await open();
  const tx = db.transaction('outbox', 'readwrite');
  tx.objectStore('outbox').delete(key);
  await done(tx);
}

/// Forgets everything (sign-out): the database and the cached pages.
export async function wipe() {
  if (opening) {
    (await opening).close();
    opening = undefined;
  }
  await new Promise((resolve) => {
    const request = indexedDB.deleteDatabase(NAME);
    request.onsuccess = request.onerror = request.onblocked = () => resolve();
  });
  if ('caches' in window) {
    for (const key of await caches.keys()) await caches.delete(key);
  }
}
