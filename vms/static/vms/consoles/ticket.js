// What both console pages share: the ticket, the websocket's address, the status line.
//
// A ticket arrives in the address (#ticket=...) when the page was opened from
// the ticket API's `url`; it is taken out of the address bar at once, so it is
// neither bookmarked nor left in the history. Without one (a bookmark, the
// Console button, a reconnect: a ticket serves once) the page asks the API for
// one with the session cookie and the CSRF token.

const config = JSON.parse(document.getElementById("console-config").textContent);

function takeHashTicket() {
  const params = new URLSearchParams(location.hash.slice(1));
  const ticket = params.get("ticket");
  if (location.hash) {
    history.replaceState(history.state, "", location.pathname + location.search);
  }
  return ticket;
}

let pendingTicket = takeHashTicket();

export { config };

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) {
      return decodeURIComponent(rest.join("="));
    }
  }
  return "";
}

// The API's refusals in words (its body has `detail` and `code`).
function refusal(status, body) {
  const detail = body && body.detail ? body.detail : "";
  if (status === 403) {
    return detail || "you may not open this console";
  }
  if (status === 409 && body && body.code === "not_running") {
    return `the VM is not running (${body.state || "stopped"})`;
  }
  return detail || `the server answered ${status}`;
}

// The websocket path (root-relative, ticket included) and whether the console is read-only.
export async function getTicket() {
  if (pendingTicket) {
    const ticket = pendingTicket;
    pendingTicket = null;
    return { websocket: `${config.websocket}?ticket=${encodeURIComponent(ticket)}`, readOnly: config.readOnly };
  }
  const response = await fetch(config.api, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": cookie("csrftoken") },
    body: JSON.stringify({ type: config.type, read_only: config.readOnly }),
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok || !body || !body.websocket) {
    throw new Error(refusal(response.status, body));
  }
  return { websocket: body.websocket, readOnly: Boolean(body.read_only) || config.readOnly };
}

// ws:// or wss:// as the page itself was loaded, on the page's own host: right behind any proxy.
export function socketUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

const CLOSE_CODES = {
  1000: "the console closed on the guest's side",
  1006: "the connection was refused or lost",
  1011: "server error",
  4000: "the VM was stopped",
  4001: "console access was withdrawn",
  4004: "the VM was deleted",
};

// "disconnected: <why> (code N)" from a websocket close event (or none, if it never came).
export function describeClose(event) {
  if (!event) {
    return "disconnected";
  }
  const why = event.reason || CLOSE_CODES[event.code] || "closed";
  return `disconnected: ${why} (code ${event.code})`;
}

const statusLine = document.getElementById("console-status");

export function setStatus(text, state) {
  statusLine.textContent = text;
  statusLine.dataset.state = state;
}

// The Reconnect button: shown once a console is closed; a new ticket comes from the API.
export function offerReconnect(connect) {
  const button = document.getElementById("console-reconnect");
  if (!button) {
    return;
  }
  button.hidden = false;
  button.onclick = () => {
    button.hidden = true;
    connect();
  };
}
