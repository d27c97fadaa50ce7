/* recsvc content blocks for any page.
 *
 *   <div data-recsvc-slot="home_hero" data-recsvc-customer="12346"
 *        data-recsvc-token="1767225600.q3Jx..."></div>
 *   <script src="https://recs.example.com/v1/embed.js" data-recsvc-key="rk_..." async></script>
 *
 * Every element with data-recsvc-slot gets its block. The customer's own block needs both
 * data-recsvc-customer and data-recsvc-token (a visitor token the shop's backend minted for
 * that customer key); otherwise the anonymous block. When the service is slow or down the
 * element keeps what it had; nothing else on the page is touched. The key must be a
 * publishable one (scope blocks:read): anyone can read it in the page.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !window.fetch) { return; }
  var origin = new URL(script.src, document.baseURI).origin;
  var key = script.getAttribute("data-recsvc-key");
  var timeoutMs = parseInt(script.getAttribute("data-recsvc-timeout") || "3000", 10);

  function load(element) {
    var slot = element.getAttribute("data-recsvc-slot");
    var customer = element.getAttribute("data-recsvc-customer");
    var token = element.getAttribute("data-recsvc-token");
    if (!slot || element.getAttribute("data-recsvc-loaded")) { return; }
    /* The key goes in the query (the path's "~" says so): a key may hold "/". */
    var path = customer
      ? "/v1/customers/~/blocks/" + encodeURIComponent(slot) + "?key=" +
        encodeURIComponent(customer) + "&format=html"
      : "/v1/blocks/" + encodeURIComponent(slot) + "?format=html";
    var controller = window.AbortController ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, timeoutMs) : null;
    var headers = {};
    if (key) { headers["X-API-Key"] = key; }
    if (customer && token) { headers["X-Recsvc-Token"] = token; }
    fetch(origin + path, {
      headers: headers, credentials: "omit", signal: controller ? controller.signal : undefined
    }).then(function (response) {
      if (!response.ok) { throw new Error("recsvc " + response.status); }
      return response.text();
    }).then(function (html) {
      element.innerHTML = html;  /* rendered and escaped by the service */
      element.setAttribute("data-recsvc-loaded", "true");
    }).catch(function () {
      element.setAttribute("data-recsvc-loaded", "failed");
    }).then(function () {
      if (timer) { clearTimeout(timer); }
    });
  }

  function run() {
    var elements = document.querySelectorAll("[data-recsvc-slot]");
    for (var i = 0; i < elements.length; i++) { load(elements[i]); }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
