// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var left = Math.round((Date.parse(el.getAttribute("datetime")) - now) / 1000);
      if (isNaN(left)) return;
      if (left <= 0) { el.textContent = "expired"; return; }
      var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      el.textContent = "in " + (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
    });
  }
  function live() {
    var box = document.querySelector("[data-live]");
    if (!box || !window.EventSource) return;
    var source = new EventSource(box.getAttribute("data-live"));
    var pending = false;
    source.addEventListener("ready", function () { box.setAttribute("data-live-ready", "1"); });
    source.addEventListener("changed", function () {
      if (pending) return;
      pending = true;
      setTimeout(function () {
        pending = false;
        if (window.htmx) {
          htmx.ajax("GET", box.getAttribute("data-rows"), { target: box, swap: "innerHTML" }).then(tick);
        }
      }, 100);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { tick(); setInterval(tick, 1000); live(); });
})();

// Passkeys (WebAuthn): registering one, and signing a review with one.
(function () {
  "use strict";
  function b64urlToBuf(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function bufToB64url(buf) {
    var bytes = new Uint8Array(buf), bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function showError(message) {
    var el = document.getElementById("passkey-error");
    if (el) { el.textContent = message; el.hidden = false; }
  }
  async function postJSON(url, body, isForm) {
    var r = await fetch(url, { method: "POST", body: body, headers: isForm ? {} : { "content-type": "application/json" } });
    var data = await r.json();
    if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
    return data;
  }
  async function register(form) {
    var options = await postJSON("/console/passkeys/options", "{}");
    options.challenge = b64urlToBuf(options.challenge);
    options.user.id = b64urlToBuf(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = b64urlToBuf(c.id); });
    var cred = await navigator.credentials.create({ publicKey: options });
    var credential = {
      id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type,
      response: {
        clientDataJSON: bufToB64url(cred.response.clientDataJSON),
        attestationObject: bufToB64url(cred.response.attestationObject),
        transports: cred.response.getTransports ? cred.response.getTransports() : []
      }
    };
    await postJSON("/console/passkeys", JSON.stringify({ credential: credential, name: form.querySelector("[name=name]").value }));
    location.reload();
  }
  async function sign(form, decision) {
    var data = new FormData(form);
    data.set("decision", decision);
    var options = await postJSON(form.getAttribute("action").replace(/\/review$/, "/passkey-options"), data, true);
    options.challenge = b64urlToBuf(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = b64urlToBuf(c.id); });
    var cred = await navigator.credentials.get({ publicKey: options });
    form.querySelector("[name=assertion]").value = JSON.stringify({
      id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type,
      response: {
        authenticatorData: bufToB64url(cred.response.authenticatorData),
        clientDataJSON: bufToB64url(cred.response.clientDataJSON),
        signature: bufToB64url(cred.response.signature)
      }
    });
    var button = document.createElement("input");
    button.type = "hidden"; button.name = "decision"; button.value = decision;
    form.appendChild(button);
    form.submit();
  }
  document.addEventListener("DOMContentLoaded", function () {
    var reg = document.querySelector("[data-passkey-register]");
    if (reg) reg.addEventListener("submit", function (e) {
      e.preventDefault();
      register(reg).catch(function (err) { showError("Passkey not added: " + err.message); });
    });
    var review = document.querySelector("[data-passkey-review]");
    if (review) review.querySelectorAll("button").forEach(function (b) {
      b.addEventListener("click", function () {
        sign(document.getElementById("review-form"), b.getAttribute("data-decision"))
          .catch(function (err) { showError("Not signed: " + err.message); });
      });
    });
  });
})();
