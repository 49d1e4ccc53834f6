// Solves the proof-of-work challenge of a form's anti-spam check (see src/auth/captcha.rs).
//
// The challenge is ALTCHA's: find the number n ≤ maxnumber with SHA-256(salt + n) = challenge.
// ALTCHA's own widget is a 30 KB web component with its own UI; this is the 40 lines of it a
// server-rendered form needs, using the browser's native SHA-256 (WebCrypto). Work starts as
// soon as the page loads, so it is usually done before the person has finished typing; a
// submit that comes earlier waits for it.
const encoder = new TextEncoder();
const batch = 2000;

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function solve(challenge) {
  const started = performance.now();
  for (let start = 0; start <= challenge.maxnumber; start += batch) {
    const end = Math.min(start + batch, challenge.maxnumber + 1);
    const tries = [];
    for (let n = start; n < end; n += 1) {
      tries.push(crypto.subtle.digest('SHA-256', encoder.encode(challenge.salt + n)));
    }
    const hashes = await Promise.all(tries);
    const found = hashes.findIndex((hash) => hex(hash) === challenge.challenge);
    if (found >= 0) {
      return {
        algorithm: challenge.algorithm,
        challenge: challenge.challenge,
        number: start + found,
        salt: challenge.salt,
        signature: challenge.signature,
        took: Math.round(performance.now() - started),
      };
    }
  }
  throw new Error('anti-spam check: no solution found');
}

for (const box of document.querySelectorAll('[data-captcha]')) {
  const form = box.closest('form');
  const input = box.querySelector('input[name="captcha"]');
  const status = box.querySelector('[data-captcha-status]');
  let submitWhenDone = false;
  if (!globalThis.crypto || !crypto.subtle) {
    status.textContent = 'This browser cannot run the anti-spam check here (it needs https).';
    continue;
  }
  const done = solve(JSON.parse(box.dataset.captcha)).then((solution) => {
    input.value = btoa(JSON.stringify(solution));
    status.textContent = 'Anti-spam check done.';
    box.dataset.solved = 'true';
    if (submitWhenDone) form.requestSubmit();
  });
  done.catch((error) => {
    status.textContent = 'The anti-spam check failed; please reload the page.';
    throw error;
  });
  form.addEventListener('submit', (event) => {
    if (input.value) return;
    event.preventDefault();
    submitWhenDone = true;
    status.textContent = 'Finishing the anti-spam check…';
  });
}
