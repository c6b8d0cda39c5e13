// The serial console: xterm.js over the console websocket, bytes both ways in binary frames.
import { config, describeClose, getTicket, offerReconnect, setStatus, socketUrl } from "./ticket.js";

const screen = document.getElementById("serial-screen");
const badge = document.getElementById("serial-read-only");
const encoder = new TextEncoder();

const [{ Terminal }, { FitAddon }] = await Promise.all([import(screen.dataset.xterm), import(screen.dataset.fit)]);
const terminal = new Terminal({ cursorBlink: true, scrollback: 10000, disableStdin: config.readOnly });
const fit = new FitAddon();
terminal.loadAddon(fit);
terminal.open(screen);
fit.fit();
window.addEventListener("resize", () => fit.fit());

let socket = null;
let readOnly = config.readOnly;

function send(bytes) {
  if (!readOnly && socket && socket.readyState === WebSocket.OPEN) {
    socket.send(bytes);
  }
}

terminal.onData((data) => send(encoder.encode(data)));
// Bytes that are not text (a few mouse reports): one byte per character.
terminal.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));

async function connect() {
  setStatus("connecting…", "connecting");
  let ticket;
  try {
    ticket = await getTicket();
  } catch (error) {
    setStatus(`not connected: ${error.message}`, "error");
    offerReconnect(connect);
    return;
  }
  readOnly = ticket.readOnly;
  badge.hidden = !readOnly;
  terminal.options.disableStdin = readOnly;
  socket = new WebSocket(socketUrl(ticket.websocket));
  socket.binaryType = "arraybuffer";
  socket.addEventListener("open", () => {
    setStatus(readOnly ? "connected (read-only)" : "connected", "connected");
    terminal.focus();
  });
  socket.addEventListener("message", (event) => {
    terminal.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
  });
  socket.addEventListener("close", (event) => {
    setStatus(describeClose(event), "disconnected");
    socket = null;
    offerReconnect(connect);
  });
}

connect();
