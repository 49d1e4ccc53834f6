// Makes a room page live over the realtime endpoint (docs/protocol.md): new messages, edits,
// deletions, typing and presence appear without a reload; the compose box sends over the
// socket. Offline, the page still reads (service worker + IndexedDB, see store.js) and what is
// written waits in the outbox; it is sent once the connection is back, exactly once (each
// message keeps its idempotency key across retries).
//
// Without JavaScript the page works as plain forms; this module only adds to it.
import * as store from './store.js';

const section = document.querySelector('section.room[data-live]');
if (section) start(section);

function start(section) {
  const room = Number(section.dataset.room);
  // An assistant chat page: no reply links (replies are a room's), answers styled apart;
  // assistant.js follows the `conclave:frame` events for the streamed answers.
  const assistantChat = 'assistant' in section.dataset;
  const me = Number(section.dataset.me);
  const canPost = section.dataset.canPost === 'true';
  const list = section.querySelector('ol.messages');
  const form = section.querySelector('form#compose');
  const status = section.querySelector('.live-status');
  const typingLine = section.querySelector('.typing');
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? '';
  let lastId = Number(section.dataset.lastId || 0);
  let socket;
  let live = false;
  let backoff = 1000;
  let readSent = 0;
  let typingTimer;
  let lastTyping = 0;

  const say = (text, state) => {
    if (!status) return;
    status.textContent = text;
    status.dataset.state = state;
  };

  const item = (id) => list.querySelector(`li[data-id="${id}"]`);

  function render(message) {
    const li = document.createElement('li');
    li.className = 'message' + (message.deleted ? ' deleted' : '')
      + (message.sender?.kind === 'assistant' ? ' from-assistant' : '');
    li.id = `m${message.id}`;
    li.dataset.id = message.id;
    const meta = document.createElement('div');
    meta.className = 'message-meta';
    const who = document.createElement('strong');
    who.textContent = message.sender?.name ?? '';
    const time = document.createElement('time');
    time.dateTime = message.created_at;
    time.textContent = (message.created_at ?? '').slice(0, 16).replace('T', ' ');
    meta.append(who, ' ', time);
    if (message.edited && !message.deleted) {
      const edited = document.createElement('span');
      edited.className = 'muted small';
      edited.textContent = '(edited)';
      meta.append(' ', edited);
    }
    li.append(meta);
    if (message.deleted) {
      const gone = document.createElement('p');
      gone.className = 'muted';
      gone.innerHTML = '<em>This message was deleted.</em>';
      li.append(gone);
      return li;
    }
    const body = document.createElement('div');
    body.className = 'message-body';
    // Rendered and sanitised by the server (Markdown → safe HTML), like the page itself.
    body.innerHTML = message.html ?? '';
    li.append(body);
    const actions = document.createElement('div');
    actions.className = 'row-actions message-actions';
    if (canPost && !assistantChat) {
      const reply = document.createElement('a');
      reply.className = 'link-button';
      reply.href = `/rooms/${room}?reply=${message.id}#compose`;
      reply.textContent = 'Reply';
      actions.append(reply);
    }
    if (message.sender?.kind === 'user' && message.sender?.id === me && !assistantChat) {
      const edit = document.createElement('a');
      edit.className = 'link-button';
      edit.href = `/rooms/${room}/messages/${message.id}/edit`;
      edit.textContent = 'Edit';
      const remove = document.createElement('form');
      remove.method = 'post';
      remove.action = `/rooms/${room}/messages/${message.id}/delete`;
      remove.className = 'inline-form';
      const token = document.createElement('input');
      token.type = 'hidden';
      token.name = 'csrf_token';
      token.value = csrf;
      const button = document.createElement('button');
      button.type = 'submit';
      button.className = 'link-button';
      button.textContent = 'Delete';
      remove.append(token, button);
      actions.append(edit, remove);
    }
    li.append(actions);
    return li;
  }

  /// Puts a message in its place (by id), replacing what was there.
  function show(message) {
    if (message.room_id !== room) return;
    list.querySelector('li.empty')?.remove();
    const fresh = render(message);
    const existing = item(message.id);
    if (existing) {
      existing.replaceWith(fresh);
    } else {
      const later = [...list.querySelectorAll('li[data-id]')].find((li) => Number(li.dataset.id) > message.id);
      const firstPending = list.querySelector('li.pending, li.answer-open');
      list.insertBefore(fresh, later ?? firstPending ?? null);
    }
    if (message.id > lastId) lastId = message.id;
    section.dispatchEvent(new CustomEvent('conclave:shown', { detail: fresh }));
    markRead();
  }

  function showPending(entry) {
    if (entry.room !== room || list.querySelector(`li[data-key="${entry.idempotency_key}"]`)) return;
    list.querySelector('li.empty')?.remove();
    const li = document.createElement('li');
    li.className = 'message pending';
    li.dataset.key = entry.idempotency_key;
    const meta = document.createElement('div');
    meta.className = 'message-meta';
    const who = document.createElement('strong');
    who.textContent = 'You';
    const note = document.createElement('span');
    note.className = 'muted small pending-note';
    note.textContent = 'Waiting to be sent';
    meta.append(who, ' ', note);
    const body = document.createElement('div');
    body.className = 'message-body';
    body.textContent = entry.body;
    li.append(meta, body);
    list.append(li);
  }

  function send(frame) {
    if (socket?.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  async function flush() {
    for (const entry of await store.queued()) {
      send({
        type: 'post',
        room: entry.room,
        body: entry.body,
        reply_to: entry.reply_to ?? null,
        idempotency_key: entry.idempotency_key,
        ref: entry.idempotency_key,
      });
    }
  }

  function markRead() {
    if (document.visibilityState !== 'visible' || lastId <= readSent || !live) return;
    clearTimeout(markRead.timer);
    markRead.timer = setTimeout(() => {
      if (lastId > readSent && send({ type: 'read', room, message_id: lastId })) readSent = lastId;
    }, 800);
  }

  function presence(frame) {
    const dot = section.ownerDocument.querySelector(`li[data-user="${frame.user.id}"] .presence`);
    if (dot) {
      dot.dataset.state = frame.state;
      dot.title = frame.state;
      dot.setAttribute('aria-label', frame.state);
    }
  }

  async function handle(frame) {
    section.dispatchEvent(new CustomEvent('conclave:frame', { detail: frame }));
    switch (frame.type) {
      case 'hello':
        send({ type: 'subscribe', room, since: lastId, ref: 'subscribe' });
        if (document.visibilityState !== 'visible') send({ type: 'presence', state: 'away' });
        break;
      case 'subscribed':
        live = true;
        backoff = 1000;
        say('Live', 'live');
        for (const entry of frame.presence ?? []) presence(entry);
        readSent = Math.max(readSent, frame.read ?? 0);
        markRead();
        await flush();
        break;
      case 'message':
      case 'message_edited':
        show(frame.message);
        await store.saveMessages([frame.message]);
        break;
      case 'message_deleted': {
        const li = item(frame.message_id);
        if (li) {
          li.classList.add('deleted');
          li.replaceChildren(li.querySelector('.message-meta') ?? '', Object.assign(document.createElement('p'), {
            className: 'muted', innerHTML: '<em>This message was deleted.</em>',
          }));
        }
        break;
      }
      case 'ack': {
        await store.unqueue(frame.ref);
        list.querySelector(`li[data-key="${frame.ref}"]`)?.remove();
        show(frame.message);
        await store.saveMessages([frame.message]);
        break;
      }
      case 'typing':
        if (frame.user.id !== me && frame.room === room && typingLine) {
          typingLine.textContent = `${frame.user.name} is typing…`;
          typingLine.hidden = false;
          clearTimeout(typingTimer);
          typingTimer = setTimeout(() => { typingLine.hidden = true; }, 4000);
        }
        break;
      case 'presence':
        if (frame.room === room) presence(frame);
        break;
      case 'error': {
        const pending = frame.ref && list.querySelector(`li[data-key="${frame.ref}"]`);
        if (pending) {
          // The server refused it (too long, no longer allowed): retrying would not help.
          await store.unqueue(frame.ref);
          pending.classList.add('failed');
          pending.querySelector('.pending-note').textContent = `Not sent: ${frame.message}`;
        } else if (frame.ref === 'subscribe') {
          say(frame.message, 'error');
        }
        break;
      }
      default:
        break;
    }
  }

  function connect() {
    if (!navigator.onLine) {
      say('Offline — what you write waits here and is sent when you are back online', 'offline');
      return;
    }
    say('Connecting…', 'connecting');
    const url = new URL('/api/v1/ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    socket = new WebSocket(url, 'conclave.v1');
    socket.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      handle(frame).catch((error) => console.warn('live update failed', error));
    };
    socket.onclose = (event) => {
      live = false;
      socket = undefined;
      if (event.code === 4001) {
        say('Signed out — sign in again to see new messages', 'error');
        return;
      }
      if (!navigator.onLine) {
        say('Offline — what you write waits here and is sent when you are back online', 'offline');
        return;
      }
      // 1012: the server is restarting; come back soon, spread out over a second.
      const wait = event.code === 1012 ? Math.random() * 1000 : backoff;
      backoff = Math.min(backoff * 2, 30000);
      say('Reconnecting…', 'connecting');
      setTimeout(connect, wait);
    };
  }

  if (form && canPost) {
    const textarea = form.querySelector('textarea[name="body"]');
    const keyField = form.querySelector('input[name="idempotency_key"]');
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const body = textarea.value;
      if (!body.trim()) return;
      const entry = {
        idempotency_key: keyField?.value || crypto.randomUUID(),
        room,
        body,
        reply_to: Number(form.querySelector('input[name="reply_to"]')?.value) || null,
        created: Date.now(),
      };
      // Written down before anything else: a closed tab or a lost connection loses nothing.
      await store.queue(entry);
      showPending(entry);
      textarea.value = '';
      if (keyField) keyField.value = crypto.randomUUID();
      send({ type: 'post', room, body: entry.body, reply_to: entry.reply_to, idempotency_key: entry.idempotency_key, ref: entry.idempotency_key });
    });
    textarea.addEventListener('input', () => {
      if (Date.now() - lastTyping > 3000 && live) {
        lastTyping = Date.now();
        send({ type: 'typing', room });
      }
    });
  }

  document.addEventListener('visibilitychange', () => {
    send({ type: 'presence', state: document.visibilityState === 'visible' ? 'online' : 'away' });
    markRead();
  });
  window.addEventListener('offline', () => {
    socket?.close(1000, 'offline');
    say('Offline — what you write waits here and is sent when you are back online', 'offline');
  });
  window.addEventListener('online', () => {
    if (!socket) connect();
  });

  (async () => {
    await store.saveRoom({ id: room, title: section.dataset.title ?? '' });
    // What arrived after this copy of the page was made (it may come from the offline cache).
    for (const message of await store.messagesAfter(room, lastId)) show(message);
    for (const entry of await store.queued()) showPending(entry);
    if (navigator.onLine) {
      const response = await fetch(`/api/v1/rooms/${room}/messages?limit=50`, { headers: { Accept: 'application/json' } }).catch(() => undefined);
      if (response?.ok) await store.saveMessages((await response.json()).messages ?? []);
    }
  })().catch((error) => console.warn('offline copy unavailable', error)).finally(connect);
}
