/* The "Create virtual machine" page: rows added in place, NIC sources that follow the NIC's type,
   the ISO's boot type against UEFI, the pool's free space against the new disks, and the dry run's
   plan (or the errors) brought into view. The page works without it; this only helps. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("vapor-create-data").textContent);
  var GIB = 1024 * 1024 * 1024;

  function size(bytes) {  // as Django's filesizeformat: 1024-based, one decimal
    var units = ["bytes", "KB", "MB", "GB", "TB", "PB"], i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return (i === 0 ? String(bytes) : bytes.toFixed(1)) + "\u00a0" + units[i];
  }

  // The template picker fills the form in from the template (a GET of the page with ?template=).
  var picker = document.querySelector("[data-vapor-template-picker]");
  if (picker) {
    picker.addEventListener("change", function () {
      var url = new URL(window.location.href);
      if (picker.value) { url.searchParams.set("template", picker.value); } else { url.searchParams.delete("template"); }
      window.location.assign(url.toString());
    });
  }

  // The Host select: the pools, networks and bridges offered become that host's (automatic: every usable host's).
  var hostSelect = document.getElementById("id_host");
  function hostNote(text) {
    var note = document.getElementById("host-lists-note");
    if (!note && !text) { return; }
    if (!note) {
      note = document.createElement("p");
      note.id = "host-lists-note";
      note.className = "vapor-warning";
      hostSelect.closest(".form-row").appendChild(note);
    }
    note.textContent = text;
    note.hidden = !text;
  }
  if (hostSelect) {
    hostSelect.addEventListener("change", function () {
      var url = new URL(window.location.href);
      url.searchParams.set("host", hostSelect.value);
      url.searchParams.set("lists", "1");
      fetch(url.toString(), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (lists) {
          if (lists.error) {
            hostNote("This host's pools, networks and bridges could not be read (" + lists.error + "): the lists below are unchanged.");
            return;
          }
          hostNote("");
          data.sources = lists.sources;
          data.pools = lists.pool_room;
          var pool = document.getElementById("id_storage_pool");
          if (pool && pool.tagName === "SELECT") {
            var keep = pool.value;
            var names = lists.pools.map(function (choice) { return choice[0]; });
            pool.innerHTML = "";
            lists.pools.forEach(function (choice) {
              pool.add(new Option(choice[1], choice[0], false, choice[0] === keep));
            });
            if (names.indexOf(keep) < 0 && names.length) { pool.value = names[0]; }
            if (!names.length) { pool.add(new Option("(the host has none)", "")); }
          }
          document.querySelectorAll("#nic-rows select[name$='-type']").forEach(fillSources);
          poolRoom();
        })
        .catch(function (error) { hostNote("The host's lists could not be loaded (" + error.message + ")."); });
    });
  }

  // A NIC's source lists what the host has for the NIC's type: networks for NAT, bridges for a bridge.
  function fillSources(typeSelect) {
    var row = typeSelect.closest(".vapor-row");
    var source = row && row.querySelector("select[data-vapor-source]");
    if (!source || !data.sources) { return; }
    var choices = data.sources[typeSelect.value] || [];
    var keep = source.value;
    source.innerHTML = "";
    choices.forEach(function (choice) {
      var option = new Option(choice[1], choice[0], false, choice[0] === keep);
      source.add(option);
    });
    if (!choices.length) { source.add(new Option("(the host has none)", "")); }
  }
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches && target.matches("#nic-rows select[name$='-type']")) { fillSources(target); }
    if (target.matches && target.matches("#disk-rows input, #id_storage_pool")) { poolRoom(); }
    if (target.id === "id_uefi") { bootWarning(); }
  });
  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("#disk-rows input[name$='-size']")) { poolRoom(); }
    // Typing into a cloud-init field asks for a seed: the box says so at once (the server reads it the same way).
    if (event.target.matches && event.target.matches("#cloud-init-fields input[type='text'], #cloud-init-fields textarea")) {
      var seed = document.getElementById("id_ci_enabled");
      if (seed && event.target.value.trim()) { seed.checked = true; }
    }
  });

  // Rows added in place from the empty row the page carries.
  document.querySelectorAll("[data-vapor-add]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      var kind = link.getAttribute("data-vapor-add");
      var prefix = kind === "disk" ? "disks" : "networks";
      var total = document.getElementById("id_" + prefix + "-TOTAL_FORMS");
      var index = parseInt(total.value, 10);
      var html = document.getElementById(kind + "-empty").innerHTML.replace(/__prefix__/g, String(index));
      document.getElementById(kind + "-rows").insertAdjacentHTML("beforeend", html);
      total.value = String(index + 1);
      poolRoom();
    });
  });

  // The pool's free space against what the new disks ask (the server has the last word: it refuses
  // past VAPOR_POOL_OVERCOMMIT and warns past the free space in the dry run).
  function poolRoom() {
    var note = document.getElementById("pool-room");
    var pool = document.getElementById("id_storage_pool");
    var room = pool && data.pools ? data.pools[pool.value] : null;
    if (!note || !room) { if (note) { note.hidden = true; } return; }
    var asked = 0;
    document.querySelectorAll("#disk-rows .vapor-row").forEach(function (row) {
      var del = row.querySelector("input[name$='-DELETE']");
      var path = row.querySelector("input[name$='-path']");
      var sized = row.querySelector("input[name$='-size']");
      if ((del && del.checked) || (path && path.value.trim()) || !sized) { return; }
      asked += (parseInt(sized.value, 10) || 0) * GIB;
    });
    var over = asked > room.available;
    note.textContent = "Pool " + pool.value + ": " + size(room.available) + " free of " + size(room.capacity) +
      "; the new disks ask " + size(asked) + (over ? ". More than is free: the volumes are thin, so the VM is made, " +
      "but its guest fails to write once the pool is full." : ".");
    note.className = over ? "vapor-warning" : "vapor-note";
    note.hidden = false;
  }

  // The install ISO's boot type against the firmware, next to the picker.
  var bootTypes = {};
  var warning = document.getElementById("iso-boot-warning");
  var iso = document.getElementById("id_iso_path");
  if (iso && warning && iso.value) { bootTypes[iso.value] = warning.getAttribute("data-boot-type") || ""; }
  function bootWarning() {
    if (!iso || !warning) { return; }
    var uefi = document.getElementById("id_uefi");
    var on = !!(uefi && uefi.checked);
    var kind = iso.value ? bootTypes[iso.value] || "" : "";
    var text = "";
    if (kind === "none") { text = data.boot.none; }
    if (kind === "bios" && on) { text = data.boot.bios; }
    if (kind === "uefi" && !on) { text = data.boot.uefi; }
    warning.textContent = text ? "This ISO " + text + "." : "";
    warning.hidden = !text;
  }
  if (window.django && window.django.jQuery && iso) {
    window.django.jQuery(iso).on("select2:select", function (event) {
      bootTypes[String(event.params.data.id)] = event.params.data.boot_type || "";
      bootWarning();
    }).on("change", bootWarning);
  }

  // After a dry run the plan, after a refusal the errors: at the top of the page, and in view.
  document.addEventListener("DOMContentLoaded", function () {
    poolRoom();
    var target = document.getElementById("dry-run") || document.getElementById("create-errors");
    if (target) {
      target.scrollIntoView({block: "nearest"});  // already in view under the title: no move
      target.focus({preventScroll: true});
    }
  });
})();
