// The graphical console: noVNC's RFB over the console websocket.
import { config, describeClose, getTicket, offerReconnect, setStatus, socketUrl } from "./ticket.js";

const screen = document.getElementById("vnc-screen");
const passwordForm = document.getElementById("vnc-password");
const passwordInput = document.getElementById("vnc-password-input");
const cadButton = document.getElementById("vnc-cad");
const scaleButton = document.getElementById("vnc-scale");
const fullscreenButton = document.getElementById("vnc-fullscreen");

let rfb = null;
let scaled = localStorage.getItem("vapor.console.scale") !== "1:1";

function showScale() {
  scaleButton.textContent = scaled ? "Scale: fit window" : "Scale: 1:1";
  scaleButton.setAttribute("aria-pressed", String(scaled));
  if (rfb) {
    rfb.scaleViewport = scaled;
    rfb.clipViewport = false;
  }
}

async function connect() {
  setStatus("connecting…", "connecting");
  let RFB;
  let ticket;
  try {
    RFB = (await import(screen.dataset.rfb)).default;
    ticket = await getTicket();
  } catch (error) {
    setStatus(`not connected: ${error.message}`, "error");
    offerReconnect(connect);
    return;
  }
  // The socket is ours, handed to noVNC, so that its close code and reason can be shown.
  const socket = new WebSocket(socketUrl(ticket.websocket), ["binary"]);
  let closed = null;
  socket.addEventListener("close", (event) => {
    closed = event;
  });
  rfb = new RFB(screen, socket, { shared: true });
  rfb.background = "#1b1b1b";
  showScale();
  rfb.addEventListener("connect", () => {
    setStatus("connected", "connected");
    cadButton.disabled = false;
    const hint = document.getElementById("vnc-password-hint");
    if (hint) hint.hidden = true; // it has done its job: the screen gets the room
    rfb.focus();
  });
  rfb.addEventListener("disconnect", () => {
    setStatus(describeClose(closed), "disconnected");
    cadButton.disabled = true;
    passwordForm.hidden = true;
    passwordInput.value = "";
    rfb = null;
    offerReconnect(connect);
  });
  rfb.addEventListener("credentialsrequired", () => {
    setStatus("the VM's VNC server asks for its password", "connecting");
    passwordForm.hidden = false;
    passwordInput.focus();
  });
  rfb.addEventListener("securityfailure", (event) => {
    const reason = event.detail.reason || `status ${event.detail.status}`;
    setStatus(`authentication failed: ${reason}`, "error");
  });
  rfb.addEventListener("desktopname", (event) => {
    document.title = `${event.detail.name} · Vapor`;
  });
}

// The password goes to the RFB stream and nowhere else: the input has no name,
// the form never submits, and the field is emptied once it is sent.
passwordForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (rfb) {
    rfb.sendCredentials({ password: passwordInput.value });
    setStatus("connecting…", "connecting");
  }
  passwordInput.value = "";
  passwordForm.hidden = true;
});

cadButton.addEventListener("click", () => {
  if (rfb) {
    rfb.sendCtrlAltDel();
    rfb.focus();
  }
});

scaleButton.addEventListener("click", () => {
  scaled = !scaled;
  localStorage.setItem("vapor.console.scale", scaled ? "fit" : "1:1");
  showScale();
});

fullscreenButton.addEventListener("click", () => {
  if (document.fullscreenElement) {
    document.exitFullscreen();
  } else {
    document.getElementById("console-main").requestFullscreen();
  }
});

showScale();
connect();
