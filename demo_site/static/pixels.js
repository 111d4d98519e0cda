// Plays the part of the Bigo and Meta browser pixels: they write first-party cookies that the
// server-side middleware reads on the next request (_bge_bbg/_bge_ci for Bigo, _fbp for Meta).
(function () {
  "use strict";
  var DAY = 86400;

  function getCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return null;
  }

  function setCookie(name, value, days) {
    document.cookie = name + "=" + encodeURIComponent(value) +
      "; Max-Age=" + String(days * DAY) + "; Path=/; SameSite=Lax";
  }

  function randomDigits(n) {
    var s = String(1 + Math.floor(Math.random() * 9));
    for (var i = 1; i < n; i++) s += String(Math.floor(Math.random() * 10));
    return s;
  }

  function showCookies() {
    var el = document.getElementById("pixel-cookies");
    if (!el) return;
    var shown = ["_bge_bbg", "_bge_ci", "_fbp", "_fbc"].map(function (n) {
      var v = getCookie(n);
      return v ? n + "=" + v : null;
    }).filter(Boolean);
    el.textContent = shown.length ? shown.join("\n") : "(none)";
  }

  // Like real pixels behind a consent banner: nothing is written once tracking is refused.
  if (getCookie("demo_consent") !== "no") {
    var params = new URLSearchParams(window.location.search);

    // Bigo pixel: remembers the click's bbg and gives this browser a cookie id.
    var bbg = params.get("bbg");
    if (bbg) {
      setCookie("_bge_bbg", bbg, 28);
      if (!getCookie("_bge_ci")) setCookie("_bge_ci", "ci." + Date.now() + "." + randomDigits(10), 390);
    }

    // Meta pixel: a browser id "fb.1.<creation ms>.<random>" when there is none yet.
    if (!getCookie("_fbp")) {
      setCookie("_fbp", "fb.1." + Date.now() + "." + Math.floor(Math.random() * 2147483647), 90);
    }
  }
  showCookies();
})();
