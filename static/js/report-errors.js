// Reports uncaught errors and unhandled promise rejections to the server, so operators see in
// their logs what breaks in users' browsers. At most five reports per page view; failures to
// report are ignored (the page must never break because reporting did).
const endpoint = '/api/v1/client-errors';
const maxReports = 5;
let sent = 0;

function clip(value, limit) {
  return value === undefined || value === null ? undefined : String(value).slice(0, limit);
}

function report(message, source, line, column, stack) {
  if (sent >= maxReports) return;
  sent += 1;
  const body = JSON.stringify({
    message: clip(message, 2000) || 'Unknown error',
    source: clip(source, 2000),
    line: Number.isInteger(line) ? line : undefined,
    column: Number.isInteger(column) ? column : undefined,
    stack: clip(stack, 16000),
    page: clip(location.pathname, 2000),
  });
  // Signed-in requests must carry the CSRF token the page was rendered with.
  const csrf = document.querySelector('meta[name="csrf-token"]');
  fetch(endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf ? csrf.content : '' },
    body,
    keepalive: true,
    credentials: 'same-origin',
  }).catch(() => {});
}

window.addEventListener('error', (event) => {
  report(event.message, event.filename, event.lineno, event.colno, event.error && event.error.stack);
});

window.addEventListener('unhandledrejection', (event) => {
  const reason = event.reason;
  const message = reason && reason.message ? reason.message : reason;
  report(`Unhandled promise rejection: ${message}`, undefined, undefined, undefined, reason && reason.stack);
});
