// A fake OpenAI-compatible provider for the Chromium tests of the assistant: streams
// "You said: <last user message>" word by word, 60 ms apart, with usage; a message containing
// "long story" gets 200 numbered words (time to press Stop); one containing "code please" gets
// an answer with a fenced Rust block. Prints {"url":"http://127.0.0.1:PORT/v1"} once
// listening, then runs until it is killed.
import http from 'node:http';

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function answerFor(question) {
  if (question.includes('long story') || question.includes('long one')) {
    return Array.from({ length: 200 }, (_, i) => `word${i + 1}`).join(' ');
  }
  if (question.includes('code please')) {
    return 'Here it is:\n\n```rust src/main.rs\nfn main() {\n    println!("hi");\n}\n```\n\nEnjoy.';
  }
  if (question.startsWith('Conversation') || question.includes('Title:')) return 'Greeting the assistant';
  return `You said: ${question}`;
}

const server = http.createServer(async (request, response) => {
  if (request.method === 'GET' && request.url === '/v1/models') {
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify({ object: 'list', data: [{ id: 'fake' }] }));
    return;
  }
  if (request.method !== 'POST' || request.url !== '/v1/chat/completions') {
    response.writeHead(404).end();
    return;
  }
  let raw = '';
  for await (const chunk of request) raw += chunk;
  const body = JSON.parse(raw);
  const last = [...body.messages].reverse().find((m) => m.role === 'user')?.content ?? '';
  const words = answerFor(last).split(' ');
  response.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  let closed = false;
  response.on('close', () => { closed = true; });
  const chunk = (delta, finish = null) => `data: ${JSON.stringify({
    id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 1, model: body.model,
    choices: [{ index: 0, delta, finish_reason: finish }],
  })}\n\n`;
  response.write(chunk({ role: 'assistant', content: '' }));
  for (const [i, word] of words.entries()) {
    if (closed) return;
    await wait(60);
    response.write(chunk({ content: i === 0 ? word : ` ${word}` }));
  }
  response.write(chunk({}, 'stop'));
  response.write(`data: ${JSON.stringify({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 1,
    model: body.model, choices: [], usage: { prompt_tokens: 12, completion_tokens: words.length, total_tokens: 12 + words.length } })}\n\n`);
  response.end('data: [DONE]\n\n');
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${server.address().port}/v1` })}\n`);
});
