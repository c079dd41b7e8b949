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
    // A refusal shown inside the dialog takes the focus, so it is read out first.
    var first = open.querySelector("[role=alert]");
    if (first) first.setAttribute("tabindex", "-1");
    else first = open.querySelector("[autofocus]");
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

  // Live refresh. Every element with an id and data-refresh="N" is replaced by the element
  // with the same id from a fresh copy of the page, every N seconds (at least 30): only while
  // the tab is visible, never while a menu or a form field inside it is in use, and not
  // after 15 minutes without user input (each refresh is a read in the audit log, and an
  // unattended tab would fill it). window.crkvolRefresh() refreshes once, now; it returns a
  // promise of whether anything was replaced. Any failure leaves the page as it is.
  var MIN_SECS = 30;
  var IDLE_MS = 15 * 60 * 1000;
  if (document.querySelector("[data-refresh][id]") && window.fetch && window.DOMParser) {
    var secs = 0;
    document.querySelectorAll("[data-refresh][id]").forEach(function (el) {
      var n = parseInt(el.getAttribute("data-refresh"), 10);
      if (!(n >= MIN_SECS)) n = MIN_SECS;
      if (secs === 0 || n < secs) secs = n;
    });
    var lastInput = Date.now();
    var lastRefresh = Date.now();
    var stopped = false; // the session ended or the page moved: refreshing again is pointless
    var paused = null;   // the "Live refresh paused" notice while shown

    var busy = function (el) {
      return el.querySelector("details[open]") !== null || el.contains(document.activeElement);
    };

    var refresh = function () {
      lastRefresh = Date.now();
      return fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (!r.ok || r.redirected) {
            stopped = true;
            return null;
          }
          return r.text();
        })
        .then(function (html) {
          if (!html) return false;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var swapped = false;
          document.querySelectorAll("[data-refresh][id]").forEach(function (now) {
            var fresh = doc.getElementById(now.id);
            if (fresh && !busy(now)) {
              now.replaceWith(document.importNode(fresh, true));
              swapped = true;
            }
          });
          return swapped;
        })
        .catch(function () { return false; });
    };

    var resume = function () {
      lastInput = Date.now();
      if (paused) {
        paused.remove();
        paused = null;
      }
      if (!document.hidden) refresh();
    };

    var pause = function () {
      if (paused) return;
      paused = document.createElement("p");
      paused.className = "refresh-paused";
      paused.setAttribute("role", "status");
      paused.appendChild(document.createTextNode("Live refresh paused after 15 minutes without activity. "));
      var b = document.createElement("button");
      b.type = "button";
      b.textContent = "Resume";
      b.addEventListener("click", resume);
      paused.appendChild(b);
      var target = document.querySelector("[data-refresh][id]");
      target.parentNode.insertBefore(paused, target);
    };

    ["keydown", "pointerdown", "wheel", "touchstart"].forEach(function (t) {
      document.addEventListener(t, function () {
        if (!paused) lastInput = Date.now();
      }, { passive: true, capture: true });
    });

    var tick = function () {
      if (stopped || paused || document.hidden) return;
      if (Date.now() - lastInput >= IDLE_MS) {
        pause();
        return;
      }
      if (Date.now() - lastRefresh >= secs * 1000) refresh();
    };
    setInterval(tick, 5000);
    // A tab coming back into view catches up at once when a refresh is due.
    document.addEventListener("visibilitychange", tick);

    window.crkvolRefresh = refresh;
  }
})();
