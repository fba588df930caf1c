// zlh admin UI: progressive enhancement only. Every action also works as a plain form.
"use strict";

function $(sel, root) { return (root || document).querySelector(sel); }
function $all(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }

function setBadge(el, status) {
  if (!el) return;
  el.textContent = status;
  el.className = el.className.replace(/\bbadge-[a-z]+\b/g, "").trim() + " badge-" + status;
}

// A submitted form is not sent twice by a double click (the idempotency key would
// return the same server anyway; this keeps the page calm).
function guardDoubleSubmit(root) {
  $all("form", root).forEach(function (form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]:not([formaction])");
      if (!button || form.hasAttribute("data-no-guard")) return;
      setTimeout(function () { button.disabled = true; }, 0);
    });
  });
}

// Create form: the name is checked as you type; template defaults fill the hints.
function createForm() {
  var form = $("form[data-create]");
  if (!form) return;
  var name = $("#name", form), msg = $("#name-check", form), timer = null;
  name.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var v = name.value.trim();
      if (!v) { msg.textContent = ""; return; }
      fetch("/servers/name-check?name=" + encodeURIComponent(v), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (j) {
          msg.textContent = j.ok ? "✓ " + j.message : j.message;
          msg.classList.toggle("good", !!j.ok);
          name.setCustomValidity(j.ok ? "" : j.message);
        })
        .catch(function () { msg.textContent = ""; });
    }, 200);
  });
  var tpl = $("#template", form);
  function applyTemplate() {
    var o = tpl.options[tpl.selectedIndex];
    if (!o) return;
    $("#memory_mb", form).placeholder = o.dataset.memory;
    $("#cores", form).placeholder = o.dataset.cores;
    var versions = (o.dataset.versions || "").split(",").filter(Boolean);
    var version = $("#version", form);
    if (!version.value && versions.length) version.placeholder = versions[0];
    $all("#versions option").forEach(function (opt) {
      opt.disabled = opt.dataset.template !== o.value;
    });
  }
  tpl.addEventListener("change", applyTemplate);
  applyTemplate();
}

// Server detail: status, facts, actions and timeline follow the server live (SSE).
function serverLive() {
  var root = $("[data-server-live]");
  if (!root || !window.EventSource) return;
  var src = new EventSource(root.dataset.serverLive);
  src.addEventListener("status", function (ev) {
    var d = JSON.parse(ev.data);
    setBadge($("#status"), d.status);
    $("#status-reason").textContent = d.reason;
    var live = $("#live");
    // Keep focus on the page when the panel is redrawn under it.
    var focused = document.activeElement && live.contains(document.activeElement)
      ? document.activeElement.getAttribute("data-action") : null;
    live.innerHTML = d.html;
    if (focused) { var again = live.querySelector('[data-action="' + focused + '"]'); if (again) again.focus(); }
    guardDoubleSubmit(live);
  });
  src.addEventListener("events", function (ev) {
    var list = $("#timeline");
    var tmp = document.createElement("ol");
    tmp.innerHTML = ev.data;
    $all("li", tmp).forEach(function (li) {
      if (!list.querySelector('[data-event-id="' + li.dataset.eventId + '"]')) list.appendChild(li);
    });
  });
}

// SGR colour codes (ESC[…m, the only sequences zlh serve leaves in) to spans with
// classes; the text itself only ever becomes text nodes, never markup.
var SGR_NAMES = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
function sgrSpans(line) {
  var frag = document.createDocumentFragment();
  var st = {};
  var re = /\x1b\[([0-9;]*)m/g, last = 0, m;
  function emit(text) {
    if (!text) return;
    var cls = [];
    if (st.fg) cls.push("sgr-fg-" + st.fg);
    if (st.bg) cls.push("sgr-bg-" + st.bg);
    if (st.bold) cls.push("sgr-bold");
    if (st.dim) cls.push("sgr-dim");
    if (st.italic) cls.push("sgr-italic");
    if (st.underline) cls.push("sgr-underline");
    if (!cls.length) { frag.appendChild(document.createTextNode(text)); return; }
    var span = document.createElement("span");
    span.className = cls.join(" ");
    span.textContent = text;
    frag.appendChild(span);
  }
  // 256-colour codes 0-15 are the 16 named colours; others keep the default colour.
  function named(n) {
    if (n < 8) return SGR_NAMES[n];
    if (n < 16) return "bright-" + SGR_NAMES[n - 8];
    return null;
  }
  while ((m = re.exec(line))) {
    emit(line.slice(last, m.index));
    last = re.lastIndex;
    var codes = m[1] === "" ? [0] : m[1].split(";").map(Number);
    for (var i = 0; i < codes.length; i++) {
      var c = codes[i];
      if (c === 0) st = {};
      else if (c === 1) st.bold = true;
      else if (c === 2) st.dim = true;
      else if (c === 3) st.italic = true;
      else if (c === 4) st.underline = true;
      else if (c === 22) { st.bold = false; st.dim = false; }
      else if (c === 23) st.italic = false;
      else if (c === 24) st.underline = false;
      else if (c >= 30 && c <= 37) st.fg = SGR_NAMES[c - 30];
      else if (c === 39) st.fg = null;
      else if (c >= 40 && c <= 47) st.bg = SGR_NAMES[c - 40];
      else if (c === 49) st.bg = null;
      else if (c >= 90 && c <= 97) st.fg = "bright-" + SGR_NAMES[c - 90];
      else if (c >= 100 && c <= 107) st.bg = "bright-" + SGR_NAMES[c - 100];
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
        st[c === 38 ? "fg" : "bg"] = named(codes[i + 2]);
        i += 2;
      } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
        i += 4; // true colour: not mapped to a class
      }
    }
  }
  emit(line.slice(last));
  return frag;
}

// Console: lines streamed from the agent through zlh serve; commands sent without a reload.
function consoleView() {
  var log = $("#console-log");
  if (!log) return;
  var maxLines = 1000;
  function add(line) {
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    var div = document.createElement("div");
    div.appendChild(sgrSpans(line));
    log.appendChild(div);
    while (log.childNodes.length > maxLines) log.removeChild(log.firstChild);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }
  function connect(delay) {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + location.host + log.dataset.consoleWs);
    ws.onopen = function () { log.textContent = ""; delay = 1000; };
    ws.onmessage = function (ev) { add(ev.data); };
    ws.onclose = function () { setTimeout(function () { connect(Math.min(delay * 2, 15000)); }, delay); };
  }
  log.textContent = "";
  connect(1000);
  var form = $("#console-form"), msg = $("#console-msg");
  form.setAttribute("data-no-guard", "");
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = $("#console-command", form);
    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(form)).toString()
    }).then(function (r) {
      if (r.ok) { msg.textContent = ""; input.value = ""; input.focus(); return; }
      return r.text().then(function (t) {
        var doc = new DOMParser().parseFromString(t, "text/html");
        var e = doc.querySelector(".error");
        msg.textContent = e ? e.textContent : "sending failed (" + r.status + ")";
      });
    }).catch(function (e) { msg.textContent = "sending failed: " + e; });
  });
}

// Lists and dashboard: badges and counts follow the servers live (SSE).
function listsLive() {
  var rows = $all("[data-server-id]");
  var counts = $("[data-live-counts]");
  if ((!rows.length && !counts) || !window.EventSource) return;
  var ids = rows.map(function (r) { return r.dataset.serverId; }).join(",");
  var src = new EventSource("/servers/live?ids=" + ids);
  src.addEventListener("statuses", function (ev) {
    var d = JSON.parse(ev.data);
    rows.forEach(function (r) {
      var s = d.servers[r.dataset.serverId];
      if (!s) return;
      setBadge($("[data-status]", r), s.status);
      var reason = $("[data-reason]", r);
      if (reason) reason.textContent = s.reason;
    });
    if (counts) {
      var total = 0;
      Object.keys(d.counts).forEach(function (k) {
        if (k !== "deleted") total += d.counts[k];
        var el = counts.querySelector('[data-count="' + k + '"]');
        if (el) el.textContent = d.counts[k];
      });
      var t = $("#count-total");
      if (t) t.textContent = total;
    }
  });
}

// Delete: the button is enabled once the name is typed (the server checks it too).
function deleteConfirm() {
  var input = $("#confirm_name"), button = $("#confirm-delete");
  if (!input || !button) return;
  var want = button.textContent.replace(/^Delete /, "");
  function check() { button.disabled = input.value.trim() !== want; }
  input.addEventListener("input", check);
  check();
}

// Parts of a page with work in flight (e.g. a backup running) follow it without a
// reload: the same page is fetched again and the part swapped, until nothing is pending.
function refreshWhilePending() {
  $all("[data-refresh-while]").forEach(function (el) {
    var timer = setInterval(function () {
      fetch(location.href, { credentials: "same-origin" })
        .then(function (r) { return r.text(); })
        .then(function (t) {
          var fresh = new DOMParser().parseFromString(t, "text/html").getElementById(el.id);
          if (!fresh) return;
          el.innerHTML = fresh.innerHTML;
          if (!fresh.hasAttribute("data-refresh-while")) clearInterval(timer);
        })
        .catch(function () {});
    }, 1000);
  });
}

// "Running since" as a ticking uptime (the page itself stays as it was rendered).
function uptimes() {
  function tick() {
    $all("time[data-since]").forEach(function (t) {
      var s = Math.max(0, Math.floor((Date.now() - Date.parse(t.dateTime)) / 1000));
      var text = s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m " + (s % 60) + "s"
        : s < 86400 ? Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m"
        : Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
      t.textContent = text + " (since " + t.dateTime + ")";
    });
  }
  tick();
  setInterval(tick, 1000);
}

// Files tab: files dropped on the listing are uploaded one by one through the same
// route as the plain form (which stays the way to upload without JavaScript).
function filesDrop() {
  var drop = $("#files-drop");
  if (!drop) return;
  var msg = $("#files-msg");
  drop.addEventListener("dragover", function (e) {
    e.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", function () { drop.classList.remove("dragging"); });
  drop.addEventListener("drop", function (e) {
    e.preventDefault();
    drop.classList.remove("dragging");
    var files = Array.prototype.slice.call(e.dataTransfer.files);
    var next = function () {
      var f = files.shift();
      if (!f) { location.reload(); return; }
      if (msg) msg.textContent = "Uploading " + f.name + "…";
      var body = new FormData();
      body.append("file", f, f.name);
      fetch(drop.getAttribute("data-upload"), { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) {
          if (r.ok) { next(); return; }
          if (msg) msg.textContent = f.name + ": upload refused (HTTP " + r.status + ")";
        })
        .catch(function (err) { if (msg) msg.textContent = f.name + ": " + err; });
    };
    next();
  });
}

document.addEventListener("DOMContentLoaded", function () {
  guardDoubleSubmit();
  filesDrop();
  createForm();
  serverLive();
  if (!$("[data-server-live]")) listsLive();
  consoleView();
  deleteConfirm();
  uptimes();
  refreshWhilePending();
});
