// The admin's ISO upload page: sends the chosen file in chunks to the upload API (docs/iso-upload.md) with
// fetch(), the session's cookie and the page's CSRF token. A chunk that fails (network, 5xx) is sent again
// from the offset the server reports, up to MAX_TRIES times in a row with growing pauses; a refusal (4xx) is
// shown with the server's words. When the last chunk lands the page opens the new ISO's admin page.
(function () {
  "use strict";

  const MAX_TRIES = 6;
  const form = document.getElementById("vapor-upload");
  if (!form) {
    return;
  }
  const chunkBytes = Number(form.dataset.chunkBytes) || 8 * 1024 * 1024;
  const maxBytes = Number(form.dataset.maxBytes) || 0;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const el = (id) => document.getElementById(id);
  const startButton = el("vapor-upload-start");
  const cancelButton = el("vapor-upload-cancel");
  const errors = el("vapor-upload-error");
  const panel = el("vapor-upload-progress");
  const bar = el("vapor-upload-bar");
  const percent = el("vapor-upload-percent");
  const bytesShown = el("vapor-upload-bytes");
  const rateShown = el("vapor-upload-rate");
  const statusLine = el("vapor-upload-status");
  let uploadUrl = null;
  let cancelled = false;
  let running = false;

  function size(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function showError(message) {
    errors.replaceChildren();
    const item = document.createElement("li");
    item.textContent = message;
    errors.append(item);
    errors.hidden = false;
  }

  function setStatus(text, retrying) {
    statusLine.textContent = text;
    statusLine.classList.toggle("vapor-retrying", Boolean(retrying));
  }

  function describe(body, response) {
    const field = body.field ? `${body.field}: ` : "";
    return `${field}${body.detail || `the server answered ${response.status} ${response.statusText}`}`;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (error) {
      return {};
    }
  }

  function headers(extra) {
    return Object.assign({ "X-CSRFToken": csrf, Accept: "application/json" }, extra);
  }

  function metadata(file) {
    const value = (name) => form.elements[name].value.trim();
    const body = { filename: file.name, size: file.size };
    for (const name of ["name", "os_type", "os_variant", "architecture", "description", "sha256"]) {
      if (value(name)) {
        body[name] = value(name);
      }
    }
    const tags = value("tags").split(",").map((tag) => tag.trim()).filter(Boolean);
    if (tags.length) {
      body.tags = tags;
    }
    return body;
  }

  let started = 0;
  let startOffset = 0;
  function progress(offset, total) {
    const shown = total ? Math.floor((1000 * offset) / total) / 10 : 0;
    bar.value = shown;
    percent.textContent = `${shown.toFixed(1)}%`;
    bytesShown.textContent = `${size(offset)} of ${size(total)}`;
    const seconds = (performance.now() - started) / 1000;
    if (seconds > 0.2 && offset > startOffset) {
      const rate = (offset - startOffset) / seconds;
      const left = rate > 0 ? Math.ceil((total - offset) / rate) : 0;
      rateShown.textContent = `${size(rate)}/s, about ${left} s left`;
    }
  }

  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function serverOffset() {
    const response = await fetch(uploadUrl, { headers: headers({}), credentials: "same-origin" });
    const body = await readJson(response);
    if (!response.ok) {
      throw new Error(describe(body, response));
    }
    return body.offset;
  }

  async function upload(file) {
    const created = await fetch(form.dataset.createUrl, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      credentials: "same-origin",
      body: JSON.stringify(metadata(file)),
    });
    const body = await readJson(created);
    if (!created.ok) {
      throw new Error(describe(body, created));
    }
    uploadUrl = created.headers.get("Location") || `${form.dataset.createUrl}/${body.id}`;
    let offset = body.offset;
    let tries = 0;
    started = performance.now();
    startOffset = offset;
    progress(offset, file.size);
    setStatus("Uploading…");
    while (!cancelled) {
      const end = Math.min(offset + chunkBytes, file.size);
      let response = null;
      let answer = {};
      try {
        response = await fetch(uploadUrl, {
          method: "PUT",
          headers: headers({ "Content-Type": "application/octet-stream", "Content-Range": `bytes ${offset}-${end - 1}/${file.size}` }),
          credentials: "same-origin",
          body: file.slice(offset, end),
        });
        answer = await readJson(response);
      } catch (error) {
        response = null; // the network failed: retried below
      }
      if (cancelled) {
        return;
      }
      if (response && response.ok) {
        tries = 0;
        offset = answer.offset;
        progress(offset, file.size);
        setStatus("Uploading…");
        if (answer.iso) {
          setStatus("Done: the file is an ISO image and is in the library. Opening its page…");
          window.location.assign(form.dataset.changeUrl.replace("ISO_ID", answer.iso));
          return;
        }
        continue;
      }
      if (response && response.status === 409 && answer.code === "offset_mismatch") {
        offset = answer.offset; // the server has more (or less) than we thought: go on from there
        tries += 1;
        continue;
      }
      const transient = !response || response.status >= 500 || response.status === 408 || response.status === 429 || (response.status === 409 && answer.code === "upload_busy");
      if (!transient) {
        throw new Error(describe(answer, response));
      }
      tries += 1;
      if (tries > MAX_TRIES) {
        throw new Error(`the connection failed ${MAX_TRIES} times in a row; the upload stopped at ${size(offset)}`);
      }
      const wait = Math.min(2 ** (tries - 1), 30);
      setStatus(`The connection failed; trying again in ${wait} s (attempt ${tries} of ${MAX_TRIES})…`, true);
      await pause(wait * 1000);
      try {
        offset = await serverOffset();
      } catch (error) {
        // the next PUT tells again (a 409 with the offset), or fails and counts as a try
      }
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (running) {
      return;
    }
    errors.hidden = true;
    const file = form.elements.file.files[0];
    if (!file) {
      showError("file: choose an ISO file to upload.");
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      showError(`file: ${size(file.size)} is more than the limit of ${size(maxBytes)}.`);
      return;
    }
    running = true;
    cancelled = false;
    uploadUrl = null;
    startButton.disabled = true;
    cancelButton.hidden = false;
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
    try {
      await upload(file);
    } catch (error) {
      showError(error.message);
      panel.hidden = true; // what the bar showed is void: the server keeps nothing of a stopped upload
      errors.scrollIntoView({ block: "nearest" });
      if (uploadUrl) {
        // A refused file leaves nothing on the server; a stopped one is removed here, or by the janitor.
        fetch(uploadUrl, { method: "DELETE", headers: headers({}), credentials: "same-origin" }).catch(() => {});
      }
    } finally {
      running = false;
      startButton.disabled = false;
      cancelButton.hidden = true;
    }
  });

  cancelButton.addEventListener("click", async () => {
    cancelled = true;
    setStatus("Cancelled: the partial file is removed.");
    if (uploadUrl) {
      await fetch(uploadUrl, { method: "DELETE", headers: headers({}), credentials: "same-origin" }).catch(() => {});
    }
  });
})();
