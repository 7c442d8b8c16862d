// The stand-in's sign-in page: what the Medplum app shows at <appBaseUrl>oauth when
// /oauth2/authorize sends a browser there (a "Sign in to Medplum" card with email and password,
// the error Medplum answered, the client the user signs in to). Posting it signs in through the
// same code path as POST /auth/login (auth.mjs, appSignInPost) and returns to the client with
// `code` and `state`. Plain HTML and CSS, no script.

export function escapeHtml(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const STYLE = `
body{margin:0;font:15px/1.5 system-ui,sans-serif;background:#f8f9fa;color:#212529}
main{max-width:380px;margin:8vh auto;background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:32px 28px;box-shadow:0 1px 3px rgba(0,0,0,.05)}
.logo{font-weight:700;font-size:22px;color:#7048e8;text-align:center;margin-bottom:4px}
h1{font-size:20px;text-align:center;margin:0 0 20px}
label{display:block;font-weight:500;margin:14px 0 4px}
label span{color:#fa5252}
input[type=email],input[type=password]{box-sizing:border-box;width:100%;padding:8px 10px;border:1px solid #ced4da;border-radius:4px;font:inherit}
button{margin-top:20px;width:100%;padding:9px;border:0;border-radius:4px;background:#7048e8;color:#fff;font:inherit;font-weight:600;cursor:pointer}
.alert{background:#fff5f5;border:1px solid #ffc9c9;color:#c92a2a;padding:8px 10px;border-radius:4px}
.client{color:#868e96;font-size:13px;text-align:center}
details{margin-top:24px;color:#868e96;font-size:13px}
`;

/** The page for the authorize parameters `params` (kept as hidden fields), with an error text. */
export function appSignInPage(app, params, error) {
  const hidden = Object.entries(params)
    .filter(([k]) => !['email', 'password'].includes(k))
    .map(([k, v]) => `<input type="hidden" name="${escapeHtml(k)}" value="${escapeHtml(v)}">`)
    .join('\n');
  const users = [...app.store.all('User')]
    .filter((u) => u.email)
    .map((u) => `<li>${escapeHtml(u.email)}</li>`)
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - Medplum</title><style>${STYLE}</style></head>
<body><main>
<div class="logo">Medplum</div>
<h1>Sign in to Medplum</h1>
<p class="client">Medplum stand-in: signing in to <b>${escapeHtml(params.client_id)}</b></p>
${error ? `<p role="alert" class="alert">${escapeHtml(error)}</p>` : ''}
<form method="POST">
${hidden}
<label for="email">Email <span>*</span></label>
<input id="email" type="email" name="email" autocomplete="username" value="${escapeHtml(params.email)}" required autofocus>
<label for="password">Password <span>*</span></label>
<input id="password" type="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
<details><summary>Development users</summary><p>Passwords in devserver/README.md.</p><ul>${users}</ul></details>
</main></body></html>`;
}
