// The guest page: the answer streams in over the response of a fetch (server-sent events);
// Stop aborts it, which ends the generation on the server. Without JavaScript the form posts
// and the page comes back with the whole answer.
const section = document.querySelector('section.guest-chat');
if (section) start(section);

function start(section) {
  const list = section.querySelector('ol.messages');
  const form = section.querySelector('form#compose');
  const textarea = form.querySelector('textarea');
  const send = form.querySelector('button[type="submit"]');
  const stop = form.querySelector('button.stop');
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? '';
  let controller;

  function item(who, text, assistant) {
    list.querySelector('li.empty')?.remove();
    const li = document.createElement('li');
    li.className = 'message' + (assistant ? ' from-assistant' : '');
    const meta = document.createElement('div');
    meta.className = 'message-meta';
    const name = document.createElement('strong');
    name.textContent = who;
    meta.append(name);
    const body = document.createElement('div');
    body.className = 'message-body' + (assistant ? ' streaming' : '');
    body.textContent = text;
    li.append(meta, body);
    list.append(li);
    return body;
  }

  function fail(body, message) {
    const note = document.createElement('p');
    note.className = 'form-error small';
    note.textContent = message;
    body.after(note);
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = textarea.value.trim();
    if (!text || controller) return;
    item('You', text, false);
    textarea.value = '';
    const body = item('Assistant', '', true);
    controller = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    try {
      const response = await fetch('/api/v1/guest/messages', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf, Accept: 'text/event-stream' },
        body: JSON.stringify({ body: text }),
        signal: controller.signal,
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        fail(body, problem.detail ?? `The server said ${response.status}.`);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const line = buffer.slice(0, end).replace(/^data: /, '');
          buffer = buffer.slice(end + 2);
          const frame = JSON.parse(line);
          if (frame.text) body.append(frame.text);
          if (frame.error) fail(body, frame.error);
          if (frame.done) section.querySelector('.remaining').textContent = frame.remaining;
        }
      }
    } catch (error) {
      if (error.name === 'AbortError') {
        const note = document.createElement('span');
        note.className = 'badge answer-state';
        note.dataset.state = 'stopped';
        note.textContent = 'Stopped';
        body.parentElement.querySelector('.message-meta').append(' ', note);
      } else {
        fail(body, 'The connection broke; try again.');
      }
    } finally {
      controller = undefined;
      send.disabled = false;
      stop.hidden = true;
    }
  });
  stop.addEventListener('click', () => controller?.abort());
  textarea.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}
