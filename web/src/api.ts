// The console's JSON API. The session is an HttpOnly cookie the server set at sign-in: no
// script (ours or an injected one) can read it, and no key is kept in the browser.

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

export type Json = Record<string, any>;

let onSignedOut: () => void = () => {};

export function whenSignedOut(callback: () => void) {
  onSignedOut = callback;
}

// How long a request whose connection dropped waits before it is sent once more.
const RESEND_AFTER_MS = 250;

// Requests that may be sent twice: a GET changes nothing on the server, and a second
// sign-in only makes a second session (the first, if it was made, is never used and
// expires). A Start or a Stop is never sent again: its form says what failed.
function resendable(method: string, path: string): boolean {
  return method === "GET" || (method === "POST" && path === "/api/session");
}

// fetch, and once more after a network error for a request that may be sent twice: a
// kept-alive connection that the server closed as the request went out fails the request
// ("Failed to fetch") though nothing is wrong; a page whose first read failed stayed
// empty, and a sign-in that failed so left the console at its sign-in form (CI).
async function send(method: string, path: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(path, init);
  } catch (error) {
    if (!resendable(method, path) || !(error instanceof TypeError)) throw error;
    await new Promise((resolve) => setTimeout(resolve, RESEND_AFTER_MS));
    return fetch(path, init);
  }
}

async function call(method: string, path: string, body?: Json): Promise<Json> {
  const init: RequestInit = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] = "application/json";
  }
  const response = await send(method, path, init);
  let data: Json = {};
  try {
    data = await response.json();
  } catch {
    data = { error: `HTTP ${response.status}` };
  }
  if (!response.ok) {
    if (response.status === 401 && path !== "/api/session") onSignedOut();
    throw new ApiError(response.status, String(data.error ?? `HTTP ${response.status}`));
  }
  return data;
}

export const api = {
  get: (path: string) => call("GET", path),
  post: (path: string, body: Json = {}) => call("POST", path, body),
};

export function socketUrl(path: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
