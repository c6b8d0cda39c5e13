"""Browser consoles: tickets, the websocket bridge to a guest's VNC or serial port, and the console pages."""
