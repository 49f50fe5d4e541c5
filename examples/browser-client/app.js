// phone-auth example browser client: phone -> code (WebOTP where the browser has it) -> register or
// sign in -> me -> sign out. Plain JS, no build step. It uses the refresh-token cookie mode
// (REFRESH_TOKEN_COOKIE=true on the server): the refresh token lives in an HttpOnly cookie that no
// script can read, and the access token only in this page's memory. After a reload the page asks for
// a new access token with `refreshToken` and no argument: the browser sends the cookie.
//
// The API's URL: ?api=https://auth.example.com/graphql, default http://127.0.0.1:8080/graphql. The
// server must list this page's origin in CORS_ALLOWED_ORIGINS.
'use strict';

const API = new URLSearchParams(location.search).get('api') || 'http://127.0.0.1:8080/graphql';
let accessToken = null; // memory only: never localStorage (readable by any injected script)
let phone = null;
let registrationToken = null;

const $ = (id) => document.getElementById(id);
const show = (...ids) => {
  for (const el of document.querySelectorAll('form, #me')) el.hidden = !ids.includes(el.id);
};
const say = (text, ok = false) => {
  $('status').textContent = text;
  $('status').className = ok ? 'ok' : '';
};

async function gql(query, variables = {}) {
  const headers = { 'content-type': 'application/json' };
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  const response = await fetch(API, {
    method: 'POST',
    headers,
    credentials: 'include', // the refresh cookie goes with the request, and can be set by its answer
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors && body.errors.length) {
    const e = body.errors[0];
    const error = new Error(e.message);
    error.code = e.extensions && e.extensions.code;
    throw error;
  }
  return body.data;
}

const AUTH = 'accessToken expiresInSeconds user { id }';

async function showMe() {
  const { me } = await gql('{ me { id phone firstName } }');
  if (!me) return false;
  $('me-id').textContent = me.id;
  $('me-phone').textContent = me.phone || '';
  $('me-name').textContent = me.firstName || '';
  show('me');
  say('You are signed in.', true);
  return true;
}

function signedIn(payload) {
  accessToken = payload.accessToken;
  return showMe();
}

// WebOTP: Chrome on Android fills the code from an SMS that ends with `@<this host> #<code>`.
function listenForCode() {
  if (!('OTPCredential' in window)) return;
  const abort = new AbortController();
  $('code-form').addEventListener('submit', () => abort.abort(), { once: true });
  navigator.credentials
    .get({ otp: { transport: ['sms'] }, signal: abort.signal })
    .then((otp) => {
      if (!otp) return;
      $('code').value = otp.code;
      $('code-form').requestSubmit();
    })
    .catch(() => {}); // aborted, or no SMS: the user types the code
}

$('phone-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const { generateCode } = await gql(
      'mutation($p: String!) { generateCode(phone: $p) { phone expiresInSeconds } }',
      { p: $('phone').value },
    );
    phone = generateCode.phone;
    show('code-form');
    say(`Code sent to ${phone}.`, true);
    listenForCode();
  } catch (e) {
    say(e.message);
  }
});

// Password sign-in needs no SMS: the phone as typed (the server normalises it).
$('use-password').addEventListener('click', () => {
  if (!$('phone').reportValidity()) return;
  phone = $('phone').value;
  show('password-form');
  say('');
});

$('code-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const { verifyUser } = await gql(
      `mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) {
         registered registrationToken auth { ${AUTH} } } }`,
      { p: phone, c: $('code').value },
    );
    if (verifyUser.registered) {
      await signedIn(verifyUser.auth);
    } else {
      registrationToken = verifyUser.registrationToken;
      show('register-form');
      say('Phone verified.', true);
    }
  } catch (e) {
    say(e.message);
  }
});

$('password-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const { login } = await gql(
      `mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { ${AUTH} } }`,
      { p: phone, w: $('login-password').value },
    );
    await signedIn(login);
  } catch (e) {
    say(e.message);
  }
});

$('register-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const { register } = await gql(
      `mutation($t: String!, $w: String!, $f: String) {
         register(input: { registrationToken: $t, password: $w, firstName: $f }) { ${AUTH} } }`,
      { t: registrationToken, w: $('new-password').value, f: $('first-name').value || null },
    );
    await signedIn(register);
  } catch (e) {
    say(e.message);
  }
});

$('logout').addEventListener('click', async () => {
  try {
    await gql('mutation { logout { revokedSessions } }');
  } finally {
    accessToken = null;
    show('phone-form');
    say('Signed out.', true);
  }
});

// After a reload: the cookie, if any, buys a new access token.
(async () => {
  try {
    const { refreshToken } = await gql(`mutation { refreshToken { ${AUTH} } }`);
    await signedIn(refreshToken);
  } catch {
    show('phone-form');
  }
})();
