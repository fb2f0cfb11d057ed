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

// How long a request whose connection dropped waits before it is sent again, each time: at
// most twice more. Once more was not enough on a loaded CI machine: a sign-in whose first
// attempt was dropped on purpose (the browser test) failed the same way a second time.
const RESEND_AFTER_MS = [250, 1000];

// Requests that may be sent twice: a GET changes nothing on the server, and a second
// sign-in only makes a second session (the first, if it was made, is never used and
// expires). A Start or a Stop is never sent again: its form says what failed.
function resendable(method: string, path: string): boolean {
  return method === "GET" || (method === "POST" && path === "/api/session");
}

// How long a request that may be sent twice waits for its answer's header before it is given
// up and sent once more. A CI run's page waited 120 s for its first read (GET /api/session)
// with no answer and no error, and stayed blank: fetch itself never gives up.
const ANSWER_WITHIN_MS = 10_000;

// fetch, giving up when no answer has begun within ANSWER_WITHIN_MS (for requests that may
// be sent twice). Only the wait for the header is bounded: a body that is arriving is read
// to its end.
async function fetchWithin(path: string, init: RequestInit): Promise<Response> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ANSWER_WITHIN_MS);
  try {
    return await fetch(path, { ...init, signal: abort.signal });
  } catch (error) {
    if (abort.signal.aborted) {
      throw new TypeError(`no answer from the console in ${ANSWER_WITHIN_MS / 1000} s`);
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

// fetch, and again after a network error or no answer for a request that may be sent
// twice: a kept-alive connection that the server closed as the request went out fails the
// request ("Failed to fetch") though nothing is wrong; a page whose first read failed stayed
// empty, and a sign-in that failed so left the console at its sign-in form (CI).
async function send(method: string, path: string, init: RequestInit): Promise<Response> {
  if (!resendable(method, path)) return fetch(path, init);
  for (const wait of RESEND_AFTER_MS) {
    try {
      return await fetchWithin(path, init);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  return fetchWithin(path, init);
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
