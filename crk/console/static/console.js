// crkvol console: optional enhancements. Every page works without this file.
(function () {
  "use strict";

  // Escape closes an open dialog by following its Cancel link, and closes open menus.
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    var menus = document.querySelectorAll("details[data-menu][open]");
    if (menus.length > 0) {
      menus.forEach(function (m) {
        m.removeAttribute("open");
        var s = m.querySelector("summary");
        if (s) s.focus();
      });
      e.preventDefault();
      return;
    }
    var dlg = document.querySelector("dialog[open][data-cancel]");
    if (dlg) {
      e.preventDefault();
      window.location.assign(dlg.getAttribute("data-cancel"));
    }
  });

  // A server-rendered dialog becomes a real modal one: focus stays inside it and the page
  // behind is inert. Escape (the dialog's cancel event) follows its Cancel link.
  var open = document.querySelector("dialog[open][data-cancel]");
  if (open && typeof open.showModal === "function") {
    try {
      open.close();
      open.showModal();
    } catch (err) {
      open.setAttribute("open", "");
    }
    var first = open.querySelector("[autofocus]");
    if (first) first.focus();
    open.addEventListener("cancel", function (e) {
      e.preventDefault();
      window.location.assign(open.getAttribute("data-cancel"));
    });
  }

  // A click outside an open overflow menu closes it.
  document.addEventListener("click", function (e) {
    document.querySelectorAll("details[data-menu][open]").forEach(function (m) {
      if (!m.contains(e.target)) m.removeAttribute("open");
    });
  });

  // Live refresh of the Keys table: every N seconds, fetch the same page and swap the table,
  // unless a menu or form is in use. Any failure leaves the page as it is.
  var table = document.getElementById("keys-table");
  if (table && window.fetch && window.DOMParser) {
    var secs = parseInt(table.getAttribute("data-refresh"), 10) || 10;
    setInterval(function () {
      if (document.hidden) return;
      var cur = document.getElementById("keys-table");
      if (!cur || cur.querySelector("details[open]") || cur.contains(document.activeElement)) return;
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("keys-table");
          var now = document.getElementById("keys-table");
          if (fresh && now && !now.querySelector("details[open]")) now.replaceWith(fresh);
        })
        .catch(function () {});
    }, secs * 1000);
  }
})();
