// The assistant chat page, on top of live.js (which keeps the connection, the outbox and the
// stored messages): answers stream into a bubble with a Stop button as they are generated,
// stopped and failed answers are marked (with a retry), the title updates when the chat gets
// one, code is highlighted with a Copy button, and the artifacts panel refreshes.
//
// Frames it follows (docs/protocol.md, "assistant"): queued, started, delta, finished, titled.
// Without JavaScript the page still works: forms post, and the answer shows on reload.

const section = document.querySelector('section.room[data-assistant]');
if (section) start(section);

function start(section) {
  const chat = Number(section.dataset.room);
  // `chat`: a personal assistant chat (its page has the chat's controls); `room`: a group
  // room where the assistant answers mentions.
  const isChat = section.dataset.assistant === 'chat';
  const list = section.querySelector('ol.messages');
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? '';
  const regenerate = section.querySelector('form.regenerate-form');
  const form = section.querySelector('form#compose');
  const textarea = form?.querySelector('textarea[name="body"]');
  const picker = section.querySelector('form.model-picker');
  const bubbles = new Map(); // reply id → its <li>
  // Finished replies whose stored message has not arrived yet (on another node, the two
  // travel separately): message id → reply.
  const awaiting = new Map();

  const api = (path, method = 'POST', body) => fetch(path, {
    method,
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf, Accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

  function decorate(root) {
    for (const block of root.querySelectorAll('pre > code')) {
      if (block.dataset.done) continue;
      block.dataset.done = 'yes';
      if (window.hljs) {
        try { window.hljs.highlightElement(block); } catch { /* unknown language: leave plain */ }
      }
      const pre = block.parentElement;
      if (pre.closest('.artifact')) continue;
      const copy = document.createElement('button');
      copy.type = 'button';
      copy.className = 'link-button copy-code';
      copy.textContent = 'Copy';
      copy.addEventListener('click', async () => {
        await navigator.clipboard?.writeText(block.textContent);
        copy.textContent = 'Copied';
        setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
      });
      pre.before(copy);
    }
  }

  function bubble(reply) {
    let li = bubbles.get(reply.id) ?? list.querySelector(`li[data-reply="${reply.id}"]`);
    if (li) {
      bubbles.set(reply.id, li);
      return li;
    }
    list.querySelector('li.empty')?.remove();
    li = document.createElement('li');
    li.className = 'message from-assistant answer-open';
    li.dataset.reply = reply.id;
    li.dataset.state = reply.state;
    const meta = document.createElement('div');
    meta.className = 'message-meta';
    const who = document.createElement('strong');
    who.textContent = 'Assistant';
    const note = document.createElement('span');
    note.className = 'muted small answer-note';
    note.textContent = 'Thinking…';
    meta.append(who, ' ', note);
    const body = document.createElement('div');
    body.className = 'message-body streaming';
    body.setAttribute('aria-live', 'polite');
    const stop = document.createElement('button');
    stop.type = 'button';
    stop.className = 'button secondary stop';
    stop.textContent = 'Stop';
    li.append(meta, body, stop);
    list.append(li);
    bubbles.set(reply.id, li);
    wire(li);
    if (regenerate) regenerate.hidden = true;
    return li;
  }

  // The Stop button of a bubble (server-rendered ones have a form; it is taken over here).
  function wire(li) {
    const id = Number(li.dataset.reply);
    const button = li.querySelector('button.stop');
    if (!button || button.dataset.wired) return;
    button.dataset.wired = 'yes';
    button.type = 'button';
    button.addEventListener('click', async (event) => {
      event.preventDefault();
      button.disabled = true;
      button.textContent = 'Stopping…';
      const response = await api(`/api/v1/assistant/replies/${id}/stop`).catch(() => undefined);
      if (!response?.ok) {
        button.disabled = false;
        button.textContent = 'Stop';
      }
    });
  }

  function mark(li, state, error) {
    const meta = li.querySelector('.message-meta');
    meta.querySelector('.answer-state')?.remove();
    if (state === 'stopped' || state === 'failed') {
      const badge = document.createElement('span');
      badge.className = 'badge answer-state';
      badge.dataset.state = state;
      badge.textContent = state === 'stopped' ? 'Stopped' : 'Incomplete';
      meta.append(' ', badge);
    }
    if (error) {
      const note = document.createElement('p');
      note.className = 'form-error small';
      note.textContent = error;
      li.append(note);
    }
  }

  function finished(reply) {
    const li = bubbles.get(reply.id) ?? list.querySelector(`li[data-reply="${reply.id}"]`);
    const stored = reply.message_id && list.querySelector(`li[data-id="${reply.message_id}"]`);
    if (reply.message_id && !stored) {
      // The answer is stored; its message is on its way. Keep the bubble until it is here.
      awaiting.set(reply.message_id, reply);
      li?.querySelector('button.stop')?.remove();
      return;
    }
    bubbles.delete(reply.id);
    if (stored) {
      li?.remove();
      mark(stored, reply.state, reply.state === 'failed' ? reply.error : null);
    } else if (li) {
      // Nothing was stored (failed at once, or stopped before the first word).
      li.classList.remove('answer-open');
      li.dataset.state = reply.state;
      li.querySelector('.streaming')?.remove();
      li.querySelector('button.stop')?.remove();
      li.querySelector('form.stop-form')?.remove();
      li.querySelector('.answer-note').textContent = reply.state === 'stopped' ? 'Stopped' : 'Failed';
      if (reply.error) mark(li, reply.state, reply.error);
    }
    if (regenerate) regenerate.hidden = false;
    refreshArtifacts();
  }

  async function refreshArtifacts() {
    const panel = document.querySelector('ul.artifact-list');
    if (!panel || !isChat) return;
    const response = await fetch(`/api/v1/assistant/chats/${chat}/artifacts`, { headers: { Accept: 'application/json' } }).catch(() => undefined);
    if (!response?.ok) return;
    const { artifacts } = await response.json();
    if (!artifacts.length) {
      const empty = document.createElement('li');
      empty.className = 'muted small empty-artifacts';
      empty.textContent = 'Code blocks and documents from answers appear here.';
      panel.replaceChildren(empty);
      return;
    }
    panel.replaceChildren(...artifacts.map((a) => {
      const li = document.createElement('li');
      li.className = 'artifact';
      li.dataset.message = a.message_id;
      li.dataset.index = a.index;
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      const title = document.createElement('strong');
      title.textContent = a.title;
      const info = document.createElement('span');
      info.className = 'muted small';
      info.textContent = `${a.kind}${a.language ? ` · ${a.language}` : ''} · v${a.version}`;
      summary.append(title, ' ', info);
      const pre = document.createElement('pre');
      const code = document.createElement('code');
      if (a.language) code.className = `language-${a.language}`;
      code.textContent = a.content;
      pre.append(code);
      details.append(summary, pre);
      const actions = document.createElement('div');
      actions.className = 'row-actions';
      const copy = document.createElement('button');
      copy.type = 'button';
      copy.className = 'link-button copy-artifact';
      copy.textContent = 'Copy';
      copy.addEventListener('click', () => navigator.clipboard?.writeText(a.content));
      const download = document.createElement('a');
      download.className = 'link-button';
      download.href = `/api/v1/assistant/chats/${chat}/artifacts/${a.message_id}/${a.index}`;
      download.setAttribute('download', '');
      download.textContent = 'Download';
      actions.append(copy, download);
      li.append(details, actions);
      return li;
    }));
    decorate(panel);
  }

  // The chat's title in the heading, the tab, the chat list and the rename field.
  function retitle(title) {
    const heading = section.querySelector('#room-title');
    if (!heading || heading.textContent === title) return;
    heading.textContent = title;
    document.title = `${title} — Assistant — Conclave`;
    const entry = document.querySelector(`li[data-chat="${chat}"] .chat-title`);
    if (entry) entry.textContent = title;
    const field = document.querySelector('#chat-title');
    if (field) field.value = title;
  }

  // After (re)connecting: what changed while this page was not listening — the title (the
  // title job may finish between the page's render and its subscription) and answers that
  // ended.
  async function sync() {
    if (!isChat) return;
    const response = await fetch(`/api/v1/assistant/chats/${chat}`, { headers: { Accept: 'application/json' } }).catch(() => undefined);
    if (!response?.ok) return;
    const { chat: current, replies } = await response.json();
    if (current?.title) retitle(current.title);
    for (const reply of replies) {
      if (bubbles.has(reply.id) && ['completed', 'stopped', 'failed'].includes(reply.state)) {
        // The stored answer came with the replay of the subscription, or comes right after.
        setTimeout(() => finished(reply), 300);
      }
    }
  }

  section.addEventListener('conclave:frame', ({ detail: frame }) => {
    if (frame.type === 'subscribed' && frame.room === chat) {
      sync();
      return;
    }
    if (frame.type !== 'assistant' || frame.room !== chat) return;
    switch (frame.event) {
      case 'queued':
        bubble(frame.reply);
        break;
      case 'started':
        bubble(frame.reply).querySelector('.answer-note').textContent = `Answering with ${frame.label}…`;
        break;
      case 'delta': {
        const li = bubble({ id: frame.reply_id, state: 'streaming' });
        li.querySelector('.streaming')?.append(frame.text);
        break;
      }
      case 'finished':
        finished(frame.reply);
        break;
      case 'titled':
        retitle(frame.title);
        break;
      default:
        break;
    }
  });
  section.addEventListener('conclave:shown', ({ detail: li }) => {
    decorate(li);
    const reply = awaiting.get(Number(li.dataset.id));
    if (reply) {
      awaiting.delete(reply.message_id);
      finished(reply);
    }
  });

  for (const li of list.querySelectorAll('li.answer-open')) {
    bubbles.set(Number(li.dataset.reply), li);
    wire(li);
  }
  for (const copy of document.querySelectorAll('.copy-artifact')) {
    copy.hidden = false;
    copy.addEventListener('click', () => {
      const code = copy.closest('li').querySelector('pre code');
      navigator.clipboard?.writeText(code.textContent);
    });
  }

  regenerate?.addEventListener('submit', async (event) => {
    event.preventDefault();
    regenerate.hidden = true;
    const response = await api(`/api/v1/assistant/chats/${chat}/regenerate`).catch(() => undefined);
    if (!response?.ok) regenerate.hidden = false;
  });

  if (picker) {
    const select = picker.querySelector('select');
    picker.querySelector('button[type="submit"]').hidden = true;
    select.addEventListener('change', async () => {
      const response = await api(`/api/v1/assistant/chats/${chat}`, 'PATCH', { model: select.value }).catch(() => undefined);
      if (!response?.ok) picker.requestSubmit();
    });
  }

  // Enter sends, Shift+Enter is a new line (live.js sends the form over the socket).
  if (isChat) textarea?.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // highlight.js loads deferred; decorate once it is there.
  const ready = () => decorate(document);
  if (window.hljs) ready(); else window.addEventListener('load', ready);
}
